"""The motion-capture dataset (shipped in egno_fast/data/files) with the EGNO protocol, and its error cases."""
import numpy as np
import pytest
import torch

from egno_fast import EGNO
from egno_fast.data import collate_graphs
from egno_fast.data.mocap import MOCAP_FILE, find_mocap_file, mocap_datasets, skeleton_edges


@pytest.fixture(scope="module")
def mocap_path():
    return find_mocap_file()


@pytest.fixture(scope="module")
def splits(mocap_path):
    return mocap_datasets(mocap_path)


def test_split_sizes_and_quota(splits, mocap_path):
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [200, 240, 240]
    raw = np.load(mocap_path)
    # train: 5 trials, quota 40 each, the first 40 stored starts of each trial
    trial, start = raw["train_trial"], raw["train_start"]
    first = raw["trial_ptr"][trial[0]] + start[0]
    torch.testing.assert_close(splits["train"].x[0], torch.as_tensor(raw["positions"][first]))
    forty_first = np.flatnonzero(trial == trial[0])[39]
    torch.testing.assert_close(splits["train"].x[39],
                               torch.as_tensor(raw["positions"][raw["trial_ptr"][trial[0]] + start[forty_first]]))


def test_targets_velocity_and_features(splits, mocap_path):
    raw = np.load(mocap_path)
    positions = torch.as_tensor(raw["positions"])
    sample = splits["test"][5]
    first = int(raw["trial_ptr"][raw["test_trial"][5]] + raw["test_start"][5])
    assert splits["test"].offsets == [26, 27, 28, 29, 30]  # EGNO-L, the reference's default
    torch.testing.assert_close(sample.target, positions[[first + k for k in range(26, 31)]])
    torch.testing.assert_close(sample.v, positions[first + 1] - positions[first])
    scale = splits["train"].height_scale
    assert splits["test"].height_scale == scale == float(splits["train"].x[..., 1].max())
    torch.testing.assert_close(sample.h, torch.stack([sample.v.norm(dim=-1), sample.x[:, 1] / scale], -1))
    sender, receiver = sample.edge_index
    torch.testing.assert_close(sample.edge_attr[:, 1], ((sample.x[receiver] - sample.x[sender]) ** 2).sum(-1))
    uniform = mocap_datasets(mocap_path, discretisation="uniform")["test"]
    assert uniform.offsets == [6, 12, 18, 24, 30]


def test_skeleton_graph():
    bones = np.array([[1, 0], [2, 1], [3, 1]])  # 0 - 1 - {2, 3}
    edges, hop = skeleton_edges(bones, 4)
    pairs = {(int(s), int(r)): float(k) for s, r, k in zip(edges[0], edges[1], hop)}
    assert pairs[(0, 1)] == pairs[(1, 0)] == 1.0 and pairs[(2, 3)] == pairs[(0, 2)] == 2.0
    assert len(pairs) == 2 * 3 + 2 * 3 and all(s != r for s, r in pairs)


def test_model_runs_on_a_mocap_batch(splits):
    batch = collate_graphs([splits["train"][i] for i in range(3)])
    model = EGNO(node_dim=2, edge_dim=2, hidden_dim=16, num_layers=2, num_frames=5)
    out = model(batch.x, batch.v, batch.h, batch.edge_index, batch.edge_attr, batch.batch)
    assert out.x.shape == batch.target.shape == (5, 93, 3)


def test_missing_or_truncated_file(tmp_path, mocap_path, monkeypatch):
    monkeypatch.delenv("EGNO_FAST_MOCAP", raising=False)
    with pytest.raises(FileNotFoundError, match="EGNO_FAST_MOCAP"):
        find_mocap_file(tmp_path)
    monkeypatch.setenv("EGNO_FAST_MOCAP", str(mocap_path))
    assert find_mocap_file(tmp_path) == mocap_path
    broken = tmp_path / MOCAP_FILE
    broken.write_bytes(mocap_path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        mocap_datasets(broken)


def _edited_copy(mocap_path, folder, **changes):
    """A copy of the data file with some arrays changed by ``changes`` (name -> function of the array)."""
    with np.load(mocap_path) as archive:
        arrays = {name: archive[name].copy() for name in archive.files}
    for name, change in changes.items():
        arrays[name] = change(arrays[name])
    path = folder / "edited.npz"
    np.savez(path, **arrays)
    return path


def _set(index, value):
    def change(array):
        array[index] = value
        return array
    return change


@pytest.mark.parametrize("changes, message", [
    (dict(bones=_set((3, 0), -2)), r"bones\[3\] = \[-2, \d+\]: a bone joins two different joints in \[0, 31\)"),
    (dict(bones=_set((0, 1), 31)), r"bones\[0\] = \[\d+, 31\]"),
    (dict(bones=_set(5, [4, 4])), r"bones\[5\] = \[4, 4\]"),
    (dict(test_start=_set(0, -1000)), r"test_start\[0\] = -1000: a start frame must be in \[0, \d+\] for trial"),
    (dict(train_start=_set(2, 10**6)), r"train_start\[2\] = 1000000"),
    (dict(val_trial=_set(1, 99)), r"val_trial\[1\] = 99: trial ids must be in \[0, \d+\)"),
    (dict(positions=_set((7, 2, 1), np.nan)), r"positions holds NaN or infinite values \(first at \[7, 2, 1\]\)"),
    (dict(trial_ptr=lambda ptr: ptr[::-1].copy()), "trial_ptr must run from 0"),
    (dict(bones=lambda bones: bones.astype(np.float64)), "bones must hold integers"),
])
def test_a_damaged_file_is_refused_naming_the_array_and_entry(mocap_path, tmp_path, changes, message):
    """Indices out of range, negative ones (which numpy would wrap around) and non-finite positions: one ValueError
    naming the file, the array, the entry and what is allowed, never a silently different skeleton or sample."""
    path = _edited_copy(mocap_path, tmp_path, **changes)
    with pytest.raises(ValueError, match=message) as raised:
        mocap_datasets(path)
    assert str(raised.value).startswith(f"{path}: ") and "\n" not in str(raised.value)


def test_eghno_mocap_uses_the_bones_and_trains(tmp_path, splits):
    """The skeleton's bones (both directions) are each sample's bond graph; `--config eghno_mocap` (shrunk) trains
    with the link loss in its objective and writes a model file that evaluates."""
    from egno_fast.cli import main

    sample = splits["train"][0]
    bones = {tuple(pair) for pair in sample.bonds.T.tolist()}
    assert len(bones) == sample.bonds.shape[1] == 2 * 30 and all((j, i) in bones for i, j in bones)
    hop = splits["train"].hop
    assert bones == {tuple(pair) for pair in sample.edge_index[:, hop == 1].T.tolist()}
    batch = collate_graphs([splits["train"][i] for i in range(3)])
    assert torch.equal(batch.bonds[:, -sample.bonds.shape[1]:], sample.bonds + 62)  # offset per graph
    run_dir = tmp_path / "run"
    settings = ["train.epochs=1", "model.hidden_dim=8", "data.max_train_samples=12", "data.max_eval_samples=12",
                "train.batch_size=4"]
    assert main(["train", "--config", "eghno_mocap", "--run-dir", str(run_dir), "--no-progress",
                 *[a for s in settings for a in ("--set", s)]]) == 0
    assert main(["eval", "--checkpoint", str(run_dir / "model.pt"), "--no-progress"]) == 0
