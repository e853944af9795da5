"""The EGNN layer's node half: after the edge sums, the position update and the node MLP.

    x_new = x + velocity_mlp(h) v + clamp(coord_sum / max(degree, 1))     (:data:`CLAMP_MODES`; EGNO's: to +-100)
    h_new = node_mlp([h, msg_sum])

with ``velocity_mlp = Linear(H, H), SiLU, Linear(H, 1)`` and ``node_mlp = Linear(2H, H), SiLU, Linear(H, H)``.
Entry points per backend, all ``(x, v, h, sums, degree, weights) -> NodeUpdate``: "reference" (plain PyTorch,
below; the Triton layer runs it on the GPU), "cpp" (the operator ``egno_fast::egnn_node_forward`` of
csrc/cpu/egnn_node_cpu.cpp; its autograd and fake kernels below). :func:`egnn_node_update` dispatches. The weights'
field names are the C++ schema's argument names.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from ..backends import check_backend_name, get_op, register, resolve_backend
from .egnn_edge import EdgeSums

COORD_CLAMP = 100.0  # EGNO's clamp: each component of the mean coordinate message to [-100, 100]
# The clamps of the mean coordinate message the node half runs (numbered as the C++ operator takes them): each
# component to +-bound (EGNO's, the public code's: it breaks rotation equivariance whenever it acts), the vector's
# norm to bound (equivariant), or none. The layer's "edge" clamp acts on each edge's message, in the edge half.
CLAMP_MODES = {"mean": 0, "norm": 1, "none": 2}


def clamp_coordinate_update(update: Tensor, clamp: str, bound: float) -> Tensor:
    """The node half's clamp (:data:`CLAMP_MODES`) of the mean coordinate messages ``update`` [..., 3]."""
    if clamp == "mean":
        return update.clamp(-bound, bound)
    if clamp == "norm":
        return update * (bound / update.norm(dim=-1, keepdim=True).clamp(min=bound))
    if clamp == "none":
        return update
    raise ValueError(f"the node half's clamp must be one of {sorted(CLAMP_MODES)}, got {clamp!r}")


class EGNNNodeWeights(NamedTuple):
    """The velocity and node MLPs' weights (H hidden)."""

    w_vel_hidden: Tensor  # [H, H]
    b_vel_hidden: Tensor  # [H]
    w_vel_out: Tensor  # [H]  one output
    b_vel_out: Tensor  # [1]
    w_node_hidden: Tensor  # [H, 2H]
    b_node_hidden: Tensor  # [H]
    w_node_out: Tensor  # [H, H]
    b_node_out: Tensor  # [H]


class NodeUpdate(NamedTuple):
    """x_new [N, P, 3] and h_new [N, P, H]."""

    x: Tensor
    h: Tensor


def egnn_node_reference(x: Tensor, v: Tensor, h: Tensor, sums: EdgeSums, degree: Tensor,
                        weights: EGNNNodeWeights, clamp: str = "mean", clamp_value: float = COORD_CLAMP) -> NodeUpdate:
    """The node half in plain PyTorch (module docstring).

    Args:
        x, v:   [N, P, 3]; h: [N, P, H].
        sums:   the edge half's :class:`EdgeSums` (msg_sum [N, P, H], coord_sum [N, P, 3]).
        degree: [N] in-degree clamped to >= 1, in x's dtype.
        weights: :class:`EGNNNodeWeights`.
        clamp, clamp_value: the clamp of the mean coordinate message (:data:`CLAMP_MODES`) and its bound.
    Returns:
        :class:`NodeUpdate`.
    """
    w = weights
    speed = F.linear(F.silu(F.linear(h, w.w_vel_hidden, w.b_vel_hidden)), w.w_vel_out[None], w.b_vel_out)
    x_new = x + speed * v + clamp_coordinate_update(sums.coord_sum / degree[:, None, None], clamp, clamp_value)
    hidden = F.silu(F.linear(torch.cat([h, sums.msg_sum], dim=-1), w.w_node_hidden, w.b_node_hidden))
    return NodeUpdate(x_new, F.linear(hidden, w.w_node_out, w.b_node_out))


