"""Any trajectory file: readers (ASE formats, MDAnalysis with a topology), the memory-mapped cache, unwrapping,
velocities, the split, the element encoding kept in the run, the command line, and bad input."""
import json
import tracemalloc

import numpy as np
import pytest
import torch

from egno_fast.cli import main
from egno_fast.config import load_config, apply_overrides
from egno_fast.data.registry import make_datasets
from egno_fast.data.trajectory import load_trajectory

ase = pytest.importorskip("ase")  # a test dependency
import ase.io  # noqa: E402
from ase import units  # noqa: E402

CELL = np.array([[8.0, 0.0, 0.0], [1.5, 7.5, 0.0], [-1.0, 1.2, 7.8]])


def motion(num_frames=60, num_atoms=10, seed=0):
    """Unwrapped positions [T, n, 3] of atoms drifting across the cell's faces, their velocities (Angstrom per
    frame), and the elements."""
    rng = np.random.default_rng(seed)
    start = rng.random((num_atoms, 3)) @ CELL
    velocity = rng.normal(size=(num_atoms, 3)) * 0.3
    t = np.arange(num_frames)[:, None, None]
    positions = start + velocity * t + 0.2 * np.sin(0.3 * t + rng.random((num_atoms, 3)))
    elements = ["O", "H", "H", "C", "N"] * (num_atoms // 5)
    return positions, elements


def write_extxyz(path, positions, elements, wrapped=True, cell=CELL, velocities=None):
    frames = []
    for k, x in enumerate(positions):
        atoms = ase.Atoms(elements, positions=x, cell=cell, pbc=cell is not None)
        if wrapped and cell is not None:
            atoms.wrap()
        if velocities is not None:
            atoms.set_velocities(velocities[k] / (units.fs * 1000.0))  # Angstrom / ps -> ASE units
        frames.append(atoms)
    ase.io.write(str(path), frames, format="extxyz")
    return path


def config_for(path, tmp_path, *overrides):
    base = ["data.num_frames=4", "data.span=8", "data.cutoff=3.5", f'data.data_dir="{tmp_path / "cache"}"',
            f'data.path="{path}"']
    return apply_overrides(load_config("trajectory"), base + list(overrides))


def test_a_wrapped_and_an_unwrapped_file_of_one_motion_give_the_same_samples(tmp_path):
    positions, elements = motion()
    wrapped = write_extxyz(tmp_path / "wrapped.extxyz", positions, elements, wrapped=True)
    unwrapped = write_extxyz(tmp_path / "unwrapped.extxyz", positions, elements, wrapped=False)
    sets = [make_datasets(config_for(p, tmp_path).data, progress=False) for p in (wrapped, unwrapped)]
    for split in ("train", "valid", "test"):
        assert len(sets[0][split]) == len(sets[1][split]) > 0
        for a, b in zip(sets[0][split], sets[1][split]):
            # the same motion up to one lattice translation per atom: displacements, features and graph agree
            torch.testing.assert_close(a.target - a.x, b.target - b.x, atol=1e-4, rtol=0)
            torch.testing.assert_close(a.v, b.v, atol=1e-4, rtol=0)
            torch.testing.assert_close(a.h, b.h, atol=1e-4, rtol=0)
            assert torch.equal(a.edge_index, b.edge_index)
            torch.testing.assert_close(a.edge_attr, b.edge_attr, atol=1e-4, rtol=0)
    sample = sets[0]["train"][0]
    assert sample.edge_shift is not None and bool((sample.edge_shift != 0).any())  # edges across the faces
    from egno_fast.training.trainer import build_model, evaluate, make_loader

    config = config_for(wrapped, tmp_path, "model.hidden_dim=16", "model.num_layers=2")
    torch.manual_seed(0)
    model = build_model(config, sets[0]["train"][0])
    metrics = [evaluate(model, make_loader(s["test"], 4, False, 0), "cpu")["f_mse"] for s in sets]
    assert abs(metrics[0] - metrics[1]) <= 1e-5 * metrics[1]  # the same metrics
    cached = load_trajectory(wrapped, tmp_path / "cache")  # unwrapped on reading: continuous from the first frame
    np.testing.assert_allclose(cached.positions - cached.positions[:1], positions - positions[:1], atol=1e-4)


def test_velocities_from_the_file_or_by_finite_differences_and_the_split(tmp_path, caplog):
    positions, elements = motion(num_frames=50)
    velocity = np.gradient(positions, axis=0) / 0.5  # Angstrom per ps at 0.5 ps a frame
    with_v = write_extxyz(tmp_path / "v.extxyz", positions, elements, velocities=velocity)
    data = make_datasets(config_for(with_v, tmp_path, "data.frame_interval=0.5").data, progress=False)
    first = data["train"][0]
    torch.testing.assert_close(first.v, torch.tensor(velocity[0] * 0.5, dtype=torch.float32), atol=1e-4, rtol=0)
    with caplog.at_level("WARNING", logger="egno_fast"):  # the same file without an interval: not used, and said
        unused = make_datasets(config_for(with_v, tmp_path).data, progress=False)
    assert "has velocities but no time between frames" in caplog.text
    assert unused["train"].samples[0] == (0, 1)  # velocities from the positions: the frame before is needed
    plain = write_extxyz(tmp_path / "plain.extxyz", positions, elements, cell=None)
    data = make_datasets(config_for(plain, tmp_path).data, progress=False)
    first = data["train"][0]
    assert data["train"].samples[0] == (0, 1)  # the backward difference needs the frame before
    torch.testing.assert_close(first.v, torch.tensor(positions[1] - positions[0], dtype=torch.float32), atol=1e-4,
                               rtol=0)
    assert first.edge_shift is None
    # chronological 60/20/20 parts: no frame of a sample (input, velocity, targets) in two splits
    used = {}
    for split, dataset in data.items():
        frames = set()
        for replica, start in dataset.samples:
            frames |= {start, start + 1} | {start + o for o in dataset.offsets}
        used[split] = frames
    assert not (used["train"] & used["valid"]) and not (used["valid"] & used["test"])


def test_elements_selection_and_the_one_hot_encoding(tmp_path):
    positions, elements = motion()
    path = write_extxyz(tmp_path / "a.extxyz", positions, elements)
    config = config_for(path, tmp_path, 'data.selection="element O C"')
    data = make_datasets(config.data, progress=False)
    assert config.data.elements == ["C", "O"]
    sample = data["train"][0]
    assert sample.x.shape == (4, 3) and sample.h.shape == (4, 2 + 3)  # one-hot, mass, charge, |v|
    np.testing.assert_allclose(sample.h[:, 2].numpy(), [16.0 / 100, 12.011 / 100] * 2, atol=1e-2)


@pytest.mark.parametrize("fmt", ["xyz", "proteindatabank"])
def test_other_ase_formats(tmp_path, fmt):
    positions, elements = motion(num_frames=60)
    path = tmp_path / f"traj.{'pdb' if fmt == 'proteindatabank' else fmt}"
    ase.io.write(str(path), [ase.Atoms(elements, positions=x) for x in positions], format=fmt)
    data = make_datasets(config_for(path, tmp_path).data, progress=False)
    assert len(data["train"]) > 0
    np.testing.assert_allclose(data["train"][0].x.numpy(), positions[1], atol=1e-3)


def test_mdanalysis_reads_a_dcd_with_its_topology(tmp_path):
    mda = pytest.importorskip("MDAnalysis")
    positions, elements = motion(num_frames=60)
    topology = tmp_path / "top.pdb"
    ase.io.write(str(topology), ase.Atoms(elements, positions=positions[0]), format="proteindatabank")
    universe = mda.Universe(str(topology))
    with mda.Writer(str(tmp_path / "traj.dcd"), len(elements)) as writer:
        for x in positions:
            universe.atoms.positions = x
            writer.write(universe.atoms)
    config = config_for(tmp_path / "traj.dcd", tmp_path, f'data.topology="{topology}"')
    data = make_datasets(config.data, progress=False)
    np.testing.assert_allclose(data["train"][0].x.numpy(), positions[1], atol=1e-3)
    assert config.data.elements == ["C", "H", "N", "O"]


def test_caching_takes_memory_independent_of_the_trajectory_length(tmp_path):
    peaks = []
    for frames in (100, 400):
        positions, elements = motion(num_frames=frames, num_atoms=50, seed=frames)
        path = write_extxyz(tmp_path / f"t{frames}.extxyz", positions, elements)
        tracemalloc.start()
        cached = load_trajectory(path, tmp_path / "cache")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert cached.positions.shape == (frames, 50, 3) and isinstance(cached.positions, np.memmap)
    frame_bytes = 50 * 3 * 8
    assert peaks[1] < peaks[0] + 50 * frame_bytes, peaks  # 300 more frames add well under 50 frames' worth


def test_train_on_one_file_and_evaluate_on_another(tmp_path, capsys):
    positions, elements = motion(num_frames=60)
    first = write_extxyz(tmp_path / "first.extxyz", positions, elements)
    second = write_extxyz(tmp_path / "second.extxyz", motion(num_frames=60, seed=3)[0], elements)
    sets = ["--set", "data.num_frames=4", "--set", "data.span=8", "--set", "data.cutoff=3.5",
            "--set", f'data.data_dir="{tmp_path / "cache"}"', "--set", "model.hidden_dim=16",
            "--set", "model.num_layers=2", "--set", "train.epochs=2"]
    run = tmp_path / "run"
    assert main(["train", "--config", "trajectory", "--set", f"data.path={first}", "--run-dir", str(run),
                 "--no-progress", *sets]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["elements"] == ["C", "H", "N", "O"] and saved["model"]["vector_centre"] == "input"
    capsys.readouterr()
    more = [arg if arg != "train.epochs=2" else "train.epochs=3" for arg in sets]  # resumes: the encoding is kept
    assert main(["train", "--config", "trajectory", "--set", f'data.path="{first}"', "--run-dir", str(run),
                 "--no-progress", *more]) == 0
    assert "resuming" in capsys.readouterr().err
    # as a user types it: the training checkpoint, and the path without JSON quotes
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--set", f"data.path={second}",
                 "--no-progress"]) == 0
    assert "test: F-MSE" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(run / "model.pt"), "--resample", "2", "--no-progress"]) == 0
    assert "zero-shot 2 x 4 frames" in capsys.readouterr().out


