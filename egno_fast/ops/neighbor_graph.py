"""Neighbour lists: radius and k-nearest-neighbour graphs, edge_index [2, E] for :func:`build_graph`.

Entry points per backend: "reference" (brute force in plain PyTorch, O(N^2)), "cpp" (cell lists:
csrc/cpu/neighbor_graph_cpu.cpp, and csrc/cuda/graph_cuda.cu in CUDA builds). Conventions (every backend):
edge_index [2, E] int64 with row 0 the sender j and row 1 the receiver i, edges sorted by receiver and, within a
receiver, by sender; no self loops; distances in float64; with an orthorhombic periodic ``box`` [3] the minimum
image of each pair is used (one edge per pair). Every backend divides the points (and the cutoff and box) by a power
of two first (exact, so every tie stays), so that neither huge or tiny coordinates nor a huge cutoff overflow.

Periodic cells of any shape (:func:`periodic_radius_graph`): ``cell`` [3, 3] (or one per graph, [B, 3, 3]) holds
the lattice vectors as rows (ASE's convention); each edge j -> i comes with its shift s_ij, a lattice vector such that
r_ij = x_i - x_j + s_ij is the minimum image, |r_ij| <= cutoff. The cutoff must be at most half the cell's smallest
perpendicular width (then each pair has at most one image within it). "reference": brute force over the 27
neighbouring images of every pair; "cpp": cell lists in fractional coordinates (csrc/cpu/periodic_graph_cpu.cpp),
any cell, on the CPU; on CUDA the cell-list search for one orthorhombic cell (graph_cuda.cu). Both decide each pair's
image the same way and form the shifts from the integer images by the same code.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

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


class PeriodicEdges(NamedTuple):
    """edge_index [2, E] int64 (module conventions) and edge_shift [E, 3] in pos's dtype: the lattice vector s_ij
    with r_ij = x_i - x_j + s_ij the minimum image of each edge j -> i (``build_graph(..., edge_shift=...)``)."""

    edge_index: Tensor
    edge_shift: Tensor


_IMAGE_OFFSETS = torch.cartesian_prod(*[torch.tensor([0, -1, 1])] * 3).double()  # [27, 3], (0, 0, 0) first
_PERIODIC_BLOCK_VALUES = 2**22  # float64 values of a block of image vectors [rows, N, 27, 3]: 32 MB


def periodic_radius_graph_reference(pos: Tensor, cutoff: float, cell: Tensor,
                                    batch: Optional[Tensor] = None) -> PeriodicEdges:
    """Minimum-image edges j -> i with |x_i - x_j + s_ij| <= cutoff in a periodic cell of any shape (brute force over
    the 27 images next to the rounded fractional difference of each pair, O(27 N^2)); :func:`periodic_radius_graph`.

    Args:
        pos: [N, 3]; cutoff: the radius; cell: [3, 3] or [1, 3, 3] (shared) or [B, 3, 3] lattice vectors (rows)
        of each graph; batch: [N] or None.
    Returns:
        :class:`PeriodicEdges`.
    """
    positions = pos.double()
    cells = cell.to(positions).reshape(-1, 3, 3)
    inverse = _inverse(cells)
    if cells.shape[0] > 1:  # one cell per graph
        node_cell, node_inverse = cells[batch], inverse[batch]  # [N, 3, 3]
    else:
        node_cell, node_inverse = (c[0].expand(positions.shape[0], 3, 3) for c in (cells, inverse))
    offsets = _IMAGE_OFFSETS.to(positions.device)
    senders, receivers, chosen = [], [], []
    chunk = max(1, _PERIODIC_BLOCK_VALUES // (27 * 3 * max(positions.shape[0], 1)))  # rows per block: bounded memory
    for start in range(0, positions.shape[0], chunk):
        rows = torch.arange(start, min(start + chunk, positions.shape[0]), device=pos.device)
        diff = positions[rows, None, :] - positions[None, :, :]  # [R, N, 3] x_i - x_j
        nearest = -torch.round(torch.einsum("rnc,rcd->rnd", diff, node_inverse[rows]))  # image counts [R, N, 3]
        images = nearest[:, :, None, :] + offsets  # [R, N, 27, 3]
        shift = torch.einsum("rnkc,rcd->rnkd", images, node_cell[rows])  # lattice vectors [R, N, 27, 3]
        r = diff[:, :, None, :] + shift
        d2 = (r * r).sum(-1)  # [R, N, 27]
        best = d2.argmin(dim=-1)  # the first of equal minima: (0, 0, 0) offset first
        closest = torch.gather(d2, 2, best[..., None])[..., 0]
        keep = closest <= cutoff * cutoff
        keep[torch.arange(len(rows)), rows] = False
        if batch is not None:
            keep &= batch[rows, None] == batch[None, :]
        receiver, sender = torch.nonzero(keep, as_tuple=True)
        senders.append(sender)
        receivers.append(rows[receiver])
        chosen.append(images[receiver, sender, best[receiver, sender]])
    edge_index = _edge_index(senders, receivers, pos.device)
    counts = torch.cat(chosen).long() if chosen else torch.zeros(0, 3, dtype=torch.long, device=pos.device)
    return PeriodicEdges(edge_index, _lattice_shifts(counts, cells, batch, edge_index, pos.dtype))


def _inverse(cells: Tensor) -> Tensor:
    """[G, 3, 3] inverses of the cells (both backends take the same ones: the same fractional coordinates)."""
    return torch.linalg.inv(cells)


def _lattice_shifts(images: Tensor, cells: Tensor, batch: Optional[Tensor], edge_index: Tensor,
                    dtype: torch.dtype) -> Tensor:
    """[E, 3] shifts images @ cell of each edge's graph, in ``dtype`` (one formula for every backend)."""
    edge_cells = cells[batch[edge_index[1]]] if cells.shape[0] > 1 else cells[0].expand(images.shape[0], 3, 3)
    return torch.einsum("ec,ecd->ed", images.double(), edge_cells).to(dtype)


