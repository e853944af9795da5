"""One graph type for every backend: a batch of graphs as a receiver-sorted CSR.

Convention (PyTorch Geometric's): ``edge_index[0]`` is the sender j, ``edge_index[1]`` the receiver i that
aggregates the message j -> i. The graph is built once per batch and shared by every layer and by all P frames:
node tensors carry the frames as an axis ([N, P, ...]) and edge indices are never replicated P times.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


class GraphInputError(ValueError):
    """Raised when graph or node inputs are malformed (shape, dtype, non-finite value, index out of range)."""


@dataclass(frozen=True)
class Graph:
    """A batch of directed graphs stored as a CSR sorted by receiver.

    Attributes (E edges, N nodes, f edge features, B graphs):
        num_nodes:     N.
        num_graphs:    B.
        rowptr:        [N + 1] int64; the edges received by node i are ``rowptr[i]:rowptr[i+1]``.
        sender:        [E] int64, sender j of each edge, in receiver-sorted order.
        receiver:      [E] int64, receiver i of each edge (non-decreasing).
        edge_perm:     [E] int64; sorted edge k is input edge ``edge_perm[k]``.
        edge_attr:     [E, f] edge features in sorted order (f may be 0).
        batch:         [N] int64 graph id of each node.
        sender_perm:   [E] int64; the transposed CSR (sorted by sender) lists sorted edges ``sender_perm``.
        sender_rowptr: [N + 1] int64 offsets of the transposed CSR (edges sent by node j).
    """

    num_nodes: int
    num_graphs: int
    rowptr: Tensor
    sender: Tensor
    receiver: Tensor
    edge_perm: Tensor
    edge_attr: Tensor
    batch: Tensor
    sender_perm: Tensor
    sender_rowptr: Tensor

    @property
    def num_edges(self) -> int:
        return self.sender.numel()

    @property
    def in_degree(self) -> Tensor:
        """[N] int64 number of edges received by each node."""
        return self.rowptr[1:] - self.rowptr[:-1]

    def to(self, device: torch.device | str) -> "Graph":
        """A copy of the graph with every tensor on ``device``."""
        moved = {name: (value.to(device) if isinstance(value, Tensor) else value)
                 for name, value in self.__dict__.items()}
        return Graph(**moved)


def _fail(message: str) -> None:
    raise GraphInputError(message)


def validate_graph_inputs(edge_index: Tensor, num_nodes: int, edge_attr: Optional[Tensor],
                          batch: Optional[Tensor]) -> None:
    """Check shapes, dtypes, finiteness and index ranges of the graph inputs; raise GraphInputError if wrong."""
    if not isinstance(edge_index, Tensor):
        _fail(f"edge_index must be a torch.Tensor of shape [2, E], got {type(edge_index).__name__}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        _fail(f"edge_index must have shape [2, E] (row 0 = sender, row 1 = receiver), got {list(edge_index.shape)}")
    if edge_index.dtype not in (torch.int32, torch.int64):
        _fail(f"edge_index must be int64 or int32, got {edge_index.dtype}")
    if num_nodes < 1:
        _fail(f"the graph is empty: num_nodes = {num_nodes}; a batch needs at least one node")
    if edge_index.numel() > 0:
        low, high = int(edge_index.min()), int(edge_index.max())
        if low < 0 or high >= num_nodes:
            _fail(f"edge_index out of range: values span [{low}, {high}] but there are {num_nodes} nodes "
                  f"(valid indices 0..{num_nodes - 1})")
    num_edges = edge_index.shape[1]
    if edge_attr is not None:
        if edge_attr.dim() != 2 or edge_attr.shape[0] != num_edges:
            _fail(f"edge_attr must have shape [E, f] with E = {num_edges}, got {list(edge_attr.shape)}")
        if not edge_attr.is_floating_point():
            _fail(f"edge_attr must be a floating-point tensor, got {edge_attr.dtype}")
        if not bool(torch.isfinite(edge_attr).all()):
            _fail("edge_attr contains NaN or infinite values")
        if edge_attr.device != edge_index.device:
            _fail(f"edge_attr is on {edge_attr.device} but edge_index on {edge_index.device}")
    if batch is not None:
        if batch.dim() != 1 or batch.shape[0] != num_nodes:
            _fail(f"batch must have shape [N] with N = {num_nodes}, got {list(batch.shape)}")
        if batch.dtype not in (torch.int32, torch.int64):
            _fail(f"batch must be int64 or int32, got {batch.dtype}")
        if int(batch.min()) < 0:
            _fail("batch contains negative graph ids")
        if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
            _fail("batch must be sorted (nodes of each graph contiguous, graph ids non-decreasing)")
        if edge_index.numel() > 0 and bool((batch[edge_index[0]] != batch[edge_index[1]]).any()):
            _fail("edge_index connects nodes of different graphs in the batch")


_REPORTED = set()  # (op, device type) whose "auto" choice was logged


def _graph_op(op: str, backend: str, device: torch.device):
    """The implementation of a graph op for ``backend`` on ``device``; an "auto" choice is logged once."""
    from .backends import check_backend_name, get_op, resolve_backend  # backends imports the references

    chosen = resolve_backend(check_backend_name(backend), device, op)
    key = (op, torch.device(device).type)
    if backend == "auto" and key not in _REPORTED:
        _REPORTED.add(key)
        logging.getLogger("egno_fast").info("graph op %s on %s: backend 'auto' runs %r", op, key[1], chosen)
    return get_op(op, chosen)


def build_graph(edge_index: Tensor, num_nodes: int, edge_attr: Optional[Tensor] = None,
                batch: Optional[Tensor] = None, validate: bool = True, backend: str = "auto") -> Graph:
    """Convert a PyG-style batch into a receiver-sorted CSR :class:`Graph`.

    Args:
        edge_index: [2, E] integer; row 0 = sender j, row 1 = receiver i.
        num_nodes:  N, the number of nodes in the batch (isolated nodes included).
        edge_attr:  [E, f] floating-point edge features, or None (f = 0).
        batch:      [N] sorted graph id of each node, or None (one graph).
        validate:   check the inputs (shapes, dtypes, finite values, index range); False skips it for speed.
        backend:    who sorts the edges ("reference": torch.argsort, "cpp": counting sort, "auto": cpp if built);
                    every backend gives the same stable order.
    """
    if validate:
        validate_graph_inputs(edge_index, num_nodes, edge_attr, batch)
    device = edge_index.device
    edge_index = edge_index.long()
    receiver_csr = _graph_op("receiver_csr", backend, device)
    rowptr, edge_perm = receiver_csr(edge_index[1], num_nodes)
    sender, receiver = edge_index[0][edge_perm], edge_index[1][edge_perm]
    if edge_attr is None:
        edge_attr = torch.zeros(edge_index.shape[1], 0, device=device)
    edge_attr = edge_attr[edge_perm]
    sender_rowptr, sender_perm = receiver_csr(sender, num_nodes)
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.int64, device=device)
        num_graphs = 1
    else:
        batch = batch.long()
        num_graphs = int(batch.max()) + 1
    return Graph(num_nodes=num_nodes, num_graphs=num_graphs, rowptr=rowptr, sender=sender, receiver=receiver,
                 edge_perm=edge_perm, edge_attr=edge_attr, batch=batch, sender_perm=sender_perm,
                 sender_rowptr=sender_rowptr)


def _check_points(pos: Tensor, batch: Optional[Tensor], box: Optional[Tensor]) -> None:
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3 or not pos.is_floating_point():
        _fail(f"pos must be a floating-point tensor [N, 3], got "
              f"{list(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__}")
    if not bool(torch.isfinite(pos).all()):
        _fail("pos contains NaN or infinite values")
    if batch is not None:
        if batch.shape != (pos.shape[0],) or batch.dtype not in (torch.int32, torch.int64):
            _fail(f"batch must be an int tensor [N] with N = {pos.shape[0]}, got {batch.dtype} {list(batch.shape)}")
        if batch.numel() and int(batch.min()) < 0:
            _fail("batch contains negative graph ids")
    if box is not None and (box.numel() != 3 or not bool((box > 0).all()) or not bool(torch.isfinite(box).all())):
        _fail(f"box must hold 3 positive, finite edge lengths (orthorhombic periodic box), got {box.tolist()}")


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
        _fail(f"cutoff must be positive and finite, got {cutoff}")
    if box is not None and 2 * cutoff > float(box.min()):
        _fail(f"with a periodic box the cutoff ({cutoff}) must be at most half the smallest box length "
              f"({float(box.min())})")
    return _graph_op("radius_graph", backend, pos.device)(pos, float(cutoff), batch, box)


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
        _fail(f"k must be >= 1, got {k}")
    return _graph_op("knn_graph", backend, pos.device)(pos, int(k), batch, box)


def validate_node_inputs(num_nodes: int, **tensors: Tensor) -> None:
    """Check that each node tensor is floating point, finite, and has N rows; raise GraphInputError if not.

    Args:
        num_nodes: N.
        tensors:   name -> tensor of shape [N, ...].
    """
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            _fail(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            _fail(f"{name} must be a floating-point tensor, got {value.dtype}")
        if value.dim() < 1 or value.shape[0] != num_nodes:
            _fail(f"{name} must have {num_nodes} rows (one per node), got shape {list(value.shape)}")
        if not bool(torch.isfinite(value).all()):
            _fail(f"{name} contains NaN or infinite values")


def graph_mean(values: Tensor, graph: Graph) -> Tensor:
    """Per-graph mean of node values, broadcast back to the nodes.

    Args:
        values: [N, d].
        graph:  the batch.
    Returns:
        [N, d], row n = mean of ``values`` over the nodes of node n's graph.
    """
    sums = values.new_zeros(graph.num_graphs, values.shape[1]).index_add_(0, graph.batch, values)
    counts = torch.bincount(graph.batch, minlength=graph.num_graphs).clamp(min=1).to(values.dtype)
    return (sums / counts[:, None])[graph.batch]
