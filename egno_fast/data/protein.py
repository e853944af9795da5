"""Protein dynamics from any topology + trajectory MDAnalysis reads (the EGNO AdK protocol, docs/design.md §2.5).

Nodes are the backbone atoms (MDAnalysis selection ``"backbone"``: N, CA, C, O; 855 for adenylate kinase).
Velocities v[t] = X[t+1] - X[t]. The trajectory's frames are split chronologically into 60 / 20 / 20 % parts and a
sample of a split starts at a frame t of its part whose targets t + Delta * p // P (Delta = 15, P = 4: +3, +7, +11,
+15) stay inside the same part, so no frame serves two splits. Graph: the contact graph of the input frame (backbone
pairs within ``cutoff``, 10 Angstrom as in the paper; the reference code used 8), built per sample by cell lists
(:func:`egno_fast.ops.radius_graph`). Edge features [d, d^2] of the input frame; node features
[|v|, charge / max |charge|] (partial charges from the topology). The backbone bonds (both directions) are each
sample's ``bonds``: the bond graph of the "eghn" backbone's scoring network.

A preset of the trajectory loader (:mod:`.trajectory`): the files are read by its MDAnalysis reader into its
memory-mapped cache (selection "backbone", with the topology's bonds); this module adds the protein protocol above.
Needs MDAnalysis (extra ``protein``); the tests run on the AdK trajectories that the MDAnalysisTests package ships
(adk.psf with adk_dims.dcd, 98 frames).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..ops import radius_graph
from .batching import GraphSample
from .io import MissingExtraError, default_data_dir
from .protocol import SPLITS, check_split, split_frames, target_offsets
from .trajectory import load_trajectory

CONTACT_CUTOFF = 10.0
SELECTION = "backbone"


def load_backbone(topology: str | Path, trajectory: str | Path, selection: str = SELECTION,
                  cache_dir: Optional[str | Path] = None):
    """(positions [T, n, 3] float64 in Angstrom, charges [n], bonds [2, b] within the selection) of ``selection``,
    through the trajectory loader's cache in ``cache_dir`` (default: the data folder).

    Raises FileNotFoundError for a missing file and ValueError for an unreadable one, an empty selection or
    non-finite coordinates.
    """
    for path in (topology, trajectory):
        if not Path(path).is_file():
            raise FileNotFoundError(f"protein data file not found: {path}")
    try:
        import MDAnalysis  # noqa: F401
    except ImportError as error:
        raise MissingExtraError("the protein loader needs MDAnalysis: pip install 'egno_fast[protein]' (in a clone: "
                                "pip install -e '.[protein]')") from error
    cached = load_trajectory(Path(trajectory), Path(cache_dir) if cache_dir else default_data_dir(), str(topology),
                             selection, reader="mdanalysis")
    return np.asarray(cached.positions, dtype=np.float64), cached.atoms.charges, cached.atoms.bonds


class ProteinDataset(Dataset):
    """One split of a protein trajectory (module docstring for the protocol).

    Args:
        topology, trajectory: files MDAnalysis reads (e.g. adk.psf, adk_dims.dcd), or ``arrays`` instead.
        split:        "train", "valid" or "test".
        num_frames:   P.
        span:         Delta, frames between the input and the last target.
        cutoff:       contact distance in Angstrom.
        max_samples:  the first ``max_samples`` starts of the split (None: all).
        discretisation: "uniform" (t + span * p // P) or "last" (the last P frames).
        arrays:       (positions [T, n, 3], charges [n], bonds [2, b]) from :func:`load_backbone`, to share one read
                      between the three splits.
    """

    def __init__(self, topology: Optional[str | Path], trajectory: Optional[str | Path], split: str,
                 num_frames: int = 4, span: int = 15, cutoff: float = CONTACT_CUTOFF,
                 max_samples: Optional[int] = None, discretisation: str = "uniform", arrays=None):
        positions, charges, bonds = arrays if arrays is not None else load_backbone(topology, trajectory)
        if not cutoff > 0:
            raise ValueError(f"cutoff must be a positive distance in Angstrom, got {cutoff}")
        self.offsets = target_offsets(num_frames, span, discretisation)
        x, v = positions[:-1], positions[1:] - positions[:-1]
        begin, end = split_frames(len(x))[check_split(split)]
        starts = np.arange(begin, end - span)[:max_samples]
        if len(starts) == 0:
            raise ValueError(f"the {split} part of the trajectory (frames {begin}..{end - 1} of {len(x)}) is too short "
                             f"for a span of {span} frames")
        self.split, self.cutoff = split, float(cutoff)
        self.x = torch.as_tensor(x[starts], dtype=torch.float32)  # [S, n, 3]
        self.v = torch.as_tensor(v[starts], dtype=torch.float32)
        self.targets = torch.as_tensor(x[starts[:, None] + np.array(self.offsets)[None]], dtype=torch.float32)
        scale = np.abs(charges).max()
        self.charge = torch.as_tensor(charges / scale if scale > 0 else charges, dtype=torch.float32)
        self.bonds = torch.as_tensor(bonds)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> GraphSample:
        x, v = self.x[index], self.v[index]
        edge_index = radius_graph(x.double(), self.cutoff)
        sender, receiver = edge_index
        distance = (x[receiver] - x[sender]).norm(dim=-1)
        h = torch.stack([v.norm(dim=-1), self.charge], dim=-1)
        return GraphSample(x=x, v=v, h=h, edge_index=edge_index,
                           edge_attr=torch.stack([distance, distance * distance], dim=-1), target=self.targets[index],
                           bonds=self.bonds)


def protein_datasets(topology: str | Path, trajectory: str | Path, num_frames: int = 4, span: int = 15,
                     cutoff: float = CONTACT_CUTOFF, max_train_samples: Optional[int] = None,
                     max_eval_samples: Optional[int] = None, discretisation: str = "uniform",
                     cache_dir: Optional[str | Path] = None) -> Dict[str, ProteinDataset]:
    """The train, valid and test splits of one trajectory, read once (cached in ``cache_dir``)."""
    arrays = load_backbone(topology, trajectory, cache_dir=cache_dir)
    limits = {"train": max_train_samples, "valid": max_eval_samples, "test": max_eval_samples}
    return {split: ProteinDataset(None, None, split, num_frames, span, cutoff, limits[split], discretisation, arrays)
            for split in SPLITS}


def adk_test_files() -> Tuple[str, str]:
    """(adk.psf, adk_dims.dcd) from the MDAnalysisTests package (extra ``protein``)."""
    try:
        from MDAnalysisTests.datafiles import DCD, PSF
    except ImportError as error:
        raise MissingExtraError("the default protein trajectory (AdK) comes with MDAnalysisTests: pip install "
                                "'egno_fast[protein]' (in a clone: pip install -e '.[protein]'), or give "
                                "data.topology and data.trajectory") from error
    return PSF, DCD