# ---------------------------------------------------------------------------------------------------------------------
# "cpp": the extension's egnn_node_forward / _backward
# ---------------------------------------------------------------------------------------------------------------------
def _forward_fake(h, msg_sum, coord_sum, x, v, degree, *weights):
    return x.new_empty(x.shape), h.new_empty(h.shape), h.new_empty((4, h.shape[0] * h.shape[1], h.shape[2]))


_NUM_WEIGHTS = len(EGNNNodeWeights._fields)


def _backward_fake(g_x_new, g_h_new, activations, h, msg_sum, coord_sum, v, degree, *args):
    return [h.new_empty(h.shape), h.new_empty(h.shape), v.new_empty(v.shape), v.new_empty(v.shape),
            *(w.new_empty(w.shape) for w in args[:_NUM_WEIGHTS])]


def _setup_context(ctx, inputs, output):
    h, msg_sum, coord_sum, _x, v, degree, *rest = inputs
    ctx.save_for_backward(output[2], h, msg_sum, coord_sum, v, degree, *rest[:_NUM_WEIGHTS])
    ctx.clamp_mode, ctx.clamp_value = rest[_NUM_WEIGHTS:]
    ctx.mark_non_differentiable(output[2])  # the stored activations: no gradient flows into them
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (handled below), not a zeros tensor


def _backward(ctx, g_x, g_h, _g_activations):
    activations, h, msg_sum, coord_sum, v, degree, *weights = ctx.saved_tensors
    g_x = torch.zeros_like(v) if g_x is None else g_x
    g_h = torch.zeros_like(h) if g_h is None else g_h
    g_h_in, g_msg, g_coord, g_v, *g_weights = torch.ops.egno_fast.egnn_node_backward(
        g_x, g_h, activations, h, msg_sum, coord_sum, v, degree, **EGNNNodeWeights(*weights)._asdict(),
        clamp_mode=ctx.clamp_mode, clamp_value=ctx.clamp_value)
    return (g_h_in, g_msg, g_coord, g_x, g_v, None, *g_weights, None, None)  # dL/dx = dL/dx_new


# Registered by :mod:`egno_fast.cpp` once the extension's operators exist: their fake (meta) kernels, so they trace
# under torch.compile and export, and the forward operator's autograd, (backward, setup_context) for
# ``torch.library.register_autograd``. The forward stores the two SiLUs' values and derivatives [4, N P, H]
# (egnn_node_cpu.cpp).
FAKE_KERNELS = {"egno_fast::egnn_node_forward": _forward_fake, "egno_fast::egnn_node_backward": _backward_fake}
AUTOGRAD = {"egno_fast::egnn_node_forward": (_backward, _setup_context)}


def egnn_node_cpp(x: Tensor, v: Tensor, h: Tensor, sums: EdgeSums, degree: Tensor, weights: EGNNNodeWeights,
                  clamp: str = "mean", clamp_value: float = COORD_CLAMP) -> NodeUpdate:
    """The node half in one fused op on CPU tensors (float32 or float64), the registered operator
    ``egno_fast::egnn_node_forward``; contract of :func:`egnn_node_reference`."""
    if clamp not in CLAMP_MODES:
        raise ValueError(f"the node half's clamp must be one of {sorted(CLAMP_MODES)}, got {clamp!r}")
    weights = EGNNNodeWeights(*(w.to(h.dtype) for w in weights))
    x_new, h_new, _ = torch.ops.egno_fast.egnn_node_forward(h, sums.msg_sum, sums.coord_sum, x, v, degree,
                                                            **weights._asdict(), clamp_mode=CLAMP_MODES[clamp],
                                                            clamp_value=float(clamp_value))
    return NodeUpdate(x_new, h_new)


register("egnn_node", "reference", egnn_node_reference)
register("egnn_node", "cpp", egnn_node_cpp, devices=("cpu",))


def egnn_node_update(x: Tensor, v: Tensor, h: Tensor, sums: EdgeSums, degree: Tensor, weights: EGNNNodeWeights,
                     clamp: str = "mean", clamp_value: float = COORD_CLAMP, backend: str = "auto") -> NodeUpdate:
    """The node half on ``backend`` ("reference", "cpp" or "auto"); contract of :func:`egnn_node_reference`."""
    chosen = resolve_backend(check_backend_name(backend), x.device, "egnn_node")
    return get_op("egnn_node", chosen)(x, v, h, sums, degree, weights, clamp, clamp_value)
