"""Soft cluster pooling (EGHN, Han et al. 2022; docs/eghno.md) on P frames that share one batch of graphs.

Each node i of graph b holds, per frame p, a soft assignment ``s_ik`` to the K clusters of its graph (a softmax:
each row of S sums to 1). Pooling takes the mass-weighted means ``X_k = sum_i s_ik x_i / c_k`` with the cluster
mass ``c_k = sum_i s_ik``; unpooling takes ``sum_k s_ik X_k``. Both are convex combinations, so pooled positions
move with any rotation, reflection and translation of the inputs and the scores stay invariant. The bond graph
A pooled to the clusters is ``S^T A S`` (K x K per graph and frame); the link loss pulls its row-normalised form
towards the identity (each cluster internally bonded, cut off from the others).

Layout: node tensors are [N, P, D] as elsewhere in the package; cluster tensors are [B*K, P, D] (cluster k of graph b
at row b*K + k), so the clusters form a batch of graphs the EGNN layer runs on (:func:`complete_cluster_graph`).
The per-graph products run as batched matrix products on a zero-padded layout [B, P, n_max, K]: memory and time
grow as B*P*n_max*(K + D), the pooled adjacency as E*P*K + B*P*n_max*K^2 (docs/eghno.md, "cost").

This module is plain PyTorch: the reference and the only implementation (about 1% of an EGHNO step at K = 20).
The cluster-scoring layer and the decoder layer of EGHN are here too, as functions of tensors and named weights.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from ..graph import Graph, GraphInputError
from .receiver_csr import build_graph
from .weights import MLPWeights, mlp


class ClusterAssignment(NamedTuple):
    """A soft assignment of the nodes of B graphs to K clusters per graph, on P frames.

    Attributes:
        scores:   [N, P, K] s_ik; each row sums to 1.
        dense:    [B, P, n_max, K] the same in a per-graph layout padded with zeros (n_max: the largest graph).
        weights:  [B, P, K, n_max] pooling weights s_ik / c_k: each cluster's convex weights over its graph's nodes
                  (computed in log space, so they sum to 1 even where the mass c_k underflows).
        mass:     [B, P, K] c_k = sum_i s_ik.
        batch:    [N] graph of each node.
        position: [N] index of each node within its graph.
    """

    scores: Tensor
    dense: Tensor
    weights: Tensor
    mass: Tensor
    batch: Tensor
    position: Tensor


def assign_clusters(logits: Tensor, graph: Graph) -> ClusterAssignment:
    """Softmax the cluster logits of every node and lay them out per graph.

    Args:
        logits: [N, P, K] cluster logits of each node and frame.
        graph:  the batch (its ``batch`` must be sorted, as :func:`build_graph` requires; every graph needs a node).
    Returns:
        :class:`ClusterAssignment`. One host synchronisation (the largest graph's size).
    """
    counts = graph.nodes_per_graph
    smallest, largest = torch.stack(torch.aminmax(counts)).tolist() if counts.numel() else (0, 0)
    if smallest < 1:
        raise GraphInputError("every graph of the batch needs at least one node to be pooled into clusters")
    first = torch.cumsum(counts, 0) - counts
    position = torch.arange(graph.num_nodes, device=logits.device) - first[graph.batch]
    log_scores = torch.log_softmax(logits, dim=-1)  # [N, P, K]
    num_graphs, (_, num_frames, num_clusters) = graph.num_graphs, logits.shape
    padded = log_scores.new_full((num_graphs, largest, num_frames, num_clusters), float("-inf"))
    padded = padded.index_put((graph.batch, position), log_scores)  # [B, n_max, P, K]
    padded = padded.permute(0, 2, 3, 1)  # [B, P, K, n_max]
    weights = torch.softmax(padded, dim=-1)  # over the graph's nodes: padding (-inf) gets 0
    dense = padded.exp().transpose(-1, -2)  # [B, P, n_max, K], zeros at padding
    return ClusterAssignment(scores=log_scores.exp(), dense=dense, weights=weights, mass=dense.sum(dim=2),
                             batch=graph.batch, position=position)


def _to_padded(values: Tensor, assignment: ClusterAssignment) -> Tensor:
    """[N, P, D] -> [B, P, n_max, D], zeros at padding."""
    num_graphs, num_frames, largest, _ = assignment.dense.shape
    padded = values.new_zeros(num_graphs, largest, num_frames, values.shape[-1])
    return padded.index_put((assignment.batch, assignment.position), values).transpose(1, 2)


def pool_to_clusters(assignment: ClusterAssignment, values: Tensor) -> Tensor:
    """Mass-weighted cluster means ``sum_i s_ik values_i / c_k``.

    Args:
        assignment: :class:`ClusterAssignment` of N nodes to K clusters per graph.
        values:     [N, P, D] node values (positions, velocities, features).
    Returns:
        [B*K, P, D], cluster k of graph b at row b*K + k.
    """
    pooled = assignment.weights @ _to_padded(values, assignment)  # [B, P, K, D]
    return pooled.transpose(1, 2).reshape(-1, values.shape[1], values.shape[2])


def unpool_to_nodes(assignment: ClusterAssignment, values: Tensor) -> Tensor:
    """Each node's assignment-weighted sum of its graph's cluster values ``sum_k s_ik values_k``.

    Args:
        assignment: :class:`ClusterAssignment`.
        values:     [B*K, P, D] cluster values.
    Returns:
        [N, P, D].
    """
    num_graphs, num_frames, _, num_clusters = assignment.dense.shape
    per_graph = values.reshape(num_graphs, num_clusters, num_frames, -1).transpose(1, 2)  # [B, P, K, D]
    nodes = (assignment.dense @ per_graph).transpose(1, 2)  # [B, n_max, P, D]
    return nodes[assignment.batch, assignment.position]


def pooled_adjacency(assignment: ClusterAssignment, edge_index: Tensor) -> Tensor:
    """``S^T A S`` per graph and frame, A the 0/1 adjacency of ``edge_index`` (entry (k, l): the assignment mass of
    the edges from cluster l's nodes to cluster k's nodes).

    Args:
        assignment: :class:`ClusterAssignment`.
        edge_index: [2, E] edges within the graphs, row 0 = sender j, row 1 = receiver i.
    Returns:
        [B, P, K, K].
    """
    sender, receiver = edge_index
    scores = assignment.scores
    received = torch.zeros_like(scores).index_add_(0, receiver, scores.index_select(0, sender))  # (A S) [N, P, K]
    return assignment.dense.transpose(-1, -2) @ _to_padded(received, assignment)


def link_loss(adjacency: Tensor) -> Tensor:
    """EGHN's link loss: the mean over graphs and frames of ``|| rownorm(S^T A S) - I ||_F`` (rows L2-normalised,
    the norm not squared, as the released EGHN code).

    Args:
        adjacency: [B, P, K, K] from :func:`pooled_adjacency`.
    Returns:
        [] scalar.
    """
    identity = torch.eye(adjacency.shape[-1], dtype=adjacency.dtype, device=adjacency.device)
    gap = F.normalize(adjacency, dim=-1) - identity
    return gap.square().sum(dim=(-2, -1)).sqrt().mean()


def complete_cluster_graph(num_graphs: int, num_clusters: int, device: torch.device | str) -> Graph:
    """The high level's graph: every ordered pair of the K clusters of each graph, self-loops included (B*K^2 edges,
    as EGHN), without edge features (the per-frame :func:`cluster_edge_features` come separately)."""
    local = torch.arange(num_clusters, device=device)
    receiver, sender = torch.meshgrid(local, local, indexing="ij")
    offsets = (torch.arange(num_graphs, device=device) * num_clusters)[:, None]
    edge_index = torch.stack([(sender.reshape(1, -1) + offsets).reshape(-1),
                              (receiver.reshape(1, -1) + offsets).reshape(-1)])
    batch = torch.arange(num_graphs, device=device).repeat_interleave(num_clusters)
    return build_graph(edge_index, num_graphs * num_clusters, batch=batch, validate=False,
                       num_graphs=num_graphs)


def cluster_edge_features(adjacency: Tensor, graph: Graph) -> Tensor:
    """The pooled message-passing graph as the per-frame feature of each cluster edge l -> k: entry (k, l).

    Args:
        adjacency: [B, P, K, K] from :func:`pooled_adjacency`.
        graph:     :func:`complete_cluster_graph` of the same B and K.
    Returns:
        [B*K*K, P, 1] in the graph's (receiver-sorted) edge order.
    """
    num_graphs, num_frames, num_clusters, _ = adjacency.shape
    per_edge = adjacency.permute(0, 2, 3, 1).reshape(-1, num_frames, 1)  # input order: graph, receiver, sender
    return per_edge.index_select(0, graph.edge_perm)


# ---------------------------------------------------------------------------------------------------------------------
# the cluster-scoring network's layer and head, and the decoder layer (EGHN's E-Pool scores and E-UnPool)

class ClusterScoreLayerWeights(NamedTuple):
    """One layer of the cluster-scoring network (V vector channels, H hidden).

    Attributes:
        message: [V^2 + 2H + 1] -> H -> H (SiLU after both): the invariant bond message u_ij.
        mixing:  H -> H -> V^2: the channel-mixing matrix W_ij of the equivariant message; None in the last layer
                 (its vectors are not used).
        node:    2H -> H -> H: the residual feature update.
    """

    message: MLPWeights
    mixing: Optional[MLPWeights]
    node: MLPWeights


def cluster_score_layer(z: Tensor, h: Tensor, bonds: Tensor, bond_attr: Tensor,
                        weights: ClusterScoreLayerWeights):
    """One equivariant message-passing layer on the bond graph (EGHN's scoring network).

    For a bond j -> i: ``G_ij = Z_j^T Z_i`` (V x V, flattened and L2-normalised), ``u_ij = message([G_ij, h_i, h_j,
    e_ij])``; ``Z_i <- Z_i + mean_j Z_j W_ij`` with ``W_ij = mixing(u_ij)`` (V x V), ``h_i <- h_i + node([h_i,
    sum_j u_ij])``.

    Args:
        z:         [N, P, 3, V] translation-free vector channels.
        h:         [N, P, H] invariant features.
        bonds:     [2, b] bond graph, row 0 = sender j, row 1 = receiver i.
        bond_attr: [b, 1] invariant bond feature (the squared bond length of the input frame).
        weights:   :class:`ClusterScoreLayerWeights`.
    Returns:
        (z [N, P, 3, V] (unchanged without ``mixing``), h [N, P, H]).
    """
    sender, receiver = bonds
    channels, num_frames = z.shape[-1], z.shape[1]
    z_sender = z.index_select(0, sender)
    gram = torch.einsum("epcv,epcw->epvw", z_sender, z.index_select(0, receiver)).flatten(-2)
    features = [F.normalize(gram, dim=-1), h.index_select(0, receiver), h.index_select(0, sender),
                bond_attr.to(h.dtype)[:, None, :].expand(-1, num_frames, -1)]
    message = mlp(torch.cat(features, dim=-1), weights.message, "silu", last_activation=True)  # [b, P, H]
    if weights.mixing is not None:
        mixing = mlp(message, weights.mixing, "silu").unflatten(-1, (channels, channels))  # [b, P, V, V]
        vector_message = z_sender @ mixing  # [b, P, 3, V]
        degree = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device).index_add_(
            0, receiver, torch.ones_like(receiver, dtype=z.dtype)).clamp(min=1)
        z = z + torch.zeros_like(z).index_add_(0, receiver, vector_message) / degree[:, None, None, None]
    summed = torch.zeros_like(h).index_add_(0, receiver, message)
    return z, h + mlp(torch.cat([h, summed], dim=-1), weights.node, "silu")


def cluster_logits(h: Tensor, head: MLPWeights) -> Tensor:
    """EGHN's scoring head ``Linear(tanh(Linear(h)))``: h [N, P, H] -> logits [N, P, K] (head: H -> 8H -> K)."""
    return F.linear(torch.tanh(F.linear(h, *head.first)), *head.second)


class DecoderLayerWeights(NamedTuple):
    """One decoder layer with C vector channels and S input scalars (H hidden).

    Attributes:
        features: [C^2 + S] -> H -> H (SiLU after both): invariants q from the channels' Gram matrix and the scalars.
        vector:   H -> H -> C: the coefficients of the output vector.
        scalar:   H -> H -> H: the output scalars.
    """

    features: MLPWeights
    vector: MLPWeights
    scalar: MLPWeights


def decoder_layer(z: Tensor, scalars: Tensor, weights: DecoderLayerWeights):
    """EGHN's equivariant decoder layer: ``q = features([rownorm(Z^T Z), s])``, vector ``Z vector(q)``, scalars
    ``scalar(q)``.

    Args:
        z:       [N, P, 3, C] translation-free vector channels.
        scalars: [N, P, S] invariant inputs.
        weights: :class:`DecoderLayerWeights`.
    Returns:
        (vector [N, P, 3], scalars [N, P, H]).
    """
    gram = (z.transpose(-1, -2) @ z).flatten(-2)  # [N, P, C^2]
    q = mlp(torch.cat([F.normalize(gram, dim=-1), scalars], dim=-1), weights.features, "silu", last_activation=True)
    coefficients = mlp(q, weights.vector, "silu")  # [N, P, C]
    return (z @ coefficients[..., None]).squeeze(-1), mlp(q, weights.scalar, "silu")


__all__ = ["ClusterAssignment", "assign_clusters", "pool_to_clusters", "unpool_to_nodes", "pooled_adjacency",
           "link_loss", "complete_cluster_graph", "cluster_edge_features", "ClusterScoreLayerWeights",
           "cluster_score_layer", "cluster_logits", "DecoderLayerWeights", "decoder_layer"]
