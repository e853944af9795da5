"""Neighbour lists: radius and k-nearest-neighbour graphs, edge_index [2, E] for :func:`build_graph`.

Entry points per backend: "reference" (brute force in plain PyTorch, O(N^2)), "cpp" (cell lists:
csrc/cpu/neighbor_graph_cpu.cpp, and csrc/cuda/graph_cuda.cu in CUDA builds). Conventions (every backend):
edge_index [2, E] int64 with row 0 the sender j and row 1 the receiver i, edges sorted by receiver and, within a
receiver, by sender; no self loops; distances in float64; with an orthorhombic periodic ``box`` [3] the minimum
image of each pair is used (one edge per pair). Every backend divides the points (and the cutoff and box) by a power
of two first (exact, so every tie stays), so that neither huge or tiny coordinates nor a huge cutoff overflow.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backends import register
from ..graph import GraphInputError
from .receiver_csr import cpp_device_types, graph_op

_CHUNK = 2048  # receivers per block of the brute-force distance matrix
def _pair_distance2(pos: Tensor, rows: Tensor, box: Optional[Tensor]) -> Tensor:
    """[len(rows), N] float64 squared distances from the points ``rows`` to every point."""
    diff = pos[rows, None, :] - pos[None, :, :]
    if box is not None:
        diff = diff - box * torch.round(diff / box)
    square = diff * diff
    return (square[..., 0] + square[..., 1]) + square[..., 2]  # the C++ and CUDA builders' order and roundings


def _power_of_two_scale(pos: Tensor, box: Optional[Tensor]) -> float:
    """The power of two at or above the largest coordinate (and box length): dividing by it is exact, keeps every
    comparison and tie of distances, and keeps squared distances far from overflow (1e300 apart stays finite)."""
    largest = max(float(pos.abs().max()) if pos.numel() else 0.0, float(box.max()) if box is not None else 0.0)
    if largest == 0.0:
        return 1.0
    _, exponent = torch.frexp(torch.tensor(largest, dtype=torch.float64))
    return float(torch.ldexp(torch.tensor(1.0, dtype=torch.float64), exponent))


def _blocks(pos: Tensor, batch: Optional[Tensor], box: Optional[Tensor], scale: float):
    """Yields (rows, d2 [rows, N]) of the squared distances of ``pos / scale``, NaN where no edge may be (self pairs
    and pairs across graphs: NaN compares false and sorts last)."""
    pos = pos.double() / scale
    box = None if box is None else box.to(pos) / scale
    for start in range(0, pos.shape[0], _CHUNK):
        rows = torch.arange(start, min(start + _CHUNK, pos.shape[0]), device=pos.device)
        d2 = _pair_distance2(pos, rows, box)
        d2[torch.arange(len(rows)), rows] = float("nan")
        if batch is not None:
            d2[batch[rows, None] != batch[None, :]] = float("nan")
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
    scale = _power_of_two_scale(pos, box)
    scaled = cutoff / scale  # exact (a power of two); squared by a product, rounded once as the C++ code does
    limit = scaled * scaled if scaled < 1e150 else float("inf")  # beyond 1e150 every pair is closer than that
    for rows, d2 in _blocks(pos, batch, box, scale):
        receiver, sender = torch.nonzero(d2 <= limit, as_tuple=True)
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
    for rows, d2 in _blocks(pos, batch, box, _power_of_two_scale(pos, box)):
        # sort by (distance, index): a stable sort by distance of indices in ascending order (excluded pairs last)
        order = torch.sort(d2, dim=1, stable=True).indices[:, :min(k, num_nodes)]
        keep = ~torch.isnan(torch.gather(d2, 1, order))
        nearest = torch.where(keep, order, num_nodes).sort(dim=1).values
        receiver, column = torch.nonzero(nearest < num_nodes, as_tuple=True)
        senders.append(nearest[receiver, column])
        receivers.append(rows[receiver])
    return _edge_index(senders, receivers, pos.device)


def _edge_index(senders, receivers, device) -> Tensor:
    if not senders:
        return torch.zeros(2, 0, dtype=torch.int64, device=device)
    return torch.stack([torch.cat(senders), torch.cat(receivers)]).long()


def _edge_index_fake(pos, *args):
    num_edges = torch.library.get_ctx().new_dynamic_size()  # known only once the graph is built
    return pos.new_empty((2, num_edges), dtype=torch.int64)


# The fake (meta) kernels of the extension's operators, registered by :mod:`egno_fast.cpp` once they exist.
FAKE_KERNELS = {"egno_fast::radius_graph": _edge_index_fake, "egno_fast::knn_graph": _edge_index_fake}


def radius_graph_cpp(pos: Tensor, cutoff: float, batch: Optional[Tensor] = None,
                     box: Optional[Tensor] = None) -> Tensor:
    """Cell-list radius graph (the extension's ``radius_graph``), as :func:`radius_graph_reference`; the points,
    the cutoff and the box are divided by a power of two first (exact: the same ties), so nothing overflows."""
    scale = _power_of_two_scale(pos, box)
    return torch.ops.egno_fast.radius_graph(pos / scale, cutoff / scale, batch, None if box is None else box / scale)


def knn_graph_cpp(pos: Tensor, k: int, batch: Optional[Tensor] = None, box: Optional[Tensor] = None) -> Tensor:
    """Cell-list k-nearest-neighbour graph (the extension's ``knn_graph``), as :func:`knn_graph_reference`; the
    points and the box are divided by a power of two first (exact: the same ties), so no squared distance overflows
    or underflows."""
    scale = _power_of_two_scale(pos, box)
    return torch.ops.egno_fast.knn_graph(pos / scale, k, batch, None if box is None else box / scale)


register("radius_graph", "reference", radius_graph_reference)
register("knn_graph", "reference", knn_graph_reference)
register("radius_graph", "cpp", radius_graph_cpp, devices=cpp_device_types)
register("knn_graph", "cpp", knn_graph_cpp, devices=cpp_device_types)



def _check_points(pos: Tensor, batch: Optional[Tensor], box: Optional[Tensor]) -> None:
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3 or not pos.is_floating_point():
        raise GraphInputError(f"pos must be a floating-point tensor [N, 3], got "
              f"{list(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__}")
    if not bool(torch.isfinite(pos).all()):
        raise GraphInputError("pos contains NaN or infinite values")
    if batch is not None:
        if batch.shape != (pos.shape[0],) or batch.dtype not in (torch.int32, torch.int64):
            raise GraphInputError(f"batch must be an int tensor [N] with N = {pos.shape[0]}, got {batch.dtype} "
                                  f"{list(batch.shape)}")
        if batch.numel() and int(batch.min()) < 0:
            raise GraphInputError("batch contains negative graph ids")
        if batch.numel() and int(batch.max()) >= pos.shape[0]:
            raise GraphInputError(f"batch ids must be below the number of points ({pos.shape[0]}: graphs are "
                                  f"numbered 0, 1, ...), got {int(batch.max())}")
    if box is not None and (box.numel() != 3 or not bool((box > 0).all()) or not bool(torch.isfinite(box).all())):
        raise GraphInputError(f"box must hold 3 positive, finite edge lengths (orthorhombic periodic box), got "
                              f"{box.tolist()}")


def radius_graph(pos: Tensor, cutoff: float, batch: Optional[Tensor] = None, box: Optional[Tensor] = None,
                 backend: str = "auto") -> Tensor:
    """Edges j -> i between points of the same graph with |x_i - x_j| <= cutoff (cell lists on "cpp").

    Args:
        pos:    [N, 3] positions (any float dtype; distances are compared in float64).
        cutoff: the radius (inclusive); with a periodic box at most half its smallest length.
        batch:  [N] graph id of each point, or None (one graph).
        box:    [3] orthorhombic periodic box lengths (minimum image), or None.
        backend: "reference" (brute force), "cpp" or "auto".
    Returns:
        edge_index [2, E] int64, row 0 = sender; sorted by receiver, then sender; no self loops.
        ``build_graph(edge_index, N, ...)`` turns it into a :class:`Graph`.
    """
    _check_points(pos, batch, box)
    if not cutoff > 0 or cutoff == float("inf"):
        raise GraphInputError(f"cutoff must be positive and finite, got {cutoff}")
    if box is not None and 2 * cutoff > float(box.min()):
        raise GraphInputError(f"with a periodic box the cutoff ({cutoff}) must be at most half the smallest box length "
              f"({float(box.min())})")
    return graph_op("radius_graph", backend, pos.device)(pos, float(cutoff), batch, box)


def knn_graph(pos: Tensor, k: int, batch: Optional[Tensor] = None, box: Optional[Tensor] = None,
              backend: str = "auto") -> Tensor:
    """Edges j -> i from the k nearest points j of each point i in its graph (fewer if the graph has <= k points);
    equal distances are broken by the smaller index.

    Args:
        pos: [N, 3]; k >= 1; batch: [N] graph ids or None; box: [3] periodic box lengths or None;
        backend: "reference" (brute force), "cpp" (cell lists) or "auto".
    Returns:
        edge_index [2, E] int64, row 0 = sender; sorted by receiver, then sender.
    """
    _check_points(pos, batch, box)
    if int(k) < 1:
        raise GraphInputError(f"k must be >= 1, got {k}")
    # no graph has more than N - 1 neighbours of a point: a larger k asks for all of them (and allocates no more)
    return graph_op("knn_graph", backend, pos.device)(pos, min(int(k), max(pos.shape[0] - 1, 1)), batch, box)


