"""Fused EGNN layer on the CPU: the edge half (csrc/cpu/egnn_cpu.cpp, over the receiver-sorted CSR) and the node half
(csrc/cpu/egnn_node_cpu.cpp), forward and backward."""
from __future__ import annotations

import logging
import os
from typing import List, Tuple

import torch
from torch import Tensor

from ..graph import Graph
from ..split_egnn import mlp_linears, split_egnn_layer

_ops = torch.ops.egno_fast
logger = logging.getLogger("egno_fast")

# The edge op stores 6 x E x P x H activations a layer for its backward while they fit this budget, and above it
# recomputes them tile by tile in the backward (a third more matrix work, identical results; csrc/cpu/egnn_cpu.cpp).
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


@torch.library.register_fake("egno_fast::egnn_edge_forward")
def _forward_fake(a, b, x, edge_attr, wd, we, w2, b2, wc1, bc1, wc2, bc2, rowptr, sender, receiver,
                  store_activations):
    stored = 6 if store_activations else 0
    return (torch.empty_like(a), torch.empty_like(x),
            a.new_empty((stored, sender.shape[0], a.shape[1], a.shape[2])))


@torch.library.register_fake("egno_fast::egnn_edge_backward")
def _backward_fake(g_msg, g_coord, activations, a, b, x, edge_attr, wd, we, w2, b2, wc1, bc1, wc2, bc2, rowptr,
                   sender, receiver, sender_rowptr, sender_perm):
    return [torch.empty_like(g_msg), torch.empty_like(g_msg), torch.empty_like(x), torch.empty_like(edge_attr),
            *(torch.empty_like(w) for w in (wd, we, w2, b2, wc1, bc1, wc2, bc2))]


@torch.library.register_fake("egno_fast::egnn_node_forward")
def _node_forward_fake(h, msg_sum, coord_sum, x, v, degree, wv1, bv1, wv2, bv2, wn1, bn1, wn2, bn2):
    return torch.empty_like(x), torch.empty_like(h), h.new_empty((4, h.shape[0] * h.shape[1], h.shape[2]))


@torch.library.register_fake("egno_fast::egnn_node_backward")
def _node_backward_fake(g_x_new, g_h_new, activations, h, msg_sum, coord_sum, v, degree, wv1, bv1, wv2, bv2, wn1, bn1,
                        wn2, bn2):
    return [torch.empty_like(h), torch.empty_like(h), torch.empty_like(v), torch.empty_like(v),
            *(torch.empty_like(w) for w in (wv1, bv1, wv2, bv2, wn1, bn1, wn2, bn2))]


class EGNNEdgeCppFunction(torch.autograd.Function):
    """(A, B, x, e, w_d, W_e, W2, b2, Wc1, bc1, w_c2, b_c2) -> (msg_sum [N,P,H], coord_sum [N,P,3]) over the graph's
    edges; with ``store`` the forward keeps the three SiLUs' values and derivatives [6, E, P, H] for the backward,
    otherwise the backward recomputes them (see egnn_cpu.cpp)."""

    @staticmethod
    def forward(ctx, a, b, x, edge_attr, wd, we, w2, b2, wc1, bc1, wc2, bc2, graph: Graph, store: bool):
        msg_sum, coord_sum, activations = _ops.egnn_edge_forward(a, b, x, edge_attr, wd, we, w2, b2, wc1, bc1, wc2,
                                                                 bc2, graph.rowptr, graph.sender, graph.receiver,
                                                                 store)
        ctx.save_for_backward(activations, a, b, x, edge_attr, wd, we, w2, b2, wc1, bc1, wc2, bc2)
        ctx.graph = graph
        return msg_sum, coord_sum

    @staticmethod
    def backward(ctx, g_msg, g_coord):
        activations, a, b, x, edge_attr, *weights = ctx.saved_tensors
        graph = ctx.graph
        if g_msg is None:
            g_msg = x.new_zeros(x.shape[0], x.shape[1], activations.shape[-1])
        if g_coord is None:
            g_coord = torch.zeros_like(x)
        grads = _ops.egnn_edge_backward(g_msg, g_coord, activations, a, b, x, edge_attr, *weights, graph.rowptr,
                                        graph.sender, graph.receiver, graph.sender_rowptr, graph.sender_perm)
        return (*grads, None, None)


