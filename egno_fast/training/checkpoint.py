"""Checkpoints written atomically (a crash leaves the previous file intact) and loaded with clear errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

from ..data.io import atomic_path


def save_checkpoint(path: str | Path, state: Dict[str, Any]) -> None:
    """torch.save ``state`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path} is not a readable egno_fast checkpoint: {error}") from error
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not an egno_fast checkpoint (no 'model' and 'config' entries)")
    return state