def test_bad_files_and_settings_are_refused_in_one_line_before_training(tmp_path, capsys):
    positions, elements = motion(num_frames=30)
    good = write_extxyz(tmp_path / "good.extxyz", positions, elements)
    short = write_extxyz(tmp_path / "short.extxyz", positions[:6], elements)
    nan = positions.copy()
    nan[3, 2, 1] = np.nan
    flat = write_extxyz(tmp_path / "flat.extxyz", positions, elements, wrapped=False,
                        cell=np.array([[8.0, 0, 0], [0, 8.0, 0], [8.0, 8.0, 0]]))
    (tmp_path / "garbage.extxyz").write_text("this is not a trajectory\n")
    cases = {
        (f'data.path="{tmp_path / "missing.extxyz"}"',): "trajectory file not found",
        (f'data.path="{tmp_path / "garbage.extxyz"}"',): "could not read",
        (f'data.path="{short}"',): "too short",
        (f'data.path="{write_extxyz(tmp_path / "nan.extxyz", nan, elements, cell=None)}"',): "NaN",
        (f'data.path="{good}"', "data.cutoff=5"): "must be at most half the cell's smallest perpendicular width",
        (f'data.path="{good}"', 'data.selection="element Xe"'): "matches no atom",
        (f'data.path="{good}"', f'data.topology="{tmp_path / "none.psf"}"'): "topology file not found",
        ('data.path=""',): "data.path is empty",
        (f'data.path="{flat}"',): "zero volume",
    }
    for settings, expected in cases.items():
        args = [arg for item in settings for arg in ("--set", item)]
        run = tmp_path / "run"
        assert main(["train", "--config", "trajectory", "--run-dir", str(run), "--no-progress", "--set",
                     f'data.data_dir="{tmp_path / "cache"}"', "--set", "data.cutoff=3.5", *args]) == 2, settings
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, (settings, err)
        assert not run.exists()  # no run folder is written


