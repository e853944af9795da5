"""The EGNN layer with velocity, as used by EGNO, on P frames that share one graph (a thin module over
:func:`egno_fast.ops.egnn_layer`)."""
from typing import Optional

from torch import Tensor, nn

from ..backends import check_backend_name
from ..graph import Graph, GraphInputError
from ..ops.egnn import EGNNLayerOutput, EGNNLayerWeights, EGNNOptions, EGNO_OPTIONS, egnn_layer
from ..ops.weights import ACTIVATION_MODULES, LinearWeights, MLPWeights


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, activation: str, last_activation: bool,
         out_bias: bool = True) -> nn.Sequential:
    make = ACTIVATION_MODULES[activation]
    layers = [nn.Linear(in_dim, hidden_dim), make(), nn.Linear(hidden_dim, out_dim, bias=out_bias)]
    if last_activation:
        layers.append(make())
    return nn.Sequential(*layers)


def _linear(module: nn.Linear) -> LinearWeights:
    return LinearWeights(module.weight, module.bias)


def _mlp_weights(mlp: nn.Sequential) -> MLPWeights:
    return MLPWeights(_linear(mlp[0]), _linear(mlp[2]))


class EGNNLayer(nn.Module):
    """EGNN layer with velocity (E(3)-equivariant in x and v, invariant in h); see :mod:`egno_fast.ops.egnn`.

    Parameters: ``edge_mlp`` Linear(1+2H+f, H), act, Linear(H, H), act; ``coord_mlp`` Linear(H, H), act,
    Linear(H, 1) (no bias with ``coord_bias=False``); ``velocity_mlp`` Linear(H, H), act, Linear(H, 1); ``node_mlp``
    Linear(2H, H), act, Linear(H, H); with ``options.attention`` also ``attention`` Linear(H, 1). With
    ``frame_edge_dim`` f' > 0 the edge MLP also takes f' per-frame edge features (``frame_edge_attr``; the
    reference backend only) and its first layer is Linear(1+2H+f+f', H).
    Shapes: x, v [N, P, 3]; h [N, P, H]; the graph's edge_attr [E, f]; frame_edge_attr [E, P, f'].
    """

    def __init__(self, hidden_dim: int, edge_dim: int = 0, backend: str = "reference",
                 options: EGNNOptions = EGNO_OPTIONS, coord_bias: bool = True, frame_edge_dim: int = 0):
        super().__init__()
        self.hidden_dim, self.edge_dim, self.options = hidden_dim, edge_dim, options
        self.frame_edge_dim = frame_edge_dim
        act = options.activation
        self.edge_mlp = _mlp(1 + 2 * hidden_dim + edge_dim + frame_edge_dim, hidden_dim, hidden_dim, act,
                             last_activation=True)
        self.coord_mlp = _mlp(hidden_dim, hidden_dim, 1, act, last_activation=False, out_bias=coord_bias)
        self.velocity_mlp = _mlp(hidden_dim, hidden_dim, 1, act, last_activation=False)
        self.node_mlp = _mlp(2 * hidden_dim, hidden_dim, hidden_dim, act, last_activation=False)
        self.attention = nn.Linear(hidden_dim, 1) if options.attention else None
        self.backend = check_backend_name(backend)

    def weights(self) -> EGNNLayerWeights:
        """The parameters as the op takes them (views: gradients reach the parameters)."""
        return EGNNLayerWeights(_mlp_weights(self.edge_mlp), _mlp_weights(self.coord_mlp),
                                _mlp_weights(self.velocity_mlp), _mlp_weights(self.node_mlp),
                                _linear(self.attention) if self.attention is not None else None)

    def forward(self, x: Tensor, v: Tensor, h: Tensor, graph: Graph, edge_shift: Optional[Tensor] = None,
                frame_edge_attr: Optional[Tensor] = None) -> EGNNLayerOutput:
        """(x [N,P,3], v [N,P,3], h [N,P,H], graph[, edge_shift [E,3], frame_edge_attr [E,P,f']]) -> updated
        (x, v, h). The periodic shifts are the graph's (``graph.edge_shift``) unless given here."""
        if graph.edge_attr.shape[1] != self.edge_dim:
            raise ValueError(f"the layer expects {self.edge_dim} edge features, the graph has "
                             f"{graph.edge_attr.shape[1]}")
        given = 0 if frame_edge_attr is None else frame_edge_attr.shape[-1]
        if given != self.frame_edge_dim:
            raise ValueError(f"the layer expects {self.frame_edge_dim} per-frame edge features, got {given}")
        if edge_shift is None:
            edge_shift = graph.edge_shift
        elif graph.edge_shift is not None:
            raise GraphInputError("the graph carries its own edge_shift: pass the shifts once")
        return egnn_layer(x, v, h, graph, self.weights(), self.options, edge_shift, frame_edge_attr, self.backend)

    def extra_repr(self) -> str:
        options = "" if self.options == EGNO_OPTIONS else f", options={self.options}"
        return f"hidden_dim={self.hidden_dim}, edge_dim={self.edge_dim}, backend={self.backend!r}{options}"
