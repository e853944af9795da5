"""Training: the loss goes down, checkpoints are atomic, runs resume exactly, logs record what produced them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from egno_fast.config import ExperimentConfig, apply_overrides, load_config
from egno_fast.data.io import atomic_path
from egno_fast.training import train
from egno_fast.training.checkpoint import load_checkpoint, tensor_checksum
from egno_fast.training.metrics import frame_mse

TINY = ["data.num_train=40", "data.num_valid=20", "data.num_test=20", "data.max_train_samples=40",
        "model.hidden_dim=8", "model.num_layers=2", "model.backend=\"reference\"", "train.batch_size=10",
        "train.lr=0.003", "train.eval_every=1", "train.plot_samples=2", "train.max_minutes=null"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def tiny_config(data_dir, *overrides) -> ExperimentConfig:
    return apply_overrides(load_config("default"), TINY + [f'data.data_dir="{data_dir}"', *overrides])


def training_loss_curves(root, backends, device="cpu", epochs=3):
    """Train the tiny config once per entry of ``backends`` (name -> model.backend) and return name -> the
    training A-MSE of every epoch, read from each run's log."""
    curves = {}
    for name, backend in backends.items():
        config = tiny_config(root / "data", f"train.epochs={epochs}", f"model.backend={json.dumps(backend)}",
                             f'train.device="{device}"')
        train(config, root / name, progress=False)
        records = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
        curves[name] = [r["train_a_mse"] for r in records if r["event"] == "eval"]
    return curves


def test_frame_mse_convention():
    pred, target = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    target[1] = 2.0
    assert frame_mse(pred, target).tolist() == [1.0, 4.0]  # mean over nodes and the 3 coordinates


def test_short_training_lowers_the_loss(data_dir, tmp_path):
    result = train(tiny_config(data_dir, "train.epochs=8"), tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert len(evals) == 8
    assert evals[-1]["train_a_mse"] < 0.6 * evals[0]["train_a_mse"]
    assert result.val_f_mse < evals[0]["val_f_mse"]
    assert result.val_f_mse == min(r["val_f_mse"] for r in evals)
    best = min(evals, key=lambda r: r["val_f_mse"])
    assert result.test_f_mse == best["test_f_mse"] and result.best_epoch == best["epoch"]
    header = records[0]
    assert header["event"] == "start" and header["seed"] == 1 and header["config"]["model"]["hidden_dim"] == 8
    assert "git_commit" in header and "command" in header
    assert records[-1]["event"] == "end" and records[-1]["stopped"] == "max_epochs"
    for name in ("best.pt", "last.pt", "model.pt", "config.json", "trajectories.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "trajectories.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp*"))


def test_model_file_rebuilds_the_best_model(data_dir, tmp_path):
    """model.pt: weights only (loads with weights_only=True), the best epoch's weights, the same predictions as the
    trained model through EGNO.load; damaged or foreign files get one clear error."""
    from egno_fast import EGNO
    from egno_fast.training.checkpoint import MODEL_FILE_FORMAT, load_model_file

    result = train(tiny_config(data_dir, "train.epochs=3"), tmp_path, progress=False)
    record = torch.load(tmp_path / "model.pt", weights_only=True)
    assert record["format"] == MODEL_FILE_FORMAT and record["epoch"] == result.best_epoch
    assert set(record) == {"format", "model_config", "model", "config", "epoch", "metrics", "checksum"}
    assert record["metrics"]["test_f_mse"] == result.test_f_mse
    loaded = EGNO.load(tmp_path / "model.pt", backend="reference")
    x, v = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(5, 3)
    edge_index = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 0]])
    h, edge_attr = torch.ones(5, record["model_config"]["node_dim"]), torch.ones(5, record["model_config"]["edge_dim"])
    result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, v, h, edge_index, edge_attr).x,
                                   result.model(x, v, h, edge_index, edge_attr).x, rtol=0, atol=0)
    assert load_model_file(tmp_path / "best.pt")["epoch"] == result.best_epoch  # a checkpoint's model part
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes((tmp_path / "model.pt").read_bytes()[:2000])
    with pytest.raises(ValueError, match="not a readable egno_fast model file"):
        load_model_file(damaged)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="neither an egno_fast model file nor a training checkpoint"):
        load_model_file(tmp_path / "foreign.pt")


