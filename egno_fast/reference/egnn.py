"""The EGNN layer with velocity (EGNO's message-passing block), frames as a batch axis."""
from typing import Callable, Tuple

import torch
from torch import Tensor

from ..graph import Graph

COORD_CLAMP = 100.0


def egnn_layer_reference(x: Tensor, v: Tensor, h: Tensor, graph: Graph, edge_mlp: Callable[[Tensor], Tensor],
                         coord_mlp: Callable[[Tensor], Tensor], velocity_mlp: Callable[[Tensor], Tensor],
                         node_mlp: Callable[[Tensor], Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """One EGNN layer on P frames that share one graph.

    m_ij = edge_mlp([|x_i - x_j|^2, h_i, h_j, e_ij]) for each edge j -> i and frame;
    x_i <- x_i + velocity_mlp(h_i) * v_i + clamp(mean_j (x_i - x_j) * coord_mlp(m_ij), -100, 100)
    (mean over the edges i receives, degree clamped to >= 1); h_i <- node_mlp([h_i, sum_j m_ij]); v unchanged.

    Args:
        x:     [N, P, 3] positions.
        v:     [N, P, 3] velocities.
        h:     [N, P, H] invariant features.
        graph: receiver-sorted graph; its ``edge_attr`` [E, f] is shared by all frames.
        edge_mlp:     [*, 1 + 2H + f] -> [*, H].
        coord_mlp:    [*, H] -> [*, 1].
        velocity_mlp: [*, H] -> [*, 1].
        node_mlp:     [*, 2H] -> [*, H].
    Returns:
        (x, v, h) updated, same shapes.
    """
    receiver, sender = graph.receiver, graph.sender
    num_frames = x.shape[1]
    rel = x.index_select(0, receiver) - x.index_select(0, sender)  # [E, P, 3]
    dist2 = (rel * rel).sum(dim=-1, keepdim=True)  # [E, P, 1]
    edge_feat = graph.edge_attr.to(h.dtype)[:, None, :].expand(-1, num_frames, -1)
    message = edge_mlp(torch.cat([dist2, h.index_select(0, receiver), h.index_select(0, sender), edge_feat],
                                 dim=-1))  # [E, P, H]
    coord_message = rel * coord_mlp(message)  # [E, P, 3]
    degree = graph.in_degree.clamp(min=1).to(x.dtype)[:, None, None]
    coord_update = torch.zeros_like(x).index_add_(0, receiver, coord_message) / degree
    x_new = x + velocity_mlp(h) * v + coord_update.clamp(-COORD_CLAMP, COORD_CLAMP)
    message_sum = h.new_zeros(h.shape[0], num_frames, message.shape[-1]).index_add_(0, receiver, message)
    h_new = node_mlp(torch.cat([h, message_sum], dim=-1))
    return x_new, v, h_new
