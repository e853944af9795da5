"""Fused Triton temporal Fourier convolution: ``x + act(K x)`` along the frame axis, forward and backward, as
registered PyTorch operators: ``torch.ops.egno_fast.triton_temporal_residual_forward`` (fake kernel and autograd
registered with torch.library) and ``..._backward``.

K keeps I Fourier modes of the P frames and mixes channels per mode (docs/design.md §1.3, §4.5). No FFT and no
complex tensors: each program owns a block of rows (a node, or one spatial component of a node's vector channels)
and a block of output channels, forms the I truncated DFT coefficients of its rows by sums over the P frames, mixes
channels with ``tl.dot`` (or broadcast sums for narrow channels), and applies the inverse real DFT, the activation
and the residual in registers: one write of the output, nothing stored between. The input is read a tile of frames
at a time (once per mode, from cache after the first); the output is formed a tile of at most 32 frames at a time,
so registers stay bounded at P = 64 (there the spectra are formed once per output tile).

Exactly as ``torch.fft.irfft`` does, the imaginary parts of the DC bin and (even P) the Nyquist bin are ignored,
and every other kept bin counts twice (its conjugate partner).

Backward: ``grad_pre = grad_out * act'(K x)`` (recomputing K x), then ``grad_x = grad_out + K^T grad_pre`` with the
same kernel (K^T is the spectral convolution with transposed, conjugated weights), and the weight gradient from
the truncated spectra of x and grad_pre with fixed-shape matrix products (deterministic, no atomics).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from egno_fast.ops.temporal_conv import check_temporal_shapes

TWO_PI = 2.0 * math.pi

# Modes of the one kernel.
MODE_FORWARD = 0  # out = residual + act(K x)
MODE_ACT_GRAD = 1  # out = residual * act'(K x)   (residual = grad_out)


@triton.jit
def spectral_conv_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, cos_ptr, sin_ptr,
    num_rows, rows_per_node, stride_node, stride_row, stride_frame,
    C_IN, C_OUT, NUM_MODES, w_stride_in, w_stride_out, w_imag_sign, P,
    BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_CI: tl.constexpr,
    BLOCK_CO: tl.constexpr, USE_DOT: tl.constexpr, LEAKY: tl.constexpr, MODE: tl.constexpr,
    IEEE: tl.constexpr, ACC: tl.constexpr, LOW_PRECISION_DOT: tl.constexpr,
):
    """x, res, out: rows of [P, C] (row r = node r // rows_per_node, component r % rows_per_node; channels
    contiguous). w: [C_in, C_out, I, 2] read through (w_stride_in, w_stride_out); w_imag_sign = -1 conjugates.
    cos, sin: [I, P] tables of cos / sin(2 pi m t / P) in the ACC dtype, sines of the DC and Nyquist bins zero.
    ACC is the accumulation dtype (fp32, or fp64 for fp64 inputs); LOW_PRECISION_DOT feeds tl.dot the input's
    bf16/fp16 operands (fp32 accumulation). The input is read BLOCK_T frames at a time; the output is formed
    BLOCK_O frames at a time (all P in one tile unless P is large: then the spectra are formed once per tile)."""
    pid_r = tl.program_id(0)
    pid_o = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < num_rows
    base = (rows // rows_per_node).to(tl.int64) * stride_node + (rows % rows_per_node).to(tl.int64) * stride_row
    outs = pid_o * BLOCK_CO + tl.arange(0, BLOCK_CO)
    out_ok = outs < C_OUT

    for o0 in range(0, P, BLOCK_O):
        frames = o0 + tl.arange(0, BLOCK_O)
        frame_ok = frames < P
        acc = tl.zeros((BLOCK_R, BLOCK_O, BLOCK_CO), dtype=ACC)
        for mode in range(0, NUM_MODES):
            # host-made tables: exact in fp64, and a Python float constant here would be rounded to fp32
            cos_t = tl.load(cos_ptr + mode * P + frames, mask=frame_ok, other=0.0)
            sin_t = tl.load(sin_ptr + mode * P + frames, mask=frame_ok, other=0.0)
            keep_sin = (mode != 0) & (2 * mode != P)
            y_re = tl.zeros((BLOCK_R, BLOCK_CO), dtype=ACC)
            y_im = tl.zeros((BLOCK_R, BLOCK_CO), dtype=ACC)
            for c0 in range(0, C_IN, BLOCK_CI):
                chans = c0 + tl.arange(0, BLOCK_CI)
                chan_ok = chans < C_IN
                s_re = tl.zeros((BLOCK_R, BLOCK_CI), dtype=ACC)  # the mode's DFT coefficients of the rows
                s_im = tl.zeros((BLOCK_R, BLOCK_CI), dtype=ACC)
                for t0 in range(0, P, BLOCK_T):
                    tile = t0 + tl.arange(0, BLOCK_T)
                    tile_ok = tile < P
                    offs = base[:, None, None] + tile[None, :, None] * stride_frame + chans[None, None, :]
                    mask = row_ok[:, None, None] & tile_ok[None, :, None] & chan_ok[None, None, :]
                    xc = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
                    cos_c = tl.load(cos_ptr + mode * P + tile, mask=tile_ok, other=0.0)
                    sin_c = tl.load(sin_ptr + mode * P + tile, mask=tile_ok, other=0.0)
                    s_re += tl.sum(xc * cos_c[None, :, None], axis=1)
                    s_im -= tl.sum(xc * sin_c[None, :, None], axis=1)
                w_offs = chans[:, None] * w_stride_in + outs[None, :] * w_stride_out + mode * 2
                w_mask = chan_ok[:, None] & out_ok[None, :]
                w_re = tl.load(w_ptr + w_offs, mask=w_mask, other=0.0).to(ACC)
                w_im = tl.load(w_ptr + w_offs + 1, mask=w_mask, other=0.0).to(ACC) * w_imag_sign
                if USE_DOT:
                    if LOW_PRECISION_DOT:
                        low = x_ptr.dtype.element_ty
                        s_re16, s_im16, w_re16, w_im16 = s_re.to(low), s_im.to(low), w_re.to(low), w_im.to(low)
                        y_re += tl.dot(s_re16, w_re16) - tl.dot(s_im16, w_im16)
                        y_im += tl.dot(s_re16, w_im16) + tl.dot(s_im16, w_re16)
                    elif IEEE:
                        y_re += tl.dot(s_re, w_re, input_precision="ieee") - \
                            tl.dot(s_im, w_im, input_precision="ieee")
                        y_im += tl.dot(s_re, w_im, input_precision="ieee") + \
                            tl.dot(s_im, w_re, input_precision="ieee")
                    else:
                        y_re += tl.dot(s_re, w_re) - tl.dot(s_im, w_im)
                        y_im += tl.dot(s_re, w_im) + tl.dot(s_im, w_re)
                else:
                    y_re += tl.sum(s_re[:, :, None] * w_re[None, :, :] - s_im[:, :, None] * w_im[None, :, :], axis=1)
                    y_im += tl.sum(s_re[:, :, None] * w_im[None, :, :] + s_im[:, :, None] * w_re[None, :, :], axis=1)
            weight = tl.where(keep_sin, 2.0, 1.0).to(ACC) / P
            acc += weight * (cos_t[None, :, None] * y_re[:, None, :] - sin_t[None, :, None] * y_im[:, None, :])

        offs = base[:, None, None] + frames[None, :, None] * stride_frame + outs[None, None, :]
        mask = row_ok[:, None, None] & frame_ok[None, :, None] & out_ok[None, None, :]
        res = tl.load(res_ptr + offs, mask=mask, other=0.0)
        if MODE == 0:
            if LEAKY:
                acc = tl.where(acc > 0, acc, acc / 100)  # LeakyReLU(0.01); / 100 keeps fp64 exact
            out = res.to(ACC) + acc
        else:
            res = res.to(ACC)
            out = tl.where(acc > 0, res, res / 100)
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# The dispatcher's finite table: BLOCK_P bucket x channel class -> block sizes and warps. Narrow channels (<= 8,
# the vector block's 1 or 2) use broadcast sums; wider ones tl.dot, which needs every dimension >= 16. Frames and
# channels beyond P and C are masked. Registers hold [BLOCK_R, BLOCK_T, BLOCK_CI] of the input and
# [BLOCK_R, BLOCK_O, BLOCK_CO] of the output at a time: sized so that no configuration spills (the AOT test).
BLOCK_P_VALUES = (4, 8, 16, 32, 64)
_DOT_BLOCKS = {4: (16, 64), 8: (16, 64), 16: (16, 32), 32: (16, 16), 64: (16, 16)}  # BLOCK_P -> (CI, CO)
INPUT_FRAME_TILE = 8  # BLOCK_T
OUTPUT_FRAME_TILE = 32  # BLOCK_O: beyond it the spectra are formed once per output tile


def block_config(num_frames: int, channels: int) -> Dict[str, int]:
    """Block sizes and warps for P = ``num_frames`` and C = ``channels`` (see the table above)."""
    if not 1 <= num_frames <= 64:
        raise ValueError(f"the Triton temporal convolution supports 1 <= P <= 64, got P = {num_frames}")
    block_p = max(4, _next_pow2(num_frames))
    tiles = dict(BLOCK_T=min(block_p, INPUT_FRAME_TILE), BLOCK_O=min(block_p, OUTPUT_FRAME_TILE))
    if channels <= 8:
        return dict(tiles, BLOCK_R=max(16, 128 // block_p), BLOCK_CI=8, BLOCK_CO=8, USE_DOT=False,
                    num_warps=2 if block_p <= 8 else 4)
    block_ci, block_co = _DOT_BLOCKS[block_p]
    return dict(tiles, BLOCK_R=16, BLOCK_CI=block_ci, BLOCK_CO=block_co, USE_DOT=True,
                num_warps=8 if tiles["BLOCK_O"] * block_co > 256 else 4)


def all_block_configs():
    """Every configuration :func:`block_config` can return (for ahead-of-time compilation tests)."""
    configs = [block_config(p, c) for p in BLOCK_P_VALUES for c in (8, 16)]
    return [cfg for i, cfg in enumerate(configs) if cfg not in configs[:i]]  # P = 32 and 64 share theirs


KERNEL_SIGNATURE = {name: "*fp32" for name in ("x_ptr", "res_ptr", "w_ptr", "out_ptr", "cos_ptr", "sin_ptr")}
KERNEL_SIGNATURE.update({name: "i32" for name in ("num_rows", "rows_per_node", "stride_node", "stride_row",
                                                  "stride_frame", "C_IN", "C_OUT", "NUM_MODES", "w_stride_in",
                                                  "w_stride_out", "P")})
KERNEL_SIGNATURE["w_imag_sign"] = "fp32"
# The kernel variants the registered operators launch: (name, MODE, LEAKY)
VARIANTS = (("forward_leaky", MODE_FORWARD, True), ("forward_linear", MODE_FORWARD, False),
            ("act_grad", MODE_ACT_GRAD, True))


def aot_configurations(production_only: bool = False):
    """(name, kernel, signature, constexprs, num_warps, expect_mma) for every configuration the dispatcher can
    launch on a GPU: each block configuration x each variant in fp32 with TF32 dots (the production setting), plus
    (unless ``production_only``) exact-fp32 ("ieee") and bf16 operands for the tl.dot configurations."""
    for cfg in all_block_configs():
        cfg = dict(cfg)
        warps = cfg.pop("num_warps")
        tag = "_".join(f"{k}{v}" for k, v in cfg.items())
        precisions = [("tf32", "*fp32", False, False)]
        if cfg["USE_DOT"] and not production_only:
            precisions += [("ieee", "*fp32", True, False), ("bf16", "*bf16", False, True)]
        for variant, mode, leaky in VARIANTS:
            for precision, pointer, ieee, low in precisions:
                signature = dict(KERNEL_SIGNATURE)
                for name in ("x_ptr", "res_ptr", "out_ptr", "w_ptr"):  # weights are cast to the input dtype
                    signature[name] = pointer
                constexprs = dict(cfg, LEAKY=leaky, MODE=mode, IEEE=ieee, ACC=tl.float32, LOW_PRECISION_DOT=low)
                expect_mma = cfg["USE_DOT"] and precision != "ieee"
                yield (f"{variant}_{precision}_{tag}", spectral_conv_kernel, signature, constexprs, warps, expect_mma)


def _use_ieee(dtype: torch.dtype) -> bool:
    """Exact fp32 dots unless the user allowed TF32 (torch.backends.cuda.matmul.allow_tf32 or the matmul
    precision); float64 always uses exact dots."""
    if dtype == torch.float64:
        return True
    return not (torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest")


def _as_rows(x: Tensor) -> Tuple[int, int, int, int, int, int]:
    """Describe a contiguous [N, P, C] or [N, P, 3, C] tensor as rows of [P, C]:
    (num_rows, rows_per_node, stride_node, stride_row, stride_frame, channels)."""
    if x.dim() == 3:
        n, p, c = x.shape
        return n, 1, p * c, 0, c, c
    n, p, d, c = x.shape
    return n * d, d, p * d * c, c, d * c, c


def _launch(x: Tensor, residual: Tensor, weight: Tensor, out: Tensor, leaky: bool, mode: int,
            adjoint: bool) -> Tensor:
    num_rows, per_node, stride_node, stride_row, stride_frame, channels = _as_rows(x)
    c_in, c_out, num_modes, _ = weight.shape
    if adjoint:  # K^T: channels flow out -> in, imaginary parts conjugated
        c_in, c_out = c_out, c_in
        w_stride_in, w_stride_out, sign = num_modes * 2, weight.shape[1] * num_modes * 2, -1.0
    else:
        w_stride_in, w_stride_out, sign = weight.shape[1] * num_modes * 2, num_modes * 2, 1.0
    cfg = block_config(x.shape[1], channels)
    grid = (triton.cdiv(num_rows, cfg["BLOCK_R"]), triton.cdiv(c_out, cfg["BLOCK_CO"]))
    if num_rows == 0:
        return out
    cos, sin = dft_tables(x.shape[1], num_modes, torch.float64 if x.dtype == torch.float64 else torch.float32,
                          x.device)
    spectral_conv_kernel[grid](
        x, residual, weight, out, cos, sin, num_rows, per_node, stride_node, stride_row, stride_frame,
        c_in, c_out, num_modes, w_stride_in, w_stride_out, sign, x.shape[1],
        LEAKY=leaky, MODE=mode, IEEE=_use_ieee(x.dtype),
        ACC=tl.float64 if x.dtype == torch.float64 else tl.float32,
        LOW_PRECISION_DOT=x.dtype in (torch.bfloat16, torch.float16), **cfg)
    return out


_TABLES: Dict[tuple, Tuple[Tensor, Tensor]] = {}


def dft_tables(num_frames: int, num_modes: int, dtype: torch.dtype, device: torch.device) -> Tuple[Tensor, Tensor]:
    """cos and sin of 2 pi m t / P as [I, P] tensors (cached); the sines of the DC and Nyquist bins are exactly 0,
    so their imaginary parts drop out as in irfft."""
    key = (num_frames, num_modes, dtype, str(device))
    if key not in _TABLES:
        modes = torch.arange(num_modes)
        frames = torch.arange(num_frames)
        phase = ((modes[:, None] * frames[None, :]) % num_frames).to(torch.float64) * (TWO_PI / num_frames)
        sin = torch.sin(phase)
        sin[(modes == 0) | (2 * modes == num_frames)] = 0
        _TABLES[key] = (torch.cos(phase).to(dtype=dtype, device=device).contiguous(),
                        sin.to(dtype=dtype, device=device).contiguous())
    return _TABLES[key]


def spectral_spectra(x: Tensor, num_modes: int) -> Tuple[Tensor, Tensor]:
    """Truncated DFT along axis 1 with real matrices: x [N, P, ..., C] -> (re, im) [N, I, ..., C] (x's dtype,
    accumulated by a matrix product). Imaginary parts of the DC and Nyquist bins are exactly zero."""
    num_frames = x.shape[1]
    cos, sin = dft_tables(num_frames, num_modes, x.dtype, x.device)
    flat = x.reshape(x.shape[0], num_frames, -1)
    re = torch.matmul(cos, flat).reshape(x.shape[0], num_modes, *x.shape[2:])
    im = -torch.matmul(sin, flat).reshape(x.shape[0], num_modes, *x.shape[2:])
    return re, im


# ---------------------------------------------------------------------------------------------------------------------
# The registered operators: torch.ops.egno_fast.triton_temporal_residual_forward / _backward
# ---------------------------------------------------------------------------------------------------------------------
_FORWARD_SCHEMA = "(Tensor x, Tensor weight, bool leaky) -> Tensor"
_BACKWARD_SCHEMA = ("(Tensor grad_out, Tensor x, Tensor weight, bool leaky, bool x_grad, bool weight_grad) "
                    "-> (Tensor grad_x, Tensor grad_weight)")


def _forward(x: Tensor, weight: Tensor, leaky: bool) -> Tensor:
    """``x + act(K_w x)``: x [N, P, C] or [N, P, 3, C] (any strides), weight [C, C, I, 2] -> contiguous, x's
    shape."""
    check_temporal_shapes(x, weight)
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty_like(x)
    return _launch(x, x, weight, out, leaky, MODE_FORWARD, adjoint=False)


def _backward_kernels(grad_out: Tensor, x: Tensor, weight: Tensor, leaky: bool, x_grad: bool,
                      weight_grad: bool) -> Tuple[Tensor, Tensor]:
    """(dL/dx, dL/dweight); one that is not asked for is an empty [0] tensor."""
    check_temporal_shapes(x, weight)
    x, weight, grad_out = x.contiguous(), weight.contiguous(), grad_out.contiguous()
    if leaky:
        grad_pre = _launch(x, grad_out, weight, torch.empty_like(x), True, MODE_ACT_GRAD, adjoint=False)
    else:
        grad_pre = grad_out
    grad_x = (_launch(grad_pre, grad_out, weight, torch.empty_like(x), False, MODE_FORWARD, adjoint=True)
              if x_grad else x.new_empty(0))
    grad_w = _weight_grad(x, grad_pre, weight) if weight_grad else weight.new_empty(0)
    return grad_x, grad_w


forward_op = torch.library.custom_op("egno_fast::triton_temporal_residual_forward", _forward, mutates_args=(),
                                     schema=_FORWARD_SCHEMA)
backward_op = torch.library.custom_op("egno_fast::triton_temporal_residual_backward", _backward_kernels,
                                      mutates_args=(), schema=_BACKWARD_SCHEMA)


@forward_op.register_fake
def _forward_fake(x, weight, leaky):
    check_temporal_shapes(x, weight)
    return x.new_empty(x.shape)


@backward_op.register_fake
def _backward_fake(grad_out, x, weight, leaky, x_grad, weight_grad):
    return (x.new_empty(x.shape if x_grad else (0,)), weight.new_empty(weight.shape if weight_grad else (0,)))


def _setup_context(ctx, inputs, output):
    x, weight, leaky = inputs
    ctx.save_for_backward(x, weight)
    ctx.leaky = leaky


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    x_grad, weight_grad = ctx.needs_input_grad[:2]
    grad_x, grad_w = backward_op(grad_out, x, weight, ctx.leaky, x_grad, weight_grad)
    return (grad_x if x_grad else None), (grad_w if weight_grad else None), None


forward_op.register_autograd(_backward, setup_context=_setup_context)


def _weight_grad(x: Tensor, grad_pre: Tensor, weight: Tensor) -> Tensor:
    """dL/dW [C_in, C_out, I, 2] from the spectra of x and of grad_pre (fixed-shape matmuls: deterministic)."""
    num_frames, num_modes = x.shape[1], weight.shape[2]
    if x.dtype in (torch.bfloat16, torch.float16):  # reduce in fp32
        x, grad_pre = x.float(), grad_pre.float()
    x_re, x_im = spectral_spectra(x, num_modes)  # [N, I, ..., C_in]
    g_re, g_im = spectral_spectra(grad_pre, num_modes)  # [N, I, ..., C_out]; the backward of irfft is a DFT
    scale = torch.full((num_modes,), 2.0 / num_frames, dtype=x.dtype, device=x.device)
    scale[0] = 1.0 / num_frames
    if num_frames % 2 == 0 and num_modes > num_frames // 2:
        scale[num_frames // 2] = 1.0 / num_frames
    shape = (num_modes, -1)
    # rows of every node (and spatial component) per mode: [I, R, C]
    xr, xi = (t.transpose(0, 1).reshape(*shape, t.shape[-1]) for t in (x_re, x_im))
    gr, gi = (t.transpose(0, 1).reshape(*shape, t.shape[-1]) * scale[:, None, None] for t in (g_re, g_im))
    # G = dL/dY: Re part = scale * sum_t g cos, Im part = -scale * sum_t g sin = scale * g_im
    d_re = torch.bmm(xr.transpose(1, 2), gr) + torch.bmm(xi.transpose(1, 2), gi)  # [I, C_in, C_out]
    d_im = torch.bmm(xr.transpose(1, 2), gi) - torch.bmm(xi.transpose(1, 2), gr)
    return torch.stack([d_re, d_im], dim=-1).permute(1, 2, 0, 3).contiguous().to(weight.dtype)
