"""The EGNN layer with velocity (EGNO's message-passing block) on P frames that share one graph.

For each edge j -> i and frame, with r = x_i - x_j (+ the edge's periodic shift) and act = options.activation::

    m_ij  = edge_mlp([|r|^2, h_i, h_j, e_ij (, e_ij^t)])            (act after both layers)
    m_ij *= sigmoid(attention(m_ij))                                 (options.attention)
    c_ij  = r_hat * phi_ij,  phi_ij = coord_mlp(m_ij) (tanh'ed: options.tanh), r_hat = r (or r / |r|: normalize)
    x_i  <- x_i + velocity_mlp(h_i) v_i + clamp(mean_j c_ij)        (mean over the edges i receives, degree >= 1)
    h_i  <- node_mlp([h_i, sum_j m_ij])  (+ h_i: options.residual);   v unchanged

The coordinate clamp (options.clamp) bounds each component of the mean to +-clamp_value ("mean", EGNO's), the
mean's norm ("norm"), each component of every c_ij ("edge"), or nothing ("none").

Entry points per backend, all ``(x, v, h, graph, weights, options, edge_shift, frame_edge_attr) ->
EGNNLayerOutput``: "reference" (plain PyTorch, every variant; what ``torch.compile`` traces as the benchmarks'
baseline), "cpp" and "triton": the fused layer, i.e. node projections, the edge half (:mod:`.egnn_edge`) and the
node half (:mod:`.egnn_node`; the Triton layer runs the node half's reference). The fused layer runs EGNO's
variant: SiLU, no residual, no attention, no normalisation, no tanh, with or without a bias on the coordinate
output, and every clamp (the "edge" clamp in the edge half, the others in the node half; any bound); other variants (and dtypes or sizes a kernel does not take) raise "backend X cannot
run 'egnn_layer' ...: not supported ..." when X is named, and "auto" passes them to the next backend, saying so
once in the log "egno_fast" at INFO level. :func:`egnn_layer` dispatches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from ..backends import check_backend_name, get_op, register, resolve_backend
from ..graph import Graph, GraphInputError
from .egnn_edge import (TRITON_MAX_FRAMES, TRITON_MAX_HIDDEN, EGNNEdgeWeights, check_edge_shift, egnn_edge_cpp,
                        egnn_edge_triton)
from .egnn_node import (CLAMP_MODES, COORD_CLAMP, EGNNNodeWeights, clamp_coordinate_update, egnn_node_cpp,
                        egnn_node_reference)
from .weights import ACTIVATIONS, LinearWeights, MLPWeights, mlp

CLAMPS = ("mean", "norm", "edge", "none")


@dataclass(frozen=True)
class EGNNOptions:
    """The layer variant (module docstring); the defaults are EGNO's.

    Attributes:
        activation:  "silu", "relu" or "leaky_relu" (slope 0.2), inside every MLP.
        residual:    h_new = h + node_mlp(...).
        attention:   gate each message by sigmoid(attention(m)) (needs ``EGNNLayerWeights.attention``).
        normalize:   use r / (|r| + eps) in the coordinate messages (|r| detached, as the public EGNN code).
        tanh:        tanh on the coordinate weight phi.
        clamp:       "mean", "norm", "edge" or "none".
        clamp_value: the bound of the clamp.
        eps:         the normalisation's epsilon.
    """

    activation: str = "silu"
    residual: bool = False
    attention: bool = False
    normalize: bool = False
    tanh: bool = False
    clamp: str = "mean"
    clamp_value: float = COORD_CLAMP
    eps: float = 1e-8

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.clamp not in CLAMPS:
            raise ValueError(f"clamp must be one of {CLAMPS}, got {self.clamp!r}")
        if not self.clamp_value > 0:
            raise ValueError(f"clamp_value must be positive, got {self.clamp_value}")


EGNO_OPTIONS = EGNNOptions()


class EGNNLayerWeights(NamedTuple):
    """The layer's weights (H hidden, f edge features, f' per-frame edge features).

    Attributes:
        edge:      [1 + 2H + f (+ f')] -> H -> H, act after both layers.
        coord:     H -> H -> 1 (its output bias may be None).
        velocity:  H -> H -> 1.
        node:      2H -> H -> H.
        attention: H -> 1 (only with ``options.attention``), else None.
    """

    edge: MLPWeights
    coord: MLPWeights
    velocity: MLPWeights
    node: MLPWeights
    attention: Optional[LinearWeights] = None


class EGNNLayerOutput(NamedTuple):
    """x [N, P, 3], v [N, P, 3] (unchanged), h [N, P, H]."""

    x: Tensor
    v: Tensor
    h: Tensor


def _check_edge_inputs(graph: Graph, x: Tensor, edge_shift: Optional[Tensor],
                       frame_edge_attr: Optional[Tensor]) -> None:
    check_edge_shift(edge_shift, graph, x)
    num_frames = x.shape[1]
    if frame_edge_attr is not None and (frame_edge_attr.dim() != 3 or frame_edge_attr.shape[:2] != (
            graph.num_edges, num_frames)):
        raise GraphInputError(f"frame_edge_attr must have shape [E, P, f'] with E = {graph.num_edges}, "
                              f"P = {num_frames}, got {list(frame_edge_attr.shape)}")


def egnn_layer_reference(x: Tensor, v: Tensor, h: Tensor, graph: Graph, weights: EGNNLayerWeights,
                         options: EGNNOptions = EGNO_OPTIONS, edge_shift: Optional[Tensor] = None,
                         frame_edge_attr: Optional[Tensor] = None) -> EGNNLayerOutput:
    """One EGNN layer (module docstring) in plain PyTorch, every variant.

    Args:
        x, v:   [N, P, 3] positions and velocities.
        h:      [N, P, H] invariant features.
        graph:  receiver-sorted graph; its ``edge_attr`` [E, f] is shared by all frames.
        weights: :class:`EGNNLayerWeights`.
        options: :class:`EGNNOptions`.
        edge_shift:      [E, 3] added to x_i - x_j of each edge (periodic images), graph order; or None. A constant:
                         no gradient flows into it.
        frame_edge_attr: [E, P, f'] per-frame edge features, graph order; or None.
    Returns:
        :class:`EGNNLayerOutput`.
    """
    _check_edge_inputs(graph, x, edge_shift, frame_edge_attr)
    receiver, sender = graph.receiver, graph.sender
    num_frames, act = x.shape[1], options.activation
    rel = x.index_select(0, receiver) - x.index_select(0, sender)  # [E, P, 3]
    if edge_shift is not None:
        rel = rel + edge_shift.detach().to(x.dtype)[:, None, :]
    dist2 = (rel * rel).sum(dim=-1, keepdim=True)  # [E, P, 1]
    features = [dist2, h.index_select(0, receiver), h.index_select(0, sender),
                graph.edge_attr.to(h.dtype)[:, None, :].expand(-1, num_frames, -1)]
    if frame_edge_attr is not None:
        features.append(frame_edge_attr.to(h.dtype))
    message = mlp(torch.cat(features, dim=-1), weights.edge, act, last_activation=True)  # [E, P, H]
    if options.attention:
        if weights.attention is None:
            raise ValueError("options.attention needs EGNNLayerWeights.attention (Linear H -> 1)")
        message = message * torch.sigmoid(F.linear(message, *weights.attention))
    # the norm is detached, as in the public EGNN code (its gradient is infinite at r = 0: self loops)
    direction = rel / (dist2.sqrt().detach() + options.eps) if options.normalize else rel
    phi = mlp(message, weights.coord, act)  # [E, P, 1]
    coord_message = direction * (torch.tanh(phi) if options.tanh else phi)  # [E, P, 3]
    bound = options.clamp_value
    if options.clamp == "edge":
        coord_message = coord_message.clamp(-bound, bound)
    degree = graph.in_degree.clamp(min=1).to(x.dtype)[:, None, None]
    coord_update = torch.zeros_like(x).index_add_(0, receiver, coord_message) / degree
    if options.clamp in CLAMP_MODES:  # the node half's clamps (the "edge" clamp acted above)
        coord_update = clamp_coordinate_update(coord_update, options.clamp, bound)
    x_new = x + mlp(h, weights.velocity, act) * v + coord_update
    message_sum = h.new_zeros(h.shape[0], num_frames, message.shape[-1]).index_add_(0, receiver, message)
    h_new = mlp(torch.cat([h, message_sum], dim=-1), weights.node, act)
    return EGNNLayerOutput(x_new, v, h + h_new if options.residual else h_new)


# ---------------------------------------------------------------------------------------------------------------------
# The fused layer ("cpp", "triton"): node projections, then the edge half and the node half
# ---------------------------------------------------------------------------------------------------------------------
def fused_unsupported(options: EGNNOptions, edge_shift: Optional[Tensor] = None,
                      frame_edge_attr: Optional[Tensor] = None,
                      weights: Optional[EGNNLayerWeights] = None) -> Optional[str]:
    """Why the fused layer cannot run this variant (None: it can)."""
    different = [name for name in ("activation", "residual", "attention", "normalize", "tanh")
                 if getattr(options, name) != getattr(EGNO_OPTIONS, name)]
    if different:
        return f"the fused EGNN layer runs EGNO's variant (any clamp); not supported: options {', '.join(different)}"
    if frame_edge_attr is not None:
        return "the fused EGNN layer does not support frame_edge_attr (per-frame edge features) yet"
    if weights is not None:
        biases = (weights.edge.first, weights.edge.second, weights.coord.first, weights.velocity.first,
                  weights.velocity.second, weights.node.first, weights.node.second)
        if any(linear.bias is None for linear in biases):
            return "the fused EGNN layer needs biases in every linear layer but the coordinate output"
    return None


def _split_weights(h: Tensor, graph: Graph, weights: EGNNLayerWeights, weight_dtype: torch.dtype):
    """(a, b [N, P, H] node projections, EGNNEdgeWeights, EGNNNodeWeights) of the split first edge layer."""
    hidden, num_features = h.shape[-1], graph.edge_attr.shape[1]
    first = weights.edge.first
    if tuple(first.weight.shape) != (hidden, 1 + 2 * hidden + num_features):
        raise ValueError(f"the edge MLP's first layer is {list(first.weight.shape)}, expected [H, 1 + 2H + f] = "
                         f"[{hidden}, {1 + 2 * hidden + num_features}] (H = {hidden}, f = {num_features})")
    w1 = first.weight
    a = F.linear(h, w1[:, 1:1 + hidden], first.bias).contiguous()
    b = F.linear(h, w1[:, 1 + hidden:1 + 2 * hidden]).contiguous()
    coord_out = weights.coord.second
    coord_bias = coord_out.bias if coord_out.bias is not None else coord_out.weight.new_zeros(1)
    edge = EGNNEdgeWeights(w1[:, 0], w1[:, 1 + 2 * hidden:], weights.edge.second.weight, weights.edge.second.bias,
                           weights.coord.first.weight, weights.coord.first.bias, coord_out.weight.reshape(-1),
                           coord_bias)
    velocity, node = weights.velocity, weights.node
    node_weights = EGNNNodeWeights(velocity.first.weight, velocity.first.bias, velocity.second.weight.reshape(-1),
                                   velocity.second.bias, node.first.weight, node.first.bias, node.second.weight,
                                   node.second.bias)
    return (a, b, EGNNEdgeWeights(*(w.to(weight_dtype).contiguous() for w in edge)), node_weights)


def _fused_layer(x, v, h, graph, weights, options, edge_shift, frame_edge_attr, edge_half, node_half,
                 weight_dtype: torch.dtype) -> EGNNLayerOutput:
    reason = fused_unsupported(options, edge_shift, frame_edge_attr, weights)
    if reason is not None:
        raise ValueError(reason)
    a, b, edge_weights, node_weights = _split_weights(h, graph, weights, weight_dtype)
    clamp_edges = options.clamp == "edge"
    sums = edge_half(a, b, x.contiguous(), graph.edge_attr.to(h.dtype).contiguous(), graph, edge_weights,
                     options.clamp_value if clamp_edges else None, edge_shift)
    degree = graph.in_degree.clamp(min=1).to(x.dtype)
    x_new, h_new = node_half(x, v, h, sums, degree, node_weights, "none" if clamp_edges else options.clamp,
                             options.clamp_value)
    # under bf16 autocast the node half's last linear layer gives bf16: the layer's outputs keep the inputs' dtypes
    return EGNNLayerOutput(x_new.to(x.dtype), v, h_new.to(h.dtype))


def _cpp_dtype_problem(h: Tensor) -> Optional[str]:
    if h.dtype in (torch.float32, torch.float64):
        return None
    return f"the cpp EGNN layer runs float32 or float64, got {h.dtype}"


def egnn_layer_cpp(x: Tensor, v: Tensor, h: Tensor, graph: Graph, weights: EGNNLayerWeights,
                   options: EGNNOptions = EGNO_OPTIONS, edge_shift: Optional[Tensor] = None,
                   frame_edge_attr: Optional[Tensor] = None) -> EGNNLayerOutput:
    """The fused layer on CPU tensors (float32 or float64): csrc/cpu/egnn_edge_cpu.cpp and egnn_node_cpu.cpp;
    contract of :func:`egnn_layer_reference` (EGNO's variant)."""
    problem = _cpp_dtype_problem(h)
    if problem is not None:
        raise TypeError(problem)
    if x.dtype != h.dtype:
        raise TypeError(f"x ({x.dtype}) and h ({h.dtype}) must share a dtype")
    return _fused_layer(x, v, h, graph, weights, options, edge_shift, frame_edge_attr, egnn_edge_cpp,
                        egnn_node_cpp, h.dtype)


def egnn_layer_triton(x: Tensor, v: Tensor, h: Tensor, graph: Graph, weights: EGNNLayerWeights,
                      options: EGNNOptions = EGNO_OPTIONS, edge_shift: Optional[Tensor] = None,
                      frame_edge_attr: Optional[Tensor] = None) -> EGNNLayerOutput:
    """The fused layer with the Triton edge kernel (x, v, h fp32 or fp64; bf16/fp16 on GPU; 1 <= P <= 64,
    H <= 128; any f >= 0); the node half runs in PyTorch. Contract of :func:`egnn_layer_reference` (EGNO's
    variant)."""
    weight_dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    return _fused_layer(x, v, h, graph, weights, options, edge_shift, frame_edge_attr, egnn_edge_triton,
                        egnn_node_reference, weight_dtype)


def _cpp_unsupported(options: EGNNOptions, edge_shift=None, frame_edge_attr=None, weights=None,
                     h: Optional[Tensor] = None) -> Optional[str]:
    reason = fused_unsupported(options, edge_shift, frame_edge_attr, weights)
    return reason if reason is not None or h is None else _cpp_dtype_problem(h)


def _triton_unsupported(options: EGNNOptions, edge_shift=None, frame_edge_attr=None, weights=None,
                        h: Optional[Tensor] = None) -> Optional[str]:
    reason = fused_unsupported(options, edge_shift, frame_edge_attr, weights)
    if reason is None and h is not None and not (1 <= h.shape[1] <= TRITON_MAX_FRAMES and h.shape[2] <=
                                                 TRITON_MAX_HIDDEN):
        reason = (f"the Triton EGNN layer runs 1 <= P <= {TRITON_MAX_FRAMES} frames and H <= {TRITON_MAX_HIDDEN}, "
                  f"got P = {h.shape[1]}, H = {h.shape[2]}")
    return reason


register("egnn_layer", "reference", egnn_layer_reference)
register("egnn_layer", "cpp", egnn_layer_cpp, devices=("cpu",), unsupported=_cpp_unsupported, autocast=False)
register("egnn_layer", "triton", egnn_layer_triton, unsupported=_triton_unsupported)


def egnn_layer(x: Tensor, v: Tensor, h: Tensor, graph: Graph, weights: EGNNLayerWeights,
               options: EGNNOptions = EGNO_OPTIONS, edge_shift: Optional[Tensor] = None,
               frame_edge_attr: Optional[Tensor] = None, backend: str = "auto") -> EGNNLayerOutput:
    """One EGNN layer on ``backend`` ("reference", "triton", "cpp" or "auto"); arguments and result as
    :func:`egnn_layer_reference`. On CUDA the graph must be unchanged since it was validated."""
    if x.device.type == "cuda":
        graph.require_unchanged()
    chosen = resolve_backend(check_backend_name(backend), x.device, "egnn_layer", options=options,
                             edge_shift=edge_shift, frame_edge_attr=frame_edge_attr, weights=weights, h=h)
    return get_op("egnn_layer", chosen)(x, v, h, graph, weights, options, edge_shift, frame_edge_attr)
