"""The OpenMM water box: a seeded simulation read back as a trajectory data set, resumed after an interruption from
its last complete chunk, and a clear message without OpenMM."""
import json

import numpy as np
import pytest

from egno_fast.cli import main
from egno_fast.config import apply_overrides, load_config
from egno_fast.data import water
from egno_fast.data.registry import make_datasets
from egno_fast.data.water import WaterParams, load_or_generate_water

pytest.importorskip("openmm")
mda = pytest.importorskip("MDAnalysis")

TINY = WaterParams(box_nm=1.3, frames=24, steps_per_frame=2, equilibration_steps=4, seed=7)


def read(dcd, pdb):
    universe = mda.Universe(str(pdb), str(dcd))
    return np.stack([ts.positions.copy() for ts in universe.trajectory]), universe


class Interrupt(Exception):
    pass


def test_a_tiny_box_is_simulated_cached_and_resumed_after_an_interruption(tmp_path, monkeypatch):
    monkeypatch.setattr(water, "FRAMES_PER_CHUNK", 10)
    dcd, pdb = load_or_generate_water(tmp_path / "whole", TINY, threads=1, report=lambda message: None)
    whole, universe = read(dcd, pdb)
    assert whole.shape == (24, universe.atoms.n_atoms, 3) and universe.atoms.n_atoms % 3 == 0
    assert sorted(set(universe.atoms.elements)) == ["H", "O"]
    assert universe.trajectory.dt == pytest.approx(TINY.frame_interval_ps, rel=1e-5)
    np.testing.assert_allclose(universe.dimensions, [13, 13, 13, 90, 90, 90], rtol=1e-5)
    meta = json.loads((dcd.parent / "meta.json").read_text())
    assert meta["atoms"] == universe.atoms.n_atoms and meta["seed"] == 7
    assert sorted(p.name for p in dcd.parent.iterdir()) == ["meta.json", "water.dcd", "water.pdb"]

    said = []

    def stop_after_first_chunk(message):
        said.append(message)
        if "10 / 24 frames" in message:
            raise Interrupt

    with pytest.raises(Interrupt):
        load_or_generate_water(tmp_path / "cut", TINY, threads=1, report=stop_after_first_chunk)
    assert not water.water_folder(tmp_path / "cut", TINY).exists()  # the folder appears complete or not at all
    folder = water.water_folder(tmp_path / "cut", TINY)
    partial = folder.with_name(f".{folder.name}.partial")
    chunk = np.load(partial / "chunk_0000.npz")
    assert chunk["positions"].shape[0] == 10 and chunk["checkpoint"].dtype == np.uint8  # frames and state together
    said.clear()
    dcd2, pdb2 = load_or_generate_water(tmp_path / "cut", TINY, threads=1, report=said.append)
    assert any("resuming after 10 of 24 frames" in message for message in said)
    resumed, _ = read(dcd2, pdb2)
    np.testing.assert_allclose(resumed, whole, atol=1e-3)  # the same seeded trajectory, continued exactly
    said.clear()
    assert load_or_generate_water(tmp_path / "cut", TINY, report=said.append) == (dcd2, pdb2) and not said  # cached


