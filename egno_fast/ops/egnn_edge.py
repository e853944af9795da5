"""The EGNN layer's edge half: per receiver, the sums of its incoming messages and coordinate messages.

With the first edge layer split into node projections (docs/design.md §4.3: ``A = h W_a^T + b_1`` and
``B = h W_b^T``, computed once per node by the layer), for every edge j -> i and frame::

    z1 = A_i + B_j + |r|^2 w_dist + e_ij W_edge^T          r = x_i - x_j (+ s_ij: edge_shift, periodic images)
    m  = silu(silu(z1) W_msg^T + b_msg)
    phi = silu(m W_coord_hidden^T + b_coord_hidden) . w_coord_out + b_coord_out
    msg_sum_i = sum_j m,    coord_sum_i = sum_j c,    c = r phi, each component clamped to +-edge_clamp if given

(the EGNN layer's "edge" clamp). Entry points per backend, all ``(a, b, x, edge_attr, graph, weights, edge_clamp,
edge_shift) -> EdgeSums``: "reference" (plain PyTorch,
below), "cpp" (the operator ``egno_fast::egnn_edge_forward`` of csrc/cpu/egnn_edge_cpu.cpp; its autograd and fake
kernels below), "triton" (the operator ``egno_fast::triton_egnn_edge_forward``, registered with its kernel, fake
kernel and autograd in kernels/egnn_edge.py). :func:`egnn_edge_sums` dispatches. The weights' field names are the
C++ schema's argument names (a test checks).
"""
from __future__ import annotations

import logging
import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from ..backends import check_backend_name, get_op, register, resolve_backend
from ..graph import Graph, GraphInputError

logger = logging.getLogger("egno_fast")
TRITON_MAX_FRAMES = 64  # what the Triton kernel's block table covers (kernels/egnn_edge.py)
TRITON_MAX_HIDDEN = 128


class EGNNEdgeWeights(NamedTuple):
    """The edge and coordinate MLPs' weights as the edge half takes them (H hidden, f edge features)."""

    w_dist: Tensor  # [H]     the first edge layer's column for |r|^2
    w_edge: Tensor  # [H, f]  its columns for the edge features
    w_msg: Tensor  # [H, H]   the edge MLP's second layer
    b_msg: Tensor  # [H]
    w_coord_hidden: Tensor  # [H, H] the coordinate MLP's first layer
    b_coord_hidden: Tensor  # [H]
    w_coord_out: Tensor  # [H]  its output layer (one output)
    b_coord_out: Tensor  # [1]


class EdgeSums(NamedTuple):
    """msg_sum [N, P, H] and coord_sum [N, P, 3]: per receiver and frame, the sums over its incoming edges."""

    msg_sum: Tensor
    coord_sum: Tensor


def check_edge_clamp(edge_clamp: Optional[float]) -> None:
    """ValueError unless ``edge_clamp`` is None or a positive number."""
    if edge_clamp is not None and not edge_clamp > 0:
        raise ValueError(f"edge_clamp must be a positive number or None, got {edge_clamp!r}")


def check_edge_shift(edge_shift: Optional[Tensor], graph: Graph, x: Tensor) -> None:
    """GraphInputError unless ``edge_shift`` is None or an [E, 3] floating-point tensor on x's device."""
    if edge_shift is None:
        return
    if tuple(edge_shift.shape) != (graph.num_edges, 3) or not edge_shift.is_floating_point():
        raise GraphInputError(f"edge_shift must be a floating-point tensor [E, 3] = [{graph.num_edges}, 3], got "
                              f"{edge_shift.dtype} {list(edge_shift.shape)}")
    if edge_shift.device != x.device:
        raise GraphInputError(f"edge_shift is on {edge_shift.device}, the positions on {x.device}")


