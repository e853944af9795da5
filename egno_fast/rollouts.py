"""Long rollouts: EGNO windows chained into a trajectory a viewer opens.

A trained EGNO predicts the P frames of one window (``data.span`` = Delta frames after its input). A rollout of W
windows starts from frame K of a trajectory file (read as the run's data set reads it: the same element encoding,
velocities and cutoff) and feeds each window's last predicted frame back as the next input, W * Delta frames in
all. Between windows the graph is built again, periodic edge shifts included (the positions wrapped into the input
frame's cell; a cell that changes in the file is held at the input frame's), and so are the features (|v|).

Which velocity feeds the next window: the model's velocity output is not trained (the loss compares positions only;
its scale is whatever the last layer left), so by default ("difference") the next input's velocity is the finite
difference of the last two predicted frames, (x_P - x_{P-1}) / (their gap in frames), in Angstrom per frame
interval: the units of the training velocities. When the data set took its velocities from the positions (the
backward difference x[t] - x[t - 1]) and the predicted frames are one frame apart (Delta = P), this is the same
estimator; with a gap of g frames it is the mean velocity over g frames. ``velocity="model"`` takes the model's
output instead (for models trained with a velocity loss).

When the file holds the true continuation (frames K .. K + W * Delta), the rollout's error against it (MSE in
Angstrom^2 over atoms and coordinates, at every predicted frame) is reported beside two baselines: frozen positions
(x_K) and constant velocity (x_K + v_K t, v_K the input velocity of the data set's protocol).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from .config import DataConfig
from .data.batching import collate_graphs
from .data.io import MissingExtraError, atomic_path
from .data.protocol import target_offsets
from .data.registry import resolve_data_dir
from .data.trajectory import (frame_velocity, load_trajectory, static_features, trajectory_files, trajectory_sample,
                              velocity_scale)

VELOCITY_SOURCES = ("difference", "model")
ROLLOUT_FILES = ("rollout.extxyz", "rollout.dcd", "rollout.pdb", "rollout.json", "rollout_error.png")


@dataclass
class Rollout:
    """A rolled-out trajectory.

    Attributes:
        frames:     [F] frame offsets after the start frame (0 first), in the input file's frame intervals.
        positions:  [F, n, 3] float32 unwrapped positions (Angstrom); row 0 is the start frame.
        elements:   the n atoms' element (or type) names.
        cell:       [3, 3] the periodic cell (rows) held through the rollout, or None.
        frame_interval_ps: ps between the input file's frames, or None if unknown.
        errors:     when the file holds the true continuation, {"frames": [F'] offsets with a true frame,
                    "model", "frozen", "constant_velocity": [F'] MSE in Angstrom^2}; else None.
        start_frame, windows, velocity: how it was made.
    """

    frames: List[int]
    positions: torch.Tensor
    elements: List[str]
    cell: Optional[torch.Tensor]
    frame_interval_ps: Optional[float]
    errors: Optional[Dict[str, List[float]]]
    start_frame: int
    windows: int
    velocity: str


@torch.no_grad()
def rollout_windows(model: torch.nn.Module, static: torch.Tensor, x: torch.Tensor, v: torch.Tensor, cutoff: float,
                    offsets: List[int], windows: int, cell: Optional[torch.Tensor] = None,
                    bonds: Optional[torch.Tensor] = None, velocity: str = "difference",
                    device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """Chain ``windows`` EGNO windows from one frame.

    Args:
        model:   an EGNO (or a model with its forward) predicting P = len(offsets) frames.
        static:  [n, k] per-atom features (:func:`egno_fast.data.trajectory.static_features`).
        x, v:    [n, 3] the start frame's unwrapped positions and velocity (Angstrom per frame interval).
        cutoff:  the radius graph's cutoff in Angstrom.
        offsets: [P] the predicted frames' offsets after the input (:func:`~egno_fast.data.protocol.target_offsets`).
        cell:    [3, 3] or None (no periodic box).
        bonds:   [2, b] the bond graph (the "eghn" backbone's) or None.
        velocity: "difference" or "model" (module docstring).

    Returns:
        [windows * P, n, 3] the predicted frames, window after window (window w's frame p at w * offsets[-1] +
        offsets[p]).
    """
    if velocity not in VELOCITY_SOURCES:
        raise ValueError(f"velocity must be one of {VELOCITY_SOURCES}, got {velocity!r}")
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    model.eval()
    predicted = []
    for _ in range(windows):
        sample = trajectory_sample(static, x, v, cutoff, cell, bonds=bonds)
        batch = collate_graphs([sample])
        graph = batch.graph().to(device)
        batch = batch.to(device)
        out = model(batch.x, batch.v, batch.h, graph, **batch.model_keywords)
        frames = out.x.float().cpu()  # [P, n, 3]
        if not torch.isfinite(frames).all():
            raise ValueError(f"the model predicted NaN or infinite positions in window {len(predicted) + 1}")
        predicted.append(frames)
        if velocity == "model":
            v = out.v[-1].float().cpu()
        else:
            previous, gap = (frames[-2], offsets[-1] - offsets[-2]) if len(offsets) > 1 else (x, offsets[-1])
            v = (frames[-1] - previous) / gap
        x = frames[-1]
    return torch.cat(predicted)


def rollout(model: torch.nn.Module, data: DataConfig, input_file: Union[str, Path], frame: Optional[int] = None,
            windows: int = 1, topology: str = "", velocity: str = "difference",
            device: Union[str, torch.device] = "cpu") -> Rollout:
    """Roll ``model`` out from frame ``frame`` of ``input_file`` for ``windows`` windows, in float32.

    Args:
        model:      a trained EGNO (e.g. ``EGNO.from_model_record(load_model_file(path))``).
        data:       the run's data config (the checkpoint's ``config["data"]``): elements, cutoff, span, P, the
                    reader's settings; its data folder caches the file.
        input_file: a trajectory file the run's reader reads (extxyz, DCD with ``topology``, ...).
        frame:      the start frame (None: the first with a velocity: 0 when the file has velocities, else 1).
        topology:   the topology file (else ``data.topology``).

    Returns:
        a :class:`Rollout` (frames 0 .. windows * span, with the errors against the file where it goes on).
    """
    if not data.elements:
        raise ValueError("the model's config has no element list (data.elements): a rollout needs a model trained "
                         "on a trajectory or water data set")
    files = trajectory_files(str(input_file))
    if len(files) != 1:
        raise ValueError(f"a rollout starts from one file, got {len(files)}")
    topology = topology or data.topology
    trajectory = load_trajectory(files[0], resolve_data_dir(data), topology, data.selection,
                                 "mdanalysis" if topology and data.reader == "auto" else data.reader, data.format)
    total = len(trajectory.positions)
    scale = velocity_scale(trajectory, data.frame_interval)
    if frame is None:
        frame = 0 if scale is not None else 1
    if not 0 <= frame < total:
        raise ValueError(f"--frame {frame} is outside {files[0]} (frames 0 to {total - 1})")
    static = static_features(trajectory, list(data.elements))
    x = torch.from_numpy(np.array(trajectory.positions[frame]))
    v = frame_velocity(trajectory, frame, scale)
    cell = torch.from_numpy(np.array(trajectory.cells[frame])) if trajectory.cells is not None else None
    offsets = target_offsets(data.num_frames, data.span, data.discretisation)
    bonds = torch.as_tensor(trajectory.atoms.bonds) if trajectory.atoms.bonds.size else None
    predicted = rollout_windows(model, static, x, v, data.cutoff, offsets, windows, cell, bonds, velocity, device)
    frames = [0] + [w * offsets[-1] + o for w in range(windows) for o in offsets]
    positions = torch.cat([x[None], predicted])
    known = [k for k, f in enumerate(frames) if frame + f < total]
    errors = None
    if len(known) > 1:
        truth = torch.from_numpy(np.array(trajectory.positions[[frame + frames[k] for k in known]]))
        times = torch.tensor([float(frames[k]) for k in known])[:, None, None]

        def mse(guess: torch.Tensor) -> List[float]:
            return ((guess - truth) ** 2).mean(dim=(1, 2)).tolist()

        errors = {"frames": [frames[k] for k in known], "model": mse(positions[known]),
                  "frozen": mse(x[None].expand_as(truth)), "constant_velocity": mse(x[None] + v[None] * times)}
    frame_interval = data.frame_interval or trajectory.atoms.frame_dt
    return Rollout(frames, positions, list(trajectory.atoms.elements), cell, frame_interval, errors, frame, windows,
                   velocity)


def require_writers() -> None:
    """MissingExtraError unless ASE and MDAnalysis (the trajectory extra), which write a rollout, are installed."""
    for module in ("ase.io", "MDAnalysis"):
        try:
            __import__(module)
        except ImportError as error:
            raise MissingExtraError(f"writing a rollout needs {module.split('.')[0]}: pip install "
                                    f"'egno_fast[trajectory]' (in a clone: pip install -e '.[trajectory]')") from error


def write_rollout(result: Rollout, folder: Union[str, Path], record: Optional[dict] = None) -> Dict[str, Path]:
    """Write ``result`` into ``folder``: rollout.extxyz (ASE: unwrapped positions, the cell, each frame's offset and
    time), rollout.dcd with rollout.pdb (its topology, the start frame; MDAnalysis and viewers read them together;
    the DCD's time step is the frames' interval when they are evenly spaced and the file's interval is known, else
    1 ps: rollout.json has the true times), rollout.json (frames, times, errors and ``record``) and, with errors,
    rollout_error.png. The files are written beside ``folder`` first and moved into it at the end. Returns
    name -> path."""
    require_writers()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        written = _write_files(result, staging, record)
        paths = {}
        for name in written:
            os.replace(staging / name, folder / name)
            paths[name] = folder / name
        return paths
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_files(result: Rollout, folder: Path, record: Optional[dict]) -> List[str]:
    import ase
    import ase.io
    import MDAnalysis as mda
    from MDAnalysis.lib.mdamath import triclinic_box

    positions = result.positions.numpy()
    cell = result.cell.numpy() if result.cell is not None else None
    dt = result.frame_interval_ps
    snapshots = []
    for offset, frame_positions in zip(result.frames, positions):
        atoms = ase.Atoms(symbols=_ase_symbols(result.elements), positions=frame_positions,
                          cell=cell if cell is not None else np.zeros((3, 3)), pbc=cell is not None)
        atoms.info.update(frame=int(offset), **({"time_ps": float(offset * dt)} if dt else {}))
        snapshots.append(atoms)
    ase.io.write(str(folder / "rollout.extxyz"), snapshots, format="extxyz")
    universe = mda.Universe.empty(len(result.elements), trajectory=True)
    universe.add_TopologyAttr("names", result.elements)
    universe.add_TopologyAttr("elements", result.elements)
    universe.add_TopologyAttr("resnames", ["MOL"])
    dimensions = triclinic_box(*cell) if cell is not None else None
    universe.atoms.positions = positions[0]
    universe.dimensions = dimensions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the PDB columns a bare topology lacks get their defaults
        universe.atoms.write(str(folder / "rollout.pdb"), file_format="PDB")
    gaps = np.diff(result.frames)
    interval = float(gaps[0]) * dt if dt and len(gaps) and np.all(gaps == gaps[0]) else 1.0
    with mda.Writer(str(folder / "rollout.dcd"), len(result.elements), dt=interval, format="DCD") as out:
        for frame_positions in positions:
            universe.atoms.positions = frame_positions
            universe.dimensions = dimensions
            out.write(universe.atoms)
    summary = dict(record or {}, start_frame=result.start_frame, windows=result.windows, velocity=result.velocity,
                   frames=result.frames, frame_interval_ps=dt, atoms=len(result.elements),
                   times_ps=[f * dt for f in result.frames] if dt else None, errors=result.errors)
    (folder / "rollout.json").write_text(json.dumps(summary, indent=1) + "\n")
    written = ["rollout.extxyz", "rollout.dcd", "rollout.pdb", "rollout.json"]
    if result.errors is not None:
        plot_rollout_errors(result, folder / "rollout_error.png")
        written.append("rollout_error.png")
    return written


def _ase_symbols(elements: List[str]) -> List[str]:
    """Element names ASE accepts (a type name that is not an element becomes X)."""
    from ase.data import chemical_symbols

    return [name if name in chemical_symbols else "X" for name in elements]


def plot_rollout_errors(result: Rollout, path: Union[str, Path]) -> Path:
    """PNG of the MSE against horizon (log scale) of the rollout and the two baselines, windows marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors, dt = result.errors, result.frame_interval_ps
    scale, unit = (dt * 1000.0, "fs") if dt else (1.0, "frames")
    shown = [k for k, f in enumerate(errors["frames"]) if f > 0]  # the start frame's error is 0 (log axis)
    horizon = [errors["frames"][k] * scale for k in shown]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (("model", "EGNO rollout", "-o"), ("frozen", "frozen positions", "--"),
                              ("constant_velocity", "constant velocity", ":")):
        ax.plot(horizon, [errors[key][k] for k in shown], style, label=label, markersize=3)
    window = (result.frames[-1] / result.windows) * scale
    for w in range(1, result.windows):
        ax.axvline(w * window, color="grey", linewidth=0.5, alpha=0.5)
    ax.set_yscale("log")
    ax.set_xlabel(f"horizon ({unit})")
    ax.set_ylabel("MSE (Angstrom$^2$)")
    ax.set_title(f"rollout of {result.windows} windows from frame {result.start_frame}")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def horizon_summary(result: Rollout) -> str:
    """One line: the last common horizon's MSE of the rollout and the baselines."""
    if result.errors is None:
        return "no true continuation in the file: no errors"
    e = result.errors
    horizon = e["frames"][-1]
    when = f"{horizon * result.frame_interval_ps * 1000:g} fs" if result.frame_interval_ps else f"{horizon} frames"
    return (f"MSE at {when}: rollout {e['model'][-1]:.4g}, frozen {e['frozen'][-1]:.4g}, constant velocity "
            f"{e['constant_velocity'][-1]:.4g} Angstrom^2")


__all__ = ["Rollout", "rollout", "rollout_windows", "write_rollout", "plot_rollout_errors", "horizon_summary",
           "require_writers", "VELOCITY_SOURCES"]
