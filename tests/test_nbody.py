"""The N-body generator (bit-compatible random stream, physics) and the EGNO sampling protocol."""
import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from egno_fast.data import NBodyDataset, NBodyParams, collate_graphs, generate_nbody, load_or_generate_nbody
from egno_fast.data.io import load_npz


@pytest.fixture(scope="module")
def first_sixty():
    return generate_nbody(NBodyParams(num_train=60, num_valid=0, num_test=0))


def test_matches_reference_generator(first_sixty):
    ref = np.load(FIXTURES / "official_nbody_seed43_train_first2.npz")
    np.testing.assert_array_equal(first_sixty["charges_train"][:2], ref["charges"])
    np.testing.assert_allclose(first_sixty["loc_train"][:2], ref["loc"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(first_sixty["vel_train"][:2], ref["vel"], rtol=0, atol=1e-9)
    charges = ref["charges"][..., 0]
    np.testing.assert_array_equal(ref["edges"], charges[:, :, None] * charges[:, None, :])


def test_later_splits_follow_the_whole_train_stream():
    # valid starts after all num_train trajectories' draws, whether or not they are simulated
    full = generate_nbody(NBodyParams(num_train=3, num_valid=2, num_test=0))
    skipped = generate_nbody(NBodyParams(num_train=3, num_valid=2, num_test=0, train_simulated=1))
    assert skipped["loc_train"].shape[0] == 1
    np.testing.assert_array_equal(full["loc_valid"], skipped["loc_valid"])
    np.testing.assert_array_equal(full["loc_train"][:1], skipped["loc_train"])


def energy(loc, vel, charges):
    """Kinetic + Coulomb potential per frame; loc, vel [frames, 3, n], charges [n]."""
    kinetic = 0.5 * (vel ** 2).sum(axis=(1, 2))
    diff = loc[:, :, :, None] - loc[:, :, None, :]
    dist = np.sqrt((diff ** 2).sum(axis=1))
    i, j = np.triu_indices(loc.shape[-1], 1)
    return kinetic + (charges[i] * charges[j] / dist[:, i, j]).sum(axis=1)


def test_physics_momentum_and_energy(first_sixty):
    loc, vel = first_sixty["loc_train"], first_sixty["vel_train"]
    charges, clipped = first_sixty["charges_train"][..., 0], first_sixty["clipped_train"]
    assert 0.2 < clipped.mean() < 0.8  # about half the trajectories hit the force clip (98 of 200 seen)
    momentum = vel.sum(axis=-1)  # [S, frames, 3], unit masses
    drift = np.abs(momentum - momentum[:, :1]).max(axis=(1, 2))
    assert drift[~clipped].max() < 1e-9  # conserved to round-off without clipping
    assert drift[clipped].max() > 1e-6  # and visibly broken by it
    rel = np.array([abs(energy(l, v, q)[-1] / energy(l, v, q)[0] - 1)
                    for l, v, q in zip(loc[~clipped], vel[~clipped], charges[~clipped])])
    assert np.median(rel) < 4e-3 and rel.max() < 0.1  # seen: median 4e-4, max 4e-2 over 200 trajectories


def test_dataset_protocol(first_sixty):
    ds = NBodyDataset(first_sixty, "train", num_frames=5, max_samples=10)
    assert len(ds) == 10 and ds.frames == [32, 34, 36, 38, 40]
    assert NBodyDataset(first_sixty, "train", num_frames=5, discretisation="last").frames == [36, 37, 38, 39, 40]
    assert NBodyDataset(first_sixty, "train", num_frames=2).frames == [35, 40]
    sample = ds[3]
    loc = torch.as_tensor(first_sixty["loc_train"][3], dtype=torch.float32)  # [frames, 3, n]
    q = first_sixty["charges_train"][3, :, 0]
    torch.testing.assert_close(sample.x, loc[30].T)
    torch.testing.assert_close(sample.target, loc[[32, 34, 36, 38, 40]].transpose(1, 2))
    torch.testing.assert_close(sample.h[:, 0], torch.as_tensor(first_sixty["vel_train"][3, 30], dtype=torch.float32)
                               .norm(dim=0))
    sender, receiver = sample.edge_index
    assert sample.edge_index.shape == (2, 20) and not (sender == receiver).any()
    np.testing.assert_allclose(sample.edge_attr[:, 0].numpy(), q[receiver] * q[sender])
    torch.testing.assert_close(sample.edge_attr[:, 1], ((sample.x[receiver] - sample.x[sender]) ** 2).sum(-1))
    batch = collate_graphs([ds[0], ds[1], ds[2]])
    assert batch.x.shape == (15, 3) and batch.target.shape == (5, 15, 3) and batch.num_graphs == 3
    assert batch.edge_index.max() == 14 and torch.equal(batch.edge_index[:, 20:40], ds[1].edge_index + 5)


def test_dataset_rejects_bad_settings(first_sixty):
    with pytest.raises(ValueError, match="split"):
        NBodyDataset(first_sixty, "validation")
    with pytest.raises(ValueError, match="num_frames"):
        NBodyDataset(first_sixty, "train", num_frames=11)
    with pytest.raises(ValueError, match="discretisation"):
        NBodyDataset(first_sixty, "train", discretisation="random")


def test_cache_written_once_and_checked(tmp_path):
    params = NBodyParams(num_train=2, num_valid=1, num_test=1)
    first = load_or_generate_nbody(tmp_path, params, progress=False)
    path = tmp_path / params.file_name()
    assert path.exists() and not list(tmp_path.glob(".*tmp*"))
    stored = load_npz(path)
    assert json.loads(str(stored["params"])) == asdict(params)
    mtime = path.stat().st_mtime_ns
    again = load_or_generate_nbody(tmp_path, params, progress=False)
    assert path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(first["loc_test"], again["loc_test"])
    # a file whose recorded parameters differ is refused, not reused
    other = replace(params, dt=0.002)
    path.rename(tmp_path / other.file_name())
    with pytest.raises(ValueError, match="was generated with"):
        load_or_generate_nbody(tmp_path, other, progress=False)


def test_a_full_disk_while_writing_the_cache_leaves_no_file_and_says_so(tmp_path, monkeypatch):
    """np.savez failing with ENOSPC: one line naming the cache file and that nothing was written; no cache file and
    no temporary file are left, and the next call (disk freed) generates and writes the cache."""
    import errno

    from egno_fast.cli import _user_error
    from egno_fast.data.io import AtomicWriteError

    params = NBodyParams(num_train=1, num_valid=1, num_test=1)
    path = tmp_path / params.file_name()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(np, "savez", full_disk)
        with pytest.raises(AtomicWriteError) as raised:
            load_or_generate_nbody(tmp_path, params, progress=False)
    assert str(raised.value) == f"could not write {path} (No space left on device); nothing was written"
    assert _user_error(raised.value) == str(raised.value)  # a one-line user error (exit 2), not a traceback
    assert not path.exists() and not list(tmp_path.glob(".*tmp*"))
    load_or_generate_nbody(tmp_path, params, progress=False)
    assert path.exists()


def test_truncated_or_missing_file_gives_clear_error(tmp_path):
    params = NBodyParams(num_train=1, num_valid=1, num_test=1)
    load_or_generate_nbody(tmp_path, params, progress=False)
    path = tmp_path / params.file_name()
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_or_generate_nbody(tmp_path, params, progress=False)
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_npz(tmp_path / "absent.npz")


GENERATE_SCRIPT = r"""
import os, sys, time
from egno_fast.data import nbody
folder, role = sys.argv[1], sys.argv[2]
real = nbody.generate_nbody


def counted(*args, **kwargs):
    open(os.path.join(folder, f"generated-by-{role}"), "w").close()
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(folder, "second-started")) and time.time() < deadline:
        time.sleep(0.05)  # hold the lock until the other process is about to ask for it
    time.sleep(1.0)
    return real(*args, **kwargs)


nbody.generate_nbody = counted
if role == "second":
    open(os.path.join(folder, "second-started"), "w").close()
arrays = nbody.load_or_generate_nbody(folder, nbody.NBodyParams(num_train=6, num_valid=3, num_test=3),
                                      progress=False)
print(len(arrays["loc_train"]))
"""


def test_two_processes_generating_one_cache_write_it_once(tmp_path):
    """One process starts generating an absent cache; a second asks for the same cache meanwhile: it waits for the
    lock (and says so), then reads the first one's file without generating it again."""
    import subprocess
    import sys
    import time

    def start(role):
        return subprocess.Popen([sys.executable, "-c", GENERATE_SCRIPT, str(tmp_path), role],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start("first")
    deadline = time.time() + 120
    while not (tmp_path / "generated-by-first").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = start("second")
    outputs = [run.communicate(timeout=600) for run in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["6", "6"]
    assert [p.name for p in tmp_path.glob("generated-by-*")] == ["generated-by-first"], outputs
    assert "waiting for another process that is generating" in outputs[1][1], outputs
