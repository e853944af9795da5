"""The "cpp" backend: the C++/CUDA extension (sources in csrc/), whose operators live under ``torch.ops.egno_fast``.
This package adds their fake (meta) kernels, autograd and the Python entry points, and registers them with
:mod:`egno_fast.backends`.

Importing it builds the extension on first use on a machine (:mod:`egno_fast.cpp.build`: a few minutes, with a
progress line; cached afterwards) and raises :class:`~egno_fast.cpp.build.ExtensionBuildError` (an ImportError) with
the reason and the fix when it cannot be built; ``egno-fast info`` reports that reason and the "cpp" backend then
refuses to run (no silent fallback).
"""
from __future__ import annotations

from typing import Dict

from .build import load_extension

_C = load_extension()

from . import egnn, graph, temporal_conv  # noqa: E402  (registers fake kernels)


def build_info() -> Dict[str, bool]:
    """How the extension was built: {"cuda": CUDA kernels compiled in, "openmp": parallel CPU loops}."""
    return dict(_C.build_info())


def empty_cache() -> int:
    """Frees the work buffers that the CPU kernels keep for reuse (the fused EGNN layer's stored activations; at most
    ``EGNO_FAST_CPU_CACHE_MB`` megabytes, default 4096, 0 = no cache; csrc/cpu/buffer_pool.h). Returns the bytes
    freed."""
    return int(_C.empty_cache())


def cached_bytes() -> int:
    """Bytes held by the CPU kernels' buffer cache (free buffers kept for reuse)."""
    return int(_C.cached_bytes())


def register_ops(register) -> None:
    """Called by :mod:`egno_fast.backends` to register this backend's ops (layers on the CPU; graph builders on the
    CPU, and on CUDA when the extension was built with CUDA)."""
    graph_devices = ("cpu", "cuda") if build_info()["cuda"] else ("cpu",)
    register("egnn_layer", "cpp", egnn.egnn_layer_cpp, devices=("cpu",))
    register("temporal_residual", "cpp", temporal_conv.temporal_residual_cpp, devices=("cpu",))
    register("receiver_csr", "cpp", graph.receiver_csr_cpp, devices=graph_devices)
    register("radius_graph", "cpp", graph.radius_graph_cpp, devices=graph_devices)
    register("knn_graph", "cpp", graph.knn_graph_cpp, devices=graph_devices)
