"""Protein loader (egno_fast/data/protein.py) on the AdK trajectory of MDAnalysisTests (adk.psf, adk_dims.dcd):
the EGNO protocol (backbone, chronological split, targets, contact graph, features), bad files, and a smoke run."""
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("MDAnalysis", reason="the protein loader needs MDAnalysis (pip install 'egno_fast[protein]')")
pytest.importorskip("MDAnalysisTests", reason="the AdK trajectory comes with MDAnalysisTests")

from egno_fast.config import apply_overrides, load_config  # noqa: E402
from egno_fast.data.protein import (ProteinDataset, adk_test_files, load_backbone, protein_datasets,  # noqa: E402
                                    split_frames)
from egno_fast.data.registry import make_datasets  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def adk():
    topology, trajectory = adk_test_files()
    return topology, trajectory, load_backbone(topology, trajectory)


def test_backbone_of_adk(adk):
    _, _, (positions, charges, bonds) = adk
    assert positions.shape == (98, 855, 3) and charges.shape == (855,)
    assert np.abs(charges).max() > 0
    assert bonds.shape[0] == 2 and bonds.shape[1] >= 2 * 854  # N-CA, CA-C, C-O, C-N(next): both directions
    assert set(map(tuple, bonds.T)) == set(map(tuple, bonds[::-1].T))


def test_protocol_split_targets_and_features(adk):
    *_, arrays = adk
    positions = arrays[0]
    datasets = protein_datasets(*adk[:2])
    parts = split_frames(97)  # 97 frames have a velocity
    assert parts == {"train": (0, 58), "valid": (58, 78), "test": (78, 97)}
    assert {s: len(d) for s, d in datasets.items()} == {"train": 43, "valid": 5, "test": 4}
    test = datasets["test"]
    assert test.offsets == [3, 7, 11, 15]
    # the last test sample starts at 81: its last target is frame 96, still in the test part
    torch.testing.assert_close(test.x[-1], torch.as_tensor(positions[81], dtype=torch.float32))
    torch.testing.assert_close(test.v[-1], torch.as_tensor(positions[82] - positions[81], dtype=torch.float32))
    torch.testing.assert_close(test.targets[-1], torch.as_tensor(positions[[84, 88, 92, 96]], dtype=torch.float32))
    sample = datasets["train"][7]
    x = torch.as_tensor(positions[7], dtype=torch.float32)
    distance = torch.cdist(x.double(), x.double())
    expected = (distance <= 10.0) & ~torch.eye(855, dtype=torch.bool)
    found = torch.zeros(855, 855, dtype=torch.bool)
    found[sample.edge_index[1], sample.edge_index[0]] = True
    assert torch.equal(found, expected)
    d = sample.edge_attr[:, 0]
    torch.testing.assert_close(sample.edge_attr[:, 1], d * d)
    torch.testing.assert_close(d, (x[sample.edge_index[1]] - x[sample.edge_index[0]]).norm(dim=-1))
    assert sample.h.shape == (855, 2) and float(sample.h[:, 1].abs().max()) == 1.0
    torch.testing.assert_close(sample.h[:, 0], torch.as_tensor(positions[8] - positions[7]).float().norm(dim=-1))
    assert sample.target.shape == (4, 855, 3)


def test_cutoff_is_a_parameter(adk):
    near = ProteinDataset(None, None, "train", cutoff=6.0, arrays=adk[2])
    far = ProteinDataset(None, None, "train", cutoff=10.0, arrays=adk[2])
    assert near[0].edge_index.shape[1] < far[0].edge_index.shape[1]
    with pytest.raises(ValueError, match="cutoff"):
        ProteinDataset(None, None, "train", cutoff=0.0, arrays=adk[2])


def test_bad_files_give_clear_errors(adk, tmp_path):
    topology, trajectory, arrays = adk
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backbone(tmp_path / "missing.psf", trajectory)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backbone(topology, tmp_path / "missing.dcd")
    damaged = tmp_path / "damaged.dcd"
    damaged.write_bytes(open(trajectory, "rb").read()[:2000])  # the header and not one whole frame
    with pytest.raises(ValueError, match="could not read"):
        load_backbone(topology, damaged)
    cut = tmp_path / "cut.psf"
    cut.write_text(open(topology).read()[:5000])
    with pytest.raises(ValueError, match="could not read"):
        load_backbone(cut, trajectory)
    with pytest.raises(ValueError, match="matches no atom"):
        load_backbone(topology, trajectory, selection="resname XYZ")
    short = (arrays[0][:20], arrays[1], arrays[2])
    with pytest.raises(ValueError, match="too short"):
        ProteinDataset(None, None, "valid", arrays=short)


def test_protein_config_and_smoke_training(tmp_path):
    from egno_fast.training import train

    config = load_config("protein")
    assert (config.train.batch_size, config.train.lr, config.train.weight_decay, config.train.seed) == (8, 5e-5, 1e-4, 42)
    assert (config.model.hidden_dim, config.model.num_layers, config.data.num_frames) == (128, 4, 4)
    config = apply_overrides(config, ["train.epochs=2", "train.eval_every=1", "model.hidden_dim=16",
                                      "data.max_train_samples=8", "data.max_eval_samples=2", "train.plot_samples=1"])
    assert len(make_datasets(config.data)["train"]) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result = train(config, tmp_path / "run", progress=False)
    assert result.epochs_run == 2 and np.isfinite(result.test_f_mse)
    with pytest.raises(ValueError, match="both"):
        make_datasets(apply_overrides(config, ['data.topology="adk.psf"']).data)


def test_eghno_protein_trains_and_evaluates_from_the_command_line(adk, tmp_path, capsys):
    """`egno-fast train --config eghno_protein` (shrunk) and `egno-fast eval` of its model file: the backbone and
    its settings travel in the model file; each sample carries the topology's backbone bonds."""
    import json

    from egno_fast.cli import main

    config = load_config("eghno_protein")
    assert (config.model.backbone, config.model.num_clusters, config.model.pooling_layers,
            config.model.decoder_layers, config.model.link_weight) == ("eghn", 20, 4, 2, 2.0)
    sample = make_datasets(apply_overrides(config, ["data.max_train_samples=1"]).data)["train"][0]
    _, _, (_, _, bonds) = adk
    assert torch.equal(sample.bonds, torch.as_tensor(bonds))
    run_dir = tmp_path / "run"
    settings = ["train.epochs=1", "model.hidden_dim=8", "model.num_layers=1", "model.pooling_layers=1",
                "model.decoder_layers=1", "data.max_train_samples=2", "data.max_eval_samples=1",
                "train.batch_size=2", "train.plot_samples=1", f'data.data_dir="{tmp_path}"']
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert main(["train", "--config", "eghno_protein", "--run-dir", str(run_dir), "--no-progress",
                     *[a for s in settings for a in ("--set", s)]]) == 0
        assert "cluster_egnn_layer=reference" in capsys.readouterr().out
        assert main(["eval", "--checkpoint", str(run_dir / "model.pt"), "--no-progress", "--output",
                     str(tmp_path / "eval.json")]) == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["config"]["model"]["backbone"] == "eghn" and np.isfinite(evaluation["f_mse"])