def test_checksums_refuse_damaged_files_and_warn_on_old_ones(data_dir, tmp_path, caplog, capsys):
    """A flipped exponent bit in one weight (the file still loads, the model would give NaN) is refused with one
    line, for model files, training checkpoints and `egno-fast eval`; a file without a checksum loads with a
    warning."""
    from egno_fast.cli import main
    from egno_fast.training.checkpoint import load_model_file

    train(tiny_config(data_dir, "train.epochs=1"), tmp_path, progress=False)
    for name in ("model.pt", "last.pt"):
        record = torch.load(tmp_path / name, weights_only=True)
        assert record["checksum"] == tensor_checksum({k: v for k, v in record.items() if k != "checksum"})
        weight = record["model"]["embedding.weight"]
        weight.view(torch.int32)[0, 0] ^= 1 << 30  # the highest exponent bit
        damaged = tmp_path / f"damaged_{name}"
        torch.save(record, damaged)
        with pytest.raises(ValueError, match="is damaged: its tensors do not match the checksum"):
            (load_model_file if name == "model.pt" else load_checkpoint)(damaged)
    assert main(["eval", "--checkpoint", str(tmp_path / "damaged_model.pt"), "--no-progress"]) == 2
    assert "is damaged" in capsys.readouterr().err
    old = torch.load(tmp_path / "model.pt", weights_only=True)
    del old["checksum"]
    torch.save(old, tmp_path / "old.pt")
    with caplog.at_level("WARNING", logger="egno_fast"):
        assert load_model_file(tmp_path / "old.pt")["epoch"] == old["epoch"]
    assert "has no checksum (written before checksums were added): loaded unverified" in caplog.text


