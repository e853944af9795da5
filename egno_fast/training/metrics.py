"""Per-frame MSE, the reference convention: mean over nodes and the 3 coordinates of (x_pred - x_true)^2."""
from torch import Tensor


def frame_squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """[P, N, 3] pred and target -> [P] sum over nodes and coordinates of the squared error."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {list(pred.shape)} and target {list(target.shape)} differ in shape")
    return ((pred - target) ** 2).sum(dim=(1, 2))


def frame_mse(pred: Tensor, target: Tensor) -> Tensor:
    """[P, N, 3] pred and target -> [P] per-frame MSE. The training loss (A-MSE) is its mean, F-MSE its last."""
    return frame_squared_error(pred, target) / (pred.shape[1] * pred.shape[2])
