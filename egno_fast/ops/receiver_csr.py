"""The receiver CSR: a stable sort of edges by receiver, and :func:`build_graph`, which makes a :class:`Graph` of it.

Entry points per backend: "reference" (``torch.argsort``), "cpp" (a counting sort: csrc/cpu/receiver_csr_cpu.cpp,
and csrc/cuda/graph_cuda.cu in CUDA builds). Every backend gives the same stable order.
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..backends import check_backend_name, get_op, register, resolve_backend
from ..graph import Graph, GraphInputError, validate_graph_inputs

logger = logging.getLogger("egno_fast")


class ReceiverCSR(NamedTuple):
    """rowptr [N + 1] int64: the edges received by node i are ``rowptr[i]:rowptr[i + 1]`` of the sorted order;
    perm [E] int64: sorted edge k is input edge ``perm[k]``."""

    rowptr: Tensor
    perm: Tensor


def receiver_csr_reference(receiver: Tensor, num_nodes: int) -> ReceiverCSR:
    """Stable sort of edges by receiver in plain PyTorch.

    Args:
        receiver: [E] int receiver of each edge, values in [0, num_nodes).
        num_nodes: N.
    Returns:
        :class:`ReceiverCSR` (rowptr [N + 1], perm [E]).
    """
    receiver = receiver.long()
    perm = torch.argsort(receiver, stable=True)
    counts = torch.bincount(receiver, minlength=num_nodes)
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.int64, device=receiver.device)
    torch.cumsum(counts, dim=0, out=rowptr[1:])
    return ReceiverCSR(rowptr, perm)


def _receiver_csr_fake(receiver, num_nodes):
    return (receiver.new_empty((num_nodes + 1,), dtype=torch.int64),
            receiver.new_empty(receiver.shape, dtype=torch.int64))


# The fake (meta) kernel of the extension's operator, registered by :mod:`egno_fast.cpp` once it exists.
FAKE_KERNELS = {"egno_fast::receiver_csr": _receiver_csr_fake}


def receiver_csr_cpp(receiver: Tensor, num_nodes: int) -> ReceiverCSR:
    """Stable counting sort by receiver (the extension's ``receiver_csr``); as :func:`receiver_csr_reference`."""
    return ReceiverCSR(*torch.ops.egno_fast.receiver_csr(receiver, num_nodes))


def cpp_device_types():
    """The device types the extension's graph builders run on (asked once the "cpp" backend is loaded)."""
    from ..cpp import device_types

    return device_types()


register("receiver_csr", "reference", receiver_csr_reference)
register("receiver_csr", "cpp", receiver_csr_cpp, devices=cpp_device_types)

_REPORTED = set()  # (op, device type) whose "auto" choice was logged


def graph_op(op: str, backend: str, device: torch.device, **features):
    """The implementation of a graph op (:data:`~egno_fast.backends.GRAPH_OPS`) for ``backend`` on ``device`` and
    the call's ``features`` (what a backend may not support); an "auto" choice is logged once per op and device
    type."""
    chosen = resolve_backend(check_backend_name(backend), device, op, **features)
    key = (op, torch.device(device).type)
    if backend == "auto" and key not in _REPORTED:
        _REPORTED.add(key)
        logger.info("graph op %s on %s: backend 'auto' runs %r", op, key[1], chosen)
    return get_op(op, chosen)


def sort_by_receiver(receiver: Tensor, num_nodes: int, backend: str = "auto") -> ReceiverCSR:
    """Stable sort of edges by receiver on ``backend`` ("reference", "cpp" or "auto").

    Args:
        receiver: [E] int64 or int32, values in [0, num_nodes).
        num_nodes: N.
    Returns:
        :class:`ReceiverCSR` (rowptr [N + 1], perm [E]).
    """
    return graph_op("receiver_csr", backend, receiver.device)(receiver, num_nodes)


def build_graph(edge_index: Tensor, num_nodes: int, edge_attr: Optional[Tensor] = None,
                batch: Optional[Tensor] = None, validate: bool = True, backend: str = "auto",
                num_graphs: Optional[int] = None, edge_shift: Optional[Tensor] = None) -> Graph:
    """Convert a PyG-style batch into a receiver-sorted CSR :class:`Graph`, stamped as validated (unless
    ``validate=False`` and the reference sort ran: nothing then checked the indices; ``graph.validated()`` does).

    Args:
        edge_index: [2, E] integer; row 0 = sender j, row 1 = receiver i.
        num_nodes:  N, the number of nodes in the batch (isolated nodes included).
        edge_attr:  [E, f] floating-point edge features, or None (f = 0).
        batch:      [N] sorted graph id of each node, or None (one graph).
        validate:   check the inputs (shapes, dtypes, finite values, index range: host synchronisations); False
                    skips the value checks for speed (the "cpp" sort still refuses indices out of range).
        backend:    who sorts the edges ("reference": torch.argsort, "cpp": counting sort, "auto": cpp if built);
                    every backend gives the same stable order.
        num_graphs: B; None: ``batch.max() + 1`` (one host synchronisation), or 1 without ``batch``.
        edge_shift: [E, 3] periodic shift of each edge (added to x_i - x_j; e.g. from
                    :func:`~egno_fast.ops.periodic_radius_graph`), in edge_index's order, or None.
    """
    if validate:
        validate_graph_inputs(edge_index, num_nodes, edge_attr, batch, edge_shift)
    device = edge_index.device
    edge_index = edge_index.long()
    sort = graph_op("receiver_csr", backend, device)
    rowptr, edge_perm = sort(edge_index[1], num_nodes)
    sender, receiver = edge_index[0][edge_perm], edge_index[1][edge_perm]
    if edge_attr is None:
        edge_attr = torch.zeros(edge_index.shape[1], 0, device=device)
    edge_attr = edge_attr[edge_perm]
    edge_shift = None if edge_shift is None else edge_shift.detach()[edge_perm]
    sender_rowptr, sender_perm = sort(sender, num_nodes)
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.int64, device=device)
        num_graphs = 1 if num_graphs is None else num_graphs
    else:
        batch = batch.long()
        num_graphs = int(batch.max()) + 1 if num_graphs is None else num_graphs
    if num_graphs < 1:
        raise GraphInputError(f"num_graphs must be >= 1, got {num_graphs}")
    nodes_per_graph = torch.zeros(num_graphs, dtype=torch.int64, device=device).index_add_(
        0, batch, torch.ones_like(batch))
    graph = Graph(num_nodes=num_nodes, num_graphs=num_graphs, rowptr=rowptr, sender=sender, receiver=receiver,
                  edge_perm=edge_perm, edge_attr=edge_attr, batch=batch, sender_perm=sender_perm,
                  sender_rowptr=sender_rowptr, nodes_per_graph=nodes_per_graph, edge_shift=edge_shift)
    if validate or sort is receiver_csr_cpp:  # the inputs were checked, or the counting sort checked the indices
        graph._set_stamp()
    return graph
