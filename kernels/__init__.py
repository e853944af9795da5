"""Triton kernels of egno_fast (installed as ``egno_fast.kernels``), one module per op."""
