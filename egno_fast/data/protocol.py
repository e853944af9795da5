"""The EGNO sampling protocol shared by the datasets: splits, and where the P target frames fall."""
from typing import Dict, List, Tuple

import numpy as np

SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # chronological parts of a trajectory (protein, any trajectory file)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def target_offsets(num_frames: int, span: int, discretisation: str) -> List[int]:
    """Frame offsets of the P targets after the input frame.

    "uniform" (EGNO-U): span * p // P for p = 1..P; "last" (EGNO-L): the last P frames, span - P + p.
    """
    if discretisation not in ("uniform", "last"):
        raise ValueError(f"discretisation must be 'uniform' or 'last', got {discretisation!r}")
    if not 1 <= num_frames <= span:
        raise ValueError(f"num_frames must be in [1, span = {span}], got {num_frames}")
    if discretisation == "uniform":
        return [span * p // num_frames for p in range(1, num_frames + 1)]
    return [span - num_frames + p for p in range(1, num_frames + 1)]


def split_frames(num_frames: int) -> Dict[str, Tuple[int, int]]:
    """The chronological [begin, end) frame range of each split for ``num_frames`` frames (60 / 20 / 20 %)."""
    bounds = np.round(np.cumsum((0.0,) + SPLIT_FRACTIONS) * num_frames).astype(int)
    return {split: (int(bounds[k]), int(bounds[k + 1])) for k, split in enumerate(SPLITS)}