class EGNNNodeCppFunction(torch.autograd.Function):
    """(h, msg_sum, coord_sum, x, v, degree, W_v1, b_v1, w_v2, b_v2, W_n1, b_n1, W_n2, b_n2) -> (x_new [N,P,3],
    h_new [N,P,H]); the forward stores the two SiLUs' values and derivatives [4, N P, H] (see egnn_node_cpu.cpp)."""

    @staticmethod
    def forward(ctx, h, msg_sum, coord_sum, x, v, degree, *weights):
        x_new, h_new, activations = _ops.egnn_node_forward(h, msg_sum, coord_sum, x, v, degree, *weights)
        ctx.save_for_backward(activations, h, msg_sum, coord_sum, v, degree, *weights)
        return x_new, h_new

    @staticmethod
    def backward(ctx, g_x, g_h):
        activations, h, msg_sum, coord_sum, v, degree, *weights = ctx.saved_tensors
        g_x = torch.zeros_like(v) if g_x is None else g_x
        g_h = torch.zeros_like(h) if g_h is None else g_h
        g_h_in, g_msg, g_coord, g_v, *g_weights = _ops.egnn_node_backward(g_x, g_h, activations, h, msg_sum,
                                                                          coord_sum, v, degree, *weights)
        return (g_h_in, g_msg, g_coord, g_x, g_v, None, *g_weights)


_last_store_mode = {"store": True}


def _edge_sums(a: Tensor, b: Tensor, x: Tensor, edge_attr: Tensor, weights: List[Tensor],
               graph: Graph) -> Tuple[Tensor, Tensor]:
    store = False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (a, b, x, edge_attr, *weights)):
        stored_bytes = 6 * graph.num_edges * a.shape[1] * a.shape[2] * a.element_size()
        budget = store_budget_bytes()
        store = stored_bytes <= budget
        if store != _last_store_mode["store"]:
            logger.info("cpp EGNN layer: %s its activations for the backward (%.0f MB a layer; %s = %d MB)",
                        "stores" if store else "recomputes", stored_bytes / 2**20, STORE_BUDGET_ENV, budget // 2**20)
            _last_store_mode["store"] = store
    return EGNNEdgeCppFunction.apply(a, b, x, edge_attr, *weights, graph, store)


def _node_update(x: Tensor, v: Tensor, h: Tensor, msg_sum: Tensor, coord_sum: Tensor, degree: Tensor, velocity_mlp,
                 node_mlp) -> Tuple[Tensor, Tensor]:
    """The node half in one fused op; same contract as :func:`egno_fast.split_egnn.node_update_torch`."""
    vel_hidden, vel_out = mlp_linears(velocity_mlp, "velocity_mlp", 1)
    node_hidden, node_out = mlp_linears(node_mlp, "node_mlp", 1)
    hidden = h.shape[-1]
    if (vel_hidden.in_features, vel_hidden.out_features, vel_out.out_features) != (hidden, hidden, 1) or \
            (node_hidden.in_features, node_hidden.out_features, node_out.out_features) != (2 * hidden, hidden, hidden):
        raise ValueError(f"velocity_mlp must map H -> H -> 1 and node_mlp 2H -> H -> H with H = {hidden}; got "
                         f"{velocity_mlp!r} and {node_mlp!r}")
    weights = (vel_hidden.weight, vel_hidden.bias, vel_out.weight.reshape(-1), vel_out.bias, node_hidden.weight,
               node_hidden.bias, node_out.weight, node_out.bias)
    weights = [w.to(h.dtype).contiguous() for w in weights]
    return EGNNNodeCppFunction.apply(h.contiguous(), msg_sum, coord_sum, x.contiguous(), v.contiguous(), degree,
                                     *weights)


def egnn_layer_cpp(x: Tensor, v: Tensor, h: Tensor, graph: Graph, edge_mlp, coord_mlp, velocity_mlp,
                   node_mlp) -> Tuple[Tensor, Tensor, Tensor]:
    """Fused EGNN layer on CPU tensors; same contract and parameters as
    :func:`egno_fast.reference.egnn.egnn_layer_reference`.

    Args:
        x, v: [N, P, 3]; h: [N, P, H] (float32 or float64); graph: receiver-sorted CSR, edge_attr [E, f].
    Returns:
        (x, v, h) updated.
    """
    if h.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the cpp EGNN layer runs float32 or float64, got {h.dtype}")
    if x.dtype != h.dtype:
        raise TypeError(f"x ({x.dtype}) and h ({h.dtype}) must share a dtype")
    return split_egnn_layer(x, v, h, graph, edge_mlp, coord_mlp, velocity_mlp, node_mlp, _edge_sums, h.dtype,
                            _node_update)