def egnn_edge_reference(a: Tensor, b: Tensor, x: Tensor, edge_attr: Tensor, graph: Graph,
                        weights: EGNNEdgeWeights, edge_clamp: Optional[float] = None,
                        edge_shift: Optional[Tensor] = None) -> EdgeSums:
    """The edge half in plain PyTorch (module docstring).

    Args:
        a, b:      [N, P, H] the node projections (receiver and sender halves of the first edge layer).
        x:         [N, P, 3] positions.
        edge_attr: [E, f] edge features in the graph's (receiver-sorted) order.
        graph:     the receiver-sorted CSR.
        weights:   :class:`EGNNEdgeWeights`.
        edge_clamp: the bound of each component of every coordinate message r phi, or None (no clamp).
        edge_shift: [E, 3] added to r of each edge (graph order) in every frame, or None; no gradient flows into it.
    Returns:
        :class:`EdgeSums`.
    """
    check_edge_clamp(edge_clamp)
    check_edge_shift(edge_shift, graph, x)
    receiver, sender = graph.receiver, graph.sender
    rel = x.index_select(0, receiver) - x.index_select(0, sender)  # [E, P, 3]
    if edge_shift is not None:
        rel = rel + edge_shift.detach().to(x.dtype)[:, None, :]
    dist2 = (rel * rel).sum(-1, keepdim=True)
    z1 = a.index_select(0, receiver) + b.index_select(0, sender) + dist2 * weights.w_dist \
        + F.linear(edge_attr, weights.w_edge)[:, None, :]
    message = F.silu(F.linear(F.silu(z1), weights.w_msg, weights.b_msg))  # [E, P, H]
    phi = F.linear(F.silu(F.linear(message, weights.w_coord_hidden, weights.b_coord_hidden)),
                   weights.w_coord_out[None], weights.b_coord_out)  # [E, P, 1]
    coord_message = rel * phi  # [E, P, 3]
    if edge_clamp is not None:
        coord_message = coord_message.clamp(-edge_clamp, edge_clamp)
    msg_sum = torch.zeros_like(a).index_add_(0, receiver, message)
    coord_sum = torch.zeros_like(x).index_add_(0, receiver, coord_message)
    return EdgeSums(msg_sum, coord_sum)


# ---------------------------------------------------------------------------------------------------------------------
# "cpp": the extension's egnn_edge_forward / _backward
# ---------------------------------------------------------------------------------------------------------------------
# The forward stores 6 x E x P x H activations a layer for its backward while they fit this budget, and above it
# the backward recomputes them tile by tile (a third more matrix work, identical results; egnn_edge_cpu.cpp).
STORE_BUDGET_ENV = "EGNO_FAST_CPU_STORE_MB"
DEFAULT_STORE_BUDGET_MB = 2048


def store_budget_bytes() -> int:
    """The per-layer budget for the edge op's stored activations: $EGNO_FAST_CPU_STORE_MB megabytes (default
    2048; 0 always recomputes)."""
    value = os.environ.get(STORE_BUDGET_ENV, str(DEFAULT_STORE_BUDGET_MB))
    try:
        megabytes = float(value)
    except ValueError:
        raise ValueError(f"{STORE_BUDGET_ENV} must be a number of megabytes, got {value!r}") from None
    if megabytes < 0:
        raise ValueError(f"{STORE_BUDGET_ENV} must be >= 0, got {value!r}")
    return int(megabytes * 2**20)


GRAPH_INPUTS = ("rowptr", "sender", "receiver", "sender_rowptr", "sender_perm")  # the graph's tensors the ops take
_NUM_WEIGHTS = len(EGNNEdgeWeights._fields)


def _forward_fake(a, b, x, edge_attr, w_dist, w_edge, w_msg, b_msg, w_coord_hidden, b_coord_hidden, w_coord_out,
                  b_coord_out, rowptr, sender, receiver, sender_rowptr, sender_perm, store_activations,
                  edge_clamp=None, edge_shift=None):
    stored = 6 if store_activations else 0
    return a.new_empty(a.shape), x.new_empty(x.shape), a.new_empty((stored, sender.shape[0], a.shape[1], a.shape[2]))


def _backward_fake(g_msg, g_coord, activations, a, b, x, edge_attr, *args):
    weights = args[:_NUM_WEIGHTS]
    return [a.new_empty(a.shape), a.new_empty(a.shape), x.new_empty(x.shape), edge_attr.new_empty(edge_attr.shape),
            *(w.new_empty(w.shape) for w in weights)]


