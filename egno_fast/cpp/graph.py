"""Graph construction with the extension (csrc/cpu/graph_cpu.cpp; csrc/cuda/graph_cuda.cu in CUDA builds)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

_ops = torch.ops.egno_fast


def receiver_csr_cpp(receiver: Tensor, num_nodes: int) -> Tuple[Tensor, Tensor]:
    """Stable counting sort by receiver: (rowptr [N + 1], perm [E]) as
    :func:`egno_fast.reference.graph.receiver_csr_reference`."""
    return _ops.receiver_csr(receiver, num_nodes)


def radius_graph_cpp(pos: Tensor, cutoff: float, batch: Optional[Tensor] = None,
                     box: Optional[Tensor] = None) -> Tensor:
    """Cell-list radius graph, edge_index [2, E] as :func:`egno_fast.reference.graph.radius_graph_reference`."""
    return _ops.radius_graph(pos, cutoff, batch, box)


def knn_graph_cpp(pos: Tensor, k: int, batch: Optional[Tensor] = None, box: Optional[Tensor] = None) -> Tensor:
    """Cell-list k-nearest-neighbour graph, edge_index [2, E] as
    :func:`egno_fast.reference.graph.knn_graph_reference`."""
    return _ops.knn_graph(pos, k, batch, box)
