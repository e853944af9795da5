"""Zero-shot temporal resampling: output times, metrics on K x P frames against ground truth, the CLI."""
import dataclasses
import json

import pytest
import torch

from egno_fast import EGNOOutput
from egno_fast.cli import main
from egno_fast.data.registry import make_datasets
from egno_fast.training import train
from egno_fast.training.trainer import evaluate, make_loader
from egno_fast.training.zero_shot import evaluate_resampled, resampled_frame_times
from test_training import tiny_config


def test_output_times_of_the_nbody_grid():
    # trained on P = 5 frames at offsets 2, 4, ..., 10 (indices 0..4); 2P = 10 frames at offsets 1..10
    times = resampled_frame_times(list(range(1, 11)), 5, 10)
    assert times.tolist() == [-0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    assert resampled_frame_times([2, 4, 6, 8, 10], 5, 10).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero_shot")
    config = tiny_config(root / "data", "train.epochs=2")
    return config, train(config, root / "run", progress=False), root


def test_factor_one_is_the_ordinary_evaluation(trained):
    config, result, _ = trained
    resampled = evaluate_resampled(result.model, config, 1, "valid")
    plain = evaluate(result.model, make_loader(make_datasets(config.data)["valid"], 10, False, 0), "cpu")
    assert resampled["frame_mse"] == pytest.approx(plain["frame_mse"], rel=1e-6)
    assert resampled["frame_times"] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_twice_the_frames_are_scored_against_the_finer_ground_truth(trained):
    config, result, _ = trained
    metrics = evaluate_resampled(result.model, config, 2, "test")
    assert metrics["offsets"] == list(range(1, 11)) and len(metrics["frame_mse"]) == 10
    # the targets are the recorded frames at the finer offsets: frame 2k of the 2P grid is frame k of the P grid
    fine = make_datasets(dataclasses.replace(config.data, num_frames=10))["test"]
    coarse = make_datasets(config.data)["test"]
    assert torch.equal(fine.targets[:, 1::2], coarse.targets)
    # a model that predicts the input positions at every time scores the mean squared displacement per frame
    still = evaluate_resampled(StandStill(), config, 2, "test")
    expected = ((fine.targets - fine.x[:, None]) ** 2).mean(dim=(0, 2, 3)).double()
    torch.testing.assert_close(torch.tensor(still["frame_mse"], dtype=torch.float64), expected, rtol=1e-5, atol=0)


class StandStill(torch.nn.Module):
    """Predicts x at every requested output time."""

    def forward(self, x, v, h, graph, frame_times):
        return EGNOOutput(x[None].expand(len(frame_times), -1, -1), v, h)


def test_refusals(trained):
    config, result, _ = trained
    last = dataclasses.replace(config, data=dataclasses.replace(config.data, discretisation="last"))
    with pytest.raises(ValueError, match="uniform"):
        evaluate_resampled(result.model, last, 2)
    with pytest.raises(ValueError, match="num_frames must be in"):
        evaluate_resampled(result.model, config, 3)  # 15 frames in a span of 10


def test_eval_command_writes_the_resampled_metrics(trained, capsys):
    config, _, root = trained
    out = root / "zero_shot.json"
    assert main(["eval", "--checkpoint", str(root / "run" / "best.pt"), "--resample", "2", "--output", str(out),
                 "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert "zero-shot 2 x 5 frames" in capsys.readouterr().out
    assert record["factor"] == 2 and len(record["frame_mse"]) == 10 and isinstance(record["checkpoint_epoch"], int)
    assert record["f_mse"] == record["frame_mse"][-1] and "egno-fast eval" in record["command"]
