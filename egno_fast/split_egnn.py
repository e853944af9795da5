"""The node-level half of a fused EGNN layer, shared by every fused backend ("triton", "cpp").

The first edge layer W1 [|r|^2, h_i, h_j, e] + b1 is split (docs/design.md §4.3) into the node projections
A = h W_a + b1 and B = h W_b, computed once per node, plus w_d |r|^2 + W_e e per edge. A backend supplies the edge
half, ``edge_sums(a, b, x, edge_attr, weights, graph) -> (msg_sum [N, P, H], coord_sum [N, P, 3])``, and may supply
the node update that follows (degree mean, +-100 clamp, velocity and node MLPs; default :func:`node_update_torch`,
exactly as :func:`egno_fast.reference.egnn.egnn_layer_reference`).
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from .graph import Graph
from .reference.egnn import COORD_CLAMP

EdgeSums = Callable[[Tensor, Tensor, Tensor, Tensor, List[Tensor], Graph], Tuple[Tensor, Tensor]]
NodeUpdate = Callable[..., Tuple[Tensor, Tensor]]


def mlp_linears(mlp, name: str, silu_count: int):
    """The two nn.Linear layers of an MLP built as Linear, SiLU, Linear[, SiLU] (the reference layer's)."""
    layers = list(mlp) if isinstance(mlp, torch.nn.Sequential) else []
    kinds = [type(layer) for layer in layers]
    expected = [torch.nn.Linear, torch.nn.SiLU, torch.nn.Linear] + [torch.nn.SiLU] * (silu_count - 1)
    if kinds != expected or layers[0].bias is None or layers[2].bias is None:
        raise ValueError(f"the fused EGNN layer needs {name} = Sequential({', '.join(k.__name__ for k in expected)})"
                         f" with biases; got {mlp!r}")
    return layers[0], layers[2]


def node_update_torch(x: Tensor, v: Tensor, h: Tensor, msg_sum: Tensor, coord_sum: Tensor, degree: Tensor,
                      velocity_mlp, node_mlp) -> Tuple[Tensor, Tensor]:
    """The node half of the layer in PyTorch ops.

    Args:
        x, v, coord_sum: [N, P, 3]; h, msg_sum: [N, P, H]; degree: [N] in-degree clamped to >= 1, h's dtype.
    Returns:
        x_new = x + velocity_mlp(h) v + clamp(coord_sum / degree, -100, 100) [N, P, 3],
        h_new = node_mlp([h, msg_sum]) [N, P, H].
    """
    x_new = x + velocity_mlp(h) * v + (coord_sum / degree[:, None, None]).clamp(-COORD_CLAMP, COORD_CLAMP)
    return x_new, node_mlp(torch.cat([h, msg_sum], dim=-1))


def split_egnn_layer(x: Tensor, v: Tensor, h: Tensor, graph: Graph, edge_mlp, coord_mlp, velocity_mlp, node_mlp,
                     edge_sums: EdgeSums, weight_dtype: torch.dtype,
                     node_update: NodeUpdate = node_update_torch) -> Tuple[Tensor, Tensor, Tensor]:
    """One EGNN layer with the edge half delegated to ``edge_sums``.

    Args:
        x, v: [N, P, 3]; h: [N, P, H]; graph: receiver-sorted CSR with edge_attr [E, f].
        edge_sums: the backend's edge computation (module docstring); it receives
            ``weights = [w_d [H], W_e [H, f], W2 [H, H], b2 [H], Wc1 [H, H], bc1 [H], w_c2 [H], b_c2 [1]]``
            in ``weight_dtype``, contiguous.
        node_update: ``(x, v, h, msg_sum, coord_sum, degree, velocity_mlp, node_mlp) -> (x_new, h_new)``, as
            :func:`node_update_torch`.
    Returns:
        (x, v, h) updated, as the reference layer.
    """
    first, second = mlp_linears(edge_mlp, "edge_mlp", 2)
    coord_hidden, coord_out = mlp_linears(coord_mlp, "coord_mlp", 1)
    hidden = h.shape[-1]
    num_features = graph.edge_attr.shape[1]
    if first.in_features != 1 + 2 * hidden + num_features or coord_out.out_features != 1:
        raise ValueError(f"edge_mlp expects {first.in_features} inputs, but 1 + 2H + f = "
                         f"{1 + 2 * hidden + num_features} (H = {hidden}, f = {num_features})")
    w1 = first.weight
    a = F.linear(h, w1[:, 1:1 + hidden], first.bias).contiguous()
    b = F.linear(h, w1[:, 1 + hidden:1 + 2 * hidden]).contiguous()
    weights = (w1[:, 0], w1[:, 1 + 2 * hidden:], second.weight, second.bias, coord_hidden.weight, coord_hidden.bias,
               coord_out.weight.reshape(-1), coord_out.bias)
    weights = [w.to(weight_dtype).contiguous() for w in weights]
    msg_sum, coord_sum = edge_sums(a, b, x.contiguous(), graph.edge_attr.to(h.dtype).contiguous(), weights, graph)
    degree = graph.in_degree.clamp(min=1).to(x.dtype)
    x_new, h_new = node_update(x, v, h, msg_sum, coord_sum, degree, velocity_mlp, node_mlp)
    return x_new, v, h_new
