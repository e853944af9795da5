"""Zero-shot temporal resampling (docs/design.md §1.7; the paper's Fig. 3): a model trained on P uniform frames
predicts K x P frames.

The time embedding takes the physical time of each output: a target at frame offset o of the span (the training
frames sit at offsets span * (t + 1) / P, indices t = 0..P-1) is queried at index ``o * P / span - 1``, fractional
between training frames. The Fourier layers see K x P frames and keep their I modes. Ground truth comes from the
same data at the finer offsets (the N-body recordings have one frame per 100 steps, so the 10-frame span holds
ground truth for 2P = 10 outputs).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List

import torch

from ..config import ExperimentConfig
from ..data.registry import make_datasets
from .trainer import evaluate, make_loader


def resampled_frame_times(offsets: List[int], trained_frames: int, span: int) -> torch.Tensor:
    """[len(offsets)] embedding indices of targets at frame ``offsets`` for a model trained on ``trained_frames``
    uniform frames over ``span``."""
    return torch.tensor(offsets, dtype=torch.float64) * trained_frames / span - 1


def evaluate_resampled(model: torch.nn.Module, config: ExperimentConfig, factor: int, split: str = "test",
                       device: torch.device | str = "cpu", progress: bool = False) -> Dict[str, object]:
    """F-MSE, A-MSE and per-frame MSE of ``model`` (trained with ``config``) on ``factor`` x P uniform frames.

    Returns the metrics with the frame ``offsets`` and the embedding ``frame_times`` used.
    Raises ValueError for the "last" discretisation (its frames are adjacent: no finer ground truth exists).
    """
    if config.data.discretisation != "uniform":
        raise ValueError("zero-shot resampling needs a model trained on uniform frames (EGNO-U); "
                         f"this one used {config.data.discretisation!r}")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    data = dataclasses.replace(config.data, num_frames=config.data.num_frames * factor)
    dataset = make_datasets(data, progress=progress)[split]  # raises if K x P frames exceed the span
    times = resampled_frame_times(dataset.offsets, config.data.num_frames, dataset.span)
    metrics = evaluate(model, make_loader(dataset, config.train.batch_size, False, 0), device, times)
    return dict(metrics, offsets=list(dataset.offsets), frame_times=times.tolist(), factor=factor, split=split)
