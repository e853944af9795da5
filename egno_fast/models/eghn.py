"""The hierarchical EGHN backbone with EGNO's temporal convolutions (EGHNO; docs/eghno.md for the design and the
decisions where the papers are silent).

One pooling level, as the released EGHN: N atoms -> K clusters per graph -> N atoms. On P frames (EGNO's copies):

1. node level: ``num_layers`` blocks [temporal convolutions (h; [x - centre, v]) -> EGNN layer] on the message-passing
   graph (every backend, fused kernels included). f = x_out - x_in is the node level's displacement.
2. scores: the cluster-scoring network on the bond graph sees Z = [x - mean x, f, v] and h and gives S [N, P, K]
   (a softmax per node and frame; ``assignment="shared"``: one S per input state, from the frame-mean of h and f).
3. pooling: cluster positions X, velocities V and features (mass-weighted means); the pooled bond graph gives the link
   loss, the pooled message-passing graph the cluster edges' per-frame feature.
4. cluster level: ``num_layers`` blocks [temporal convolutions (H; [X - centre, V]) -> EGNN layer] on the complete
   graph of each graph's K clusters (self-loops included), with a per-frame edge feature: the reference EGNN layer
   (the fused kernels take no per-frame edge features; the level costs about 1% of a step at K = 20).
5. unpooling and decoder: Z = [S dX, x - S X, v - S V, f] and the scalars [h, S H'] (the jump connection from the node
   level) give x_hat = S X' + Z w.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from ..config import ASSIGNMENTS, CLUSTER_INPUTS
from ..graph import Graph, graph_mean
from ..nn import EGNNLayer, TemporalConv, VectorTemporalConv
from ..nn.eghn import ClusterScorer, EquivariantDecoder
from ..nn.temporal_conv import vector_temporal_block
from ..ops.cluster_pooling import (assign_clusters, cluster_edge_features, complete_cluster_graph, link_loss,
                                   pool_to_clusters, pooled_adjacency, unpool_to_nodes)
from ..ops.egnn import EGNNOptions



class EGHNOutput(NamedTuple):
    """x [N, P, 3] predicted positions; v [N, P, 3] the node level's velocities; h [N, P, H] the decoder's scalars;
    link_loss [] (unweighted); scores [N, P, K] the soft assignment S."""

    x: Tensor
    v: Tensor
    h: Tensor
    link_loss: Tensor
    scores: Tensor


def _temporal_convs(hidden_dim: int, num_layers: int, num_modes: int, temporal_channels: Sequence[str]):
    scalar, vector = nn.ModuleList(), nn.ModuleList()
    vector_channels = [c for c in ("x", "v") if c in temporal_channels]
    for _ in range(num_layers):
        if "h" in temporal_channels:
            scalar.append(TemporalConv(hidden_dim, num_modes))
        if vector_channels:
            vector.append(VectorTemporalConv(len(vector_channels), num_modes))
    return scalar, vector


class EGHNBackbone(nn.Module):
    """EGHN with temporal convolutions before every EGNN layer of both levels (module docstring).

    Args:
        hidden_dim:        H.
        edge_dim:          f, the message-passing graph's edge features.
        num_layers:        EGNN layers per level (EGHN's ``layer_per_block``); each has its temporal convolutions.
        num_clusters:      K clusters per graph.
        pooling_layers:    layers of the cluster-scoring network.
        decoder_layers:    layers of the decoder (>= 1).
        num_modes:         I Fourier modes of the temporal convolutions (0: none).
        temporal_channels: the channels of "h", "x", "v" that the temporal convolutions transform.
        options:           the EGNN layers' variant (both levels).
        assignment:        "per_frame" (S from each frame's own state: the faithful reading) or "shared" (one S per
                           input state, from the frame means of h and f: the scorer runs once).
        cluster_inputs:    what is pooled and feeds the decoder's relative channels: "input" (the input x and v, as
                           EGHN) or "node_level" (each frame's x and v after the node level).
    """

    def __init__(self, hidden_dim: int, edge_dim: int, num_layers: int, num_clusters: int, pooling_layers: int,
                 decoder_layers: int, num_modes: int, temporal_channels: Sequence[str], options: EGNNOptions,
                 assignment: str = "per_frame", cluster_inputs: str = "input"):
        super().__init__()
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {list(ASSIGNMENTS)}, got {assignment!r}")
        if cluster_inputs not in CLUSTER_INPUTS:
            raise ValueError(f"cluster_inputs must be one of {list(CLUSTER_INPUTS)}, got {cluster_inputs!r}")
        self.num_clusters, self.assignment, self.cluster_inputs = num_clusters, assignment, cluster_inputs
        self.vector_channels = tuple(c for c in ("x", "v") if c in temporal_channels)
        self.node_layers = nn.ModuleList(EGNNLayer(hidden_dim, edge_dim, options=options) for _ in range(num_layers))
        self.node_scalar_convs, self.node_vector_convs = _temporal_convs(hidden_dim, num_layers, num_modes,
                                                                         temporal_channels)
        self.scorer = ClusterScorer(hidden_dim, num_clusters, pooling_layers)
        self.cluster_embedding = nn.Linear(hidden_dim, hidden_dim)
        self.cluster_layers = nn.ModuleList(EGNNLayer(hidden_dim, 0, options=options, frame_edge_dim=1)
                                            for _ in range(num_layers))
        self.cluster_scalar_convs, self.cluster_vector_convs = _temporal_convs(hidden_dim, num_layers, num_modes,
                                                                               temporal_channels)
        self.decoder = EquivariantDecoder(hidden_dim, decoder_layers)

    def _level(self, layers, scalar_convs, vector_convs, x, v, h, graph, centre, frame_edge_attr=None):
        for index, layer in enumerate(layers):
            if scalar_convs:
                h = scalar_convs[index](h)
            if vector_convs:
                x, v = vector_temporal_block(vector_convs[index], self.vector_channels, x, v, centre)
            x, v, h = layer(x, v, h, graph, frame_edge_attr=frame_edge_attr)
        return x, v, h

    def forward(self, x: Tensor, v: Tensor, h: Tensor, graph: Graph, centre: Tensor,
                bonds: Optional[Tensor] = None) -> EGHNOutput:
        """Run the hierarchy on P frames.

        Args:
            x, v:   [N, 3] input positions and velocities.
            h:      [N, P, H] embedded features (time embedding included).
            graph:  the message-passing graph (no periodic shifts).
            centre: [N, 1, 3] what the vector temporal convolutions centre positions on (EGNO's ``vector_centre``).
            bonds:  [2, b] the scoring network's bond graph (row 0 = sender), or None: the message-passing graph.
        Returns:
            :class:`EGHNOutput`.
        """
        num_frames = h.shape[1]
        x_in = x[:, None, :].expand(-1, num_frames, -1)
        v_in = v[:, None, :].expand(-1, num_frames, -1)
        x_node, v_node, h_node = self._level(self.node_layers, self.node_scalar_convs, self.node_vector_convs,
                                             x_in, v_in, h, graph, centre)
        displacement = x_node - x_in  # f [N, P, 3]
        x_src, v_src = (x_in, v_in) if self.cluster_inputs == "input" else (x_node, v_node)

        message_passing = torch.stack([graph.sender, graph.receiver])
        if bonds is None:
            bonds = message_passing
        sender, receiver = bonds
        bond_length2 = (x[receiver] - x[sender]).square().sum(-1, keepdim=True)  # [b, 1]
        mean = graph_mean(x_src.flatten(1), graph).view_as(x_src)
        if self.assignment == "shared":
            z = torch.stack([(x_src - mean).mean(1, keepdim=True), displacement.mean(1, keepdim=True),
                             v_src.mean(1, keepdim=True)], dim=-1)  # [N, 1, 3, 3]
            logits = self.scorer(z, h_node.mean(1, keepdim=True), bonds, bond_length2).expand(-1, num_frames, -1)
        else:
            z = torch.stack([x_src - mean, displacement, v_src], dim=-1)  # [N, P, 3, 3]
            logits = self.scorer(z, h_node, bonds, bond_length2)
        assignment = assign_clusters(logits, graph)

        pooled = pool_to_clusters(assignment, torch.cat([x_src, v_src, centre.expand(-1, num_frames, -1), h_node],
                                                        dim=-1))
        cluster_x, cluster_v, cluster_centre, cluster_h = pooled.split([3, 3, 3, h_node.shape[-1]], dim=-1)
        cluster_graph = complete_cluster_graph(graph.num_graphs, self.num_clusters, x.device)
        edge_features = cluster_edge_features(pooled_adjacency(assignment, message_passing), cluster_graph)
        loss = link_loss(pooled_adjacency(assignment, bonds))
        new_x, _, new_h = self._level(self.cluster_layers, self.cluster_scalar_convs, self.cluster_vector_convs,
                                      cluster_x, cluster_v, self.cluster_embedding(cluster_h), cluster_graph,
                                      cluster_centre, edge_features)

        unpooled = unpool_to_nodes(assignment, torch.cat([new_x - cluster_x, cluster_x, cluster_v, new_x, new_h],
                                                         dim=-1))
        moved, centres, velocities, new_centres, features = unpooled.split([3, 3, 3, 3, new_h.shape[-1]], dim=-1)
        z = torch.stack([moved, x_src - centres, v_src - velocities, displacement], dim=-1)  # [N, P, 3, 4]
        vector, scalars = self.decoder(z, torch.cat([h_node, features], dim=-1))
        return EGHNOutput(new_centres + vector, v_node, scalars, loss, assignment.scores)
