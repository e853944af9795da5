"""Graph construction in plain PyTorch: the ground truth for the cell-list builders of the "cpp" backend.

Conventions (every backend): edge_index [2, E] int64 with row 0 the sender j and row 1 the receiver i, edges sorted
by receiver and, within a receiver, by sender; no self loops; distances in float64; with an orthorhombic periodic
``box`` [3] the minimum image of each pair is used (one edge per pair).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

_CHUNK = 2048  # receivers per block of the brute-force distance matrix


def receiver_csr_reference(receiver: Tensor, num_nodes: int) -> Tuple[Tensor, Tensor]:
    """Stable sort of edges by receiver.

    Args:
        receiver: [E] int receiver of each edge, values in [0, num_nodes).
    Returns:
        (rowptr [N + 1] int64, perm [E] int64): sorted edge k is input edge perm[k]; the edges received by node i
        are rowptr[i]:rowptr[i + 1].
    """
    receiver = receiver.long()
    perm = torch.argsort(receiver, stable=True)
    counts = torch.bincount(receiver, minlength=num_nodes)
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.int64, device=receiver.device)
    torch.cumsum(counts, dim=0, out=rowptr[1:])
    return rowptr, perm


def _pair_distance2(pos: Tensor, rows: Tensor, box: Optional[Tensor]) -> Tensor:
    """[len(rows), N] float64 squared distances from the points ``rows`` to every point."""
    diff = pos[rows, None, :] - pos[None, :, :]
    if box is not None:
        diff = diff - box * torch.round(diff / box)
    return (diff * diff).sum(-1)


def _blocks(pos: Tensor, batch: Optional[Tensor], box: Optional[Tensor]):
    """Yields (rows, d2 [rows, N] with inf where no edge may be: self pairs and pairs across graphs)."""
    pos = pos.double()
    box = None if box is None else box.to(pos)
    for start in range(0, pos.shape[0], _CHUNK):
        rows = torch.arange(start, min(start + _CHUNK, pos.shape[0]), device=pos.device)
        d2 = _pair_distance2(pos, rows, box)
        d2[torch.arange(len(rows)), rows] = float("inf")
        if batch is not None:
            d2[batch[rows, None] != batch[None, :]] = float("inf")
        yield rows, d2


def radius_graph_reference(pos: Tensor, cutoff: float, batch: Optional[Tensor] = None,
                           box: Optional[Tensor] = None) -> Tensor:
    """Edges j -> i for every pair with |x_i - x_j| <= cutoff (brute force, O(N^2)).

    Args:
        pos: [N, 3]; batch: [N] graph ids or None; box: [3] periodic box lengths or None.
    Returns:
        edge_index [2, E] int64 (module conventions).
    """
    senders, receivers = [], []
    for rows, d2 in _blocks(pos, batch, box):
        receiver, sender = torch.nonzero(d2 <= cutoff * cutoff, as_tuple=True)
        senders.append(sender)
        receivers.append(rows[receiver])
    return _edge_index(senders, receivers, pos.device)


def knn_graph_reference(pos: Tensor, k: int, batch: Optional[Tensor] = None, box: Optional[Tensor] = None) -> Tensor:
    """Edges j -> i for the k nearest j of each i in its graph (fewer if the graph is smaller); ties broken by
    the smaller index (brute force, O(N^2)).

    Returns:
        edge_index [2, E] int64 (module conventions).
    """
    senders, receivers = [], []
    num_nodes = pos.shape[0]
    for rows, d2 in _blocks(pos, batch, box):
        # sort by (distance, index): a stable sort by distance of indices in ascending order
        order = torch.sort(d2, dim=1, stable=True).indices[:, :min(k, num_nodes)]
        keep = torch.isfinite(torch.gather(d2, 1, order))
        nearest = torch.where(keep, order, num_nodes).sort(dim=1).values
        receiver, column = torch.nonzero(nearest < num_nodes, as_tuple=True)
        senders.append(nearest[receiver, column])
        receivers.append(rows[receiver])
    return _edge_index(senders, receivers, pos.device)


def _edge_index(senders, receivers, device) -> Tensor:
    if not senders:
        return torch.zeros(2, 0, dtype=torch.int64, device=device)
    return torch.stack([torch.cat(senders), torch.cat(receivers)]).long()
