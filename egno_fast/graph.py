"""The graph type shared by every op: a batch of graphs as a receiver-sorted CSR, and the checks of its inputs.

Convention (PyTorch Geometric's): ``edge_index[0]`` is the sender j, ``edge_index[1]`` the receiver i that
aggregates the message j -> i. The graph is built once per batch (:func:`egno_fast.ops.build_graph`) and shared by
every layer and by all P frames: node tensors carry the frames as an axis ([N, P, ...]) and edge indices are never
replicated P times.

A graph is validated where it is built, never on the hot path. What keeps a graph changed afterwards (by
``dataclasses.replace``, by hand, or by editing its tensors in place) from crashing a kernel: the C++ kernels check
the CSR invariants they rely on themselves, CPU calls of the Triton kernels check them in Python inside their
operators (:func:`check_kernel_csr`), and on CUDA a graph must carry the stamp that
:func:`egno_fast.ops.build_graph` or :meth:`Graph.validated` gives it, with none of its index tensors modified since
(their version counters; :meth:`Graph.require_unchanged`). That stamp is checked by the eager entry points: a program
traced by torch.compile or torch.export, and a direct call of a ``torch.ops.egno_fast`` operator on CUDA tensors,
run on the graph they are given.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.utils._pytree as pytree
from torch import Tensor

# the index tensors whose invariants the kernels rely on (stamped at build time)
INDEX_FIELDS = ("rowptr", "sender", "receiver", "edge_perm", "sender_perm", "sender_rowptr", "batch")


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
        nodes_per_graph: [B] int64 number of nodes of each graph.
        edge_shift:    [E, 3] floating point, in sorted order, or None: the periodic shift of each edge, added to
                       x_i - x_j wherever an op forms it (minimum images in a periodic cell,
                       :func:`egno_fast.ops.periodic_radius_graph`); a constant of the graph (no gradient).
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
    nodes_per_graph: Tensor
    edge_shift: Optional[Tensor] = None
    # (id, version) of each index tensor when the graph was validated; None: never validated. Not an __init__
    # argument, so dataclasses.replace and hand-made graphs start unvalidated.
    _stamp: Optional[Tuple[Tuple[int, int], ...]] = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_edges(self) -> int:
        return self.sender.numel()

    @property
    def in_degree(self) -> Tensor:
        """[N] int64 number of edges received by each node."""
        return self.rowptr[1:] - self.rowptr[:-1]

    def to(self, device: torch.device | str) -> "Graph":
        """A copy of the graph with every tensor on ``device`` (validated if this graph is)."""
        moved = {name: (value.to(device) if isinstance(value, Tensor) else value)
                 for name, value in self.__dict__.items() if name != "_stamp"}
        graph = Graph(**moved)
        if self.is_unchanged():
            graph._set_stamp()
        return graph

    # ---------------------------------------------------------------- validation
    def _current_stamp(self) -> Tuple[Tuple[int, int], ...]:
        return tuple((id(getattr(self, name)), getattr(self, name)._version) for name in INDEX_FIELDS)

    def _set_stamp(self) -> None:
        object.__setattr__(self, "_stamp", self._current_stamp())

    def is_unchanged(self) -> bool:
        """Whether the graph was validated and none of its index tensors was replaced or modified since (a Python
        comparison of version counters: no host synchronisation)."""
        return self._stamp is not None and self._stamp == self._current_stamp()

    def validated(self) -> "Graph":
        """Check every invariant the kernels rely on (one host synchronisation) and stamp the graph; returns it.

        Raises:
            GraphInputError: naming the first broken invariant.
        """
        _raise_first_broken(csr_invariants(self))
        self._set_stamp()
        return self

    def require_unchanged(self) -> None:
        """Raise GraphInputError unless :meth:`is_unchanged` (what eager CUDA calls of the kernels require). A
        program traced by torch.compile or torch.export cannot read version counters: it runs on the graphs it is
        given, which should come from :func:`egno_fast.ops.build_graph` or :meth:`validated`."""
        if torch.compiler.is_compiling():
            return
        if not self.is_unchanged():
            raise GraphInputError("the graph was not built by build_graph or was changed since (its index tensors "
                                  "replaced or edited in place); call graph.validated() to check and use it")


# The Graph is a pytree node (torch.utils._pytree): torch.export takes it as an input, its tensors as the leaves.
# The counts are read back from the tensors' shapes (N = len(rowptr) - 1, B = len(nodes_per_graph)), so an exported
# program keeps them symbolic. A Graph rebuilt from leaves (torch.utils._pytree.tree_map, for one) is unstamped:
# move graphs with Graph.to, which keeps the stamp, or call validated() on the result.
TENSOR_FIELDS = ("rowptr", "sender", "receiver", "edge_perm", "edge_attr", "batch", "sender_perm", "sender_rowptr",
                 "nodes_per_graph")


def _leaf_names(graph: Graph) -> Tuple[str, ...]:
    return TENSOR_FIELDS + (("edge_shift",) if graph.edge_shift is not None else ())


def _graph_leaves(graph: Graph):
    names = _leaf_names(graph)
    return [getattr(graph, name) for name in names], len(names) > len(TENSOR_FIELDS)


def _graph_leaves_with_keys(graph: Graph):
    # keys print as graph['sender']: with attribute keys (graph.sender) torch.export's input checks of fixed shapes
    # confuse a field with another that it prefixes (sender, sender_perm)
    names = _leaf_names(graph)
    return [(pytree.MappingKey(name), getattr(graph, name)) for name in names], len(names) > len(TENSOR_FIELDS)


def _graph_from_leaves(leaves, shifted) -> Graph:  # shifted: the graph has edge shifts (None: an older context)
    tensors = dict(zip(TENSOR_FIELDS + (("edge_shift",) if shifted else ()), leaves))
    return Graph(num_nodes=tensors["rowptr"].shape[0] - 1, num_graphs=tensors["nodes_per_graph"].shape[0], **tensors)


pytree.register_pytree_node(Graph, _graph_leaves, _graph_from_leaves, serialized_type_name="egno_fast.graph.Graph",
                            flatten_with_keys_fn=_graph_leaves_with_keys)
# torch.export.save keeps the example inputs, a Graph among them; torch.export.load reads them with weights_only
torch.serialization.add_safe_globals([Graph])


def _layout_problem(expected: Dict[str, Tuple[Tensor, Tuple[int, ...]]]) -> Optional[str]:
    """name -> (tensor, shape): what is wrong with the first that is not a contiguous int64 tensor of its shape."""
    for name, (value, shape) in expected.items():
        if not isinstance(value, Tensor) or value.dtype != torch.int64 or tuple(value.shape) != shape \
                or not value.is_contiguous():
            got = f"{value.dtype} {list(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            return f"{name} must be a contiguous int64 tensor of shape {list(shape)}, got {got}"
    return None


def _kernel_layout_problem(num_nodes: int, rowptr, sender, receiver, sender_rowptr, sender_perm) -> Optional[str]:
    e = sender.shape[0] if isinstance(sender, Tensor) and sender.dim() == 1 else -1
    return _layout_problem({"rowptr": (rowptr, (num_nodes + 1,)), "sender_rowptr": (sender_rowptr, (num_nodes + 1,)),
                            "sender": (sender, (e,)), "receiver": (receiver, (e,)), "sender_perm": (sender_perm, (e,))})


def _shape_problem(graph: Graph) -> Optional[str]:
    problem = _kernel_layout_problem(graph.num_nodes, graph.rowptr, graph.sender, graph.receiver,
                                     graph.sender_rowptr, graph.sender_perm)
    e = graph.num_edges
    problem = problem or _layout_problem({"edge_perm": (graph.edge_perm, (e,)),
                                          "batch": (graph.batch, (graph.num_nodes,)),
                                          "nodes_per_graph": (graph.nodes_per_graph, (graph.num_graphs,))})
    if problem is None and (graph.edge_attr.dim() != 2 or graph.edge_attr.shape[0] != e):
        problem = f"edge_attr must have shape [E, f] with E = {e}, got {list(graph.edge_attr.shape)}"
    shift = graph.edge_shift
    if problem is None and shift is not None and (not isinstance(shift, Tensor) or tuple(shift.shape) != (e, 3)
                                                  or not shift.is_floating_point()):
        problem = (f"edge_shift must be a floating-point tensor [E, 3] with E = {e}, got "
                   f"{list(shift.shape) if isinstance(shift, Tensor) else type(shift).__name__}")
    return problem


def _is_permutation(perm: Tensor, count: int) -> Tensor:
    in_range = ((perm >= 0) & (perm < count)).all()
    seen = torch.zeros(count, dtype=torch.bool, device=perm.device).index_fill_(0, perm.clamp(0, max(count - 1, 0)),
                                                                                 True)
    return in_range & seen.all()


def kernel_csr_invariants(num_nodes: int, rowptr: Tensor, sender: Tensor, receiver: Tensor, sender_rowptr: Tensor,
                          sender_perm: Tensor) -> List[Tuple[Tensor, str]]:
    """The invariants the fused EGNN kernels rely on, as (0-dim bool tensor, what it says) pairs, computed without a
    host synchronisation: both CSR offsets run from 0 to E without decreasing, indices lie in [0, N), sender_perm is
    a permutation, and every CSR row holds its own edges. Layouts must be checked first (:func:`check_kernel_csr`).

    Args:
        rowptr, sender_rowptr: [N + 1] int64; sender, receiver, sender_perm: [E] int64 (see :class:`Graph`).
    """
    e = sender.shape[0]
    checks = []
    for name, offsets in (("rowptr", rowptr), ("sender_rowptr", sender_rowptr)):
        checks += [(offsets[0] == 0, f"{name}[0] must be 0"), (offsets[-1] == e, f"{name}[N] must be E = {e}"),
                   ((offsets[1:] >= offsets[:-1]).all(), f"{name} must be non-decreasing")]
    for name, index in (("sender", sender), ("receiver", receiver)):
        checks.append((((index >= 0) & (index < num_nodes)).all(), f"{name} indices must lie in [0, {num_nodes})"))
    checks.append((_is_permutation(sender_perm, e), "sender_perm must be a permutation of 0..E-1"))
    edges = torch.arange(e, device=rowptr.device)
    # the node whose CSR range holds each position, for the CSR and its transpose
    owner = torch.searchsorted(rowptr, edges, right=True) - 1
    checks.append(((owner == receiver).all(), "receiver must match rowptr (edges sorted by receiver)"))
    sender_owner = torch.searchsorted(sender_rowptr, edges, right=True) - 1
    sent = sender[sender_perm.clamp(0, max(e - 1, 0))] if e > 0 else sender
    checks.append(((sender_owner == sent).all(), "sender[sender_perm] must match sender_rowptr (the transposed CSR)"))
    return checks


def _raise_first_broken(checks: List[Tuple[Tensor, str]]) -> None:
    results = torch.stack([condition for condition, _ in checks]).tolist()  # one host synchronisation
    for ok, (_, message) in zip(results, checks):
        if not ok:
            raise GraphInputError(f"invalid graph: {message}")


def check_kernel_csr(num_nodes: int, rowptr: Tensor, sender: Tensor, receiver: Tensor, sender_rowptr: Tensor,
                     sender_perm: Tensor) -> None:
    """Check the layouts and :func:`kernel_csr_invariants` with ``torch._assert_async`` (on CPU tensors it raises at
    once, without a Python-side synchronisation); what the Triton operators run on CPU tensors (the interpreter),
    where an index out of range would read outside a tensor.

    Raises:
        GraphInputError: a layout is wrong. RuntimeError "invalid graph: ...": an invariant is broken.
    """
    problem = _kernel_layout_problem(num_nodes, rowptr, sender, receiver, sender_rowptr, sender_perm)
    if problem is not None:
        raise GraphInputError(f"invalid graph: {problem}")
    for condition, message in kernel_csr_invariants(num_nodes, rowptr, sender, receiver, sender_rowptr, sender_perm):
        torch._assert_async(condition, f"invalid graph: {message}")


def csr_invariants(graph: Graph) -> List[Tuple[Tensor, str]]:
    """Every invariant of ``graph``: :func:`kernel_csr_invariants`, edge_perm a permutation, batch ids in range and
    ``nodes_per_graph`` their counts, as (0-dim bool tensor, what it says) pairs computed without a host
    synchronisation. Shapes and dtypes are checked first (metadata only).

    Raises:
        GraphInputError: if a tensor has the wrong shape or dtype.
    """
    problem = _shape_problem(graph)
    if problem is not None:
        raise GraphInputError(f"invalid graph: {problem}")
    checks = kernel_csr_invariants(graph.num_nodes, graph.rowptr, graph.sender, graph.receiver, graph.sender_rowptr,
                                   graph.sender_perm)
    checks.append((_is_permutation(graph.edge_perm, graph.num_edges), "edge_perm must be a permutation of 0..E-1"))
    b = graph.num_graphs
    batch_ok = ((graph.batch >= 0) & (graph.batch < b)).all()
    counts = torch.zeros(b, dtype=torch.int64, device=graph.batch.device).index_add_(
        0, graph.batch.clamp(0, b - 1), torch.ones_like(graph.batch))
    checks += [(batch_ok, f"batch ids must lie in [0, {b})"),
               ((counts == graph.nodes_per_graph).all(), "nodes_per_graph must count the nodes of each graph")]
    return checks


def _fail(message: str) -> None:
    raise GraphInputError(message)


def _check_edge_values(name: str, values: Tensor, edge_index: Tensor, width: Optional[int] = None) -> None:
    """An [E, f] (or [E, width]) finite floating-point tensor on edge_index's device, else GraphInputError."""
    num_edges = edge_index.shape[1]
    if values.dim() != 2 or values.shape[0] != num_edges or (width is not None and values.shape[1] != width):
        _fail(f"{name} must have shape [E, {'f' if width is None else width}] with E = {num_edges}, got "
              f"{list(values.shape)}")
    if not values.is_floating_point():
        _fail(f"{name} must be a floating-point tensor, got {values.dtype}")
    if not bool(torch.isfinite(values).all()):
        _fail(f"{name} contains NaN or infinite values")
    if values.device != edge_index.device:
        _fail(f"{name} is on {values.device} but edge_index on {edge_index.device}")


