"""MD17: the sGDML-schema loader (protocol, graph, features, bad files) and the RDKit stand-in generator."""
import numpy as np
import pytest
import torch

from egno_fast.config import apply_overrides, load_config
from egno_fast.data.io import atomic_savez
from egno_fast.data.md17 import MD17Dataset, generate_md17_standin, is_current_standin, molecule_graph, split_starts
from egno_fast.data.registry import make_datasets

FRAMES = 20400  # the smallest kind of file the protocol accepts: 10000 skipped at each end


@pytest.fixture(scope="module")
def fake_md17(tmp_path_factory):
    """A random-walk trajectory of a 'molecule' C-C-O + 2 H in the sGDML schema."""
    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0, 0], [1.5, 0, 0], [2.9, 0, 0], [-0.7, 0.8, 0], [3.3, 0.8, 0]])
    walk = np.cumsum(rng.normal(scale=1e-4, size=(FRAMES, 5, 3)), axis=0)
    path = tmp_path_factory.mktemp("md17") / "md17_ethanol.npz"
    atomic_savez(path, R=base + walk, z=np.array([6, 6, 8, 1, 1]))
    return path, base + walk


def test_protocol_splits_targets_and_features(fake_md17):
    path, positions = fake_md17
    pools = split_starts(FRAMES - 1)
    pool = FRAMES - 1 - 20000
    assert [len(pools[s]) for s in ("train", "valid", "test")] == [int(0.1 * pool), int(0.05 * pool),
                                                                 int(0.05 * pool)]
    everything = np.concatenate(list(pools.values()))
    assert len(set(everything.tolist())) == len(everything)  # disjoint
    assert everything.min() >= 10000 and everything.max() < FRAMES - 1 - 10000
    assert np.array_equal(split_starts(FRAMES - 1)["test"], pools["test"])  # seeded: the same every time
    data = MD17Dataset(path, "train", num_frames=8, max_samples=10, span=3000)
    starts = pools["train"][:10]
    assert len(data) == 10 and data.offsets == [375 * p for p in range(1, 9)]
    heavy = positions[:, :3]
    torch.testing.assert_close(data.x, torch.as_tensor(heavy[starts], dtype=torch.float32))
    torch.testing.assert_close(data.v, torch.as_tensor(heavy[starts + 1] - heavy[starts], dtype=torch.float32))
    torch.testing.assert_close(data.targets[:, -1], torch.as_tensor(heavy[starts + 3000], dtype=torch.float32))
    sample = data[0]
    # bonds C0-C1 (1.5 A) and C1-O2 (1.4 A) < 1.6 A in frame 0, the 2-hop pair C0..O2; hydrogens dropped
    pairs = {tuple(p) for p in data.edge_index.T.tolist()}
    assert pairs == {(0, 1), (1, 0), (1, 2), (2, 1), (0, 2), (2, 0)}
    hop = dict(zip(map(tuple, data.edge_index.T.tolist()), sample.edge_attr[:, 2].tolist()))
    assert hop[(0, 2)] == 2.0 and hop[(0, 1)] == 1.0
    sender, receiver = data.edge_index
    assert torch.equal(sample.edge_attr[:, 0], data.z[receiver])
    assert torch.equal(sample.edge_attr[:, 1], data.z[sender])
    torch.testing.assert_close(sample.edge_attr[:, 3], ((sample.x[receiver] - sample.x[sender]) ** 2).sum(-1))
    torch.testing.assert_close(sample.h[:, 1], torch.tensor([6.0, 6.0, 8.0]) / 8)


def test_bad_files_give_clear_errors(tmp_path, fake_md17):
    with pytest.raises(FileNotFoundError, match="not found"):
        MD17Dataset(tmp_path / "md17_aspirin.npz", "train")
    truncated = tmp_path / "md17_truncated.npz"
    truncated.write_bytes(fake_md17[0].read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable"):
        MD17Dataset(truncated, "train")
    atomic_savez(tmp_path / "no_z.npz", R=np.zeros((30000, 2, 3)))
    with pytest.raises(ValueError, match="lacks"):
        MD17Dataset(tmp_path / "no_z.npz", "train")
    atomic_savez(tmp_path / "short.npz", R=np.zeros((500, 2, 3)), z=np.array([6, 8]))
    with pytest.raises(ValueError, match="needs more than"):
        MD17Dataset(tmp_path / "short.npz", "train")
    config = apply_overrides(load_config("md17"), [f'data.data_dir="{tmp_path}"', 'data.md17_source="file"'])
    with pytest.raises(FileNotFoundError, match="standin"):
        make_datasets(config.data)


def test_graph_cutoff_is_strict():
    edge_index, hop = molecule_graph(np.array([[0.0, 0, 0], [1.6, 0, 0], [0, 1.59, 0]]))
    assert {tuple(p) for p in edge_index.T.tolist()} == {(0, 2), (2, 0)} and hop.tolist() == [1.0, 1.0]


def test_standin_generator_writes_the_sgdml_schema(tmp_path):
    path = generate_md17_standin(tmp_path / "md17_ethanol.npz", "ethanol", num_frames=400, equilibration_steps=200)
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    assert arrays["R"].shape == (400, 9, 3) and sorted(arrays["z"].tolist()) == [1] * 6 + [6, 6, 8]
    assert arrays["F"].shape == (400, 9, 3) and arrays["E"].shape == (400, 1)
    assert np.isfinite(arrays["R"]).all() and "MMFF94" in str(arrays["source"])
    # 0.5 fs steps at 500 K: per-step displacements of a few thousandths of an Angstrom, bonds intact
    step = np.linalg.norm(np.diff(arrays["R"], axis=0), axis=-1)
    assert 1e-4 < step.mean() < 0.05
    heavy = arrays["R"][:, arrays["z"] > 1]
    assert np.linalg.norm(heavy[:, 0] - heavy[:, 1], axis=-1).max() < 1.9
    # the thermostat does not move the molecule as a whole: its centre of mass stays put
    masses = np.where(arrays["z"] == 1, 1.008, np.where(arrays["z"] == 6, 12.011, 15.999))[:, None]
    centre = (masses * arrays["R"]).sum(1) / masses.sum()
    assert np.abs(centre - centre[0]).max() < 1e-6
    again = generate_md17_standin(tmp_path / "again.npz", "ethanol", num_frames=400, equilibration_steps=200)
    assert np.array_equal(np.load(again)["R"], arrays["R"])  # seeded: reproducible
    with pytest.raises(ValueError, match="unknown MD17 molecule"):
        generate_md17_standin(tmp_path / "x.npz", "caffeine")


def test_standin_through_the_config(tmp_path):
    config = apply_overrides(load_config("md17"), [f'data.data_dir="{tmp_path}"', 'data.molecule="ethanol"',
                                                   "data.max_eval_samples=50"])
    stale = tmp_path / "md17_standin" / "md17_ethanol.npz"  # a file of the first generator: regenerated
    stale.parent.mkdir()
    atomic_savez(stale, R=np.zeros((30000, 9, 3)), z=np.array([6, 6, 8] + [1] * 6),
                 source=np.array("egno_fast stand-in: RDKit MMFF94, Langevin 500.0 K"))
    assert not is_current_standin(stale)
    datasets = make_datasets(config.data)
    assert is_current_standin(stale) and len(np.load(stale)["R"]) == 63001
    assert len(datasets["train"]) == 500 and len(datasets["test"]) == 50
    sample = datasets["train"][0]
    assert sample.x.shape == (3, 3) and sample.target.shape == (8, 3, 3) and sample.edge_attr.shape == (6, 4)
