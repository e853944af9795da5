"""Training and evaluation with the paper's conventions (A-MSE loss, F-MSE model selection, early stopping)."""
from .metrics import frame_mse
from .trainer import TrainResult, evaluate, train

__all__ = ["frame_mse", "evaluate", "train", "TrainResult"]
