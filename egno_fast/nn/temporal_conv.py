"""Temporal Fourier convolution layers (docs/design.md §1.2-§1.3): scalar channels and equivariant vector channels."""
import torch
from torch import Tensor, nn

from ..backends import check_backend_name
from ..ops.temporal_conv import temporal_residual


class _SpectralBlock(nn.Module):
    """Shared parameter and dispatch of the two temporal blocks; ``weight`` is [C, C, I, 2] (real, imag)."""

    leaky_relu: bool

    def __init__(self, channels: int, num_modes: int, init_scale: float, backend: str = "reference"):
        super().__init__()
        if channels < 1 or num_modes < 1:
            raise ValueError(f"channels and num_modes must be >= 1, got {channels} and {num_modes}")
        self.channels, self.num_modes = channels, num_modes
        self.weight = nn.Parameter(init_scale * torch.rand(channels, channels, num_modes, 2))
        self.backend = check_backend_name(backend)

    def _residual_block(self, x: Tensor) -> Tensor:
        num_frames = x.shape[1]
        if self.num_modes > num_frames // 2 + 1:
            raise ValueError(f"num_modes = {self.num_modes} needs at least {2 * self.num_modes - 2} frames, "
                             f"got P = {num_frames} (I must be <= P//2+1)")
        return temporal_residual(x, self.weight, self.leaky_relu, self.backend)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_modes={self.num_modes}, backend={self.backend!r}"


class TemporalConv(_SpectralBlock):
    """Scalar temporal block: ``h + LeakyReLU_0.01(K(h))`` along the frame axis.

    Shapes: input and output [N, P, H]. Init as the reference: weights uniform in [0, 1/H^2).
    """

    leaky_relu = True

    def __init__(self, channels: int, num_modes: int = 2, backend: str = "reference"):
        super().__init__(channels, num_modes, 1.0 / (channels * channels), backend)

    def forward(self, h: Tensor) -> Tensor:
        """h: [N, P, H] -> [N, P, H]."""
        return self._residual_block(h)


class VectorTemporalConv(_SpectralBlock):
    """Equivariant vector temporal block: ``Z + K(Z)``; channels are mixed, spatial components never are.

    Shapes: input and output [N, P, 3, C] (C = 2 for [x - xbar, v]). Init: uniform in [0, 0.1).
    """

    leaky_relu = False

    def __init__(self, channels: int = 2, num_modes: int = 2, backend: str = "reference"):
        super().__init__(channels, num_modes, 0.1, backend)

    def forward(self, z: Tensor) -> Tensor:
        """z: [N, P, 3, C] -> [N, P, 3, C]."""
        return self._residual_block(z)


def vector_temporal_block(conv: VectorTemporalConv, channels, x: Tensor, v: Tensor, centre: Tensor):
    """Apply ``conv`` to the channels of ``[x - centre, v]`` named in ``channels`` (a sub-sequence of ("x", "v")).

    Shapes: x, v [N, P, 3]; centre [N, 1, 3] or [N, P, 3]. Returns (x, v) [N, P, 3]; a channel not named passes
    unchanged.
    """
    inputs = {"x": x - centre, "v": v}
    z = conv(torch.stack([inputs[name] for name in channels], dim=-1))  # [N, P, 3, C]
    out = dict(zip(channels, z.unbind(-1)))
    return (out["x"] + centre if "x" in out else x), out.get("v", v)
