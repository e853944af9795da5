"""Command line: ``egno-fast {data,train,eval,rollout,info}`` (also ``python -m egno_fast``).

A user's mistake (a config value of the wrong type, a backend or device this machine lacks, a missing file, ...)
ends the command with one line on stderr, ``egno-fast COMMAND: error: PROBLEM; FIX``, and exit status 2; ``--debug``
shows the Python traceback instead. Ctrl-C ends it with one line and exit status 130 (128 + SIGINT, the shell's
convention); during training the line says the epoch to resume from, and the same command resumes.

This module imports torch only inside the commands, so ``egno-fast --help`` answers at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Union

from .config import apply_overrides, available_configs, load_config

EXIT_USAGE = 2  # a user's mistake (as argparse's own errors)
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT
_MAX_MESSAGE = 1500  # characters of an error message printed (--debug shows all)


MODEL_DATA_SETTINGS = ("data.name", "data.num_frames", "data.elements")  # what the model's shapes depend on


class CommandLineError(Exception):
    """A mistake in the command line or its environment; the message names the problem and the fix."""


def _add_config_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--config", default=default,
                        help=f"a shipped config ({', '.join(available_configs())}) or a JSON file (default: {default})")
    parser.add_argument("--data-dir", help="where data sets are cached (default: $EGNO_FAST_DATA or ~/.cache/egno_fast)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=5e-4 (repeatable)")


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed (for logs): ``egno-fast`` and the arguments ``main`` received."""
    return shlex.join(["egno-fast", *args.argv])