def test_the_water_config_reads_the_box_as_a_periodic_trajectory(tmp_path, monkeypatch, capsys):
    settings = [f'data.data_dir="{tmp_path}"', "data.water_box_nm=1.3", "data.water_frames=30",
                "data.water_steps_per_frame=2", "data.water_equilibration_steps=4", "data.num_frames=2",
                "data.span=2", "data.cutoff=3.5"]
    config = apply_overrides(load_config("water"), settings)
    datasets = make_datasets(config.data, progress=False)
    assert config.data.elements == ["H", "O"]  # the encoding the run keeps
    sample = datasets["train"][0]
    assert sample.edge_shift is not None and sample.target.shape == (2, sample.x.shape[0], 3)
    assert 10 < sample.edge_index.shape[1] / sample.x.shape[0] < 40  # neighbours of a liquid within 3.5 Angstrom
    sets = [a for s in settings for a in ("--set", s)]
    assert main(["data", "--config", "water", *sets]) == 0
    assert "data set 'water' ready" in capsys.readouterr().out
    # a model trained on the box rolls out from the box's own trajectory (no --input), and eval adds the baselines
    run = tmp_path / "run"
    assert main(["train", "--config", "water", *sets, "--set", "model.hidden_dim=8", "--set", "train.epochs=1",
                 "--run-dir", str(run), "--no-progress"]) == 0
    assert main(["rollout", "--checkpoint", str(run / "model.pt"), "--frame", "24", "--windows", "2", "--output",
                 str(tmp_path / "rollout")]) == 0
    assert "rollout of 2 windows (4 frames) from frame 24 of " in capsys.readouterr().out
    record = json.loads((tmp_path / "rollout" / "rollout.json").read_text())
    assert record["errors"]["frames"] == [0, 1, 2, 3, 4] and record["input"].endswith("water.dcd")
    assert main(["eval", "--checkpoint", str(run / "model.pt"), "--output", str(tmp_path / "eval.json"),
                 "--no-progress"]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert set(evaluated["baselines"]) == {"frozen", "constant_velocity"}


def test_bad_settings_and_a_missing_openmm_are_one_line_errors(tmp_path, monkeypatch, capsys):
    assert main(["data", "--config", "water", "--set", "data.water_box_nm=0.5"]) == 2
    assert "data.water_box_nm must be a box side >= 1.2 nm" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "openmm", None)
    assert main(["data", "--config", "water", "--set", f'data.data_dir="{tmp_path}"']) == 2
    err = capsys.readouterr().err
    assert "pip install 'egno_fast[water]'" in err and err.count("\n") == 1


def test_ctrl_c_during_generation_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(water, "FRAMES_PER_CHUNK", 5)

    def interrupt(message, *args):
        if "5 / 20 frames" in message:
            raise KeyboardInterrupt

    monkeypatch.setattr(water.logger, "warning", interrupt)
    command = ["data", "--config", "water", "--set", f'data.data_dir="{tmp_path}"', "--set", "data.water_box_nm=1.3",
               "--set", "data.water_frames=20", "--set", "data.water_steps_per_frame=1", "--set",
               "data.water_equilibration_steps=2", "--set", "data.num_frames=1", "--set", "data.span=1"]
    assert main(command) == 130
    assert "resumes from its last complete chunk" in capsys.readouterr().err
    assert len(list((tmp_path / "water").glob(".*.partial/chunk_*.npz"))) == 1
    monkeypatch.undo()
    monkeypatch.setattr(water, "FRAMES_PER_CHUNK", 5)
    said = []
    monkeypatch.setattr(water.logger, "warning", lambda message, *args: said.append(message))
    assert main(command) == 0
    assert any("resuming after 5 of 20 frames" in message for message in said)


def test_a_checkpoint_that_cannot_be_read_names_the_folder_to_delete(tmp_path, monkeypatch):
    monkeypatch.setattr(water, "FRAMES_PER_CHUNK", 10)

    def stop(message):
        if "10 / 24 frames" in message:
            raise Interrupt

    with pytest.raises(Interrupt):
        load_or_generate_water(tmp_path, TINY, threads=1, report=stop)
    partial = next((tmp_path / "water").glob(".*.partial"))
    chunk = dict(np.load(partial / "chunk_0000.npz"))
    chunk["checkpoint"] = np.frombuffer(b"not a checkpoint", dtype=np.uint8)
    np.savez(partial / "chunk_0000.npz", **chunk)
    with pytest.raises(ValueError, match=f"cannot resume the water simulation in {partial}.*delete that folder"):
        load_or_generate_water(tmp_path, TINY, threads=1, report=lambda message: None)
