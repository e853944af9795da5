"""The EGNO sampling protocol shared by the datasets: splits, and where the P target frames fall."""
from typing import List

SPLITS = ("train", "valid", "test")


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
