"""Any trajectory file: a user's own system, read through ASE or MDAnalysis into a memory-mapped cache.

Readers (``data.reader``): "ase" (extxyz, xyz, PDB, LAMMPS dumps and every other format ``ase.io`` reads; no
topology; ``data.format`` names the format where the file's extension does not, e.g. "lammps-dump-text"),
"mdanalysis" (DCD, XTC, TRR, NetCDF, H5MD, ... with ``data.topology`` where the format needs one, and MDAnalysis'
selection language), "auto" (MDAnalysis when a topology is given, else ASE). Selections with ASE: "all"
or "element C N O" (the atoms of those elements).

One sequential pass writes the cache (``<data folder>/trajectory/<key>/``, key: the files' paths, sizes and
modification times and the reading options): float32 positions [T, n, 3] in Angstrom, unwrapped (each frame moved
to the minimum image of the one before when the file has a periodic cell), the file's velocities [T, n, 3] when it
has them, and the cells [T, 3, 3]; memory does not grow with T. Samples are read from the memory-mapped arrays.

Protocol (EGNO's, as for the protein): each file (replica) is split chronologically 60 / 20 / 20 % and a sample of a
split starts at a frame t of its part (every ``data.stride``-th) whose targets t + Delta * p // P (``data.span`` =
Delta) and whose velocity frame stay inside the same part: no frame serves two splits. Velocities, in Angstrom per
frame interval: the file's (converted from the reader's Angstrom per ps with ``data.frame_interval`` in ps, or the
interval the reader reports), else the backward difference x[t] - x[t-1] of the unwrapped positions (never a target
frame: no sample sees its first target in its input). Node features:
one-hot of the element over ``data.elements`` (filled from the training file when empty and kept in the run's
config, so that evaluation on another file uses the same encoding), mass / 100 u, charge (e), |v|. Graph: the radius
graph of the input frame within ``data.cutoff`` (minimum images and edge shifts with a cell:
:func:`egno_fast.ops.periodic_radius_graph`); edge features [d, d^2].
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..ops import periodic_radius_graph, perpendicular_widths, radius_graph
from .batching import GraphSample
from .io import AtomicWriteError, MissingExtraError, generation_lock
from .protocol import SPLITS, check_split, split_frames, target_offsets

CACHE_VERSION = 3
logger = logging.getLogger("egno_fast")
READERS = ("auto", "ase", "mdanalysis")
MASS_UNIT = 100.0  # node feature: mass / 100 u


@dataclass(frozen=True)
class Frame:
    """One frame as a reader gives it: positions [n, 3] (Angstrom), cell [3, 3] (rows) or None, velocities [n, 3]
    in Angstrom per ps or None."""

    positions: np.ndarray
    cell: Optional[np.ndarray]
    velocities: Optional[np.ndarray]


@dataclass(frozen=True)
class Atoms:
    """What the file says of the selected atoms: element (or type) names, masses (u), charges (e), the time between
    frames in ps if the reader knows it, and the topology's bonds within the selection ([2, b], both directions;
    empty without a topology that has bonds)."""

    elements: List[str]
    masses: np.ndarray
    charges: np.ndarray
    frame_dt: Optional[float]
    bonds: np.ndarray = field(default_factory=lambda: np.zeros((2, 0), dtype=np.int64))


def trajectory_files(path: str) -> List[Path]:
    """The files of ``data.path``: one file, a glob pattern, or several of either separated by commas (replicas,
    in the order given; a glob's matches sorted)."""
    files: List[Path] = []
    for part in (p.strip() for p in path.split(",") if p.strip()):
        matches = sorted(glob.glob(os.path.expanduser(part))) if any(c in part for c in "*?[") else [part]
        if not matches:
            raise FileNotFoundError(f"no trajectory file matches {part!r}")
        files += [Path(m).expanduser() for m in matches]
    if not files:
        raise ValueError("data.path is empty: give the trajectory file (--set data.path=FILE)")
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"trajectory file not found: {file}")
    return files


def _import(name: str, extra: str):
    try:
        return __import__(name)
    except ImportError as error:
        raise MissingExtraError(f"reading this trajectory needs {extra}: pip install 'egno_fast[trajectory]' (in a "
                                f"clone: pip install -e '.[trajectory]')") from error


