"""Charged-particle N-body data ("nbody_small" of EGNN/EGNO), regenerated exactly and batched over trajectories.

The random stream reproduces the reference generator bit for bit (numpy's legacy global generator, seeded once,
draws taken per trajectory in the reference's order); the integration is vectorised over trajectories, which
changes nothing but the speed (positions agree with the reference to round-off).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .batching import StartFrameDataset, complete_graph_edges
from .io import atomic_savez, generation_lock, load_npz
from .protocol import SPLITS, check_split, target_offsets


@dataclass(frozen=True)
class NBodyParams:
    """Generator settings (defaults: the reference's nbody_small, ``--num-train 10000 --seed 43``)."""

    num_train: int = 10000
    num_valid: int = 2000
    num_test: int = 2000
    seed: int = 43
    num_particles: int = 5
    steps: int = 5000
    sample_every: int = 100
    dt: float = 0.001
    box_size: float = 5.0
    position_std: float = 1.0
    speed: float = 0.5
    interaction_strength: float = 1.0
    max_force: float = 100.0
    # Simulate only the first trajectories of the train split (the random stream still advances past all
    # num_train, so valid and test are unchanged): EGNO trains on 3000 of the 10000.
    train_simulated: Optional[int] = None

    @property
    def num_simulated(self) -> Dict[str, int]:
        """Trajectories simulated (and stored) per split."""
        train = self.num_train if self.train_simulated is None else min(self.train_simulated, self.num_train)
        return {"train": train, "valid": self.num_valid, "test": self.num_test}

    @property
    def num_recorded(self) -> int:
        return self.steps // self.sample_every - 1

    def file_name(self) -> str:
        kept = "" if self.train_simulated is None else f"_first{self.num_simulated['train']}"
        return (f"nbody_charged{self.num_particles}_seed{self.seed}_"
                f"{self.num_train}-{self.num_valid}-{self.num_test}{kept}.npz")


def _draw_initial_states(params: NBodyParams, num_sims: int):
    """Draw charges, positions and velocities for ``num_sims`` trajectories from the global numpy stream, in the
    reference order (5 uniforms, randn x0, randn v0, then two discarded noise arrays per trajectory)."""
    n, frames = params.num_particles, params.num_recorded
    charges = np.empty((num_sims, n, 1))
    x0 = np.empty((num_sims, 3, n))
    v0 = np.empty((num_sims, 3, n))
    for s in range(num_sims):
        charges[s] = np.where(np.random.random_sample((n, 1)) < 0.5, -1.0, 1.0)
        x0[s] = np.random.randn(3, n) * params.position_std
        v0[s] = np.random.randn(3, n)
        np.random.randn(frames, 3, n)  # observation noise of the reference, multiplied by zero there
        np.random.randn(frames, 3, n)
    speed = np.sqrt((v0 ** 2).sum(axis=1, keepdims=True))
    v0 = v0 * params.speed / speed
    return charges, x0, v0


def _reflect_into_box(x: np.ndarray, v: np.ndarray, box: float) -> None:
    """One-time reflection of the initial state into [-box, box] (in place)."""
    over = x > box
    x[over] = 2 * box - x[over]
    v[over] = -np.abs(v[over])
    under = x < -box
    x[under] = -2 * box - x[under]
    v[under] = np.abs(v[under])


def coulomb_forces(x: np.ndarray, qq: np.ndarray, params: NBodyParams) -> np.ndarray:
    """Coulomb forces (unclipped; :func:`simulate` clips them).

    Args:
        x:  [S, 3, n] positions (coordinate before particle).
        qq: [S, n, n] charge products q_i q_j.
    Returns:
        [S, 3, n]: F_i = sum_{j != i} q_i q_j (x_i - x_j) / |x_i - x_j|^3.
    """
    n = x.shape[-1]
    norms = (x ** 2).sum(axis=1)  # [S, n]
    gram = np.einsum("sci,scj->sij", x, x)
    dist2 = norms[:, :, None] + norms[:, None, :] - 2 * gram  # the reference's |a|^2 + |b|^2 - 2 a.b
    with np.errstate(divide="ignore", invalid="ignore"):
        size = params.interaction_strength * qq / np.power(dist2, 1.5)
    size[:, np.arange(n), np.arange(n)] = 0.0
    diff = x[:, :, :, None] - x[:, :, None, :]  # [S, 3, n, n]
    return (size[:, None] * diff).sum(axis=-1)


def simulate(charges: np.ndarray, x0: np.ndarray, v0: np.ndarray, params: NBodyParams):
    """Integrate trajectories (kick first, then drift / record / kick), batched over trajectories.

    Args:
        charges: [S, n, 1]; x0, v0: [S, 3, n] (already reflected into the box).
    Returns:
        loc, vel: [S, frames, 3, n] float64 (frame k = step sample_every * (k + 1));
        clipped:  [S] bool, whether a force component was clipped to +-max_force at some step (clipping breaks
                  Newton's third law, so such trajectories do not conserve momentum).
    """
    qq = charges @ charges.transpose(0, 2, 1)
    x, v = x0.copy(), v0.copy()
    frames = params.num_recorded
    loc = np.zeros((x.shape[0], frames, 3, x.shape[2]))
    vel = np.zeros_like(loc)
    clipped = np.zeros(x.shape[0], dtype=bool)

    def kick() -> None:
        force = coulomb_forces(x, qq, params)
        clipped[:] |= (np.abs(force) > params.max_force).any(axis=(1, 2))
        v[:] += params.dt * np.clip(force, -params.max_force, params.max_force)

    kick()
    counter = 0
    for step in range(1, params.steps):
        x += params.dt * v
        if step % params.sample_every == 0:
            loc[:, counter], vel[:, counter] = x, v
            counter += 1
        kick()
    return loc, vel, clipped


def generate_nbody(params: NBodyParams = NBodyParams(), chunk: int = 500,
                   progress: bool = False) -> Dict[str, np.ndarray]:
    """Generate the train, valid and test splits.

    Returns:
        {"loc_<split>", "vel_<split>": [S, frames, 3, n], "charges_<split>": [S, n, 1]} float64 and
        {"clipped_<split>": [S] bool} (see :func:`simulate`).
    """
    np.random.seed(params.seed)
    sizes = {"train": params.num_train, "valid": params.num_valid, "test": params.num_test}
    initial = {split: _draw_initial_states(params, sizes[split]) for split in SPLITS}
    out: Dict[str, np.ndarray] = {}
    kept = params.num_simulated
    total = sum(kept.values())
    done = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="simulating n-body", unit="traj")
    for split in SPLITS:
        charges, x0, v0 = (a[:kept[split]] for a in initial[split])
        _reflect_into_box(x0, v0, params.box_size)
        locs, vels, clips = [], [], []
        for start in range(0, len(charges), chunk):
            part = slice(start, start + chunk)
            loc, vel, clipped = simulate(charges[part], x0[part], v0[part], params)
            locs.append(loc)
            vels.append(vel)
            clips.append(clipped)
            done += len(loc)
            if bar is not None:
                bar.update(len(loc))
        shape = (0, params.num_recorded, 3, params.num_particles)
        out[f"loc_{split}"] = np.concatenate(locs) if locs else np.zeros(shape)
        out[f"vel_{split}"] = np.concatenate(vels) if vels else np.zeros(shape)
        out[f"charges_{split}"] = charges
        out[f"clipped_{split}"] = np.concatenate(clips) if clips else np.zeros(0, dtype=bool)
    if bar is not None:
        bar.close()
    return out