def periodic_radius_graph_cpp(pos: Tensor, cutoff: float, cell: Tensor,
                              batch: Optional[Tensor] = None) -> PeriodicEdges:
    """Cell lists: on the CPU the extension's ``periodic_radius_graph`` (any cell, one per graph or shared); on
    CUDA the orthorhombic search (:func:`radius_graph_cpp` with the box) for one diagonal cell."""
    cells = cell.double()
    if pos.device.type == "cpu":
        edge_index, images = torch.ops.egno_fast.periodic_radius_graph(pos, cutoff, cells, _inverse(cells), batch)
    else:
        box = torch.diagonal(cells[0])
        edge_index = radius_graph_cpp(pos, cutoff, batch, box)
        diff = pos.double()[edge_index[1]] - pos.double()[edge_index[0]]
        images = -torch.round(diff / box)
    return PeriodicEdges(edge_index, _lattice_shifts(images, cells, batch, edge_index, pos.dtype))


def _periodic_fake(pos, cutoff, cell, inverse, batch=None):
    num_edges = torch.library.get_ctx().new_dynamic_size()
    return pos.new_empty((2, num_edges), dtype=torch.int64), pos.new_empty((num_edges, 3), dtype=torch.int64)


# The fake (meta) kernels of the extension's operators, registered by :mod:`egno_fast.cpp` once they exist.
FAKE_KERNELS = {"egno_fast::radius_graph": _edge_index_fake, "egno_fast::knn_graph": _edge_index_fake,
                "egno_fast::periodic_radius_graph": _periodic_fake}


def _cpp_periodic_unsupported(cell: Optional[Tensor] = None, device_type: str = "cpu") -> Optional[str]:
    if cell is not None and device_type != "cpu" and (
            cell.shape[0] != 1 or bool((cell[0] != torch.diag(torch.diagonal(cell[0]))).any())
            or not bool((torch.diagonal(cell[0]) > 0).all())):
        return ("on CUDA the cpp periodic search runs one orthorhombic cell (diagonal, positive lengths) shared by "
                "all graphs")
    return None


