"""Fused temporal Fourier convolution on the CPU (csrc/cpu/temporal_conv_cpu.cpp), forward and backward."""
from __future__ import annotations

import torch
from torch import Tensor

_ops = torch.ops.egno_fast


@torch.library.register_fake("egno_fast::temporal_residual_forward")
def _forward_fake(x, weight, leaky):
    return torch.empty_like(x), (torch.empty_like(x) if leaky else x.new_empty((0,)))


@torch.library.register_fake("egno_fast::temporal_residual_backward")
def _backward_fake(grad_out, x, pre, weight, leaky):
    return torch.empty_like(x), torch.empty_like(weight)


class TemporalResidualCppFunction(torch.autograd.Function):
    """``x + act(K_w x)``; x [N, P, C] or [N, P, 3, C], weight [C, C, I, 2]."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, leaky: bool) -> Tensor:
        out, pre = _ops.temporal_residual_forward(x, weight, leaky)
        ctx.save_for_backward(x, pre, weight)
        ctx.leaky = leaky
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, pre, weight = ctx.saved_tensors
        grad_x, grad_w = _ops.temporal_residual_backward(grad_out, x, pre, weight, ctx.leaky)
        return grad_x, grad_w, None


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
    :func:`egno_fast.reference.temporal_conv.temporal_residual_reference`.

    Args:
        x:      [N, P, C] or [N, P, 3, C], float32 or float64.
        weight: [C, C, I, 2], 1 <= I <= P // 2 + 1.
    """
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the cpp temporal convolution runs float32 or float64, got {x.dtype}")
    if x.shape[-1] != weight.shape[0] or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"channels of x ({x.shape[-1]}) and weight {list(weight.shape)} do not match")
    weight = weight.to(x.dtype)
    if x.dim() == 4 and x.shape[-1] <= VECTOR_AS_SCALAR_MAX_CHANNELS:
        n, p, s, c = x.shape
        wide = x.contiguous().view(n, p, s * c)
        out = TemporalResidualCppFunction.apply(wide, _block_diagonal(weight, s).contiguous(), leaky_relu)
        return out.view(n, p, s, c)
    return TemporalResidualCppFunction.apply(x.contiguous(), weight.contiguous(), leaky_relu)