def _setup_context(ctx, inputs, output):
    a, b, x, edge_attr, *rest = inputs
    weights, graph = rest[:_NUM_WEIGHTS], rest[_NUM_WEIGHTS:_NUM_WEIGHTS + len(GRAPH_INPUTS)]
    edge_clamp, edge_shift = rest[-2:]  # the inputs are every schema argument, defaults filled in
    ctx.save_for_backward(output[2], a, b, x, edge_attr, *weights, *graph, edge_shift)
    ctx.edge_clamp = edge_clamp
    ctx.mark_non_differentiable(output[2])  # the stored activations [6, E, P, H]: no gradient flows into them
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (handled below), not a zeros tensor


def _backward(ctx, g_msg, g_coord, _g_activations):
    activations, a, b, x, edge_attr, *rest, edge_shift = ctx.saved_tensors
    weights, graph = EGNNEdgeWeights(*rest[:_NUM_WEIGHTS]), dict(zip(GRAPH_INPUTS, rest[_NUM_WEIGHTS:]))
    g_msg = torch.zeros_like(a) if g_msg is None else g_msg
    g_coord = torch.zeros_like(x) if g_coord is None else g_coord
    g_a, g_b, g_x, g_edge_attr, *g_weights = torch.ops.egno_fast.egnn_edge_backward(
        g_msg, g_coord, activations, a, b, x, edge_attr, **weights._asdict(), **graph, edge_clamp=ctx.edge_clamp,
        edge_shift=edge_shift)
    return (g_a, g_b, g_x, g_edge_attr, *g_weights, *([None] * len(GRAPH_INPUTS)), None, None, None)


# Registered by :mod:`egno_fast.cpp` once the extension's operators exist: their fake (meta) kernels, so they trace
# under torch.compile and export, and the forward operator's autograd, (backward, setup_context) for
# ``torch.library.register_autograd``. With ``store_activations`` the forward keeps the three SiLUs' values and
# derivatives [6, E, P, H] for the backward, otherwise the backward recomputes them (egnn_edge_cpu.cpp); the C++
# operators check the CSR.
FAKE_KERNELS = {"egno_fast::egnn_edge_forward": _forward_fake, "egno_fast::egnn_edge_backward": _backward_fake}
AUTOGRAD = {"egno_fast::egnn_edge_forward": (_backward, _setup_context)}


_last_store_mode = {"store": True}