register("radius_graph", "reference", radius_graph_reference)
register("knn_graph", "reference", knn_graph_reference)
register("radius_graph", "cpp", radius_graph_cpp, devices=cpp_device_types)
register("knn_graph", "cpp", knn_graph_cpp, devices=cpp_device_types)
register("periodic_radius_graph", "reference", periodic_radius_graph_reference)
register("periodic_radius_graph", "cpp", periodic_radius_graph_cpp, devices=cpp_device_types,
         unsupported=_cpp_periodic_unsupported)



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




def perpendicular_widths(cell: Tensor) -> Tensor:
    """[..., 3] distances between opposite faces of each cell [..., 3, 3] (lattice vectors as rows): the volume over
    the area of the face the other two vectors span."""
    volume = torch.linalg.det(cell).abs()
    faces = torch.stack([torch.linalg.cross(cell[..., 1, :], cell[..., 2, :]),
                         torch.linalg.cross(cell[..., 2, :], cell[..., 0, :]),
                         torch.linalg.cross(cell[..., 0, :], cell[..., 1, :])], dim=-2)
    return volume[..., None] / faces.norm(dim=-1)


def periodic_radius_graph(pos: Tensor, cutoff: float, cell: Tensor, batch: Optional[Tensor] = None,
                          backend: str = "auto") -> PeriodicEdges:
    """Minimum-image edges j -> i with |x_i - x_j + s_ij| <= cutoff in periodic cells of any shape (triclinic too).

    Args:
        pos:    [N, 3] positions (any image: wrapped or not).
        cutoff: the radius (inclusive); at most half the cell's smallest perpendicular width (at exactly half, a
                pair whose two images are both at the cutoff keeps one of them).
        cell:   [3, 3] lattice vectors as rows (a, b, c), or [B, 3, 3] one cell per graph of ``batch``.
        batch:  [N] sorted graph id of each point, or None (one graph).
        backend: "reference" (brute force, any cell), "cpp" (cell lists: any cell on the CPU, one orthorhombic
                 cell on CUDA) or "auto" (cpp where it can, else the reference; the choice is logged once at INFO
                 level).
    Returns:
        :class:`PeriodicEdges` (edge_index [2, E] sorted by receiver, then sender, no self loops; edge_shift
        [E, 3] the lattice vector s_ij of each edge). ``build_graph(edge_index, N, edge_attr, batch,
        edge_shift=edge_shift)`` gives the graph the model takes.
    """
    _check_points(pos, batch, None)
    if not cutoff > 0 or cutoff == float("inf"):
        raise GraphInputError(f"cutoff must be positive and finite, got {cutoff}")
    if not isinstance(cell, Tensor) or not cell.is_floating_point() or cell.shape[-2:] != (3, 3) or cell.dim() > 3:
        raise GraphInputError(f"cell must be a floating-point tensor [3, 3] (or [B, 3, 3]) of lattice vectors as rows, "
                              f"got {list(cell.shape) if isinstance(cell, Tensor) else type(cell).__name__}")
    cells = cell.double().reshape(-1, 3, 3).to(pos.device)
    num_graphs = 1 if batch is None else (int(batch.max()) + 1 if batch.numel() else 1)
    if cells.shape[0] not in (1, num_graphs) or (cells.shape[0] > 1 and batch is None):
        raise GraphInputError(f"cell must be [3, 3] or one [3, 3] cell per graph ([{num_graphs}, 3, 3]), got "
                              f"{list(cell.shape)}")
    if not bool(torch.isfinite(cells).all()):
        raise GraphInputError("cell contains NaN or infinite values")
    widths = perpendicular_widths(cells)
    if not bool((widths > 0).all()):
        flat = cells[int(widths.min(-1).values.argmin())].tolist()
        raise GraphInputError(f"the cell has zero volume: its lattice vectors {flat} are linearly dependent")
    narrowest = float(widths.min())
    if 2 * cutoff > narrowest:
        raise GraphInputError(f"the cutoff ({cutoff}) must be at most half the cell's smallest perpendicular width "
                              f"({narrowest:.6g}): a pair would have more than one image within it")
    chosen = graph_op("periodic_radius_graph", backend, pos.device, cell=cells, device_type=pos.device.type)
    return chosen(pos, float(cutoff), cells, batch)