def _cell_or_none(cell: np.ndarray) -> Optional[np.ndarray]:
    """The cell, or None for PDB's placeholder of "no cell" (CRYST1 1 1 1 90 90 90: a 1 Angstrom cube)."""
    return None if np.array_equal(cell, np.eye(3)) else cell


def _ase_selection(symbols: List[str], selection: str) -> np.ndarray:
    words = selection.split()
    if selection.strip() == "all":
        return np.arange(len(symbols))
    if words and words[0] == "element" and len(words) > 1:
        return np.array([k for k, s in enumerate(symbols) if s in set(words[1:])], dtype=np.int64)
    raise ValueError(f"with the ASE reader the selection must be 'all' or 'element X Y ...', got {selection!r}")


def _read_ase(file: Path, selection: str, file_format: str = "") -> Tuple[Atoms, Iterator[Frame]]:
    ase_io = _import("ase.io", "ase").io
    from ase import units

    def frames(first, rest, chosen):
        for atoms in _chain(first, rest):
            periodic = atoms.pbc
            if periodic.any() and not periodic.all():
                raise ValueError(f"{file}: periodic along some axes only ({periodic.tolist()}): not supported")
            cell = _cell_or_none(np.array(atoms.cell.array, dtype=np.float64)) if periodic.all() else None
            velocities = None
            if atoms.has("momenta"):
                velocities = atoms.get_velocities()[chosen] * (units.fs * 1000.0)  # ASE units -> Angstrom / ps
            yield Frame(np.asarray(atoms.positions[chosen], dtype=np.float64), cell, velocities)

    try:
        stream = ase_io.iread(str(file), index=":", format=file_format or None)
        first = next(stream)
    except StopIteration:
        raise ValueError(f"{file}: no frame") from None
    except Exception as error:  # the parsers raise many types on unreadable files
        raise ValueError(f"ASE could not read {file}: {type(error).__name__}: {error}") from error
    symbols = first.get_chemical_symbols()
    chosen = _ase_selection(symbols, selection)
    charges = first.get_initial_charges()[chosen] if first.has("initial_charges") else np.zeros(len(chosen))
    atoms = Atoms([symbols[k] for k in chosen], np.asarray(first.get_masses()[chosen], dtype=np.float64),
                  np.asarray(charges, dtype=np.float64), None)
    return atoms, frames(first, stream, chosen)


def _chain(first, rest):
    yield first
    try:
        yield from rest
    except Exception as error:  # a damaged frame later in the file
        raise ValueError(f"a frame after the first could not be read: {type(error).__name__}: {error}") from error


def _read_mdanalysis(file: Path, topology: str, selection: str) -> Tuple[Atoms, Iterator[Frame]]:
    mda = _import("MDAnalysis", "MDAnalysis")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            universe = mda.Universe(topology, str(file)) if topology else mda.Universe(str(file))
            chosen = universe.select_atoms(selection)
    except Exception as error:
        raise ValueError(f"MDAnalysis could not read {file}{' with ' + topology if topology else ''}: "
                         f"{type(error).__name__}: {error}") from error
    names = getattr(chosen, "elements", None)
    names = list(names) if names is not None and all(names) else [str(t) for t in chosen.types]
    try:
        charges = np.asarray(chosen.charges, dtype=np.float64)
    except Exception:  # no charges in the topology
        charges = np.zeros(len(chosen))
    try:  # MDAnalysis says 1 ps, with a warning, when the file records no time: then it is unknown
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frame_dt = float(universe.trajectory.dt)
        if any("dt" in str(w.message) or "time" in str(w.message).lower() for w in caught):
            frame_dt = None
    except Exception:
        frame_dt = None

    def frames():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                yield from read_all()
            except ValueError:
                raise
            except Exception as error:  # a truncated or damaged frame
                raise ValueError(f"MDAnalysis could not read a frame of {file}: {type(error).__name__}: "
                                 f"{error}") from error

    def read_all():
        for ts in universe.trajectory:
            cell = None
            if ts.dimensions is not None and np.all(np.asarray(ts.dimensions[:3]) > 0):
                cell = _cell_or_none(np.asarray(ts.triclinic_dimensions, dtype=np.float64))
            velocities = np.asarray(chosen.velocities, dtype=np.float64) if ts.has_velocities else None
            yield Frame(np.asarray(chosen.positions, dtype=np.float64), cell, velocities)

    try:
        local = {index: k for k, index in enumerate(chosen.indices)}
        pairs = [(local[a], local[b]) for a, b in universe.bonds.indices if a in local and b in local]
    except Exception:  # a topology without bonds
        pairs = []
    bonds = np.array(pairs, dtype=np.int64).T.reshape(2, -1)
    atoms = Atoms(names, np.asarray(chosen.masses, dtype=np.float64), charges, frame_dt,
                  np.concatenate([bonds, bonds[::-1]], axis=1))
    return atoms, frames()


