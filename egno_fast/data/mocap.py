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
        source:       the file the arrays come from, for error messages (:func:`check_mocap_arrays`).
    """

    def __init__(self, arrays: Dict[str, np.ndarray], split: str, num_frames: int = 5,
                 max_samples: Optional[int] = None, discretisation: str = "last", height_scale: float = 1.0,
                 source: str | Path = "the motion-capture arrays"):
        check_mocap_arrays(arrays, source)
        offsets = np.array(target_offsets(num_frames, SPAN, discretisation))
        trials = arrays[f"{_FILE_SPLIT[check_split(split)]}_trial"]
        starts = arrays[f"{_FILE_SPLIT[split]}_start"]
        trial_ids = list(dict.fromkeys(trials.tolist()))  # stored order
        quota = len(trials) if max_samples is None else max_samples // len(trial_ids)
        keep = np.concatenate([np.flatnonzero(trials == t)[:quota] for t in trial_ids])
        ptr, positions = arrays["trial_ptr"], torch.as_tensor(arrays["positions"], dtype=torch.float32)
        first = torch.as_tensor(ptr[trials[keep]] + starts[keep])  # global frame of each input
        self.split, self.offsets, self.span, self.height_scale = split, offsets.tolist(), SPAN, height_scale
        self.x = positions[first]  # [S, J, 3]
        self.v = positions[first + 1] - positions[first]
        self.targets = positions[first[:, None] + torch.as_tensor(offsets)[None]]  # [S, P, J, 3]
        self.edge_index, self.hop = skeleton_edges(arrays["bones"], positions.shape[1])
        self.bonds = self.edge_index[:, self.hop == 1]  # the bones, both directions ("eghn" scoring network)

    def features(self, index, x, v, sender, receiver, dist2):
        h = torch.stack([v.norm(dim=-1), x[:, 1] / self.height_scale], dim=-1)
        return h, torch.stack([self.hop, dist2], dim=-1)


def check_mocap_arrays(arrays: Dict[str, np.ndarray], source: str | Path) -> None:
    """Range checks of a motion-capture file, so that a damaged or hand-edited file is refused rather than read with
    wrapped-around indices: positions finite [F, J, 3]; trial_ptr from 0 to F, non-decreasing; bones [B, 2] joint
    pairs in [0, J) without self-bones; per split, trial ids in range and start frames that leave the 30 frames (+1 for
    the velocity) the protocol needs inside their trial. Raises ValueError naming the file (``source``), the array and
    the entry."""
    def fail(message: str) -> None:
        raise ValueError(f"{source}: {message}")

    positions, ptr, bones = arrays["positions"], arrays["trial_ptr"], arrays["bones"]
    if positions.ndim != 3 or positions.shape[2] != 3 or not np.issubdtype(positions.dtype, np.floating):
        fail(f"positions must be a float array [frames, joints, 3], got {positions.dtype} {list(positions.shape)}")
    if not np.isfinite(positions).all():
        fail(f"positions holds NaN or infinite values (first at {np.argwhere(~np.isfinite(positions))[0].tolist()})")
    frames, joints = positions.shape[:2]
    for key in ["trial_ptr", "bones"] + [f"{s}_{k}" for s in _FILE_SPLIT.values() for k in ("trial", "start")]:
        if not np.issubdtype(arrays[key].dtype, np.integer):
            fail(f"{key} must hold integers, got {arrays[key].dtype}")
    if ptr.ndim != 1 or len(ptr) < 2 or ptr[0] != 0 or ptr[-1] != frames or (np.diff(ptr) < 0).any():
        fail(f"trial_ptr must run from 0 to the {frames} frames without decreasing, got {ptr.tolist()[:8]}...")
    if bones.ndim != 2 or bones.shape[1] != 2:
        fail(f"bones must be [B, 2] joint pairs, got {list(bones.shape)}")
    bad = np.flatnonzero((bones < 0).any(1) | (bones >= joints).any(1) | (bones[:, 0] == bones[:, 1]))
    if len(bad):
        fail(f"bones[{bad[0]}] = {bones[bad[0]].tolist()}: a bone joins two different joints in [0, {joints})")
    for split in _FILE_SPLIT.values():
        trials, starts = arrays[f"{split}_trial"], arrays[f"{split}_start"]
        if trials.shape != starts.shape or trials.ndim != 1:
            fail(f"{split}_trial {list(trials.shape)} and {split}_start {list(starts.shape)} must be equal 1-D arrays")
        bad = np.flatnonzero((trials < 0) | (trials >= len(ptr) - 1))
        if len(bad):
            fail(f"{split}_trial[{bad[0]}] = {trials[bad[0]]}: trial ids must be in [0, {len(ptr) - 1})")
        length = ptr[trials + 1] - ptr[trials]
        bad = np.flatnonzero((starts < 0) | (starts + SPAN >= length))
        if len(bad):
            k = bad[0]
            fail(f"{split}_start[{k}] = {starts[k]}: a start frame must be in [0, {length[k] - SPAN - 1}] for trial "
                 f"{trials[k]} of {length[k]} frames ({SPAN} frames, +1 for the velocity, follow it)")


def mocap_datasets(path: str | Path, num_frames: int = 5, discretisation: str = "last",
                   max_train_samples: Optional[int] = 200, max_eval_samples: Optional[int] = 600
                   ) -> Dict[str, MocapDataset]:
    """The three splits, with the height scale (maximum height over the training inputs) shared by all."""
    arrays = load_npz(path, required=["positions", "trial_ptr", "bones"] + [f"{s}_{k}" for s in ("train", "val", "test")
                                                                             for k in ("trial", "start")])
    train = MocapDataset(arrays, "train", num_frames, max_train_samples, discretisation, source=path)
    scale = float(train.x[..., 1].max())
    train.height_scale = scale
    return {"train": train, **{split: MocapDataset(arrays, split, num_frames, max_eval_samples, discretisation, scale,
                                                   source=path)
                               for split in ("valid", "test")}}