def validate_graph_inputs(edge_index: Tensor, num_nodes: int, edge_attr: Optional[Tensor],
                          batch: Optional[Tensor], edge_shift: Optional[Tensor] = None) -> None:
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
    if edge_attr is not None:
        _check_edge_values("edge_attr", edge_attr, edge_index)
    if edge_shift is not None:
        _check_edge_values("edge_shift", edge_shift, edge_index, width=3)
    if batch is not None:
        if batch.dim() != 1 or batch.shape[0] != num_nodes:
            _fail(f"batch must have shape [N] with N = {num_nodes}, got {list(batch.shape)}")
        if batch.dtype not in (torch.int32, torch.int64):
            _fail(f"batch must be int64 or int32, got {batch.dtype}")
        if int(batch.min()) < 0:
            _fail("batch contains negative graph ids")
        if int(batch.max()) >= num_nodes:
            _fail(f"batch ids must be below the number of nodes ({num_nodes}: graphs are numbered 0, 1, ...), got "
                  f"{int(batch.max())}")
        if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
            _fail("batch must be sorted (nodes of each graph contiguous, graph ids non-decreasing)")
        if edge_index.numel() > 0 and bool((batch[edge_index[0]] != batch[edge_index[1]]).any()):
            _fail("edge_index connects nodes of different graphs in the batch")


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
    counts = graph.nodes_per_graph.clamp(min=1).to(values.dtype)
    return (sums / counts[:, None])[graph.batch]
