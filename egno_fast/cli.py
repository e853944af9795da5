"""Command line: ``egno-fast {data,train,eval,info}`` (also ``python -m egno_fast``)."""
from __future__ import annotations

import argparse
import logging
import platform
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from .config import apply_overrides, available_configs, load_config


def _add_config_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--config", default=default,
                        help=f"a shipped config ({', '.join(available_configs())}) or a JSON file (default: {default})")
    parser.add_argument("--data-dir", help="where data sets are cached (default: $EGNO_FAST_DATA or ~/.cache/egno_fast)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=5e-4 (repeatable)")


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed (for logs): ``egno-fast`` and the arguments ``main`` received."""
    return shlex.join(["egno-fast", *args.argv])


def _config_from_args(args: argparse.Namespace):
    overrides = list(args.overrides)
    for flag, key in (("data_dir", "data.data_dir"), ("epochs", "train.epochs"), ("seed", "train.seed"),
                      ("backend", "model.backend"), ("device", "train.device"),
                      ("max_minutes", "train.max_minutes")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}" if flag not in ("data_dir", "backend", "device")
                             else f'{key}="{value}"')
    return apply_overrides(load_config(args.config), overrides)


def cmd_data(args: argparse.Namespace) -> int:
    from .data.registry import make_datasets, resolve_data_dir

    config = _config_from_args(args)
    datasets = make_datasets(config.data, progress=not args.no_progress)
    print(f"data set {config.data.name!r} ready in {resolve_data_dir(config.data)}: "
          + ", ".join(f"{split} {len(ds)} samples" for split, ds in datasets.items()))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train; under torchrun every process trains its shard with DistributedDataParallel and rank 0 writes."""
    from .training import train
    from .training.launch import leave_without_finalization, process_group_from_environment, rank_and_world

    config = _config_from_args(args)
    run_dir = Path(args.run_dir or Path("runs") / f"{config.name}-seed{config.train.seed}")
    with process_group_from_environment(config.train.device) as backend:
        result = train(config, run_dir, resume=not args.no_resume, progress=not args.no_progress,
                       command=_command_line(args))
        rank, _ = rank_and_world()
    if rank == 0:
        print(f"\n{config.name}: stopped by {result.stopped} after {result.epochs_run} epochs "
              f"({result.wall_s / 60:.1f} min of training)")
        print(f"best validation F-MSE {result.val_f_mse:.6f} at epoch {result.best_epoch}; "
              f"test F-MSE {result.test_f_mse:.6f}, test A-MSE {result.test_a_mse:.6f}")
        print(f"checkpoint: {result.checkpoint}\nmetrics log: {result.log}\nplot: {result.plot}")
    if backend == "gloo":  # a process group this command opened (never one of a caller's); every file is closed
        leave_without_finalization()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .config import ExperimentConfig
    from .data.registry import make_datasets
    from .training.checkpoint import load_checkpoint
    from .training.plotting import plot_trajectories
    from .training.trainer import build_model, evaluate, make_loader

    state = load_checkpoint(args.checkpoint)
    config = ExperimentConfig.from_dict(state["config"])
    if args.data_dir:
        config.data.data_dir = args.data_dir
    device = torch.device(args.device)
    datasets = make_datasets(config.data, progress=not args.no_progress)
    model = build_model(config, datasets["train"][0])
    model.load_state_dict(state["model"])
    model.to(device)
    if args.backend:
        model.backend = args.backend
    if args.resample > 1:
        from .training.zero_shot import evaluate_resampled

        metrics = evaluate_resampled(model, config, args.resample, args.split, device, not args.no_progress)
        label = f"{args.split}, zero-shot {args.resample} x {config.data.num_frames} frames"
    else:
        metrics = evaluate(model, make_loader(datasets[args.split], config.train.batch_size, False, 0), device)
        label = args.split
    frames = " ".join(f"{m:.6f}" for m in metrics["frame_mse"])
    print(f"{label}: F-MSE {metrics['f_mse']:.6f}  A-MSE {metrics['a_mse']:.6f}  per frame: {frames}")
    if args.output:
        import json

        from .data.io import atomic_path
        from .training.trainer import git_commit

        record = dict(metrics, command=_command_line(args), checkpoint=str(args.checkpoint),
                      checkpoint_epoch=state.get("state", {}).get("epoch"), config=state["config"],
                      git_commit=git_commit())
        with atomic_path(args.output) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
        print(f"metrics: {args.output}")
    if args.plot:
        print(f"plot: {plot_trajectories(model, datasets[args.split], args.plot, 3, device)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import numpy
    import torch

    from . import __version__
    from .backends import AUTO_PRIORITY, OPS, backend_status, resolve_backend

    print(f"egno_fast {__version__}  (python {platform.python_version()}, torch {torch.__version__}, "
          f"numpy {numpy.__version__})")
    try:
        import triton
        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed")
    cuda = torch.cuda.is_available()
    print(f"CUDA: {'yes, ' + torch.cuda.get_device_name(0) if cuda else 'no'}; CPU threads: {torch.get_num_threads()}")
    try:
        from .cpp import build_info
        built = build_info()
        print(f"C++ extension egno_fast._C: built (OpenMP {'on' if built['openmp'] else 'off'}, CUDA graph builders "
              f"{'in' if built['cuda'] else 'not built'})")
    except ImportError as error:
        print(f"C++ extension egno_fast._C: unavailable ({error})")
    for device in ("cpu", "cuda") if cuda else ("cpu",):
        print(f"backends on {device} (auto priority: {', '.join(AUTO_PRIORITY[device])}):")
        for name, ops in backend_status(device).items():
            for op, status in ops.items():
                print(f"  {name:10s} {op:18s} {status}")
        print("  auto picks: " + ", ".join(f"{op}={resolve_backend('auto', device, op)}" for op in OPS))
    print(f"configs: {', '.join(available_configs())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egno-fast", description="EGNO: equivariant graph neural operator.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log backend choices and other details")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate (or check) the data set of a config")
    _add_config_arguments(data, "nbody")
    data.add_argument("--no-progress", action="store_true")
    data.set_defaults(func=cmd_data)

    train = commands.add_parser("train", help="train a model (no arguments: a few minutes of N-body on CPU)")
    _add_config_arguments(train, "default")
    train.add_argument("--run-dir", help="output folder (default: runs/<config>-seed<seed>); resumed if it holds a run")
    train.add_argument("--epochs", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--backend", choices=["reference", "triton", "cpp", "auto"])
    train.add_argument("--device")
    train.add_argument("--max-minutes", type=float, help="stop resumably after this much training time")
    train.add_argument("--no-resume", action="store_true", help="refuse to continue a run found in --run-dir")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint (F-MSE, A-MSE, per-frame MSE)")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--split", default="test", choices=["train", "valid", "test"])
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--backend", choices=["reference", "triton", "cpp", "auto"])
    evaluate.add_argument("--plot", help="also write a PNG of predicted vs true trajectories here")
    evaluate.add_argument("--resample", type=int, default=1, metavar="K",
                          help="zero-shot: predict K x P uniform frames over the same span (default 1)")
    evaluate.add_argument("--output", help="also write the metrics, command and checkpoint epoch as JSON here")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(func=cmd_eval)

    info = commands.add_parser("info", help="versions, devices and which backends are available")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"egno-fast {args.command}: error: {error}", file=sys.stderr)
        return 2
