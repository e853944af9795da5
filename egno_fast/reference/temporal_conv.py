"""Equivariant temporal spectral convolution along the frame axis (rfft -> keep I modes -> mix -> irfft)."""
import torch
from torch import Tensor


def temporal_conv_reference(x: Tensor, weight: Tensor) -> Tensor:
    """The spectral kernel K of EGNO applied along axis 1 (frames), without residual or activation.

    rfft over the P frames ("backward" normalisation), keep the first I frequencies, multiply each by a complex
    channel-mixing matrix, drop the rest, inverse rfft to length P. Trailing axes between the frame axis and the
    channel axis (the 3 spatial components of a vector channel) are never mixed, so vector inputs stay equivariant.
    The imaginary parts of the DC bin (and of the Nyquist bin for even P) are ignored by the inverse transform.

    Args:
        x:      [N, P, C_in] scalar channels or [N, P, 3, C_in] vector channels, floating point.
        weight: [C_in, C_out, I, 2] real and imaginary parts of the per-mode mixing, 1 <= I <= P // 2 + 1.
    Returns:
        [N, P, C_out] or [N, P, 3, C_out], dtype of ``x``.
    """
    num_frames, num_modes = x.shape[1], weight.shape[2]
    if not 1 <= num_modes <= num_frames // 2 + 1:
        raise ValueError(f"num_modes must be in [1, P//2+1] = [1, {num_frames // 2 + 1}] for P = {num_frames}, "
                         f"got {num_modes}")
    spectrum = torch.fft.rfft(x, dim=1)[:, :num_modes]  # [N, I, ..., C_in]
    mixing = torch.view_as_complex(weight.to(x.dtype).contiguous())  # [C_in, C_out, I]
    mixed = torch.einsum("nm...i,iom->nm...o", spectrum, mixing)
    return torch.fft.irfft(mixed, n=num_frames, dim=1)


def temporal_residual_reference(x: Tensor, weight: Tensor, leaky_relu: bool) -> Tensor:
    """EGNO's temporal block: ``x + LeakyReLU_0.01(K(x))`` (scalar channels) or ``x + K(x)`` (vector channels).

    Args:
        x:          [N, P, C] or [N, P, 3, C].
        weight:     [C, C, I, 2].
        leaky_relu: apply LeakyReLU(0.01) to K(x) before the residual add.
    Returns:
        same shape and dtype as ``x``.
    """
    update = temporal_conv_reference(x, weight)
    if leaky_relu:
        update = torch.nn.functional.leaky_relu(update, negative_slope=0.01)
    return x + update
