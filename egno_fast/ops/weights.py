"""Named weight structures that the ops take (tensors only: the nn modules own the parameters and build these).

Shapes follow ``nn.Linear``: a weight is [out, in], a bias [out].
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor, nn
from torch.nn import functional as F

EGNN_LEAKY_SLOPE = 0.2  # the slope of "leaky_relu" in the EGNN layer (the public EGNN code's LeakyReLU(0.2))
# The activations the EGNN layer offers, as modules (what the nn layers hold) and as functions (below).
ACTIVATION_MODULES = {"silu": nn.SiLU, "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(EGNN_LEAKY_SLOPE)}
ACTIVATIONS = tuple(ACTIVATION_MODULES)


class LinearWeights(NamedTuple):
    """One affine map ``y = x W^T + b``: weight [out, in], bias [out] or None (no bias)."""

    weight: Tensor
    bias: Optional[Tensor]


class MLPWeights(NamedTuple):
    """A two-layer MLP ``second(act(first(x)))`` (some MLPs also apply ``act`` after ``second``: the op says)."""

    first: LinearWeights
    second: LinearWeights


def activation(x: Tensor, name: str) -> Tensor:
    """``name`` ("silu", "relu" or "leaky_relu") applied to ``x`` (any shape)."""
    if name == "silu":
        return F.silu(x)
    if name == "relu":
        return F.relu(x)
    if name == "leaky_relu":
        return F.leaky_relu(x, EGNN_LEAKY_SLOPE)
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def mlp(x: Tensor, weights: MLPWeights, act: str, last_activation: bool = False) -> Tensor:
    """``second(act(first(x)))``, with ``act`` once more at the end if ``last_activation``.

    Under ``torch.autocast`` (bf16 training) the linear layers take bf16 operands and the result comes back in
    ``x``'s dtype: what follows (coordinates, sums over edges, residuals) stays in float32.

    Args:
        x: [..., in]; weights: first [hidden, in], second [out, hidden].
    Returns:
        [..., out], dtype of ``x``.
    """
    out = F.linear(activation(F.linear(x, *weights.first), act), *weights.second)
    out = activation(out, act) if last_activation else out
    return out if out.dtype == x.dtype else out.to(x.dtype)