def load_or_generate_nbody(data_dir: str | Path, params: NBodyParams = NBodyParams(),
                           progress: bool = True) -> Dict[str, np.ndarray]:
    """The cached data set for ``params`` in ``data_dir``, generated (and written atomically) if absent.

    The file records the generating parameters; a file whose parameters differ is an error, never reused.
    """
    path = Path(data_dir) / params.file_name()
    if not path.exists():
        with generation_lock(path):  # one process generates; another waits and reads its file
            if not path.exists():
                arrays = generate_nbody(params, progress=progress)
                atomic_savez(path, params=np.array(json.dumps(asdict(params))), **arrays)
                return arrays
    arrays = load_npz(path, required=[f"{kind}_{split}" for kind in ("loc", "vel", "charges", "clipped")
                                      for split in SPLITS] + ["params"])
    stored = json.loads(str(arrays.pop("params")))
    if stored != asdict(params):
        raise ValueError(f"{path} was generated with {stored}, not {asdict(params)}; remove it or choose "
                         f"another --data-dir")
    return arrays


class NBodyDataset(StartFrameDataset):
    """EGNO samples from one split: the state at ``input_frame``, targets at P later frames.

    Uniform discretisation ("U"): targets are frames ``input_frame + span * p // P`` for p = 1..P (P = 5: 32..40).
    Last ("L"): the last P frames ``input_frame + span - P + p``.
    Graph: complete directed graph without self loops; node feature |v|; edge features [q_i q_j, |x_i - x_j|^2]
    (input frame); edge_index row 0 = sender j, row 1 = receiver i.

    Args:
        arrays:       the output of :func:`generate_nbody` / :func:`load_or_generate_nbody`.
        split:        "train", "valid" or "test".
        num_frames:   P.
        max_samples:  keep the first ``max_samples`` trajectories (None: all).
        discretisation: "uniform" or "last".
        input_frame, span: frame 30 and 10 steps of 100 by default (the reference's nbody_small).
    """

    def __init__(self, arrays: Dict[str, np.ndarray], split: str, num_frames: int = 5,
                 max_samples: Optional[int] = None, discretisation: str = "uniform", input_frame: int = 30,
                 span: int = 10):
        self.offsets, self.span = target_offsets(num_frames, span, discretisation), span
        frames = [input_frame + k for k in self.offsets]
        loc = arrays[f"loc_{check_split(split)}"][:max_samples]
        if input_frame + span >= loc.shape[1]:
            raise ValueError(f"frames {input_frame}+{span} exceed the {loc.shape[1]} recorded frames")
        self.split, self.frames = split, frames
        to_nodes = lambda a: torch.as_tensor(np.ascontiguousarray(np.swapaxes(a, -1, -2)), dtype=torch.float32)
        self.x = to_nodes(loc[:, input_frame])  # [S, n, 3]
        self.v = to_nodes(arrays[f"vel_{split}"][:max_samples][:, input_frame])
        self.targets = to_nodes(loc[:, frames])  # [S, P, n, 3]
        self.charges = torch.as_tensor(arrays[f"charges_{split}"][:max_samples][..., 0], dtype=torch.float32)
        self.edge_index = complete_graph_edges(self.x.shape[1])

    def features(self, index, x, v, sender, receiver, dist2):
        q = self.charges[index]
        return v.norm(dim=-1, keepdim=True), torch.stack([q[receiver] * q[sender], dist2], dim=-1)
