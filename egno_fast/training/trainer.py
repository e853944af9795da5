"""The training loop: A-MSE loss, evaluation every few epochs, best-validation F-MSE selection, early stopping,
atomic checkpoints every epoch and exact resume.

Written for one process; under torchrun (torch.distributed initialised) every rank trains on its shard of each
epoch (DistributedSampler), the model is wrapped in DistributedDataParallel, and only rank 0 writes files.

Ctrl-C (KeyboardInterrupt) stops a run cleanly: it raises :class:`TrainingInterrupted` (a KeyboardInterrupt) naming
the epoch that a resume starts from. A Ctrl-C that arrives while a checkpoint or a log line is being written waits
until the write is complete (and the files are atomic in any case), so no file is ever left half-written.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..config import ExperimentConfig
from ..data.batching import collate_graphs
from ..data.io import atomic_path
from ..data.registry import make_datasets
from ..models import EGNO
from .checkpoint import load_checkpoint, model_file_from_checkpoint, save_checkpoint, save_model_file
from .launch import rank_and_world
from .metrics import frame_mse, frame_squared_error, peak_memory_mb, require_finite
from .precision import precision_context
from .run_lock import run_folder_lock

# Settings that may change when a run is resumed (extending or shortening it); any other change is an error.
RESUMABLE_CHANGES = {("train", "epochs"), ("train", "max_minutes"), ("train", "device"), ("train", "num_threads"),
                     ("model", "backend"), ("data", "data_dir")}


@dataclass
class TrainResult:
    """Summary of a run: the reported numbers are the test metrics at the best validation F-MSE."""

    run_dir: Path
    model: EGNO  # with the best validation weights
    stopped: str  # "early_stopping", "max_epochs", "time_limit"
    epochs_run: int
    best_epoch: int
    val_f_mse: float
    test_f_mse: float
    test_a_mse: float
    wall_s: float

    @property
    def model_file(self) -> Path:
        """The best weights only (``EGNO.load`` and ``egno-fast eval`` read it)."""
        return self.run_dir / "model.pt"

    @property
    def log(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def plot(self) -> Path:
        return self.run_dir / "trajectories.png"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training. ``epoch``: the epoch a resume starts from (the epochs before it are saved in
    ``checkpoint``, ``run_dir``/last.pt); ``checkpoint`` is None (and ``epoch`` 0) when no epoch had completed, so
    that running again starts afresh; ``rank``: this process's rank."""

    def __init__(self, run_dir: Path, epoch: int, checkpoint: Optional[Path], rank: int = 0):
        super().__init__(f"interrupted at epoch {epoch}")
        self.run_dir, self.epoch, self.checkpoint, self.rank = run_dir, epoch, checkpoint, rank


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) while the block runs and raise KeyboardInterrupt once it has finished, so that a
    write inside it is never cut short. Only in the main thread and while Python's own SIGINT handler is installed;
    otherwise the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def git_commit() -> str:
    """The commit of the source tree this package runs from (with '+dirty'), or 'unknown'."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_model(config: ExperimentConfig, sample) -> EGNO:
    """An EGNO sized for the data (node and edge feature widths read from one sample)."""
    m = config.model
    return EGNO(node_dim=sample.h.shape[1], edge_dim=sample.edge_attr.shape[1], hidden_dim=m.hidden_dim,
                num_layers=m.num_layers, num_frames=config.data.num_frames, num_modes=m.num_modes,
                time_emb_dim=m.time_emb_dim, temporal_channels=m.temporal_channels, coord_clamp=m.coord_clamp,
                vector_centre=m.vector_centre, backend=m.backend, backbone=m.backbone, num_clusters=m.num_clusters,
                pooling_layers=m.pooling_layers, decoder_layers=m.decoder_layers, link_weight=m.link_weight,
                assignment=m.assignment, cluster_inputs=m.cluster_inputs)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device | str,
             frame_times: Optional[torch.Tensor] = None, precision: str = "fp32") -> Dict[str, object]:
    """F-MSE, A-MSE and the per-frame MSE of ``model`` over every sample of ``loader`` (``frame_times``: the
    model's output times, see :meth:`EGNO.forward`; None for its training frames; ``precision``: as trained)."""
    model.eval()
    squared, count = None, 0
    for batch in loader:
        graph = batch.graph().to(device)  # built and checked on the CPU, where the checks cost no device wait
        batch = batch.to(device)
        with precision_context(precision, device):
            pred = model(batch.x, batch.v, batch.h, graph, frame_times=frame_times, **batch.model_keywords).x
        errors = frame_squared_error(pred, batch.target)
        squared = errors if squared is None else squared + errors
        count += batch.target.shape[1] * batch.target.shape[2]
    if squared is None:
        raise ValueError("cannot evaluate on an empty dataset")
    return frame_metrics((squared / count).tolist())


def frame_metrics(per_frame: List[float]) -> Dict[str, object]:
    """{"f_mse": the last frame's MSE, "a_mse": their mean, "frame_mse": per_frame} of the P per-frame MSEs."""
    return {"f_mse": per_frame[-1], "a_mse": sum(per_frame) / len(per_frame), "frame_mse": per_frame}


def evaluate_baselines(dataset: Dataset) -> Dict[str, Dict[str, object]]:
    """F-MSE, A-MSE and per-frame MSE of the baselines over every sample of ``dataset``: "frozen" (every target
    frame predicted as the input frame) and, for a data set whose velocities are in length per frame interval and
    whose targets lie ``dataset.offsets`` frames after the input (``dataset.velocity_per_frame``), "constant_velocity"
    (x + v * offset). A data set with a ``motion(index) -> (x, v, targets)`` method is read without its graphs."""
    guesses = {"frozen": lambda x, v: x[None]}
    if getattr(dataset, "velocity_per_frame", False):
        times = torch.tensor([float(o) for o in dataset.offsets])[:, None, None]
        guesses["constant_velocity"] = lambda x, v: x[None] + v[None] * times

    def motion(index: int):
        if hasattr(dataset, "motion"):
            return dataset.motion(index)
        sample = dataset[index]
        return sample.x, sample.v, sample.target

    squared = {name: None for name in guesses}
    nodes = 0  # summed over samples: each frame's MSE is its squared error over 3 x nodes
    for index in range(len(dataset)):
        x, v, target = motion(index)
        for name, guess in guesses.items():
            errors = frame_squared_error(guess(x, v).expand_as(target), target)
            squared[name] = errors if squared[name] is None else squared[name] + errors
        nodes += target.shape[1]
    if not nodes:
        raise ValueError("cannot evaluate on an empty dataset")
    return {name: frame_metrics((total / (3 * nodes)).tolist()) for name, total in squared.items()}


def make_loader(dataset: Dataset, batch_size: int, train: bool, seed: int) -> DataLoader:
    """Training: shuffled, last partial batch dropped. One process draws the order from torch's global generator
    (as the reference code does, so a seed gives its data order; the generator state is checkpointed); under
    torch.distributed each rank takes its shard from a DistributedSampler seeded by ``seed`` and the epoch."""
    rank, world = rank_and_world()
    if train and world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                          collate_fn=collate_graphs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, collate_fn=collate_graphs)


