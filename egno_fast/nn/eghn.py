"""EGHN's cluster-scoring network and decoder as modules (thin layers over :mod:`egno_fast.ops.cluster_pooling`)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.cluster_pooling import (ClusterScoreLayerWeights, DecoderLayerWeights, cluster_logits,
                                   cluster_score_layer, decoder_layer)
from .egnn import _mlp, _mlp_weights


class ClusterScorer(nn.Module):
    """Cluster logits of every node from equivariant message passing on the bond graph (EGHN's pooling network).

    Each of ``num_layers`` layers has ``message`` Linear(V^2+2H+1, H), SiLU, Linear(H, H), SiLU; ``mixing``
    Linear(H, H), SiLU, Linear(H, V^2) (not in the last layer: its vectors would be discarded); ``node``
    Linear(2H, H), SiLU, Linear(H, H). The head is Linear(H, 8H), tanh, Linear(8H, K).
    Shapes: z [N, P, 3, V] translation-free vectors, h [N, P, H], bonds [2, b], bond_attr [b, 1] -> logits [N, P, K].
    """

    def __init__(self, hidden_dim: int, num_clusters: int, num_layers: int, vector_channels: int = 3):
        super().__init__()
        channels = vector_channels * vector_channels
        self.message_mlps = nn.ModuleList(_mlp(channels + 2 * hidden_dim + 1, hidden_dim, hidden_dim, "silu", True)
                                          for _ in range(num_layers))
        self.mixing_mlps = nn.ModuleList(_mlp(hidden_dim, hidden_dim, channels, "silu", False)
                                         for _ in range(num_layers - 1))
        self.node_mlps = nn.ModuleList(_mlp(2 * hidden_dim, hidden_dim, hidden_dim, "silu", False)
                                       for _ in range(num_layers))
        self.head = nn.Sequential(nn.Linear(hidden_dim, 8 * hidden_dim), nn.Tanh(),
                                  nn.Linear(8 * hidden_dim, num_clusters))

    def layer_weights(self, index: int) -> ClusterScoreLayerWeights:
        mixing = _mlp_weights(self.mixing_mlps[index]) if index < len(self.mixing_mlps) else None
        return ClusterScoreLayerWeights(_mlp_weights(self.message_mlps[index]), mixing,
                                        _mlp_weights(self.node_mlps[index]))

    def forward(self, z: Tensor, h: Tensor, bonds: Tensor, bond_attr: Tensor) -> Tensor:
        """z [N, P, 3, V], h [N, P, H], bonds [2, b] (row 0 sender), bond_attr [b, 1] -> logits [N, P, K]."""
        for index in range(len(self.node_mlps)):
            z, h = cluster_score_layer(z, h, bonds, bond_attr, self.layer_weights(index))
        return cluster_logits(h, _mlp_weights(self.head))


class EquivariantDecoder(nn.Module):
    """EGHN's decoder: ``num_layers`` layers of :func:`~egno_fast.ops.cluster_pooling.decoder_layer`; layer d takes
    C + d vector channels (each layer's vector output becomes a channel of the next) and 2H scalars (layer 0) or the
    previous layer's H. Each layer: ``features`` Linear((C+d)^2 + S, H), SiLU, Linear(H, H), SiLU; ``vector``
    Linear(H, H), SiLU, Linear(H, C+d); ``scalar`` Linear(H, H), SiLU, Linear(H, H).
    Shapes: z [N, P, 3, C], scalars [N, P, 2H] -> (vector [N, P, 3], scalars [N, P, H]).
    """

    def __init__(self, hidden_dim: int, num_layers: int, vector_channels: int = 4):
        super().__init__()
        self.layers = nn.ModuleList()
        for index in range(num_layers):
            channels = vector_channels + index
            inputs = 2 * hidden_dim if index == 0 else hidden_dim
            self.layers.append(nn.ModuleDict(dict(
                features=_mlp(channels * channels + inputs, hidden_dim, hidden_dim, "silu", True),
                vector=_mlp(hidden_dim, hidden_dim, channels, "silu", False),
                scalar=_mlp(hidden_dim, hidden_dim, hidden_dim, "silu", False))))

    def layer_weights(self, index: int) -> DecoderLayerWeights:
        layer = self.layers[index]
        return DecoderLayerWeights(*(_mlp_weights(layer[name]) for name in DecoderLayerWeights._fields))

    def forward(self, z: Tensor, scalars: Tensor):
        """z [N, P, 3, C], scalars [N, P, 2H] -> (vector [N, P, 3], scalars [N, P, H])."""
        for index in range(len(self.layers)):
            vector, scalars = decoder_layer(z, scalars, self.layer_weights(index))
            z = z if index == len(self.layers) - 1 else torch.cat([z, vector[..., None]], dim=-1)
        return vector, scalars


__all__ = ["ClusterScorer", "EquivariantDecoder"]