def _minutes(text: str) -> float:
    """--max-minutes: a number of minutes, or "none" for no limit (given as infinity)."""
    if text.strip().lower() in ("none", "null", "inf", "off"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes or 'none', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of minutes >= 0 or 'none', got {text!r}")
    return value


def _config_from_args(args: argparse.Namespace):
    overrides = list(args.overrides)
    for flag, key in (("data_dir", "data.data_dir"), ("epochs", "train.epochs"), ("seed", "train.seed"),
                      ("backend", "model.backend"), ("device", "train.device"),
                      ("max_minutes", "train.max_minutes")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={'null' if value == math.inf else json.dumps(value)}")
    return apply_overrides(load_config(args.config), overrides)


def check_device(name: str):
    """``torch.device(name)`` after checking that this machine has it; CommandLineError (problem; fix) if not."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as error:
        raise CommandLineError(f"invalid device {name!r} ({_one_line(error)}); use --device cpu, cuda or cuda:N") \
            from error
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise CommandLineError(f"device {name!r}: this torch build ({torch.__version__}) has no CUDA support; "
                                   f"use --device cpu, or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise CommandLineError(f"device {name!r}: torch {torch.__version__} sees no CUDA GPU (no driver, or "
                                   f"CUDA_VISIBLE_DEVICES hides them all); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CommandLineError(f"device {name!r} does not exist: this machine has {count} CUDA GPU"
                                   f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}); use --device cuda "
                                   f"or cuda:N with N < {count}")
        return device
    if device.type == "meta":
        raise CommandLineError(f"device {name!r} holds no data and cannot train or evaluate; use --device cpu or cuda")
    try:
        torch.empty(1, device=device)
    except Exception as error:  # the device type exists in torch but not on this machine (mps, xpu, ...)
        reason = _one_line(error).split(". ")[0]  # torch's first sentence; the rest is advice for its developers
        raise CommandLineError(f"device {name!r} is not usable here ({reason}); use --device cpu or cuda") from error
    return device


def check_backend(requested: Union[str, dict, None], device, precision: str = "fp32") -> None:
    """Check before any work that every op's named backend runs on ``device`` at ``precision`` ("auto" always
    does); a CommandLineError names the backend, the reason and the alternatives otherwise."""
    if requested is None:
        return
    import torch

    from .backends import OPS, check_backend_name, unavailable_reason

    per_op = requested if isinstance(requested, dict) else dict.fromkeys(OPS, requested)
    autocast = torch.bfloat16 if precision == "bf16" else None
    for op in OPS:
        name = check_backend_name(per_op.get(op, "auto"))
        if name == "auto":
            continue
        reason = unavailable_reason(name, op, device, autocast=autocast)
        if reason is not None:
            raise CommandLineError(f"backend {name!r} cannot run {op!r} on {device}: {_one_line(reason)}; use "
                                   f"--backend auto (the fastest available backend per op) or --backend reference; "
                                   f"`egno-fast info` lists what runs here")


def cmd_data(args: argparse.Namespace) -> int:
    from .data.registry import data_location, make_datasets

    config = _config_from_args(args)
    datasets = make_datasets(config.data, progress=not args.no_progress)
    print(f"data set {config.data.name!r} ready ({data_location(config.data)}): "
          + ", ".join(f"{split} {len(ds)} samples" for split, ds in datasets.items()))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train; under torchrun every process trains its shard with DistributedDataParallel and rank 0 writes."""
    from .training import train
    from .training.launch import leave_without_finalization, process_group_from_environment, rank_and_world

    config = _config_from_args(args)
    device = check_device(config.train.device)
    check_backend(config.model.backend, device, config.train.precision)
    run_dir = Path(args.run_dir or Path("runs") / f"{config.name}-seed{config.train.seed}")
    with process_group_from_environment(config.train.device) as backend:
        result = train(config, run_dir, resume=not args.no_resume, progress=not args.no_progress,
                       command=_command_line(args), report=lambda message: print(message, file=sys.stderr))
        rank, _ = rank_and_world()
    if rank == 0:
        print(f"\n{config.name}: stopped by {result.stopped} after {result.epochs_run} epochs "
              f"({result.wall_s / 60:.1f} min of training)")
        print(f"best validation F-MSE {result.val_f_mse:.6f} at epoch {result.best_epoch}; "
              f"test F-MSE {result.test_f_mse:.6f}, test A-MSE {result.test_a_mse:.6f}")
        if result.model.active_backend:
            print("backend: " + ", ".join(f"{op}={name}" for op, name in result.model.active_backend.items())
                  + f" on {device}")
        print(f"model: {result.model_file}\nmetrics log: {result.log}\nplot: {result.plot}")
        if result.stopped == "time_limit":
            limit = config.train.max_minutes
            print(f"time limit of {limit:g} min reached at epoch {result.epochs_run} of {config.train.epochs}: to "
                  f"continue, run the same command (up to {limit:g} more minutes), with a larger --max-minutes, or "
                  f"with --max-minutes none (no limit)")
    if backend == "gloo":  # a process group this command opened (never one of a caller's); every file is closed
        leave_without_finalization()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import ExperimentConfig
    from .data.registry import make_datasets
    from .training.checkpoint import load_model_file
    from .training.plotting import plot_trajectories
    from .models import EGNO
    from .training.metrics import require_finite
    from .training.trainer import evaluate, make_loader

    device = check_device(args.device)
    state = load_model_file(args.checkpoint)  # a model file, or a training checkpoint's model part
    config = ExperimentConfig.from_dict(state["config"])
    if args.data_dir:
        config.data.data_dir = args.data_dir
    if args.overrides:
        others = [item for item in args.overrides if not item.startswith("data.")]
        if others:
            raise CommandLineError(f"eval --set takes data settings only (the model is the checkpoint's), got "
                                   f"{others[0]!r}")
        fixed = [item for item in args.overrides if item.split("=", 1)[0] in MODEL_DATA_SETTINGS]
        if fixed:
            raise CommandLineError(f"eval --set cannot change {fixed[0].split('=', 1)[0]}: the checkpoint's model was "
                                   f"built for it (--resample evaluates other frame counts)")
        config = apply_overrides(config, args.overrides)
    backend = args.backend or config.model.backend
    check_backend(backend, device)
    datasets = make_datasets(config.data, progress=not args.no_progress)
    model = EGNO.from_model_record(state, backend).to(device)
    if args.resample > 1:
        from .training.zero_shot import evaluate_resampled

        metrics = evaluate_resampled(model, config, args.resample, args.split, device, not args.no_progress)
        label = f"{args.split}, zero-shot {args.resample} x {config.data.num_frames} frames"
    else:
        metrics = evaluate(model, make_loader(datasets[args.split], config.train.batch_size, False, 0), device,
                           precision=config.train.precision)  # as the training log's metrics
        label = args.split
    require_finite({"F-MSE": metrics["f_mse"], "A-MSE": metrics["a_mse"]}, f"{args.split} split of {args.checkpoint}")
    frames = " ".join(f"{m:.6f}" for m in metrics["frame_mse"])
    print(f"{label}: F-MSE {metrics['f_mse']:.6f}  A-MSE {metrics['a_mse']:.6f}  per frame: {frames}")
    if args.resample == 1:
        from .training.trainer import evaluate_baselines

        metrics["baselines"] = evaluate_baselines(datasets[args.split])
        print("baselines: " + "; ".join(f"{name.replace('_', ' ')} F-MSE {b['f_mse']:.6f}  A-MSE {b['a_mse']:.6f}"
                                        for name, b in metrics["baselines"].items()))
    if args.output:
        from .data.io import atomic_path
        from .training.trainer import git_commit

        record = dict(metrics, command=_command_line(args), checkpoint=str(args.checkpoint),
                      checkpoint_epoch=state["epoch"], config=config.to_dict() if args.overrides else state["config"],
                      git_commit=git_commit())
        with atomic_path(args.output) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
        print(f"metrics: {args.output}")
    if args.plot:
        print(f"plot: {plot_trajectories(model, datasets[args.split], args.plot, 3, device, config.train.precision)}")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from .config import ExperimentConfig
    from .models import EGNO
    from .rollouts import ROLLOUT_FILES, horizon_summary, require_writers, rollout, write_rollout
    from .training.checkpoint import load_model_file
    from .training.trainer import git_commit

    if args.windows < 1:
        raise CommandLineError(f"--windows must be at least 1, got {args.windows}")
    if args.frame is not None and args.frame < 0:
        raise CommandLineError(f"--frame must be at least 0, got {args.frame}")
    require_writers()
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise CommandLineError(f"--output {output} is a file; give a folder for the rollout's files")
    existing = [name for name in ROLLOUT_FILES if (output / name).exists()]
    if existing:
        raise CommandLineError(f"{output} already holds a rollout ({existing[0]}); give another --output folder or "
                               f"remove it")
    try:  # before any work: a folder that cannot be made is said now, not after the rollout
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandLineError(f"cannot make the --output folder {output} ({error.strerror or error})") from error
    device = check_device(args.device)
    state = load_model_file(args.checkpoint)
    config = ExperimentConfig.from_dict(state["config"])
    if config.data.name not in ("trajectory", "water"):
        raise CommandLineError(f"{args.checkpoint} was trained on the {config.data.name!r} data set; a rollout reads "
                               f"a trajectory file and needs a model trained on a 'trajectory' or 'water' data set")
    if args.data_dir:
        config.data.data_dir = args.data_dir
    data = config.data
    if args.input is None:
        if config.data.name != "water":
            raise CommandLineError("--input is required: the trajectory file to start from (only a model trained on "
                                   "the water box defaults to its own trajectory)")
        from .data.registry import water_trajectory_config

        data = water_trajectory_config(config.data)  # the simulated box, read as a trajectory (made on first use)
    input_file = args.input or data.path
    backend = args.backend or config.model.backend
    check_backend(backend, device)
    model = EGNO.from_model_record(state, backend).to(device)
    topology = args.topology or ("" if args.input else data.topology)
    result = rollout(model, data, input_file, frame=args.frame, windows=args.windows, topology=topology,
                     velocity=args.velocity, device=device)
    record = dict(command=_command_line(args), checkpoint=str(args.checkpoint), checkpoint_epoch=state["epoch"],
                  input=str(input_file), git_commit=git_commit())
    paths = write_rollout(result, output, record)
    print(f"rollout of {args.windows} windows ({result.frames[-1]} frames) from frame {result.start_frame} of "
          f"{input_file}: "
          + horizon_summary(result))
    for name, path in paths.items():
        print(f"  {path}")
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
        from .cpp.build import load_extension
        built = build_info()
        print(f"C++ extension: built (OpenMP {'on' if built['openmp'] else 'off'}, CUDA graph builders "
              f"{'in' if built['cuda'] else 'not built'}): {load_extension().__file__}")
    except ImportError as error:
        print(f"C++ extension: unavailable ({error})")
    for device in ("cpu", "cuda") if cuda else ("cpu",):
        print(f"backends on {device} (auto priority: {', '.join(AUTO_PRIORITY[device])}):")
        for name, ops in backend_status(device).items():
            for op, status in ops.items():
                print(f"  {name:10s} {op:18s} {status}")
        print("  auto picks: " + ", ".join(f"{op}={resolve_backend('auto', device, op)}" for op in OPS))
    print(f"configs: {', '.join(available_configs())}")
    return 0


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """-v and --debug, accepted before and after the command (``suppress``: the command's copy sets nothing unless
    given, so that it does not reset the value given before the command)."""
    default = argparse.SUPPRESS if suppress else False
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log backend choices and other details")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="on an error, show the Python traceback instead of a one-line message")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egno-fast", description="EGNO: equivariant graph neural operator.",
        epilog="A mistake prints one line naming the problem and the fix (exit status 2; --debug shows the "
               "traceback). Ctrl-C stops training cleanly (exit status 130, no file half-written); the same command "
               "resumes it.")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True,
                                     parser_class=lambda **kw: argparse.ArgumentParser(parents=[common], **kw))

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
    train.add_argument("--max-minutes", type=_minutes, metavar="MINUTES",
                       help="stop resumably after this much training time in this run ('none': no limit)")
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
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                          help="evaluate on other data than the checkpoint's: a data setting of its config, e.g. "
                               "--set data.trajectory=other.dcd (repeatable; data settings only)")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(func=cmd_eval)

    roll = commands.add_parser("rollout", help="chain a model's windows into a long trajectory (extxyz, DCD + PDB) "
                                                    "and its error against the file's continuation")
    roll.add_argument("--checkpoint", required=True, help="a model file or training checkpoint (RUN/best.pt)")
    roll.add_argument("--input", help="the trajectory file to start from, read as the run read its data (default for "
                                      "a model trained on the water box: its own trajectory)")
    roll.add_argument("--topology", help="its topology (default: the run's data.topology)")
    roll.add_argument("--frame", type=int, metavar="K", help="start from frame K of the file (default: the first "
                      "with a velocity: 0 if the file has velocities, else 1)")
    roll.add_argument("--windows", type=int, required=True, metavar="W", help="windows to chain (W x span frames)")
    roll.add_argument("--output", required=True, help="a folder for rollout.extxyz, .dcd, .pdb, .json and the "
                      "error plot")
    roll.add_argument("--velocity", choices=["difference", "model"], default="difference",
                      help="the next window's input velocity: the last two predicted frames' difference (default; "
                           "the model's velocity output is not trained) or the model's output")
    roll.add_argument("--data-dir", help="where the file's cache is kept (default: the run's)")
    roll.add_argument("--device", default="cpu")
    roll.add_argument("--backend", choices=["reference", "triton", "cpp", "auto"])
    roll.set_defaults(func=cmd_rollout)

    info = commands.add_parser("info", help="versions, devices and which backends are available")
    info.set_defaults(func=cmd_info)
    return parser


