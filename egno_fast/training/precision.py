"""Training precision (``train.precision``): float32, or bf16 autocast for the MLPs' linear layers."""
from __future__ import annotations

from contextlib import nullcontext

import torch


def precision_context(precision: str, device: torch.device | str):
    """The context a forward runs in for ``train.precision``: bf16 autocast on ``device``, or none ("fp32")."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {precision!r}")
    return nullcontext()