class _RunsCodeWhenUnpickled:
    """A pickled object whose loading would create the file ``marker`` (what a crafted best.pt could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_crafted_checkpoint_runs_no_code_and_is_refused(data_dir, tmp_path, capsys, caplog):
    """A checkpoint or model file holding a pickled callable (code that would run on ``torch.load`` without
    ``weights_only``) is refused with one line by every loader and by `egno-fast eval`, and its code never runs;
    an old checkpoint without a checksum loads with the warning, as an old model file does."""
    from egno_fast.cli import main
    from egno_fast.training.checkpoint import load_model_file

    train(tiny_config(data_dir, "train.epochs=1"), tmp_path, progress=False)
    marker = tmp_path / "code_ran"
    for name, loader in (("model.pt", load_model_file), ("last.pt", load_checkpoint)):
        record = torch.load(tmp_path / name, weights_only=True)
        record["payload"] = _RunsCodeWhenUnpickled(marker)
        crafted = tmp_path / f"crafted_{name}"
        torch.save(record, crafted)
        with pytest.raises(ValueError, match=f"{crafted} is not a readable egno_fast"):
            loader(crafted)
        assert main(["eval", "--checkpoint", str(crafted), "--no-progress"]) == 2
        error = capsys.readouterr().err.strip()
        assert "is not a readable egno_fast" in error and len(error.splitlines()) == 1, error
        assert not marker.exists()
    old = torch.load(tmp_path / "last.pt", weights_only=True)
    del old["checksum"]
    torch.save(old, tmp_path / "old_last.pt")
    with caplog.at_level("WARNING", logger="egno_fast"):
        assert load_checkpoint(tmp_path / "old_last.pt")["state"]["epoch"] == old["state"]["epoch"]
    assert "has no checksum (written before checksums were added): loaded unverified" in caplog.text


def test_resume_is_exact(data_dir, tmp_path):
    whole = train(tiny_config(data_dir, "train.epochs=4"), tmp_path / "whole", progress=False)
    train(tiny_config(data_dir, "train.epochs=2"), tmp_path / "split", progress=False)
    resumed = train(tiny_config(data_dir, "train.epochs=4"), tmp_path / "split", progress=False)
    a = load_checkpoint(tmp_path / "whole" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert (whole.val_f_mse, whole.test_f_mse, whole.best_epoch) == \
        (resumed.val_f_mse, resumed.test_f_mse, resumed.best_epoch)
    headers = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["event"] == "start"]
    assert [h["resumed_at_epoch"] for h in headers] == [None, 2]


def test_checkpoints_of_older_versions_resume(data_dir, tmp_path):
    """A config key added after a checkpoint was written (here data.molecule) takes its default on resume."""
    from egno_fast.training.checkpoint import save_checkpoint

    train(tiny_config(data_dir, "train.epochs=1"), tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "last.pt")
    del state["config"]["data"]["molecule"]
    save_checkpoint(tmp_path / "last.pt", state)
    assert train(tiny_config(data_dir, "train.epochs=2"), tmp_path, progress=False).epochs_run == 2


def test_time_limit_stops_resumably(data_dir, tmp_path):
    stopped = train(tiny_config(data_dir, "train.epochs=3", "train.max_minutes=0"), tmp_path, progress=False)
    assert stopped.stopped == "time_limit" and stopped.epochs_run == 1
    finished = train(tiny_config(data_dir, "train.epochs=3"), tmp_path, progress=False)
    assert finished.stopped == "max_epochs" and finished.epochs_run == 3


def test_existing_run_is_never_overwritten(data_dir, tmp_path):
    train(tiny_config(data_dir, "train.epochs=1"), tmp_path, progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(tiny_config(data_dir, "train.epochs=2"), tmp_path, resume=False, progress=False)
    with pytest.raises(ValueError, match="cannot resume.*train.lr"):
        train(tiny_config(data_dir, "train.epochs=2", "train.lr=0.1"), tmp_path, progress=False)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash in the middle of a write")
    assert target.read_bytes() == b"good" and list(tmp_path.iterdir()) == [target]


def test_unreadable_checkpoint_gives_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable egno_fast checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")


def test_config_errors():
    with pytest.raises(FileNotFoundError, match="shipped configs"):
        load_config("no-such-config")
    with pytest.raises(ValueError, match="unknown keys in config section 'train'"):
        apply_overrides(load_config("nbody"), ["train.learning_rate=1"])
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides(load_config("nbody"), ["epochs=3"])


def test_paper_config_values():
    config = load_config("nbody")
    assert (config.data.max_train_samples, config.train.batch_size, config.train.lr, config.model.hidden_dim,
            config.model.num_layers, config.data.num_frames, config.model.num_modes) == (3000, 100, 1e-4, 64, 4, 5, 2)
    assert (config.train.weight_decay, config.train.eval_every, config.train.patience, config.train.seed,
            config.train.epochs) == (1e-8, 5, 50, 1, 5000)


def test_mocap_config_values():
    config = load_config("mocap")
    assert (config.data.name, config.data.discretisation, config.data.max_train_samples, config.train.batch_size,
            config.train.lr, config.train.weight_decay, config.model.hidden_dim, config.model.num_layers,
            config.train.epochs) == ("mocap", "last", 200, 12, 5e-4, 1e-10, 128, 6, 2000)


def test_a_run_folder_takes_one_training_process_at_a_time(data_dir, tmp_path, capsys):
    """A second process refuses a folder in use (naming the first's PID, one line from the command line); the lock
    goes with its process, even a killed one."""
    import signal
    import subprocess
    import sys

    from egno_fast.cli import main
    from egno_fast.training.run_lock import RunFolderInUse, run_folder_lock

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from egno_fast.training.run_lock import run_folder_lock\n"
        f"with run_folder_lock({str(tmp_path)!r}):\n    print('locked', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderInUse, match=f"is in use by process {holder.pid} on "):
            train(tiny_config(data_dir, "train.epochs=1"), tmp_path, progress=False)
        overrides = [arg for item in TINY + [f'data.data_dir="{data_dir}"', "train.epochs=1"] for arg in ("--set", item)]
        assert main(["train", "--run-dir", str(tmp_path), "--no-progress", *overrides]) == 2
        assert f"is in use by process {holder.pid}" in capsys.readouterr().err
        assert not (tmp_path / "last.pt").exists()  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train(tiny_config(data_dir, "train.epochs=1"), tmp_path, progress=False)  # a killed holder leaves no lock
    with run_folder_lock(tmp_path):  # and a finished run released it
        pass


def test_training_reads_its_losses_once_per_epoch_not_per_batch(data_dir, tmp_path, monkeypatch):
    """The losses are summed on the device and read back once per epoch (on a GPU each read is a host
    synchronisation): the calls of Tensor.item / Tensor.tolist from the package that an epoch adds are fewer than
    its batches (torch's own optimizers read their step counters on the CPU; not counted)."""
    import sys

    calls = []
    for name in ("item", "tolist"):
        def counting(self, *args, _original=getattr(torch.Tensor, name), **kwargs):
            if "egno_fast" in sys._getframe(1).f_code.co_filename:
                calls.append(sys._getframe(1).f_code.co_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counting)
    counts = []
    for epochs in (1, 3):
        calls.clear()
        train(tiny_config(data_dir, f"train.epochs={epochs}", "train.eval_every=100"), tmp_path / str(epochs),
              progress=False)
        counts.append(len(calls))
    batches_per_epoch = 40 // 10
    assert (counts[1] - counts[0]) / 2 <= 1 < batches_per_epoch, counts


@pytest.mark.parametrize("split, good_epochs", [("train", 0), ("test", 0), ("valid", 1)])
def test_a_nan_in_a_split_stops_training_before_anything_is_written_for_it(data_dir, tmp_path, monkeypatch, split,
                                                                           good_epochs):
    """A NaN target gives a NonFiniteError naming the split, the epoch and the last checkpoint that exists; no
    checkpoint, model file or log record is written for that epoch (``good_epochs`` run clean first, then the run
    resumes with the NaN)."""
    from egno_fast.training import trainer
    from egno_fast.training.metrics import NonFiniteError

    run = tmp_path / "run"
    if good_epochs:
        train(tiny_config(data_dir, f"train.epochs={good_epochs}"), run, progress=False)
    files_before = {p.name: p.read_bytes() for p in run.glob("*.pt")} if good_epochs else {}
    real = trainer.make_datasets

    def datasets_with_a_nan(*args, **kwargs):
        datasets = real(*args, **kwargs)
        datasets[split].targets[0, 0, 0, 0] = float("nan")
        return datasets

    monkeypatch.setattr(trainer, "make_datasets", datasets_with_a_nan)
    where = "epoch 0" if split == "train" else f"evaluation at epoch {good_epochs}"
    kept = f"{run / 'last.pt'} holds epoch {good_epochs - 1}" if good_epochs else "no checkpoint was written"
    with pytest.raises(NonFiniteError) as raised:
        train(tiny_config(data_dir, f"train.epochs={good_epochs + 2}"), run, progress=False)
    assert str(raised.value).startswith(f"{split} split, {where} ({kept}): ")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["event"] == "eval"] == list(range(good_epochs))
    assert {p.name: p.read_bytes() for p in run.glob("*.pt")} == files_before  # no checkpoint or model file changed


KILL_SCRIPT = r"""
import os, sys
from egno_fast.config import apply_overrides, load_config
from egno_fast.training import trainer
import test_training

kill_at, mode, data_dir, run_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
writes = [0]


def tick():
    writes[0] += 1
    if writes[0] == kill_at:
        os._exit(9)  # as SIGKILL: no cleanup, no finally blocks


real_replace, real_write = os.replace, trainer._JsonlLog.write


def replace(src, dst):  # every atomic write ends here: config.json, best.pt, last.pt, model.pt, the log rewrite
    if not str(dst).startswith(run_dir):  # the data cache, written once for the module's data folder
        return real_replace(src, dst)
    if mode == "before":  # the temporary file is complete, the real one not yet replaced
        tick()
    real_replace(src, dst)
    if mode == "after":
        tick()


def write(self, record):  # every log record (an append: "after" only)
    real_write(self, record)
    if mode == "after":
        tick()


os.replace, trainer._JsonlLog.write = replace, write
config = test_training.tiny_config(data_dir, "train.epochs=2", "train.plot_samples=0")
trainer.train(config, run_dir, progress=False)
print("writes", writes[0])
"""


def _run_with_kill(kill_at, mode, data_dir, run_dir):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(kill_at), mode, str(data_dir), str(run_dir)],
                          capture_output=True, text=True, env=env, timeout=600)