def _one_line(error: Union[BaseException, str]) -> str:
    """A message on one line (newlines and runs of spaces folded), cut to a readable length."""
    text = " ".join(str(error).split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + " ... (--debug shows all)"


def _user_error(error: BaseException) -> Optional[str]:
    """The one-line message for an exception that is a user's mistake; None for anything else (a bug: traceback)."""
    backends = sys.modules.get("egno_fast.backends")  # imported by any command that can raise its error
    if backends is not None and isinstance(error, backends.BackendUnavailableError):
        return f"{_one_line(error)} (`egno-fast info` lists the backends that run here)"
    io = sys.modules.get("egno_fast.data.io")  # imported by every command that loads data
    if isinstance(error, (CommandLineError, FileNotFoundError, FileExistsError, ValueError)) or \
            (io is not None and isinstance(error, (io.MissingExtraError, io.AtomicWriteError))):
        return _one_line(error)
    return None


def _interrupted(command: str, error: KeyboardInterrupt) -> str:
    trainer = sys.modules.get("egno_fast.training.trainer")
    if trainer is not None and isinstance(error, trainer.TrainingInterrupted):
        if error.checkpoint is None:
            return (f"egno-fast {command}: interrupted at epoch 0 (no epoch completed); run the same command to "
                    f"start again")
        return f"egno-fast {command}: interrupted at epoch {error.epoch}; run the same command to resume"
    if command == "data":
        return ("egno-fast data: interrupted; run the same command to go on (a data set is kept only once complete; "
                "the water box resumes from its last complete chunk of frames)")
    return f"egno-fast {command}: interrupted"


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (0, 2 for a user's mistake, 130 for Ctrl-C)."""
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt as error:
        if args.debug:
            raise
        if getattr(error, "rank", 0) == 0:
            print(_interrupted(args.command, error), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        message = None if args.debug else _user_error(error)
        if message is None:
            raise
        print(f"egno-fast {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