def _write_mdanalysis(tmp_path, name, positions, elements, velocities=None, cell=None, dt=0.5):
    """A trajectory written by MDAnalysis (format from the extension) with a PDB topology."""
    mda = pytest.importorskip("MDAnalysis")
    topology = tmp_path / "top.pdb"
    ase.io.write(str(topology), ase.Atoms(elements, positions=positions[0]), format="proteindatabank")
    universe = mda.Universe(str(topology))
    if velocities is not None:
        universe.trajectory.ts.has_velocities = True
    options = dict(velocities=velocities is not None, forces=False, timeunit="ps", lengthunit="Angstrom",
                   velocityunit="Angstrom/ps") if name.endswith("h5md") else {}
    with mda.Writer(str(tmp_path / name), len(elements), dt=dt, **options) as writer:
        for k, x in enumerate(positions):
            universe.atoms.positions = x
            if velocities is not None:
                universe.atoms.velocities = velocities[k]
            universe.trajectory.ts.dimensions = None if cell is None else \
                np.array([*np.linalg.norm(cell, axis=1), 90.0, 90.0, 90.0])
            universe.trajectory.ts.time = k * dt
            writer.write(universe.atoms)
    return tmp_path / name, topology


@pytest.mark.parametrize("name", ["traj.xtc", "traj.trr", "traj.nc", "traj.h5md"])
def test_mdanalysis_formats(tmp_path, name):
    """XTC, TRR and H5MD (with velocities in Angstrom per ps), AMBER NetCDF, written by MDAnalysis with a topology;
    an orthorhombic box where the format stores one."""
    positions, elements = motion(num_frames=60)
    box = np.diag([20.0, 21.0, 22.0])
    velocity = np.gradient(positions, axis=0) / 0.5 if name.endswith(("trr", "h5md")) else None
    path, topology = _write_mdanalysis(tmp_path, name, positions, elements, velocity, box)
    config = config_for(path, tmp_path, f'data.topology="{topology}"', "data.frame_interval=0.5")
    data = make_datasets(config.data, progress=False)
    sample = data["train"][0]
    start = data["train"].samples[0][1]  # frame 0, or 1 when velocities come from the frame before
    np.testing.assert_allclose(sample.x.numpy(), positions[start], atol=6e-3)  # XTC stores 0.01 Angstrom steps
    if velocity is not None:  # the file's velocities (Angstrom / ps) times the frame interval (0.5 ps)
        np.testing.assert_allclose(sample.v.numpy(), velocity[0] * 0.5, atol=2e-3)


