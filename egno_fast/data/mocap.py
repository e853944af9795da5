"""CMU motion capture (subject 9, running) with the EGNO protocol (docs/design.md §2.3, data/files/README.md)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .batching import StartFrameDataset
from .io import load_npz
from .protocol import check_split, target_offsets

MOCAP_FILE = "cmu_mocap_run_subject9.npz"
MOCAP_ENV = "EGNO_FAST_MOCAP"
_FILE_SPLIT = {"train": "train", "valid": "val", "test": "test"}
SPAN = 30  # Delta: frames between the input and the last target


SHIPPED_FILE = Path(__file__).resolve().parent / "files" / MOCAP_FILE  # shipped with the package


def find_mocap_file(data_dir: Optional[str | Path] = None) -> Path:
    """$EGNO_FAST_MOCAP if set, else ``data_dir``/cmu_mocap_run_subject9.npz if ``data_dir`` is given, else the file
    shipped with the package; a clear error if the chosen file is absent."""
    if os.environ.get(MOCAP_ENV):
        path = Path(os.environ[MOCAP_ENV])
    else:
        path = Path(data_dir) / MOCAP_FILE if data_dir else SHIPPED_FILE
    if not path.exists():
        raise FileNotFoundError(f"motion-capture file not found: {path}. Set ${MOCAP_ENV} to the file, or pass "
                                f"--data-dir with the folder holding {MOCAP_FILE} (the package ships one: "
                                "leave both unset to use it)")
    return path


def skeleton_edges(bones: np.ndarray, num_joints: int):
    """Bones as 1-hop edges plus 2-hop pairs, both directions, no self loops.

    Returns:
        edge_index [2, E] (row 0 = sender, row 1 = receiver), hop [E] (1 or 2).
    """
    adjacency = torch.zeros(num_joints, num_joints, dtype=torch.bool)
    b = torch.as_tensor(bones)
    adjacency[b[:, 0], b[:, 1]] = adjacency[b[:, 1], b[:, 0]] = True
    two_hop = ((adjacency.float() @ adjacency.float()) > 0) & ~adjacency & ~torch.eye(num_joints, dtype=torch.bool)
    receiver, sender = (adjacency | two_hop).nonzero().T
    hop = torch.where(adjacency[receiver, sender], 1.0, 2.0)
    return torch.stack([sender, receiver]), hop


class MocapDataset(StartFrameDataset):
    """One split: input = frame t of a trial (position, velocity X[t+1] - X[t]), targets = P later frames.

    Discretisation "last" (EGNO-L, the reference's default): frames t+26..t+30 for P = 5; "uniform" (EGNO-U):
    t + 30 p / P. Node features [|v|, y / height_scale] with the height scale a constant of the training set;
    edge features [hop, |x_i - x_j|^2] of the input frame.

    Args:
        arrays:       the arrays of the data file.
        split:        "train", "valid" or "test".
        max_samples:  per-trial quota = max_samples // number of trials, the first starts of each trial in the
                      stored order (None: all).
        height_scale: divide heights by this (use :func:`mocap_datasets`, which takes it from the training set).
    """

    def __init__(self, arrays: Dict[str, np.ndarray], split: str, num_frames: int = 5,
                 max_samples: Optional[int] = None, discretisation: str = "last", height_scale: float = 1.0):
        offsets = np.array(target_offsets(num_frames, SPAN, discretisation))
        trials = arrays[f"{_FILE_SPLIT[check_split(split)]}_trial"]
        starts = arrays[f"{_FILE_SPLIT[split]}_start"]
        trial_ids = list(dict.fromkeys(trials.tolist()))  # stored order
        quota = len(trials) if max_samples is None else max_samples // len(trial_ids)
        keep = np.concatenate([np.flatnonzero(trials == t)[:quota] for t in trial_ids])
        ptr, positions = arrays["trial_ptr"], torch.as_tensor(arrays["positions"], dtype=torch.float32)
        first = torch.as_tensor(ptr[trials[keep]] + starts[keep])  # global frame of each input
        last = torch.as_tensor(ptr[trials[keep] + 1])
        if bool((first + SPAN >= last).any()):
            raise ValueError("a start frame leaves fewer than 30 frames (+1 for the velocity) in its trial")
        self.split, self.offsets, self.span, self.height_scale = split, offsets.tolist(), SPAN, height_scale
        self.x = positions[first]  # [S, J, 3]
        self.v = positions[first + 1] - positions[first]
        self.targets = positions[first[:, None] + torch.as_tensor(offsets)[None]]  # [S, P, J, 3]
        self.edge_index, self.hop = skeleton_edges(arrays["bones"], positions.shape[1])

    def features(self, index, x, v, sender, receiver, dist2):
        h = torch.stack([v.norm(dim=-1), x[:, 1] / self.height_scale], dim=-1)
        return h, torch.stack([self.hop, dist2], dim=-1)


def mocap_datasets(path: str | Path, num_frames: int = 5, discretisation: str = "last",
                   max_train_samples: Optional[int] = 200, max_eval_samples: Optional[int] = 600
                   ) -> Dict[str, MocapDataset]:
    """The three splits, with the height scale (maximum height over the training inputs) shared by all."""
    arrays = load_npz(path, required=["positions", "trial_ptr", "bones"] + [f"{s}_{k}" for s in ("train", "val", "test")
                                                                             for k in ("trial", "start")])
    train = MocapDataset(arrays, "train", num_frames, max_train_samples, discretisation)
    scale = float(train.x[..., 1].max())
    train.height_scale = scale
    return {"train": train, **{split: MocapDataset(arrays, split, num_frames, max_eval_samples, discretisation, scale)
                               for split in ("valid", "test")}}
