"""Per-frame MSE, the reference convention: mean over nodes and the 3 coordinates of (x_pred - x_true)^2; the
check that a loss or metric is finite before anything is written for it; the peak memory of a run."""
import math
from typing import Dict

import torch
from torch import Tensor


class NonFiniteError(ValueError):
    """A loss or metric is NaN or infinite (the data of that split, or the model's outputs, are not finite)."""


def require_finite(values: Dict[str, float], where: str) -> None:
    """Raise :class:`NonFiniteError` naming ``where`` and each value of ``values`` (name -> number) that is NaN or
    infinite."""
    bad = [f"{name} = {value}" for name, value in values.items() if not math.isfinite(value)]
    if bad:
        raise NonFiniteError(f"{where}: {', '.join(bad)} is not finite; check that split's data for NaN or infinite "
                             f"values (or the learning rate, if training diverged)")


def frame_squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """[P, N, 3] pred and target -> [P] sum over nodes and coordinates of the squared error."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {list(pred.shape)} and target {list(target.shape)} differ in shape")
    return ((pred - target) ** 2).sum(dim=(1, 2))


def frame_mse(pred: Tensor, target: Tensor) -> Tensor:
    """[P, N, 3] pred and target -> [P] per-frame MSE. The training loss (A-MSE) is its mean, F-MSE its last."""
    return frame_squared_error(pred, target) / (pred.shape[1] * pred.shape[2])


def peak_memory_mb(device: "torch.device | str") -> float:
    """The peak memory of this process so far in MiB: CUDA memory allocated by torch on a GPU, else the peak
    resident set size (what the operating system counts: Python, torch and the data included)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 1024)
