"""The EGNN layer with velocity, as used by EGNO, on P frames that share one graph."""
from typing import Tuple

from torch import Tensor, nn

from ..backends import check_backend_name, get_op, resolve_backend
from ..graph import Graph


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, last_activation: bool) -> nn.Sequential:
    layers = [nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim)]
    if last_activation:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class EGNNLayer(nn.Module):
    """EGNN layer with velocity (E(3)-equivariant in x and v, invariant in h).

    Parameters: ``edge_mlp`` Linear(1+2H+f, H), SiLU, Linear(H, H), SiLU; ``coord_mlp`` and ``velocity_mlp``
    Linear(H, H), SiLU, Linear(H, 1); ``node_mlp`` Linear(2H, H), SiLU, Linear(H, H).
    Shapes: x, v [N, P, 3]; h [N, P, H]; the graph's edge_attr [E, f].
    """

    def __init__(self, hidden_dim: int, edge_dim: int = 0, backend: str = "reference"):
        super().__init__()
        self.hidden_dim, self.edge_dim = hidden_dim, edge_dim
        self.edge_mlp = _mlp(1 + 2 * hidden_dim + edge_dim, hidden_dim, hidden_dim, last_activation=True)
        self.coord_mlp = _mlp(hidden_dim, hidden_dim, 1, last_activation=False)
        self.velocity_mlp = _mlp(hidden_dim, hidden_dim, 1, last_activation=False)
        self.node_mlp = _mlp(2 * hidden_dim, hidden_dim, hidden_dim, last_activation=False)
        self.backend = check_backend_name(backend)

    def forward(self, x: Tensor, v: Tensor, h: Tensor, graph: Graph) -> Tuple[Tensor, Tensor, Tensor]:
        """(x [N,P,3], v [N,P,3], h [N,P,H], graph) -> updated (x, v, h)."""
        if graph.edge_attr.shape[1] != self.edge_dim:
            raise ValueError(f"the layer expects {self.edge_dim} edge features, the graph has "
                             f"{graph.edge_attr.shape[1]}")
        op = get_op("egnn_layer", resolve_backend(self.backend, x.device, "egnn_layer"))
        return op(x, v, h, graph, self.edge_mlp, self.coord_mlp, self.velocity_mlp, self.node_mlp)

    def extra_repr(self) -> str:
        return f"hidden_dim={self.hidden_dim}, edge_dim={self.edge_dim}, backend={self.backend!r}"
