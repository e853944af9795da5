"""MD17 molecular dynamics: a loader for the sGDML files and an RDKit stand-in generator in the same schema.

Loader (EGNO protocol, docs/design.md §2.4): ``md17_<molecule>.npz`` with R [T, A, 3] (Angstrom) and z [A]. Velocities
v[t] = R[t+1] - R[t]; heavy atoms only; start frames from index pools drawn with numpy's legacy generator seeded
with 100 over frames 10000 .. T-1-10000 (10% train, then 5% valid and 5% test from the rest); the first
500 / 2000 / 2000 starts; targets at t + Delta * p // P (Delta = 3000, P = 8). Graph: heavy-atom pairs closer than
1.6 Angstrom in frame 0 (hop 1) and their 2-hop pairs (hop 2), both directions. Edge features
[z_i, z_j, hop, |x_i - x_j|^2 of the input frame]; node features [|v|, z / max z].

Stand-in (:func:`generate_md17_standin`): the same 8 molecules from SMILES, MMFF94 (RDKit), Langevin dynamics at
500 K with 0.5 fs steps (BAOAB splitting), every step recorded, saved as R, z, E, F in the sGDML schema plus a
``source`` note. The thermostat acts on the internal motion only: the centre-of-mass velocity is removed after every
friction-and-noise step (as MD codes remove it), so the molecule does not diffuse; an earlier version (before
``STANDIN_VERSION`` 2) let the thermostat's kicks move the whole molecule by several Angstrom per 1.5 ps, a motion
no model can predict, and its files are regenerated. It is a classical force field, not the DFT of MD17: numbers on
it are not the paper's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .batching import StartFrameDataset
from .io import MissingExtraError, atomic_savez, load_npz
from .protocol import check_split, target_offsets

MOLECULES = {  # SMILES of the 8 MD17 molecules (hydrogens added by RDKit)
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "benzene": "c1ccccc1",
    "ethanol": "CCO",
    "malonaldehyde": "O=CCC=O",
    "naphthalene": "c1ccc2ccccc2c1",
    "salicylic": "O=C(O)c1ccccc1O",
    "toluene": "Cc1ccccc1",
    "uracil": "O=c1cc[nH]c(=O)[nH]1",
}
SKIP_FRAMES = 10000
POOL_FRACTIONS = {"train": 0.1, "valid": 0.05, "test": 0.05}
BOND_CUTOFF = 1.6
SPLIT_SEED = 100
STANDIN_VERSION = 2  # written into the stand-in's ``source`` note; files of other versions are regenerated


def md17_path(data_dir: str | Path, molecule: str) -> Path:
    """Where the loader looks for ``molecule``: ``<data_dir>/md17_<molecule>.npz``."""
    if molecule not in MOLECULES:
        raise ValueError(f"unknown MD17 molecule {molecule!r}; choose one of {sorted(MOLECULES)}")
    return Path(data_dir) / f"md17_{molecule}.npz"


def split_starts(num_frames: int) -> Dict[str, np.ndarray]:
    """The start-frame pools of the three splits for a trajectory of ``num_frames`` velocity frames (T - 1)."""
    pool = num_frames - 2 * SKIP_FRAMES
    if pool < 20:
        raise ValueError(f"an MD17 trajectory needs more than {2 * SKIP_FRAMES + 20} frames, got {num_frames + 1}")
    state = np.random.get_state()
    np.random.seed(SPLIT_SEED)
    try:
        taken = np.zeros(pool, dtype=bool)
        starts = {}
        for split, fraction in POOL_FRACTIONS.items():
            rest = np.flatnonzero(~taken) if split != "train" else np.arange(pool)
            chosen = np.random.choice(rest, size=int(fraction * pool), replace=False)
            taken[chosen] = True
            starts[split] = chosen + SKIP_FRAMES
    finally:
        np.random.set_state(state)
    return starts


def molecule_graph(positions: np.ndarray, cutoff: float = BOND_CUTOFF):
    """(edge_index [2, E] with row 0 = sender, hop [E]) of bonds (distance < cutoff) and 2-hop pairs."""
    distance = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    bonded = (distance < cutoff) & ~np.eye(len(positions), dtype=bool)
    two_hop = ((bonded.astype(int) @ bonded.astype(int)) > 0) & ~bonded & ~np.eye(len(positions), dtype=bool)
    receiver, sender = np.nonzero(bonded | two_hop)
    hop = np.where(bonded[receiver, sender], 1.0, 2.0)
    return torch.as_tensor(np.stack([sender, receiver])), torch.as_tensor(hop, dtype=torch.float32)


class MD17Dataset(StartFrameDataset):
    """One split of one molecule (module docstring for the protocol).

    Args:
        path:         an sGDML-style npz (R [T, A, 3], z [A]).
        split:        "train", "valid" or "test".
        num_frames:   P.
        max_samples:  the first ``max_samples`` starts of the split's pool (None: all).
        span:         Delta, frames between the input and the last target.
        discretisation: "uniform" (t + span * p // P) or "last" (the last P frames).
    """

    def __init__(self, path: str | Path, split: str, num_frames: int = 8, max_samples: Optional[int] = None,
                 span: int = 3000, discretisation: str = "uniform"):
        arrays = load_npz(path, required=["R", "z"])
        positions, z = np.asarray(arrays["R"], dtype=np.float64), np.asarray(arrays["z"]).astype(np.int64)
        if positions.ndim != 3 or positions.shape[1:] != (len(z), 3):
            raise ValueError(f"{path}: R must have shape [frames, {len(z)}, 3], got {list(positions.shape)}")
        if not np.isfinite(positions).all():
            raise ValueError(f"{path}: R contains NaN or infinite values")
        self.offsets, self.span = target_offsets(num_frames, span, discretisation), span
        if span >= SKIP_FRAMES:
            raise ValueError(f"span {span} must be below the {SKIP_FRAMES} frames skipped at the end")
        velocities = positions[1:] - positions[:-1]
        heavy = z > 1
        x, v, z = positions[:-1][:, heavy], velocities[:, heavy], z[heavy]
        starts = split_starts(len(x))[check_split(split)][:max_samples]
        self.split, self.z = split, torch.as_tensor(z, dtype=torch.float32)
        self.x = torch.as_tensor(x[starts], dtype=torch.float32)  # [S, n, 3]
        self.v = torch.as_tensor(v[starts], dtype=torch.float32)
        self.targets = torch.as_tensor(x[starts[:, None] + np.array(self.offsets)[None]], dtype=torch.float32)
        self.edge_index, self.hop = molecule_graph(x[0])

    def features(self, index, x, v, sender, receiver, dist2):
        edge_attr = torch.stack([self.z[receiver], self.z[sender], self.hop, dist2], dim=-1)
        return torch.stack([v.norm(dim=-1), self.z / self.z.max()], dim=-1), edge_attr


# ------------------------------------------------------------------------------------------ stand-in generator

KCAL_PER_MOL_ANGSTROM_AMU_TO_ANGSTROM_PER_FS2 = 4.184e-4  # 1 kcal/mol/A per amu in A/fs^2
BOLTZMANN_KCAL_PER_MOL_K = 0.0019872041


def generate_md17_standin(path: str | Path, molecule: str, num_frames: int = 63001, temperature: float = 500.0,
                          dt_fs: float = 0.5, friction_per_fs: float = 0.002, seed: int = 0,
                          equilibration_steps: int = 2000) -> Path:
    """Simulate ``molecule`` with MMFF94 Langevin dynamics and write an sGDML-schema npz to ``path`` (atomically).

    Returns the path. Needs RDKit (extra ``md17``).
    """
    try:
        from rdkit import Chem
        from rdkit.Chem import AllChem
    except ImportError as error:
        raise MissingExtraError("the MD17 stand-in needs RDKit: pip install 'egno_fast[md17]' (in a clone: "
                                "pip install -e '.[md17]')") from error
    if molecule not in MOLECULES:
        raise ValueError(f"unknown MD17 molecule {molecule!r}; choose one of {sorted(MOLECULES)}")
    mol = Chem.AddHs(Chem.MolFromSmiles(MOLECULES[molecule]))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise RuntimeError(f"RDKit could not embed {molecule}")
    AllChem.MMFFOptimizeMolecule(mol)
    field = AllChem.MMFFGetMoleculeForceField(mol, AllChem.MMFFGetMoleculeProperties(mol))
    masses = np.array([atom.GetMass() for atom in mol.GetAtoms()])[:, None]
    z = np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()])
    rng = np.random.default_rng(seed)
    kt = BOLTZMANN_KCAL_PER_MOL_K * temperature * KCAL_PER_MOL_ANGSTROM_AMU_TO_ANGSTROM_PER_FS2  # A^2/fs^2 * amu
    thermal = np.sqrt(kt / masses)  # velocity std per atom, A/fs
    x = np.array(mol.GetConformer().GetPositions(), dtype=np.float64)
    v = rng.normal(size=x.shape) * thermal

    def without_drift(velocities):  # the centre of mass stays at rest
        return velocities - (masses * velocities).sum(0) / masses.sum()

    v = without_drift(v)
    decay = np.exp(-friction_per_fs * dt_fs)
    noise = np.sqrt(1 - decay ** 2) * thermal

    def forces(positions):
        flat = positions.ravel().tolist()
        energy = field.CalcEnergy(flat)  # must precede CalcGrad on the same positions (docs/design.md §2.4)
        return energy, -np.asarray(field.CalcGrad(flat)).reshape(-1, 3)

    energy, force = forces(x)
    frames, all_forces = np.empty((num_frames, *x.shape)), np.empty((num_frames, *x.shape))
    energies = np.empty(num_frames)
    for step in range(equilibration_steps + num_frames):  # BAOAB Langevin
        v += 0.5 * dt_fs * force / masses * KCAL_PER_MOL_ANGSTROM_AMU_TO_ANGSTROM_PER_FS2
        x += 0.5 * dt_fs * v
        v = without_drift(decay * v + noise * rng.normal(size=x.shape))
        x += 0.5 * dt_fs * v
        energy, force = forces(x)
        v += 0.5 * dt_fs * force / masses * KCAL_PER_MOL_ANGSTROM_AMU_TO_ANGSTROM_PER_FS2
        if step >= equilibration_steps:
            frame = step - equilibration_steps
            frames[frame], energies[frame], all_forces[frame] = x, energy, force
    if not np.isfinite(frames).all():
        raise FloatingPointError(f"the {molecule} simulation diverged")
    atomic_savez(path, R=frames, z=z, E=energies[:, None], F=all_forces, name=np.array(molecule),
                 source=np.array(f"{standin_tag()}: RDKit MMFF94, Langevin {temperature} K on the internal motion "
                                 f"(centre of mass at rest), {dt_fs} fs steps, friction {friction_per_fs}/fs, "
                                 f"seed {seed} (not the MD17 DFT data)"))
    return Path(path)


def standin_tag() -> str:
    """The first words of the ``source`` note of stand-in files of the current :data:`STANDIN_VERSION`."""
    return f"egno_fast stand-in v{STANDIN_VERSION}"


def is_current_standin(path: str | Path) -> bool:
    """Whether ``path`` is a readable stand-in file written by the current generator version."""
    try:
        with np.load(path) as archive:
            return "source" in archive.files and str(archive["source"]).startswith(standin_tag())
    except (OSError, ValueError, EOFError):
        return False
