"""Rollouts: windows chained with the graph rebuilt (periodic shifts included), the velocity fed forward, the
errors against the file's continuation and the baselines, the files written, and the command line."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from egno_fast.cli import main
from egno_fast.config import load_config, apply_overrides
from egno_fast.data.registry import make_datasets
from egno_fast.data.protocol import target_offsets
from egno_fast.data.trajectory import wrap_positions
from egno_fast.ops import periodic_radius_graph
from egno_fast.rollouts import rollout, rollout_windows
from egno_fast.training.trainer import evaluate_baselines

pytest.importorskip("ase")
pytest.importorskip("MDAnalysis")
from test_trajectory import CELL, motion, write_extxyz  # noqa: E402


class ConstantVelocity(torch.nn.Module):
    """A stand-in model: x + v t at the window's offsets (frame intervals), recording each window's graph."""

    def __init__(self, offsets, velocity_scale=1.0):
        super().__init__()
        self.times = torch.tensor(offsets, dtype=torch.float32)
        self.velocity_scale = velocity_scale
        self.graphs = []

    def forward(self, x, v, h, graph, **keywords):
        self.graphs.append(graph)
        frames = x[None] + v[None] * self.times[:, None, None]
        return SimpleNamespace(x=frames, v=self.velocity_scale * v[None].expand_as(frames))


def test_windows_chain_with_the_difference_velocity_and_a_graph_rebuilt_in_the_cell():
    rng = np.random.default_rng(0)
    cell = torch.tensor(CELL)
    x = torch.tensor(rng.random((30, 3)) @ CELL, dtype=torch.float32)
    v = torch.tensor(rng.normal(size=(30, 3)) * 0.4, dtype=torch.float32)
    offsets = target_offsets(4, 8, "uniform")
    model = ConstantVelocity(offsets)
    frames = rollout_windows(model, torch.ones(30, 2), x, v, 3.0, offsets, 3, cell)
    times = torch.tensor([w * 8 + o for w in range(3) for o in offsets], dtype=torch.float32)
    torch.testing.assert_close(frames, x[None] + v[None] * times[:, None, None])  # the velocity fed forward is v
    assert len(model.graphs) == 3
    for window, graph in enumerate(model.graphs):  # each window's graph: the radius graph of its input, wrapped
        start = x + v * (8 * window)
        expected = periodic_radius_graph(wrap_positions(start, cell).double(), 3.0, cell)
        assert graph.num_edges == expected.edge_index.shape[1] > 0
        assert graph.edge_shift is not None
        sender, receiver = graph.sender, graph.receiver
        true = start[receiver] - start[sender] + graph.edge_shift
        assert float(true.norm(dim=-1).max()) <= 3.0 + 1e-4  # shifts make every edge its minimum image
    # the model's own velocity output, when asked for
    model = ConstantVelocity(offsets, velocity_scale=0.0)
    frames = rollout_windows(model, torch.ones(30, 2), x, v, 3.0, offsets, 2, cell, velocity="model")
    torch.testing.assert_close(frames[4:], x[None].expand(4, -1, -1) + (v * 8)[None])  # frozen after window 1
    with pytest.raises(ValueError, match="velocity must be one of"):
        rollout_windows(model, torch.ones(30, 2), x, v, 3.0, offsets, 1, cell, velocity="spline")


def test_errors_against_the_file_and_the_baselines(tmp_path):
    positions, elements = motion(num_frames=60)
    path = write_extxyz(tmp_path / "motion.extxyz", positions, elements)
    config = apply_overrides(load_config("trajectory"), ["data.num_frames=4", "data.span=8", "data.cutoff=3.5",
                                                         f'data.data_dir="{tmp_path / "cache"}"',
                                                         'data.elements=["C", "H", "N", "O"]'])
    model = ConstantVelocity(target_offsets(4, 8, "uniform"))
    result = rollout(model, config.data, path, frame=5, windows=7)
    assert result.frames == [0] + [w * 8 + o for w in range(7) for o in (2, 4, 6, 8)]
    assert result.positions.shape == (29, 10, 3)
    errors = result.errors
    assert errors["frames"] == [f for f in result.frames if 5 + f < 60]  # the file ends at frame 59
    # the stand-in is the constant-velocity baseline (its input velocity is the data set's: x[5] - x[4])
    np.testing.assert_allclose(errors["model"], errors["constant_velocity"], rtol=1e-5, atol=1e-7)
    truth = positions[[5 + f for f in errors["frames"]]]
    np.testing.assert_allclose(errors["frozen"], ((truth - positions[5]) ** 2).mean(axis=(1, 2)), rtol=1e-4)
    assert errors["frozen"][0] == 0.0 and errors["frozen"][-1] > 0
    with pytest.raises(ValueError, match="frame must be at least 1"):  # no velocity before frame 0
        rollout(model, config.data, path, frame=0, windows=1)
    assert rollout(model, config.data, path, windows=1).start_frame == 1  # the first frame with a velocity
    with pytest.raises(ValueError, match="outside"):
        rollout(model, config.data, path, frame=60, windows=1)


def test_the_command_writes_files_that_ase_and_mdanalysis_read(tmp_path, capsys):
    import ase.io
    import MDAnalysis as mda

    positions, elements = motion(num_frames=60)
    path = write_extxyz(tmp_path / "motion.extxyz", positions, elements)
    run = tmp_path / "run"
    assert main(["train", "--config", "trajectory", "--set", f"data.path={path}", "--set", "data.num_frames=4",
                 "--set", "data.span=8", "--set", "data.cutoff=3.5", "--set",
                 f'data.data_dir="{tmp_path / "cache"}"', "--set", "model.hidden_dim=16", "--set",
                 "model.num_layers=2", "--set", "train.epochs=1", "--run-dir", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "rollout"
    command = ["rollout", "--checkpoint", str(run / "best.pt"), "--input", str(path), "--frame", "3",
               "--windows", "3", "--output", str(out)]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "rollout of 3 windows (24 frames) from frame 3" in printed and "frozen" in printed
    universe = mda.Universe(str(out / "rollout.pdb"), str(out / "rollout.dcd"))
    assert len(universe.trajectory) == 13 and universe.atoms.n_atoms == 10
    np.testing.assert_allclose(universe.dimensions[:3], np.linalg.norm(CELL, axis=1), rtol=1e-5)
    frames = ase.io.read(str(out / "rollout.extxyz"), ":")
    assert len(frames) == 13 and frames[-1].info["frame"] == 24 and frames[0].pbc.all()
    lattice_steps = (frames[0].positions - positions[3]) @ np.linalg.inv(CELL)  # the start frame, up to images
    np.testing.assert_allclose(lattice_steps, np.round(lattice_steps), atol=1e-4)
    np.testing.assert_allclose(universe.trajectory[5].positions, frames[5].positions, atol=1e-3)
    record = json.loads((out / "rollout.json").read_text())
    assert record["frames"][-1] == 24 and record["velocity"] == "difference"
    assert set(record["errors"]) == {"frames", "model", "frozen", "constant_velocity"}
    assert record["command"].startswith("egno-fast rollout") and (out / "rollout_error.png").stat().st_size > 0
    # nothing written is overwritten; bad requests end in one line
    before = (out / "rollout.json").read_text()
    assert main(command) == 2
    assert "already holds a rollout" in capsys.readouterr().err
    assert (out / "rollout.json").read_text() == before
    for change, message in ((["--frame", "99"], "outside"), (["--windows", "0"], "--windows must be at least 1")):
        bad = list(command)
        bad[bad.index(change[0]) + 1] = change[1]
        bad[bad.index("--output") + 1] = str(tmp_path / "other")
        assert main(bad) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    record = torch.load(run / "best.pt", weights_only=True)
    record["config"]["data"]["name"] = "nbody"
    torch.save(record, tmp_path / "nbody.pt")
    assert main(["rollout", "--checkpoint", str(tmp_path / "nbody.pt"), "--input", str(path), "--windows", "1",
                 "--output", str(tmp_path / "third")]) == 2
    assert "trained on the 'nbody' data set" in capsys.readouterr().err


def test_the_baselines_of_a_trajectory_split(tmp_path):
    positions, elements = motion(num_frames=60)
    path = write_extxyz(tmp_path / "motion.extxyz", positions, elements, wrapped=False, cell=None)
    config = apply_overrides(load_config("trajectory"), ["data.num_frames=4", "data.span=8", "data.cutoff=3.5",
                                                         f'data.data_dir="{tmp_path}"', f'data.path="{path}"'])
    test = make_datasets(config.data, progress=False)["test"]
    baselines = evaluate_baselines(test)
    starts = [start for _, start in test.samples]
    frozen = [((positions[s + 8] - positions[s]) ** 2).mean() for s in starts]
    moving = [((positions[s] + 8 * (positions[s] - positions[s - 1]) - positions[s + 8]) ** 2).mean() for s in starts]
    assert baselines["frozen"]["f_mse"] == pytest.approx(np.mean(frozen), rel=1e-4)
    assert baselines["constant_velocity"]["f_mse"] == pytest.approx(np.mean(moving), rel=1e-4)
    assert len(baselines["frozen"]["frame_mse"]) == 4


def test_the_package_level_name_is_the_function_even_after_its_module_is_imported():
    import egno_fast
    import egno_fast.rollouts

    from egno_fast import rollout as exported
    assert exported is egno_fast.rollout is egno_fast.rollouts.rollout