def _store_activations(a: Tensor, graph: Graph, inputs) -> bool:
    """Whether the cpp forward keeps its activations (a gradient is needed and they fit the budget); a change is
    logged."""
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs)):
        return False
    stored_bytes = 6 * graph.num_edges * a.shape[1] * a.shape[2] * a.element_size()
    budget = store_budget_bytes()
    store = True if stored_bytes <= budget else False  # noqa: SIM210 (a branch: a guard under torch.compile)
    if store != _last_store_mode["store"] and not torch.compiler.is_compiling():
        logger.info("cpp EGNN layer: %s its activations for the backward (%.0f MB a layer; %s = %d MB)",
                    "stores" if store else "recomputes", stored_bytes / 2**20, STORE_BUDGET_ENV, budget // 2**20)
        _last_store_mode["store"] = store
    return store


def _graph_inputs(graph: Graph) -> dict:
    return {name: getattr(graph, name) for name in GRAPH_INPUTS}


def egnn_edge_cpp(a: Tensor, b: Tensor, x: Tensor, edge_attr: Tensor, graph: Graph,
                  weights: EGNNEdgeWeights, edge_clamp: Optional[float] = None,
                  edge_shift: Optional[Tensor] = None) -> EdgeSums:
    """The edge half on CPU tensors (float32 or float64), the registered operator ``egno_fast::egnn_edge_forward``;
    contract of :func:`egnn_edge_reference`."""
    check_edge_clamp(edge_clamp)
    check_edge_shift(edge_shift, graph, x)
    weights = EGNNEdgeWeights(*(w.to(a.dtype) for w in weights))
    store = _store_activations(a, graph, (a, b, x, edge_attr, *weights))
    msg_sum, coord_sum, _ = torch.ops.egno_fast.egnn_edge_forward(
        a, b, x, edge_attr, **weights._asdict(), **_graph_inputs(graph), store_activations=store,
        edge_clamp=None if edge_clamp is None else float(edge_clamp),
        edge_shift=None if edge_shift is None else edge_shift.detach().to(a.dtype))
    return EdgeSums(msg_sum, coord_sum)


# ---------------------------------------------------------------------------------------------------------------------
# "triton": kernels/egnn_edge.py
# ---------------------------------------------------------------------------------------------------------------------
def check_edge_shapes(a: Tensor, b: Tensor, x: Tensor, edge_attr: Tensor, weights: EGNNEdgeWeights, num_nodes: int,
                      num_edges: int) -> None:
    """The shapes the Triton kernel assumes (metadata only), checked by its operators: ValueError naming the first
    that differs."""
    if a.dim() != 3 or edge_attr.dim() != 2:
        raise ValueError(f"egnn_edge: a must be [N, P, H] and edge_attr [E, f], got {list(a.shape)} and "
                         f"{list(edge_attr.shape)}")
    n, p, hidden = a.shape
    f = edge_attr.shape[-1]
    expected = dict(b=(n, p, hidden), x=(n, p, 3), edge_attr=(num_edges, f), w_dist=(hidden,),
                    w_edge=(hidden, f), w_msg=(hidden, hidden), b_msg=(hidden,), w_coord_hidden=(hidden, hidden),
                    b_coord_hidden=(hidden,), w_coord_out=(hidden,), b_coord_out=(1,))
    given = dict(b=b, x=x, edge_attr=edge_attr, **EGNNEdgeWeights(*weights)._asdict())
    for name, shape in expected.items():
        if tuple(given[name].shape) != shape:
            raise ValueError(f"egnn_edge: {name} must have shape {list(shape)}, got {list(given[name].shape)}")
    if n != num_nodes:
        raise ValueError(f"egnn_edge: a has {n} rows but the graph {num_nodes} nodes")


def egnn_edge_triton(a: Tensor, b: Tensor, x: Tensor, edge_attr: Tensor, graph: Graph,
                     weights: EGNNEdgeWeights, edge_clamp: Optional[float] = None,
                     edge_shift: Optional[Tensor] = None) -> EdgeSums:
    """The edge half with the Triton kernel (fp32, fp64; bf16/fp16 on GPU; 1 <= P <= 64, H <= 128), the registered
    operator ``egno_fast::triton_egnn_edge_forward``; contract of :func:`egnn_edge_reference`. The operators check
    the shapes (:func:`check_edge_shapes`) and, on CPU tensors (the interpreter), the graph's CSR invariants before
    their kernels run."""
    from ..kernels.egnn_edge import atomic_backward_enabled, forward_op

    check_edge_clamp(edge_clamp)
    check_edge_shift(edge_shift, graph, x)
    if torch.are_deterministic_algorithms_enabled() and atomic_backward_enabled():
        raise RuntimeError("the atomic EGNN backward is on (use_atomic_backward(True)) while "
                           "torch.use_deterministic_algorithms(True) asks for deterministic results")
    msg_sum, coord_sum = forward_op(a, b, x, edge_attr, *weights, **_graph_inputs(graph),
                                    atomic_backward=atomic_backward_enabled(),
                                    edge_clamp=None if edge_clamp is None else float(edge_clamp),
                                    edge_shift=None if edge_shift is None else edge_shift.detach().to(x.dtype))
    return EdgeSums(msg_sum, coord_sum)


register("egnn_edge", "reference", egnn_edge_reference)
register("egnn_edge", "cpp", egnn_edge_cpp, devices=("cpu",))
register("egnn_edge", "triton", egnn_edge_triton)


def egnn_edge_sums(a: Tensor, b: Tensor, x: Tensor, edge_attr: Tensor, graph: Graph, weights: EGNNEdgeWeights,
                   backend: str = "auto", *, edge_clamp: Optional[float] = None,
                   edge_shift: Optional[Tensor] = None) -> EdgeSums:
    """The edge half on ``backend`` ("reference", "triton", "cpp" or "auto"); contract of
    :func:`egnn_edge_reference`. On CUDA the graph must be unchanged since it was validated."""
    if x.device.type == "cuda":
        graph.require_unchanged()
    chosen = resolve_backend(check_backend_name(backend), x.device, "egnn_edge")
    return get_op("egnn_edge", chosen)(a, b, x, edge_attr, graph, weights, edge_clamp, edge_shift)
