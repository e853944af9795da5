"""The egno-fast command line, end to end on tiny settings; its errors, Ctrl-C, resume and start-up time."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import egno_fast
from conftest import REPO, make_backend_unavailable
from egno_fast.cli import build_parser, main
from egno_fast.config import CONFIG_DIR, DataConfig, ModelConfig, TrainConfig, available_configs, load_config

from test_training import TINY


def poison_split(monkeypatch, split: str) -> None:
    """Make every later make_datasets() put NaNs in the first target of ``split``."""
    from egno_fast.data import registry

    real = registry.make_datasets

    def poisoned(*args, **kwargs):
        datasets = real(*args, **kwargs)
        datasets[split].targets[0, :, 0, 0] = float("nan")  # every frame: F-MSE and A-MSE
        return datasets

    monkeypatch.setattr(registry, "make_datasets", poisoned)


def test_default_train_then_eval(tmp_path, capsys, monkeypatch):
    # `egno-fast train` with no arguments runs the "default" config; here it is shrunk with overrides
    assert build_parser().parse_args(["train"]).config == "default"
    overrides = [arg for item in TINY + [f'data.data_dir="{tmp_path / "data"}"', "train.epochs=2"]
                 for arg in ("--set", item)]
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), "--no-progress", *overrides]) == 0
    out = capsys.readouterr().out
    assert "test F-MSE" in out and f"model: {run_dir / 'model.pt'}" in out and str(run_dir / "trajectories.png") in out
    assert main(["eval", "--checkpoint", str(run_dir / "model.pt"), "--plot", str(tmp_path / "eval.png"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test: F-MSE" in out and (tmp_path / "eval.png").exists()
    # on other data: data settings of the checkpoint's config (here another N-body stream), recorded in the output
    assert main(["eval", "--checkpoint", str(run_dir / "model.pt"), "--no-progress", "--set",
                 "data.generator_seed=44", "--output", str(tmp_path / "other.json")]) == 0
    other = capsys.readouterr().out
    assert "test: F-MSE" in other and other.split("F-MSE")[1] != out.split("F-MSE")[1]
    assert json.loads((tmp_path / "other.json").read_text())["config"]["data"]["generator_seed"] == 44
    assert main(["eval", "--checkpoint", str(run_dir / "model.pt"), "--set", "model.hidden_dim=8"]) == 2
    assert "eval --set takes data settings only" in one_error_line(capsys.readouterr().err, "eval")
    assert main(["eval", "--checkpoint", str(run_dir / "model.pt"), "--set", "data.num_frames=3"]) == 2
    assert "eval --set cannot change data.num_frames" in one_error_line(capsys.readouterr().err, "eval")
    # a NaN in the evaluated split: a non-zero exit naming the split, no metric printed or written
    poison_split(monkeypatch, "test")
    assert main(["eval", "--checkpoint", str(run_dir / "model.pt"), "--no-progress", "--output",
                 str(tmp_path / "m.json")]) == 2
    captured = capsys.readouterr()
    assert "test split of" in one_error_line(captured.err, "eval") and "F-MSE = nan, A-MSE = nan" in captured.err
    assert "F-MSE" not in captured.out and not (tmp_path / "m.json").exists()


def test_data_command(tmp_path, capsys):
    sets = ["--set", "data.num_train=3", "--set", "data.num_valid=2", "--set", "data.num_test=2",
            "--set", "data.max_train_samples=3"]
    assert main(["data", "--data-dir", str(tmp_path), "--no-progress", *sets]) == 0
    out = capsys.readouterr().out
    assert f"data set 'nbody' ready ({tmp_path}): train 3 samples, valid 2 samples, test 2 samples" in out
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert main(["data", "--config", "mocap", "--no-progress"]) == 0  # read from the file the package ships
    assert "data set 'mocap' ready (" + str(Path(egno_fast.__file__).parent / "data" / "files") in \
        capsys.readouterr().out


def test_errors_exit_with_message(tmp_path, capsys):
    assert main(["train", "--config", "no-such-config", "--run-dir", str(tmp_path)]) == 2
    assert "no config named 'no-such-config'" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_info_via_python_module():
    out = subprocess.run([sys.executable, "-m", "egno_fast", "info"], capture_output=True, text=True, check=True)
    assert "reference  egnn_layer         available" in out.stdout
    from egno_fast.backends import unavailable_reason

    auto = "cpp" if unavailable_reason("cpp", "egnn_layer", "cpu") is None else "reference"
    assert f"auto picks: temporal_residual={auto}, egnn_layer={auto}" in out.stdout
    assert "reference  radius_graph       available" in out.stdout


# ---------------------------------------------------------------- a command line that explains itself
# Each user mistake: one line on stderr naming the problem and the fix, exit status 2, no traceback (--debug shows
# it). Ctrl-C: one line and exit status 130; the same command resumes.


def _env(**extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_cli(*args, env=None):
    """``python -m egno_fast ARGS`` in a new process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "egno_fast", *args], capture_output=True, text=True, cwd=REPO,
                          env=env or _env(), timeout=600)