def _open(file: Path, topology: str, selection: str, reader: str,
          file_format: str = "") -> Tuple[Atoms, Iterator[Frame]]:
    if reader not in READERS:
        raise ValueError(f"data.reader must be one of {READERS}, got {reader!r}")
    use_mda = reader == "mdanalysis" or (reader == "auto" and bool(topology))
    atoms, frames = (_read_mdanalysis(file, str(Path(topology).expanduser()) if topology else "", selection)
                     if use_mda else _read_ase(file, selection, file_format))
    if len(atoms.elements) == 0:
        raise ValueError(f"the selection {selection!r} matches no atom of {file}")
    return atoms, frames


def _minimum_image(delta: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """[n, 3] displacements moved to their minimum image in ``cell`` (by rounding fractional coordinates)."""
    fractional = delta @ np.linalg.inv(cell)
    return delta - np.round(fractional) @ cell


def _cache_key(file: Path, topology: str, selection: str, reader: str, file_format: str) -> str:
    stat = file.stat()
    described = dict(version=CACHE_VERSION, file=str(file.resolve()), size=stat.st_size, mtime=stat.st_mtime_ns,
                     topology=str(Path(topology).expanduser().resolve()) if topology else "", selection=selection,
                     reader=reader, format=file_format)
    if topology:
        described["topology_mtime"] = Path(topology).expanduser().stat().st_mtime_ns
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class CachedTrajectory:
    """A cached trajectory: positions [T, n, 3] float32 (unwrapped, Angstrom), velocities [T, n, 3] float32 in
    Angstrom / ps or None, cells [T, 3, 3] float64 and the file's own positions [T, n, 3] float32 or None (no cell),
    memory-mapped, and the atoms."""

    source: Path
    positions: np.ndarray
    velocities: Optional[np.ndarray]
    cells: Optional[np.ndarray]
    raw: Optional[np.ndarray]
    atoms: Atoms


def _write_cache(folder: Path, file: Path, atoms: Atoms, frames: Iterator[Frame]) -> None:
    """One pass over the frames into raw float files in ``folder`` (memory: a few frames), then meta.json: the
    unwrapped positions, the positions as the file gives them (with a cell: the graph's minimum images are taken
    from them, right even when the cell changes between frames), the velocities and the cells."""
    folder.mkdir(parents=True)
    count, has_cell, has_velocities = 0, None, None
    previous_raw = previous = None
    with open(folder / "positions.f32", "wb") as pos_out, open(folder / "velocities.f32", "wb") as vel_out, \
            open(folder / "cells.f64", "wb") as cell_out, open(folder / "raw.f32", "wb") as raw_out:
        for frame in frames:
            if frame.positions.shape != (len(atoms.elements), 3):
                raise ValueError(f"{file}: frame {count} has {frame.positions.shape[0]} selected atoms, the first "
                                 f"{len(atoms.elements)}")
            if not np.isfinite(frame.positions).all():
                raise ValueError(f"{file}: frame {count} has NaN or infinite coordinates")
            if has_cell is None:
                has_cell, has_velocities = frame.cell is not None, frame.velocities is not None
            if (frame.cell is not None) != has_cell or (frame.velocities is not None) != has_velocities:
                raise ValueError(f"{file}: frame {count} differs from the first in having a cell or velocities")
            if has_cell:
                if not np.isfinite(frame.cell).all() or abs(np.linalg.det(frame.cell)) <= 0:
                    raise ValueError(f"{file}: frame {count} has a cell of zero volume or with NaN")
                cell_out.write(frame.cell.astype(np.float64).tobytes())
                raw_out.write(frame.positions.astype(np.float32).tobytes())
            unwrapped = frame.positions if previous is None or not has_cell else \
                previous + _minimum_image(frame.positions - previous_raw, frame.cell)
            pos_out.write(unwrapped.astype(np.float32).tobytes())
            if has_velocities:
                vel_out.write(np.asarray(frame.velocities, dtype=np.float32).tobytes())
            previous_raw, previous = frame.positions, unwrapped
            count += 1
    meta = dict(version=CACHE_VERSION, source=str(file), frames=count, atoms=len(atoms.elements),
                has_cell=bool(has_cell), has_velocities=bool(has_velocities), elements=atoms.elements,
                masses=atoms.masses.tolist(), charges=atoms.charges.tolist(), frame_dt=atoms.frame_dt,
                bonds=atoms.bonds.tolist())
    (folder / "meta.json").write_text(json.dumps(meta))


def load_trajectory(file: Path, cache_dir: Path, topology: str = "", selection: str = "all",
                    reader: str = "auto", file_format: str = "") -> CachedTrajectory:
    """The cached trajectory of ``file``, written on first use (one process writes, another waits; the cache
    folder appears complete or not at all)."""
    if topology and not Path(topology).expanduser().is_file():
        raise FileNotFoundError(f"topology file not found: {topology}")
    key = _cache_key(file, topology, selection, reader, file_format)
    folder = cache_dir / "trajectory" / key
    if not (folder / "meta.json").is_file():
        with generation_lock(folder):
            if not (folder / "meta.json").is_file():
                atoms, frames = _open(file, topology, selection, reader, file_format)
                for stale in folder.parent.glob(f".{key}.partial-*"):  # left by a killed process
                    shutil.rmtree(stale, ignore_errors=True)
                shutil.rmtree(folder, ignore_errors=True)  # a folder without meta.json is incomplete
                partial = folder.with_name(f".{key}.partial-{os.getpid()}")
                try:
                    _write_cache(partial, file, atoms, frames)
                    os.replace(partial, folder)
                except OSError as error:
                    raise AtomicWriteError(f"could not write the trajectory cache {folder} "
                                           f"({error.strerror or error}); nothing was kept") from error
                finally:
                    shutil.rmtree(partial, ignore_errors=True)
    meta = json.loads((folder / "meta.json").read_text())
    frames, n = meta["frames"], meta["atoms"]

    def mapped(name, dtype, shape):
        return np.memmap(folder / name, dtype=dtype, mode="r", shape=shape) if frames else np.zeros(shape, dtype)

    atoms = Atoms(meta["elements"], np.array(meta["masses"]), np.array(meta["charges"]), meta["frame_dt"],
                  np.array(meta["bonds"], dtype=np.int64).reshape(2, -1))
    return CachedTrajectory(Path(meta["source"]), mapped("positions.f32", np.float32, (frames, n, 3)),
                            mapped("velocities.f32", np.float32, (frames, n, 3)) if meta["has_velocities"] else None,
                            mapped("cells.f64", np.float64, (frames, 3, 3)) if meta["has_cell"] else None,
                            mapped("raw.f32", np.float32, (frames, n, 3)) if meta["has_cell"] else None, atoms)


def velocity_scale(trajectory: CachedTrajectory, frame_interval: float = 0.0) -> Optional[float]:
    """ps per frame interval to turn the file's velocities (Angstrom / ps) into the samples' (Angstrom per frame
    interval): ``frame_interval``, else the reader's; None when the file has no velocities or no time between frames
    (velocities then come from the positions)."""
    dt = frame_interval or trajectory.atoms.frame_dt
    return dt if trajectory.velocities is not None and dt else None


def frame_velocity(trajectory: CachedTrajectory, t: int, scale: Optional[float]) -> torch.Tensor:
    """[n, 3] the velocity of frame ``t`` in Angstrom per frame interval: the file's times ``scale``
    (:func:`velocity_scale`), else the backward difference x[t] - x[t - 1] (t >= 1)."""
    if scale is not None:
        return torch.from_numpy(np.array(trajectory.velocities[t])) * scale
    if t < 1:
        raise ValueError(f"{trajectory.source} has no velocities: the velocity of frame {t} is x[t] - x[t - 1], so "
                         f"the frame must be at least 1")
    return torch.from_numpy(np.array(trajectory.positions[t])) - torch.from_numpy(np.array(trajectory.positions[t - 1]))


def static_features(trajectory: CachedTrajectory, elements: List[str]) -> torch.Tensor:
    """[n, len(elements) + 2] the atoms' features that do not change: one-hot of the element over ``elements``,
    mass / 100 u, charge (e). ValueError if an atom's element is not in ``elements``."""
    atoms = trajectory.atoms
    unknown = sorted(set(atoms.elements) - set(elements))
    if unknown:
        raise ValueError(f"{trajectory.source}: elements {unknown} are not in the model's element list {elements} "
                         f"(data.elements)")
    index = {name: k for k, name in enumerate(elements)}
    one_hot = np.zeros((len(atoms.elements), len(elements)), dtype=np.float32)
    one_hot[np.arange(len(atoms.elements)), [index[e] for e in atoms.elements]] = 1.0
    return torch.as_tensor(np.concatenate([one_hot, (atoms.masses / MASS_UNIT)[:, None], atoms.charges[:, None]],
                                          axis=1), dtype=torch.float32)


class TrajectoryDataset(Dataset):
    """One split of one or more cached trajectories (module docstring for the protocol).

    Args:
        trajectories: :class:`CachedTrajectory` of each replica (the same atoms in each).
        split:     "train", "valid" or "test".
        elements:  the element (or type) names of the one-hot feature, in order.
        num_frames, span, stride, cutoff, discretisation: P, Delta, the step between sample starts, the graph's
                   radius in Angstrom, "uniform" or "last".
        frame_interval: ps between frames, to convert the files' velocities (0: the reader's, else finite
                   differences of positions).
        max_samples: the first ``max_samples`` samples (None: all).
    """

    def __init__(self, trajectories: List[CachedTrajectory], split: str, elements: List[str], num_frames: int,
                 span: int, stride: int = 1, cutoff: float = 5.0, discretisation: str = "uniform",
                 frame_interval: float = 0.0, max_samples: Optional[int] = None):
        check_split(split)
        self.offsets = target_offsets(num_frames, span, discretisation)
        self.velocity_per_frame = True  # v in Angstrom per frame interval: x + v * offset is constant velocity
        self.span = span
        self.trajectories, self.cutoff = trajectories, float(cutoff)
        first = trajectories[0].atoms
        self.static = static_features(trajectories[0], elements)
        # the topology's bonds (both directions) for the "eghn" backbone; none: it uses the message-passing graph
        self.bonds = torch.as_tensor(first.bonds) if first.bonds.size else None
        per_replica: List[List[Tuple[int, int]]] = []
        self.velocity_scale: List[Optional[float]] = []
        for replica, trajectory in enumerate(trajectories):
            if trajectory.atoms.elements != first.elements:
                raise ValueError(f"the replicas hold different atoms: {trajectory.source} and {trajectories[0].source}")
            scale = velocity_scale(trajectory, frame_interval)
            self.velocity_scale.append(scale)
            begin, end = split_frames(len(trajectory.positions))[split]
            first_start = begin + (0 if scale is not None else 1)  # x[t - 1] of the velocity stays in the part
            per_replica.append([(replica, t) for t in range(first_start, end - span, stride)])  # targets too
        # replicas interleaved (sample k of each, then k + 1), so that max_samples takes from every replica
        longest = max(len(samples) for samples in per_replica)
        self.samples = [samples[k] for k in range(longest) for samples in per_replica if k < len(samples)]
        self.samples = self.samples[:max_samples]
        if not self.samples:
            lengths = [len(t.positions) for t in trajectories]
            raise ValueError(f"no {split} sample: trajectories of {lengths} frames are too short for a span of {span} "
                             f"frames in the {split} part (60/20/20 %); give longer trajectories or a smaller "
                             f"data.span")

    def __len__(self) -> int:
        return len(self.samples)

    def motion(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x [n, 3], v [n, 3], targets [P, n, 3]) of sample ``index``, without its graph."""
        replica, start = self.samples[index]
        trajectory = self.trajectories[replica]
        x = torch.from_numpy(np.array(trajectory.positions[start]))
        v = frame_velocity(trajectory, start, self.velocity_scale[replica])
        return x, v, torch.from_numpy(np.array(trajectory.positions[[start + o for o in self.offsets]]))

    def __getitem__(self, index: int) -> GraphSample:
        replica, start = self.samples[index]
        trajectory = self.trajectories[replica]
        x, v, targets = self.motion(index)
        cell = wrapped = None
        if trajectory.cells is not None:  # the frame as the file gives it, in its own cell
            cell = torch.from_numpy(np.array(trajectory.cells[start]))
            wrapped = torch.from_numpy(np.array(trajectory.raw[start]))
        return trajectory_sample(self.static, x, v, self.cutoff, cell, wrapped, targets, self.bonds)


def wrap_positions(x: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """x [n, 3] moved into the cell [3, 3] (rows: the cell vectors): fractional coordinates in [0, 1)."""
    cell = cell.to(torch.float64)
    fractional = x.to(torch.float64) @ torch.linalg.inv(cell)
    return ((fractional - torch.floor(fractional)) @ cell).to(x.dtype)


def trajectory_sample(static: torch.Tensor, x: torch.Tensor, v: torch.Tensor, cutoff: float,
                      cell: Optional[torch.Tensor] = None, wrapped: Optional[torch.Tensor] = None,
                      target: Optional[torch.Tensor] = None, bonds: Optional[torch.Tensor] = None) -> GraphSample:
    """The graph sample of one frame: features [static, |v|] and the radius graph within ``cutoff``.

    Args:
        static:  [n, k] the per-atom features (one-hot element, mass / 100 u, charge).
        x, v:    [n, 3] unwrapped positions (Angstrom) and velocities (Angstrom per frame interval).
        cell:    [3, 3] the periodic cell (rows) or None; then ``wrapped`` [n, 3] is the frame as the file gives it
                 (None: ``x`` wrapped into the cell). Edges join minimum images; ``edge_shift`` added to the unwrapped
                 x_i - x_j makes it that minimum-image vector (right when the cell changes between frames).
        target:  [P, n, 3] or None (an empty [0, n, 3]: a rollout's input has no targets).
        bonds:   [2, b] or None.
    """
    if cell is not None:
        raw = (wrapped if wrapped is not None else wrap_positions(x, cell)).double()
        edges = periodic_radius_graph(raw, cutoff, cell.double())
        edge_index = edges.edge_index
        true = raw[edge_index[1]] - raw[edge_index[0]] + edges.edge_shift
        shift = (true - (x[edge_index[1]] - x[edge_index[0]]).double()).float()
        rel = true.float()
    else:
        edge_index, shift = radius_graph(x.double(), cutoff), None
        rel = x[edge_index[1]] - x[edge_index[0]]
    distance = rel.norm(dim=-1)
    h = torch.cat([static, v.norm(dim=-1, keepdim=True)], dim=-1)
    return GraphSample(x=x, v=v, h=h, edge_index=edge_index, edge_attr=torch.stack([distance, distance * distance],
                       dim=-1), target=target if target is not None else x.new_zeros(0, *x.shape),
                       edge_shift=shift, bonds=bonds)


def trajectory_datasets(config, cache_dir: Path) -> Dict[str, TrajectoryDataset]:
    """The train, valid and test splits of ``config.path`` (a :class:`~egno_fast.config.DataConfig`); fills
    ``config.elements`` from the first file when it is empty (the encoding the run then keeps)."""
    files = trajectory_files(config.path)
    if not config.cutoff > 0:
        raise ValueError(f"data.cutoff must be positive, got {config.cutoff}")
    trajectories = [load_trajectory(f, cache_dir, config.topology, config.selection, config.reader, config.format)
                    for f in files]
    for trajectory in trajectories:  # a cutoff the cells cannot take is refused before any training
        if trajectory.cells is not None and len(trajectory.cells):
            narrowest = float(perpendicular_widths(torch.from_numpy(np.array(trajectory.cells))).min())
            if 2 * config.cutoff > narrowest:
                raise ValueError(f"{trajectory.source}: data.cutoff ({config.cutoff}) must be at most half the cell's "
                                 f"smallest perpendicular width ({narrowest:.6g} Angstrom)")
    for trajectory in trajectories:
        if trajectory.velocities is not None and not (config.frame_interval or trajectory.atoms.frame_dt):
            logger.warning("%s has velocities but no time between frames: they are not used (velocities from the "
                           "positions instead); give data.frame_interval in ps to use them", trajectory.source)
    if not config.elements:
        config.elements = sorted(set(trajectories[0].atoms.elements))
    limits = {"train": config.max_train_samples, "valid": config.max_eval_samples, "test": config.max_eval_samples}
    return {split: TrajectoryDataset(trajectories, split, list(config.elements), config.num_frames, config.span,
                                     config.stride, config.cutoff, config.discretisation, config.frame_interval,
                                     limits[split]) for split in SPLITS}