def test_a_lammps_dump_read_with_its_ase_format_name(tmp_path):
    positions, elements = motion(num_frames=60)
    box = 30.0
    lines = []
    for k, x in enumerate(positions):
        lines += ["ITEM: TIMESTEP", str(k), "ITEM: NUMBER OF ATOMS", str(len(x)), "ITEM: BOX BOUNDS pp pp pp",
                  *[f"0 {box}"] * 3, "ITEM: ATOMS id element x y z"]
        lines += [f"{i + 1} {elements[i]} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}" for i, p in enumerate(x % box)]
    path = tmp_path / "run.lammpstrj"
    path.write_text("\n".join(lines) + "\n")
    config = config_for(path, tmp_path, 'data.format="lammps-dump-text"')
    data = make_datasets(config.data, progress=False)
    sample = data["train"][0]
    assert sample.edge_shift is not None  # periodic: the dump's box
    torch.testing.assert_close(sample.target[-1] - sample.x, torch.tensor(
        positions[9] - positions[1], dtype=torch.float32), atol=1e-3, rtol=0)  # unwrapped across the box


def test_a_missing_reader_library_names_the_extra(tmp_path, monkeypatch, capsys):
    import sys

    positions, elements = motion(num_frames=30)
    path = write_extxyz(tmp_path / "a.extxyz", positions, elements)
    monkeypatch.setitem(sys.modules, "ase.io", None)  # as if ASE were not installed
    assert main(["train", "--config", "trajectory", "--run-dir", str(tmp_path / "run"), "--no-progress",
                 "--set", f'data.path="{path}"', "--set", f'data.data_dir="{tmp_path / "cache"}"']) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'egno_fast[trajectory]'" in err and len(err.splitlines()) == 1, err


def test_a_cell_that_changes_between_frames_gives_the_true_minimum_images(tmp_path):
    """NPT-like: the cell grows after atoms have crossed its faces; each sample's edges and distances are those of
    its frame in its own cell (ASE's neighbor_list on the frame as written), and r = x_i - x_j + shift."""
    from ase.neighborlist import neighbor_list

    positions, elements = motion(num_frames=60)
    frames = []
    for k, x in enumerate(positions):
        atoms = ase.Atoms(elements, positions=x, cell=CELL * (1 + 0.004 * k), pbc=True)
        atoms.wrap()
        frames.append(atoms)
    path = tmp_path / "npt.extxyz"
    ase.io.write(str(path), frames, format="extxyz")
    data = make_datasets(config_for(path, tmp_path).data, progress=False)
    dataset = data["test"]
    for index in (0, len(dataset) - 1):
        sample, start = dataset[index], dataset.samples[index][1]
        first, second, distance = neighbor_list("ijd", frames[start], 3.5)
        expected = {(int(j), int(i)): d for i, j, d in zip(first, second, distance)}
        found = {(int(s), int(r)): float(d) for (s, r), d in zip(sample.edge_index.T.tolist(), sample.edge_attr[:, 0])}
        assert set(found) == set(expected)
        assert max(abs(found[pair] - expected[pair]) for pair in found) < 1e-4
        rel = sample.x[sample.edge_index[1]] - sample.x[sample.edge_index[0]] + sample.edge_shift
        torch.testing.assert_close(rel.norm(dim=-1), sample.edge_attr[:, 0], atol=1e-4, rtol=0)


def test_replicas_share_the_sample_budget_and_stale_partial_caches_are_removed(tmp_path):
    positions, elements = motion(num_frames=60)
    files = [write_extxyz(tmp_path / f"r{k}.extxyz", motion(num_frames=60, seed=k)[0], elements) for k in range(3)]
    config = config_for(",".join(str(f) for f in files), tmp_path, "data.max_train_samples=6")
    data = make_datasets(config.data, progress=False)
    assert [replica for replica, _ in data["train"].samples] == [0, 1, 2, 0, 1, 2]
    key_folder = next(p for p in (tmp_path / "cache" / "trajectory").iterdir() if not p.name.startswith("."))
    stale = key_folder.with_name(f".{key_folder.name}.partial-99999")  # left by a killed process
    stale.mkdir()
    (key_folder / "meta.json").unlink()  # an incomplete cache folder: rewritten, and the stale partial removed
    make_datasets(config.data, progress=False)
    assert (key_folder / "meta.json").is_file() and not stale.exists()
