"""The temporal Fourier convolution along the frame axis: ``x + act(K x)`` (docs/design.md §1.2-§1.3).

K keeps I Fourier modes of the P frames and mixes channels per mode (rfft -> keep I modes -> mix -> irfft).
Entry points per backend, all with the contract of :func:`temporal_residual_reference`:
"reference" (plain PyTorch, below), "cpp" (the operator ``egno_fast::temporal_residual_forward`` of
csrc/cpu/temporal_conv_cpu.cpp; its autograd and fake kernels below), "triton" (the operator
``egno_fast::triton_temporal_residual_forward``, registered with its kernel, fake kernel and autograd in
kernels/temporal_conv.py). :func:`temporal_residual` dispatches.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..backends import autocast_dtype, check_backend_name, get_op, register, resolve_backend

TEMPORAL_LEAKY_SLOPE = 0.01  # EGNO's LeakyReLU on the scalar channels (the kernels hard-code it as x / 100)


def _check_modes(num_frames: int, num_modes: int) -> None:
    if not 1 <= num_modes <= num_frames // 2 + 1:
        raise ValueError(f"num_modes must be in [1, P//2+1] = [1, {num_frames // 2 + 1}] for P = {num_frames}, "
                         f"got {num_modes}")


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
    _check_modes(num_frames, num_modes)
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
        update = torch.nn.functional.leaky_relu(update, negative_slope=TEMPORAL_LEAKY_SLOPE)
    return x + update


def check_temporal_shapes(x: Tensor, weight: Tensor) -> None:
    """x [N, P, C] or [N, P, 3, C] and weight [C, C, I, 2] with 1 <= I <= P // 2 + 1 (metadata only): ValueError
    naming what differs. What the fused entry points and the Triton operators check before a kernel reads them."""
    if not (x.dim() == 3 or (x.dim() == 4 and x.shape[2] == 3)):
        raise ValueError(f"temporal_residual: x must be [N, P, C] or [N, P, 3, C], got {list(x.shape)}")
    if weight.dim() != 4 or weight.shape[-1] != 2 or x.shape[-1] != weight.shape[0] or weight.shape[0] != \
            weight.shape[1]:
        raise ValueError(f"temporal_residual: weight must be [C, C, I, 2] with C = {x.shape[-1]} (the channels of "
                         f"x), got {list(weight.shape)}")
    _check_modes(x.shape[1], weight.shape[2])


# ---------------------------------------------------------------------------------------------------------------------
# "cpp": the extension's temporal_residual_forward / _backward
# ---------------------------------------------------------------------------------------------------------------------
def _forward_fake(x, weight, leaky):
    return x.new_empty(x.shape), x.new_empty(x.shape if leaky else (0,))


def _backward_fake(grad_out, x, pre, weight, leaky):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    x, weight, leaky = inputs
    ctx.save_for_backward(x, output[1], weight)
    ctx.mark_non_differentiable(output[1])  # pre: kept for the backward, no gradient flows into it
    ctx.set_materialize_grads(False)  # no zeros tensor for pre's (absent) gradient
    ctx.leaky = leaky


def _backward(ctx, grad_out, _grad_pre):
    if grad_out is None:
        return None, None, None
    x, pre, weight = ctx.saved_tensors
    grad_x, grad_w = torch.ops.egno_fast.temporal_residual_backward(grad_out, x, pre, weight, ctx.leaky)
    return grad_x, grad_w, None


# Registered by :mod:`egno_fast.cpp` once the extension's operators exist: their fake (meta) kernels, so they trace
# under torch.compile and export, and the forward operator's autograd, (backward, setup_context) for
# ``torch.library.register_autograd`` (the forward returns (out, pre): pre is the stored pre-activation).
FAKE_KERNELS = {"egno_fast::temporal_residual_forward": _forward_fake,
                "egno_fast::temporal_residual_backward": _backward_fake}
AUTOGRAD = {"egno_fast::temporal_residual_forward": (_backward, _setup_context)}


def _residual_cpp(x: Tensor, weight: Tensor, leaky: bool) -> Tensor:
    return torch.ops.egno_fast.temporal_residual_forward(x, weight, leaky)[0]


# Vector inputs [N, P, 3, C] with at most this many channels run as scalar inputs [N, P, 3C] with the block-diagonal
# weight I_3 (x) W: the same function (the three components never mix), with rows three times wider and three times
# fewer, which matters when C is tiny (EGNO's x and v: C <= 2) and the kernel's per-row overhead dominates.
VECTOR_AS_SCALAR_MAX_CHANNELS = 8


def _block_diagonal(weight: Tensor, copies: int) -> Tensor:
    """[C, C, I, 2] -> [copies C, copies C, I, 2] with ``weight`` on the diagonal blocks and zeros elsewhere."""
    eye = torch.eye(copies, dtype=weight.dtype, device=weight.device)
    c = weight.shape[0]
    return torch.einsum("st,abir->satbir", eye, weight).reshape(copies * c, copies * c, *weight.shape[2:])


def temporal_residual_cpp(x: Tensor, weight: Tensor, leaky_relu: bool) -> Tensor:
    """Fused ``x + LeakyReLU_0.01(K x)`` (leaky_relu) or ``x + K x`` on CPU tensors; same contract as
    :func:`temporal_residual_reference`.

    Args:
        x:      [N, P, C] or [N, P, 3, C], float32 or float64.
        weight: [C, C, I, 2], 1 <= I <= P // 2 + 1.
    """
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the cpp temporal convolution runs float32 or float64, got {x.dtype}")
    check_temporal_shapes(x, weight)
    weight = weight.to(x.dtype)
    if x.dim() == 4 and x.shape[-1] <= VECTOR_AS_SCALAR_MAX_CHANNELS:
        n, p, s, c = x.shape
        wide = x.reshape(n, p, s * c)
        return _residual_cpp(wide, _block_diagonal(weight, s), leaky_relu).view(n, p, s, c)
    return _residual_cpp(x, weight, leaky_relu)


# ---------------------------------------------------------------------------------------------------------------------
# "triton": kernels/temporal_conv.py
# ---------------------------------------------------------------------------------------------------------------------
def temporal_residual_triton(x: Tensor, weight: Tensor, leaky_relu: bool) -> Tensor:
    """Fused ``x + LeakyReLU_0.01(K x)`` (leaky_relu) or ``x + K x`` with the Triton kernel (the registered operator
    ``egno_fast::triton_temporal_residual_forward``); same contract as
    :func:`temporal_residual_reference`.

    Args:
        x:      [N, P, C] or [N, P, 3, C] (fp32, fp64; bf16/fp16 on GPU), 1 <= P <= 64.
        weight: [C, C, I, 2], 1 <= I <= P // 2 + 1.
    """
    from ..kernels.temporal_conv import forward_op

    return forward_op(x, weight.to(x.dtype), leaky_relu)


register("temporal_residual", "reference", temporal_residual_reference)
register("temporal_residual", "cpp", temporal_residual_cpp, devices=("cpu",))
register("temporal_residual", "triton", temporal_residual_triton)


def temporal_residual(x: Tensor, weight: Tensor, leaky_relu: bool, backend: str = "auto") -> Tensor:
    """EGNO's temporal block on ``backend`` ("reference", "triton", "cpp" or "auto"); see
    :func:`temporal_residual_reference` for the contract.

    Args:
        x:          [N, P, C] or [N, P, 3, C].
        weight:     [C, C, I, 2], 1 <= I <= P // 2 + 1.
        leaky_relu: apply LeakyReLU(0.01) to K(x) before the residual add (scalar channels).
    Returns:
        same shape and dtype as ``x`` (under autocast too: the transform runs in ``x``'s dtype, not autocast's).
    """
    chosen = resolve_backend(check_backend_name(backend), x.device, "temporal_residual")
    if autocast_dtype(x.device.type) is None:
        return get_op("temporal_residual", chosen)(x, weight, leaky_relu)
    with torch.autocast(x.device.type, enabled=False):  # bf16 training: the temporal transform runs in float32
        return get_op("temporal_residual", chosen)(x, weight, leaky_relu)
