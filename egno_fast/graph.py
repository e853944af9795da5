"""One graph type for every backend: a batch of graphs as a receiver-sorted CSR.

Convention (PyTorch Geometric's): ``edge_index[0]`` is the sender j, ``edge_index[1]`` the receiver i that
aggregates the message j -> i. The graph is built once per batch and shared by every layer and by all P frames:
node tensors carry the frames as an axis ([N, P, ...]) and edge indices are never replicated P times.
"""
from __future__ import annotations

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


def _offsets(sorted_keys: Tensor, num_nodes: int) -> Tensor:
    """[N + 1] int64 CSR offsets of ``sorted_keys`` (values in [0, N)), by counting."""
    counts = torch.bincount(sorted_keys, minlength=num_nodes)
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.int64, device=sorted_keys.device)
    torch.cumsum(counts, dim=0, out=rowptr[1:])
    return rowptr


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


def build_graph(edge_index: Tensor, num_nodes: int, edge_attr: Optional[Tensor] = None,
                batch: Optional[Tensor] = None, validate: bool = True) -> Graph:
    """Convert a PyG-style batch into a receiver-sorted CSR :class:`Graph`.

    Args:
        edge_index: [2, E] integer; row 0 = sender j, row 1 = receiver i.
        num_nodes:  N, the number of nodes in the batch (isolated nodes included).
        edge_attr:  [E, f] floating-point edge features, or None (f = 0).
        batch:      [N] sorted graph id of each node, or None (one graph).
        validate:   check the inputs (shapes, dtypes, finite values, index range); False skips it for speed.
    """
    if validate:
        validate_graph_inputs(edge_index, num_nodes, edge_attr, batch)
    device = edge_index.device
    edge_index = edge_index.long()
    sender, receiver = edge_index[0], edge_index[1]
    edge_perm = torch.argsort(receiver, stable=True)
    sender, receiver = sender[edge_perm], receiver[edge_perm]
    if edge_attr is None:
        edge_attr = torch.zeros(edge_index.shape[1], 0, device=device)
    edge_attr = edge_attr[edge_perm]
    sender_perm = torch.argsort(sender, stable=True)
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.int64, device=device)
        num_graphs = 1
    else:
        batch = batch.long()
        num_graphs = int(batch.max()) + 1
    return Graph(num_nodes=num_nodes, num_graphs=num_graphs, rowptr=_offsets(receiver, num_nodes),
                 sender=sender, receiver=receiver, edge_perm=edge_perm, edge_attr=edge_attr, batch=batch,
                 sender_perm=sender_perm, sender_rowptr=_offsets(sender[sender_perm], num_nodes))


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