def _check_resumable(saved: Dict, config: ExperimentConfig) -> None:
    if not config.data.elements and saved["data"].get("elements"):  # filled from the file when the run began
        config.data.elements = list(saved["data"]["elements"])
    new, defaults = config.to_dict(), ExperimentConfig().to_dict()  # keys added since the checkpoint: defaults
    changed = [(section, key) for section in ("data", "model", "train") for key in new[section]
               if saved[section].get(key, defaults[section][key]) != new[section][key]
               and (section, key) not in RESUMABLE_CHANGES]
    if changed:
        names = ", ".join(f"{s}.{k}: {saved[s].get(k)!r} -> {new[s][k]!r}" for s, k in changed)
        raise ValueError(f"cannot resume: the config differs from the checkpoint's ({names}); use a new --run-dir")


class _JsonlLog:
    """Append-only metrics log; each record is one line written and flushed in a single call.

    An epoch's evaluation record is written before the epoch's last.pt, and a resumed run first drops the records
    of the epochs it will run again (:meth:`drop_evaluations_from`): a kill at any moment leaves every evaluation
    in the final log exactly once."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: Dict) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def drop_evaluations_from(self, epoch: int) -> None:
        """Rewrite the log (atomically) without the evaluation records of ``epoch`` and later, and without a line
        cut short by a kill."""
        if not (self.enabled and self.path.exists()):
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the end of a write that a kill cut short
            if not (record.get("event") == "eval" and record.get("epoch", -1) >= epoch):
                kept.append(line)
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept))


def _remove_stale_temporary_files(run_dir: Path) -> None:
    """Temporary files of atomic writes (``.<name>.<random>.tmp<suffix>``) that a killed process left behind; the
    run folder is locked, so no other process is writing them."""
    for path in run_dir.glob(".*.tmp*"):
        path.unlink(missing_ok=True)


def train(config: ExperimentConfig, run_dir: str | Path, resume: bool = True, progress: bool = True,
          command: Optional[str] = None, report: Optional[Callable[[str], None]] = None) -> TrainResult:
    """Train (or resume) the experiment ``config`` in ``run_dir``.

    Files in ``run_dir``: config.json, metrics.jsonl (a header line with command, config, seed and git commit,
    then one line per evaluation), last.pt (every epoch, for resuming), best.pt (best validation F-MSE), model.pt
    (the best weights only, written at the end: :mod:`egno_fast.training.checkpoint`) and trajectories.png
    (predicted vs true test trajectories of the best model).

    ``report`` (rank 0 only) receives one-line status messages for the user, e.g. "resuming RUN_DIR at epoch N".
    Ctrl-C raises :class:`TrainingInterrupted`; calling ``train`` again with the same arguments resumes.
    The run folder is locked while this runs (:mod:`egno_fast.training.run_lock`): a second process training in it
    raises :class:`~egno_fast.training.run_lock.RunFolderInUse`.
    """
    if config.train.precision == "bf16" and config.model.backbone == "eghn":
        raise ValueError('train.precision="bf16" is not supported with model.backbone="eghn" (its cluster pooling '
                         'would run on bf16 positions); use train.precision="fp32"')
    rank, _ = rank_and_world()
    with run_folder_lock(run_dir, enabled=rank == 0):
        return _train_in_locked_folder(config, Path(run_dir), resume, progress, command, report)


def _train_in_locked_folder(config: ExperimentConfig, run_dir: Path, resume: bool, progress: bool,
                            command: Optional[str], report: Optional[Callable[[str], None]]) -> TrainResult:
    """The body of :func:`train`, once the run folder is locked."""
    from tqdm.auto import tqdm

    from .plotting import plot_trajectories

    rank, world = rank_and_world()
    main_process = rank == 0
    cfg = config.train
    device = torch.device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    saved = None
    if last_path.exists():
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a run (last.pt); resume it or choose another --run-dir")
        saved = load_checkpoint(last_path, map_location=device)
        _check_resumable(saved["config"], config)

    say = report if (report is not None and main_process) else (lambda message: None)
    if saved is not None:
        done = saved["state"]
        if done.get("stopped") not in (None, "time_limit"):
            say(f"{run_dir} is complete (stopped by {done['stopped']} at epoch {done['epoch']}); reporting its results")
        elif done["epoch"] >= cfg.epochs:
            say(f"{run_dir} has trained all {cfg.epochs} epochs; reporting its results (pass a larger --epochs to "
                f"train on)")
        else:
            say(f"resuming {run_dir} at epoch {done['epoch']} (of {cfg.epochs})")

    distributed = dist.is_available() and dist.is_initialized()
    if distributed and not main_process:
        dist.barrier()  # rank 0 generates and caches the data first
    datasets = make_datasets(config.data, progress=progress and main_process)
    if distributed and main_process:
        dist.barrier()
    torch.manual_seed(cfg.seed)
    model = build_model(config, datasets["train"][0]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, cfg.lr_gamma)
                 if cfg.lr_step else None)
    state = {"epoch": 0, "best_epoch": -1, "best_val": math.inf, "test_f_at_best": math.inf,
             "test_a_at_best": math.inf, "evals_since_best": 0, "wall_s": 0.0, "stopped": None}
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        state.update(saved["state"])
        if state["stopped"] == "time_limit":  # a time-limited run goes on where it stopped
            state["stopped"] = None
        torch.set_rng_state(saved["rng"].cpu())
    trained = model
    if distributed:  # the last layer's node_mlp does not reach the positions: unused in the loss
        trained = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    train_loader = make_loader(datasets["train"], cfg.batch_size, True, cfg.seed)
    eval_loaders = {s: make_loader(datasets[s], cfg.batch_size, False, cfg.seed) for s in ("valid", "test")}
    if len(train_loader) == 0:
        raise ValueError(f"the training set ({len(datasets['train'])} samples) is smaller than one batch "
                         f"({cfg.batch_size}); lower train.batch_size")
    log = _JsonlLog(run_dir / "metrics.jsonl", main_process)
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporary_files(run_dir)
        log.drop_evaluations_from(state["epoch"])  # epochs after the checkpoint run again and log again
        with atomic_path(run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(config.to_dict(), indent=2))
        log.write({"event": "start", "command": command or " ".join(shlex.quote(a) for a in sys.argv),
                   "config": config.to_dict(), "seed": cfg.seed, "git_commit": git_commit(),
                   "torch": torch.__version__, "backend": model.backend, "device": str(device), "world_size": world,
                   "resumed_at_epoch": state["epoch"] if saved is not None else None,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def checkpoint(path: Path) -> None:
        if main_process:
            with interrupts_deferred():
                save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                       "scheduler": scheduler.state_dict() if scheduler else None,
                                       "state": dict(state), "rng": torch.get_rng_state(),
                                       "config": config.to_dict(), "model_config": model.config})

    started = time.monotonic() - state["wall_s"]
    invocation_start = time.monotonic()
    saved_epoch = state["epoch"] if saved is not None else None  # where a resume from last.pt starts (None: no file)
    bar = tqdm(total=cfg.epochs, initial=state["epoch"], desc=config.name, unit="epoch",
               disable=not (progress and main_process), dynamic_ncols=True)
    try:
        while state["stopped"] is None and state["epoch"] < cfg.epochs:
            epoch = state["epoch"]
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            trained.train()
            loss_sums = torch.zeros(2, dtype=torch.float64, device=device)  # A-MSE, F-MSE; synchronised per epoch
            atom_frames, epoch_start = 0, time.monotonic()
            for batch in train_loader:
                graph = batch.graph().to(device)  # built and checked on the CPU, where the checks cost no device wait
                batch = batch.to(device)
                optimizer.zero_grad(set_to_none=True)
                with precision_context(cfg.precision, device):
                    out = trained(batch.x, batch.v, batch.h, graph, **batch.model_keywords)
                losses = frame_mse(out.x.float(), batch.target)
                loss = losses.mean()  # the A-MSE; the "eghn" backbone's weighted link loss adds to what is minimised
                (loss if out.aux_loss is None else loss + out.aux_loss).backward()
                if cfg.grad_clip_norm is not None:  # no host sync: the norm stays a tensor
                    torch.nn.utils.clip_grad_norm_(trained.parameters(), cfg.grad_clip_norm)
                optimizer.step()
                loss_sums += torch.stack([loss.detach(), losses[-1].detach()]).double()
                atom_frames += batch.target.shape[0] * batch.target.shape[1]
            if scheduler is not None:
                scheduler.step()
            train_a, train_f = (loss_sums / len(train_loader)).tolist()  # waits for the device: the epoch's time
            record = {"epoch": epoch, "train_a_mse": train_a, "train_f_mse": train_f,
                      "train_atom_frames_per_s": round(atom_frames / (time.monotonic() - epoch_start), 1)}
            kept = (f"{last_path} holds epoch {saved_epoch - 1}" if saved_epoch else "no checkpoint was written")
            require_finite({"training A-MSE": train_a}, f"train split, epoch {epoch} ({kept})")
            if epoch % cfg.eval_every == 0:
                val, test = (evaluate(model, eval_loaders[s], device, precision=cfg.precision)
                             for s in ("valid", "test"))
                for split, metrics in (("valid", val), ("test", test)):  # before best.pt, last.pt or the log
                    require_finite({"F-MSE": metrics["f_mse"], "A-MSE": metrics["a_mse"]},
                                   f"{split} split, evaluation at epoch {epoch} ({kept})")
                if val["f_mse"] < state["best_val"]:
                    state.update(best_epoch=epoch, best_val=val["f_mse"], test_f_at_best=test["f_mse"],
                                 test_a_at_best=test["a_mse"], evals_since_best=0)
                    checkpoint(best_path)
                else:
                    state["evals_since_best"] += 1
                record.update(val_f_mse=val["f_mse"], val_a_mse=val["a_mse"], test_f_mse=test["f_mse"],
                              test_a_mse=test["a_mse"], best_epoch=state["best_epoch"],
                              best_val_f_mse=state["best_val"], test_f_mse_at_best=state["test_f_at_best"])
                if state["evals_since_best"] >= cfg.patience:
                    state["stopped"] = "early_stopping"
            state["epoch"] = epoch + 1
            state["wall_s"] = time.monotonic() - started
            if cfg.max_minutes is not None and time.monotonic() - invocation_start > 60 * cfg.max_minutes:
                state["stopped"] = "time_limit"
            with interrupts_deferred():  # Ctrl-C waits for the log line and last.pt, then stops here
                if "val_f_mse" in record:  # first: a kill before last.pt lands reruns the epoch, which logs again
                    log.write({"event": "eval", **record, "elapsed_s": round(state["wall_s"], 2)})
                checkpoint(last_path)
                saved_epoch = state["epoch"]
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_a_mse']:.5f}", best_val=f"{state['best_val']:.5f}")
    except KeyboardInterrupt:
        bar.close()
        with interrupts_deferred():
            log.write({"event": "interrupted", "resume_at_epoch": saved_epoch or 0,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        raise TrainingInterrupted(run_dir, saved_epoch or 0, last_path if saved_epoch is not None else None,
                                  rank) from None
    bar.close()
    stopped = state["stopped"] or "max_epochs"
    if distributed:
        dist.barrier()  # best.pt is complete before any rank reads it
    if best_path.exists():
        best = load_checkpoint(best_path, map_location=device)
        model.load_state_dict(best["model"])
        if main_process:
            save_model_file(run_dir / "model.pt", model_file_from_checkpoint(best))
            plot_trajectories(model, datasets["test"], run_dir / "trajectories.png", cfg.plot_samples, device,
                              cfg.precision)
    result = TrainResult(run_dir=run_dir, model=model, stopped=stopped, epochs_run=state["epoch"],
                         best_epoch=state["best_epoch"], val_f_mse=state["best_val"],
                         test_f_mse=state["test_f_at_best"], test_a_mse=state["test_a_at_best"],
                         wall_s=state["wall_s"])
    log.write({"event": "end", "stopped": stopped, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "val_f_mse": result.val_f_mse, "test_f_mse": result.test_f_mse, "test_a_mse": result.test_a_mse,
               "wall_s": round(result.wall_s, 2), "active_backend": model.active_backend,
               "peak_memory_mb": round(peak_memory_mb(device), 1)})
    return result
