"""Benchmarks of egno_fast: ``python -m benchmarks`` (see benchmarks/README.md)."""
