"""The "cpp" backend: the C++/CUDA extension (sources in csrc/), whose operators live under ``torch.ops.egno_fast``.
Their Python entry points, autograd and fake (meta) kernels live with each op in :mod:`egno_fast.ops`; importing
this package loads the operators and registers their fake kernels and autograd with torch.library.

Importing it builds the extension on first use on a machine (:mod:`egno_fast.cpp.build`: a few minutes, with a
progress line; cached afterwards) and raises :class:`~egno_fast.cpp.build.ExtensionBuildError` (an ImportError) with
the reason and the fix when it cannot be built; ``egno-fast info`` reports that reason and the "cpp" backend then
refuses to run (no silent fallback).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from .build import load_extension

_C = load_extension()

from ..ops import egnn_edge, egnn_node, neighbor_graph, receiver_csr, temporal_conv  # noqa: E402

for _op in (egnn_edge, egnn_node, temporal_conv, receiver_csr, neighbor_graph):  # see each op's module
    for _name, _fake in _op.FAKE_KERNELS.items():
        torch.library.register_fake(_name, _fake)
for _op in (egnn_edge, egnn_node, temporal_conv):  # the differentiable ones
    for _name, (_backward, _setup_context) in _op.AUTOGRAD.items():
        torch.library.register_autograd(_name, _backward, setup_context=_setup_context)


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


def device_types() -> Tuple[str, ...]:
    """The device types the extension's graph builders run on: CPU, and CUDA where it was built with CUDA."""
    return ("cpu", "cuda") if build_info()["cuda"] else ("cpu",)
