"""The egno-fast command line, end to end on tiny settings."""
import subprocess
import sys

from egno_fast.cli import build_parser, main

from test_training import TINY


def test_default_train_then_eval(tmp_path, capsys):
    # `egno-fast train` with no arguments runs the "default" config; here it is shrunk with overrides
    assert build_parser().parse_args(["train"]).config == "default"
    overrides = [arg for item in TINY + [f'data.data_dir="{tmp_path / "data"}"', "train.epochs=2"]
                 for arg in ("--set", item)]
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), "--no-progress", *overrides]) == 0
    out = capsys.readouterr().out
    assert "test F-MSE" in out and "checkpoint:" in out and str(run_dir / "trajectories.png") in out
    assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--plot", str(tmp_path / "eval.png"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test: F-MSE" in out and (tmp_path / "eval.png").exists()


def test_data_command(tmp_path, capsys):
    sets = ["--set", "data.num_train=3", "--set", "data.num_valid=2", "--set", "data.num_test=2",
            "--set", "data.max_train_samples=3"]
    assert main(["data", "--data-dir", str(tmp_path), "--no-progress", *sets]) == 0
    assert "train 3 samples, valid 2 samples, test 2 samples" in capsys.readouterr().out
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_errors_exit_with_message(tmp_path, capsys):
    assert main(["train", "--config", "no-such-config", "--run-dir", str(tmp_path)]) == 2
    assert "no config named 'no-such-config'" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_info_via_python_module():
    out = subprocess.run([sys.executable, "-m", "egno_fast", "info"], capture_output=True, text=True, check=True)
    assert "reference  egnn_layer         available" in out.stdout
    from egno_fast.backends import unavailable_reason

    auto = "cpp" if unavailable_reason("cpp", "egnn_layer", "cpu") is None else "reference"
    assert f"auto picks: temporal_residual={auto}, egnn_layer={auto}" in out.stdout
    assert "reference  radius_graph       available" in out.stdout
