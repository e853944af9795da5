"""Fused EGNN layer on the CPU (csrc/cpu/egnn_cpu.cpp): forward and backward over the receiver-sorted CSR."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from ..graph import Graph
from ..split_egnn import split_egnn_layer

_ops = torch.ops.egno_fast


@torch.library.register_fake("egno_fast::egnn_edge_forward")
def _forward_fake(a, b, x, edge_attr, wd, we, w2, b2, wc1, bc1, wc2, bc2, rowptr, sender, receiver):
    return torch.empty_like(a), torch.empty_like(x), a.new_empty((6, sender.shape[0], a.shape[1], a.shape[2]))


@torch.library.register_fake("egno_fast::egnn_edge_backward")
def _backward_fake(g_msg, g_coord, activations, x, edge_attr, wd, we, w2, b2, wc1, bc1, wc2, bc2, rowptr, sender,
                   receiver, sender_rowptr, sender_perm):
    return [torch.empty_like(g_msg), torch.empty_like(g_msg), torch.empty_like(x), torch.empty_like(edge_attr),
            *(torch.empty_like(w) for w in (wd, we, w2, b2, wc1, bc1, wc2, bc2))]


class EGNNEdgeCppFunction(torch.autograd.Function):
    """(A, B, x, e, w_d, W_e, W2, b2, Wc1, bc1, w_c2, b_c2) -> (msg_sum [N,P,H], coord_sum [N,P,3]) over the graph's
    edges; the forward stores the three SiLUs' values and derivatives [6, E, P, H] for the backward (see
    egnn_cpu.cpp)."""

    @staticmethod
    def forward(ctx, a, b, x, edge_attr, wd, we, w2, b2, wc1, bc1, wc2, bc2, graph: Graph):
        msg_sum, coord_sum, activations = _ops.egnn_edge_forward(a, b, x, edge_attr, wd, we, w2, b2, wc1, bc1, wc2,
                                                                 bc2, graph.rowptr, graph.sender, graph.receiver)
        ctx.save_for_backward(activations, x, edge_attr, wd, we, w2, b2, wc1, bc1, wc2, bc2)
        ctx.graph = graph
        return msg_sum, coord_sum

    @staticmethod
    def backward(ctx, g_msg, g_coord):
        activations, x, edge_attr, *weights = ctx.saved_tensors
        graph = ctx.graph
        if g_msg is None:
            g_msg = x.new_zeros(x.shape[0], x.shape[1], activations.shape[-1])
        if g_coord is None:
            g_coord = torch.zeros_like(x)
        grads = _ops.egnn_edge_backward(g_msg, g_coord, activations, x, edge_attr, *weights, graph.rowptr,
                                        graph.sender, graph.receiver, graph.sender_rowptr, graph.sender_perm)
        return (*grads, None)


def _edge_sums(a: Tensor, b: Tensor, x: Tensor, edge_attr: Tensor, weights: List[Tensor],
               graph: Graph) -> Tuple[Tensor, Tensor]:
    return EGNNEdgeCppFunction.apply(a, b, x, edge_attr, *weights, graph)


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
    return split_egnn_layer(x, v, h, graph, edge_mlp, coord_mlp, velocity_mlp, node_mlp, _edge_sums, h.dtype)
