"""Sinusoidal embedding of frame indices as a module (no parameters)."""
from torch import Tensor, nn

from ..reference.time_embedding import sinusoidal_time_embedding


class SinusoidalTimeEmbedding(nn.Module):
    """times [P] -> [P, dim]; see :func:`egno_fast.reference.sinusoidal_time_embedding`."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.dim = dim

    def forward(self, times: Tensor) -> Tensor:
        return sinusoidal_time_embedding(times, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