def one_error_line(err: str, command: str = "train") -> str:
    """The single stderr line of a mistake, checked to be one line with the command's prefix and no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"egno-fast {command}: error: ") and "Traceback" not in err, err
    return lines[0]


def tiny_args(tmp_path, data_dir, *extra):
    overrides = [arg for item in TINY + [f"data.data_dir={json.dumps(str(data_dir))}", *extra]
                 for arg in ("--set", item)]
    return ["train", "--run-dir", str(tmp_path / "run"), "--no-progress", *overrides]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def test_help_is_fast_and_does_not_import_torch():
    walls = []
    for _ in range(3):  # the best of three: a busy machine must not fail the test
        start = time.perf_counter()
        out = run_cli("--help")
        walls.append(time.perf_counter() - start)
        assert out.returncode == 0 and "train" in out.stdout and "--debug" in out.stdout
    assert min(walls) < 1.5, walls
    assert run_cli("train", "--help").returncode == 0
    probe = ("import sys, egno_fast, egno_fast.cli; egno_fast.cli.build_parser(); "
             "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('egno_fast')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=_env(),
                         check=True)
    assert out.stdout.startswith("False"), out.stdout
    # the public names are still there, imported on first use
    out = subprocess.run([sys.executable, "-c", "import egno_fast; print(egno_fast.EGNO.__name__, "
                          "egno_fast.build_graph.__name__, egno_fast.patch.__name__, 'EGNO' in dir(egno_fast))"],
                         capture_output=True, text=True, cwd=REPO, env=_env(), check=True)
    assert out.stdout.split() == ["EGNO", "build_graph", "patch", "True"]


def test_triton_backend_unavailable(tmp_path, capsys, monkeypatch):
    # not installed (simulated, whatever this machine has)
    make_backend_unavailable(monkeypatch, "triton", "egno_fast.kernels.egnn_edge cannot be imported "
                                                    "(No module named 'triton')")
    assert main(["train", "--backend", "triton", "--run-dir", str(tmp_path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "backend 'triton' cannot run" in line and "No module named 'triton'" in line
    assert "--backend auto" in line and "egno-fast info" in line
    monkeypatch.undo()
    # installed or not, Triton does not run on CPU tensors outside its interpreter. Its kernels are loaded first,
    # while TRITON_INTERPRET is still as conftest set it (Triton reads it when imported: later tests need it).
    from egno_fast.backends import unavailable_reason

    unavailable_reason("triton", "egnn_layer")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["train", "--backend", "triton", "--device", "cpu", "--run-dir", str(tmp_path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "backend 'triton' cannot run" in line and "on cpu" in line and "--backend auto" in line
    assert not list(tmp_path.iterdir())  # refused before any work


def test_device_errors():
    if torch.cuda.is_available():  # a CUDA machine: a GPU it does not have
        out = run_cli("train", "--device", "cuda:99")
        line = one_error_line(out.stderr)
        assert "'cuda:99' does not exist" in line and "use --device cuda" in line
    else:  # a CPU-only torch build, or no GPU visible
        out = run_cli("train", "--device", "cuda")
        line = one_error_line(out.stderr)
        assert ("has no CUDA support" in line or "sees no CUDA GPU" in line) and "use --device cpu" in line
    assert out.returncode == 2
    out = run_cli("eval", "--checkpoint", "unused.pt", "--device", "gpu0")
    assert out.returncode == 2
    line = one_error_line(out.stderr, "eval")
    assert "invalid device 'gpu0'" in line and "use --device cpu, cuda or cuda:N" in line


@pytest.mark.parametrize("config, blocked, extra", [("protein", "MDAnalysis", "protein"),
                                                    ("md17", "rdkit", "md17")])
def test_a_missing_optional_extra_is_named(tmp_path, config, blocked, extra):
    """A config whose data needs an optional package that is missing says which extra to install, in one line."""
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            "from egno_fast.cli import main\n"
            f"sys.exit(main(['data', '--config', {config!r}, '--data-dir', {str(tmp_path)!r}, '--no-progress',"
            "'--set', 'data.md17_source=\"standin\"']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    line = one_error_line(out.stderr, "data")
    assert f"pip install 'egno_fast[{extra}]'" in line


def test_wrong_config_values(tmp_path, capsys):
    out = run_cli("train", "--set", "model.hidden_dim=abc")
    assert out.returncode == 2
    line = one_error_line(out.stderr)
    assert "model.hidden_dim must be an integer, got 'abc'" in line and "--set model.hidden_dim=64" in line
    for override, expected in (("model.hiden_dim=8", "unknown keys in config section 'model': ['hiden_dim']"),
                               ("model.hiden_dim=8", "did you mean model.hidden_dim?"),
                               ("train.lr=fast", "train.lr must be a number, got 'fast'"),
                               ("train.max_minutes=[1]", "train.max_minutes must be a number or null"),
                               ("model.temporal_channels=h", "must be a list of strings"),
                               ("epochs=3", "must look like section.key=value")):
        assert main(["train", "--set", override, "--run-dir", str(tmp_path / "run")]) == 2, override
        assert expected in one_error_line(capsys.readouterr().err), override
    # --debug shows the traceback instead
    out = run_cli("--debug", "train", "--set", "model.hidden_dim=abc")
    assert out.returncode != 0 and "Traceback" in out.stderr and "must be an integer" in out.stderr
    out = run_cli("train", "--debug", "--set", "model.hidden_dim=abc")  # also after the command
    assert "Traceback" in out.stderr


def test_config_files_with_values_of_the_wrong_type_are_refused_by_name(tmp_path, capsys):
    """The probe's config-file cases (numbers written as strings, a fraction for an integer, a boolean for a
    number): `egno-fast train --config FILE` exits 2 with one line naming the setting, what it must be and the
    value, and writes nothing."""
    cases = {("train", "epochs", "1"): "train.epochs must be an integer, got '1'",
             ("model", "hidden_dim", 16.5): "model.hidden_dim must be an integer, got 16.5",
             ("model", "hidden_dim", "16"): "model.hidden_dim must be an integer, got '16'",
             ("train", "lr", "0.001"): "train.lr must be a number, got '0.001'",
             ("train", "seed", 1.5): "train.seed must be an integer, got 1.5",
             ("train", "epochs", True): "train.epochs must be an integer, got True",
             ("train", "grad_clip_norm", "1"): "train.grad_clip_norm must be a number or null, got '1'"}
    for (section, key, value), expected in cases.items():
        config = json.loads((CONFIG_DIR / "default.json").read_text())
        config[section][key] = value
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
        assert main(["train", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 2, (key, value)
        assert expected in one_error_line(capsys.readouterr().err), (key, value)
    assert not (tmp_path / "run").exists()


def test_config_values_outside_their_range_are_refused_by_name(tmp_path, capsys):
    """Values of the right type but outside what the setting allows (the reliability probe's cases among them):
    one line naming the setting, what it must be and the value, before anything runs; the run folder stays empty."""
    from egno_fast.config import LIMITS

    cases = {"train.eval_every=0": "train.eval_every must be >= 1, got 0",
             "train.epochs=-1": "train.epochs must be >= 1, got -1",
             "data.max_train_samples=-5": "data.max_train_samples must be >= 1, got -5",
             "train.lr=0": "train.lr must be a finite number > 0, got 0",
             "train.lr=NaN": "train.lr must be a finite number > 0, got nan",
             "train.weight_decay=-1e-8": "train.weight_decay must be a finite number >= 0",
             "model.hidden_dim=0": "model.hidden_dim must be >= 1, got 0",
             "model.time_emb_dim=2": "model.time_emb_dim must be >= 4, got 2",
             'model.temporal_channels=["h","q"]': 'must be a list of distinct channels among "h", "x", "v"',
             "data.discretisation=random": 'data.discretisation must be "uniform" or "last", got \'random\'',
             "train.seed=1.5": "train.seed must be an integer, got '1.5'",
             "train.seed=-1": "train.seed must be >= 0, got -1",
             "data.cutoff=Infinity": "data.cutoff must be a finite number > 0, got inf",
             "train.grad_clip_norm=0": "train.grad_clip_norm must be a finite number > 0, got 0",
             "model.coord_clamp=per_edge": 'model.coord_clamp must be "mean", "norm", "edge" or "none", got '
                                           '\'per_edge\''}
    for override, expected in cases.items():
        assert main(["train", "--set", override, "--run-dir", str(tmp_path / "run")]) == 2, override
        assert expected in one_error_line(capsys.readouterr().err), override
    assert not (tmp_path / "run").exists()
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
    fields = {f"{section}.{f.name}" for section, kind in sections.items() for f in dataclasses.fields(kind)}
    assert set(LIMITS) <= fields  # every limit names a real setting
    for name in available_configs():  # the shipped configurations are within their limits
        load_config(name)


def test_config_values_keep_working():
    from egno_fast.config import apply_overrides, load_config

    config = apply_overrides(load_config("default"), ["train.device=cuda", "model.backend=reference",
                                                      "train.lr=1", "data.molecule=123", "train.max_minutes=null",
                                                      'model.backend={"egnn_layer": "cpp"}'])
    assert (config.train.device, config.train.lr, config.data.molecule, config.train.max_minutes) == \
        ("cuda", 1.0, "123", None)
    assert config.model.backend == {"egnn_layer": "cpp"}


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path, data_dir, capsys, monkeypatch):
    from egno_fast.training import trainer

    args = tiny_args(tmp_path, data_dir, "train.epochs=3")
    batches = 40 // 10  # TINY: 40 training samples, batches of 10
    calls, frame_mse = [], trainer.frame_mse

    def interrupted_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2 * batches + 2:  # the second batch of epoch 2
            raise KeyboardInterrupt
        return frame_mse(*a, **k)

    monkeypatch.setattr(trainer, "frame_mse", interrupted_in_epoch_2)
    assert main(args) == 130
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == \
        "egno-fast train: interrupted at epoch 2; run the same command to resume"
    assert "Traceback" not in captured.err
    run_dir = tmp_path / "run"
    assert trainer.load_checkpoint(run_dir / "last.pt")["state"]["epoch"] == 2
    assert not list(run_dir.glob(".*tmp*"))  # no half-written file
    events = [json.loads(line)["event"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events[-1] == "interrupted"
    monkeypatch.undo()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"resuming {run_dir} at epoch 2" in captured.err
    assert "stopped by max_epochs after 3 epochs" in captured.out
    # Ctrl-C before any epoch completed: nothing to resume, the same command starts again
    def interrupted_at_once(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "frame_mse", interrupted_at_once)
    assert main(tiny_args(tmp_path / "fresh", data_dir, "train.epochs=3")) == 130
    assert "interrupted at epoch 0 (no epoch completed); run the same command to start again" in \
        capsys.readouterr().err


@pytest.fixture
def terminal_ctrl_c():
    """Python's own Ctrl-C handler, as in a terminal (a process started in the background inherits SIG_IGN)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_checkpoint_write_waits_for_it(tmp_path, data_dir, capsys, monkeypatch, terminal_ctrl_c):
    from egno_fast.training import trainer

    original = trainer.save_checkpoint

    def signalled_while_saving(path, state):
        if path.name == "last.pt" and state["state"]["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, in the middle of the write
            time.sleep(0.05)
        original(path, state)

    monkeypatch.setattr(trainer, "save_checkpoint", signalled_while_saving)
    assert main(tiny_args(tmp_path, data_dir, "train.epochs=3")) == 130
    assert "interrupted at epoch 2; run the same command to resume" in capsys.readouterr().err
    state = trainer.load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["state"]["epoch"] == 2  # the write that the signal met was completed
    assert not list((tmp_path / "run").glob(".*tmp*"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_time_limit_says_how_to_continue(tmp_path, data_dir, capsys):
    args = tiny_args(tmp_path, data_dir, "train.epochs=3")
    assert main(args + ["--max-minutes", "0"]) == 0
    out = capsys.readouterr().out
    assert "stopped by time_limit after 1 epochs" in out
    assert "time limit of 0 min reached at epoch 1 of 3: to continue, run the same command" in out
    assert "--max-minutes none" in out
    assert main(args + ["--max-minutes", "none"]) == 0
    captured = capsys.readouterr()
    assert f"resuming {tmp_path / 'run'} at epoch 1" in captured.err
    assert "stopped by max_epochs after 3 epochs" in captured.out
    assert main(args) == 0  # nothing left to train: says so, and reports the results
    assert "has trained all 3 epochs" in capsys.readouterr().err


def test_model_defaults_to_auto_and_reports_its_choice(caplog, monkeypatch):
    import inspect
    import logging

    from egno_fast import EGNO

    assert inspect.signature(EGNO).parameters["backend"].default == "auto"
    # the "cpp" extension builds on first use: this test must not depend on it, so it is made unavailable
    make_backend_unavailable(monkeypatch, "cpp", "simulated: not built")
    torch.manual_seed(0)
    model = EGNO(node_dim=1, edge_dim=2, hidden_dim=8, num_layers=1, num_frames=4)
    assert model.backend == "auto" and model.active_backend is None
    x, v, h = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 1)
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    with caplog.at_level(logging.INFO, logger="egno_fast"):
        model(x, v, h, edge_index, torch.randn(4, 2))
    assert model.active_backend == {"temporal_residual": "reference", "egnn_layer": "reference"}
    assert "requested 'auto', running temporal_residual='reference', egnn_layer='reference' on cpu" in caplog.text
