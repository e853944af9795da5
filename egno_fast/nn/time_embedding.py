"""Sinusoidal embedding of (possibly fractional) frame indices, as a function and as a module (no parameters)."""
import math

import torch
from torch import Tensor, nn


def sinusoidal_time_embedding(times: Tensor, dim: int = 32, max_positions: float = 10000.0) -> Tensor:
    """Embed frame indices as in the EGNO reference: ``[sin(t * freq), cos(t * freq)]``.

    With ``half = dim // 2``, ``freq_j = exp(-j * ln(max_positions) / (half - 1))`` for j = 0..half-1; an odd ``dim``
    gets one trailing zero column.

    Args:
        times: [P] frame indices (integers 0..P-1 by default; fractional values query times between frames).
        dim:   embedding width (>= 4).
    Returns:
        [P, dim] in the dtype of ``times`` (float32 for integer input).
    """
    if dim < 4:
        raise ValueError(f"time embedding dim must be >= 4, got {dim}")
    dtype = times.dtype if times.is_floating_point() else torch.float32
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype, device=times.device) * (-math.log(max_positions) / (half - 1)))
    angles = times.to(dtype)[:, None] * freqs[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2 == 1:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding


class SinusoidalTimeEmbedding(nn.Module):
    """times [P] -> [P, dim]; see :func:`sinusoidal_time_embedding`."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.dim = dim

    def forward(self, times: Tensor) -> Tensor:
        return sinusoidal_time_embedding(times, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
