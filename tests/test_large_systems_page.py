"""docs/RESULTS.md, "Large systems and mixed precision": every number comes from a committed file. The section is the text that
benchmarks/large_systems_page.py renders from those files (the water run's log, evaluation and rollout, the scale
benchmark, the bf16 runs and speed benchmark), and the files agree with each other."""
import json

from benchmarks import large_systems_page as page
from test_results_page import PAGE, section


def test_the_section_is_rendered_from_the_committed_files():
    assert section(PAGE.read_text(), page.HEADING) == page.render()


def test_the_water_files_agree():
    run = page.WATER_RUN
    evaluated = json.loads((run / "test_eval.json").read_text())
    rollout = json.loads((run / "rollout" / "rollout.json").read_text())
    log = page.records(run / "metrics.jsonl")
    assert log[0]["config"]["data"]["name"] == "water" and log[0]["config"]["model"]["backend"] == "cpp"
    assert evaluated["checkpoint"] == rollout["checkpoint"] == "results/water_seed1/model.pt"
    assert (page.REPO / evaluated["checkpoint"]).is_file()
    assert evaluated["checkpoint_epoch"] == rollout["checkpoint_epoch"] == log[-1]["best_epoch"]
    assert evaluated["f_mse"] == evaluated["frame_mse"][-1]  # the evaluation is the best epoch's test metric
    assert abs(evaluated["f_mse"] - log[-1]["test_f_mse"]) <= 1e-6 * log[-1]["test_f_mse"]
    errors = rollout["errors"]
    assert errors["frames"] == rollout["frames"] and errors["frozen"][0] == 0.0
    assert rollout["start_frame"] >= 0.8 * log[0]["config"]["data"]["water_frames"]  # from the test part
    assert (run / "rollout" / "rollout_error.png").stat().st_size > 0


def test_the_scale_benchmark_checked_its_fit_beyond_the_fitted_sizes():
    record = json.loads(page.SCALE.read_text())
    fitted = [p["atoms"] for p in record["points"]]
    assert len(fitted) == 3 and record["confirmation_point"]["atoms"] > max(fitted)
    assert record["environment"]["backend"] == "cpp" and record["environment"]["hidden"] == 128
    assert all(30 <= p["neighbours"] <= 60 for p in record["points"])
    assert (page.SCALE.parent / "scale.png").stat().st_size > 0