def _final_state(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timings = ("elapsed_s", "train_atom_frames_per_s")  # wall-clock measurements: not reproducible
    evaluations = [{k: v for k, v in r.items() if k not in timings} for r in records if r["event"] == "eval"]
    weights = torch.load(run_dir / "model.pt", weights_only=True)["model"]
    return evaluations, weights


def test_a_kill_after_or_during_any_file_write_resumes_to_the_uninterrupted_run(data_dir, tmp_path):
    """The trainer is killed (os._exit, as SIGKILL) right after each of its file writes in turn, and right before
    the rename of each atomic write (the temporary file written, the real one not yet replaced); the same command
    then resumes. The final log has every evaluation exactly once, with the uninterrupted run's values; the weights
    are the same; no temporary file is left."""
    totals = {}
    for mode in ("before", "after"):  # uninterrupted runs, counting the kill points
        clean = _run_with_kill(0, mode, data_dir, tmp_path / f"clean_{mode}")
        assert clean.returncode == 0, clean.stderr[-2000:]
        totals[mode] = int(clean.stdout.split()[-1])
    assert totals["after"] >= 10 and totals["before"] >= 6, totals  # config, start, 2 x (best, eval, last), ...
    want_evaluations, want_weights = _final_state(tmp_path / "clean_after")
    assert [r["epoch"] for r in want_evaluations] == [0, 1]
    for mode, total in totals.items():
        for kill_at in range(1, total + 1):
            run_dir = tmp_path / f"{mode}{kill_at}"
            killed = _run_with_kill(kill_at, mode, data_dir, run_dir)
            assert killed.returncode == 9, (mode, kill_at, killed.stderr[-2000:])
            resumed = _run_with_kill(0, "after", data_dir, run_dir)
            assert resumed.returncode == 0, (mode, kill_at, resumed.stderr[-2000:])
            evaluations, weights = _final_state(run_dir)
            assert evaluations == want_evaluations, (mode, kill_at)
            assert all(torch.equal(weights[k], want_weights[k]) for k in want_weights), (mode, kill_at)
            assert not list(run_dir.glob(".*.tmp*")), (mode, kill_at)


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(data_dir, tmp_path, monkeypatch):
    """torch.save failing with ENOSPC: one error naming the file and that its previous version is intact, the
    previous last.pt unchanged, no temporary file left; the command line exits 2 with that line."""
    import errno

    from egno_fast.data.io import AtomicWriteError
    from egno_fast.training import checkpoint

    run = tmp_path / "run"
    train(tiny_config(data_dir, "train.epochs=1"), run, progress=False)
    before = (run / "last.pt").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(AtomicWriteError, match=r"could not write .*\.pt \(No space left on device\); the previous "
                                               r"version is intact$") as raised:
        train(tiny_config(data_dir, "train.epochs=2"), run, progress=False)
    assert raised.value.errno == errno.ENOSPC
    assert (run / "last.pt").read_bytes() == before and not list(run.glob(".*.tmp*"))
    from egno_fast.cli import _user_error

    assert _user_error(raised.value) == str(raised.value)  # a user-facing line (exit 2), not a traceback


def test_the_link_loss_enters_the_objective_but_not_the_metrics(tmp_path, data_dir):
    """The "eghn" backbone's aux_loss (link_weight x link loss) is minimised with the A-MSE: a large weight changes
    the training from its first step on; the logged training A-MSE and the evaluations are the position errors
    alone (the link loss is about 1 per graph, so a weight of 1e4 in the logged loss would show)."""
    curves = {}
    for weight in (0.0, 1e4):
        config = tiny_config(data_dir, "train.epochs=2", 'model.backbone="eghn"', "model.num_clusters=2",
                             "model.pooling_layers=1", "model.decoder_layers=1", f"model.link_weight={weight}")
        train(config, tmp_path / str(weight), progress=False)
        records = [json.loads(line) for line in (tmp_path / str(weight) / "metrics.jsonl").read_text().splitlines()]
        curves[weight] = [(r["train_a_mse"], r["val_f_mse"]) for r in records if r["event"] == "eval"]
    assert curves[0.0] != curves[1e4]
    assert all(loss < 100 and val < 100 for loss, val in curves[1e4])
