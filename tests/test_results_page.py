"""docs/RESULTS.md: every number in the results table matches the committed log it links, and a run that did not
finish is labelled as such."""
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "RESULTS.md"
METRIC_FIELDS = {"test F-MSE": ("test_f_mse", "f_mse"), "test A-MSE": ("test_a_mse", "a_mse")}


def table_rows():
    """The rows of the table under '## Results' as dicts keyed by the header."""
    lines = PAGE.read_text().split("## Results", 1)[1].splitlines()
    table = [line for line in lines if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in table[2:]]


def run_summary(log: Path):
    """What a training log says: (F-MSE, A-MSE, best epoch, status) at the best validation epoch, status one of
    'complete' (early stopping or the epoch budget) or 'cut short' (time limit, or no end record: in progress)."""
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    last = records[-1]
    if last["event"] == "end":
        status = "cut short" if last["stopped"] == "time_limit" else "complete"
        return last["test_f_mse"], last["test_a_mse"], last["best_epoch"], status
    evals = [r for r in records if r["event"] == "eval"]
    best = next(r for r in evals if r["epoch"] == evals[-1]["best_epoch"])
    return best["test_f_mse"], best["test_a_mse"], best["epoch"], "cut short"


def test_the_page_has_rows_with_numbers():
    rows = table_rows()
    assert sum(1 for r in rows if r["Ours"] not in ("", "-")) >= 3


@pytest.mark.parametrize("row", table_rows(), ids=lambda r: f"{r['Experiment']}: {r['Metric']}")
def test_each_number_matches_its_log(row):
    if row["Ours"] in ("", "-"):
        assert "not run" in row["Status"], "a row without a number must say it was not run"
        return
    link = re.search(r"\]\(([^)]+)\)", row["Log"])
    assert link, "every number links the log behind it"
    log = (PAGE.parent / link.group(1)).resolve()
    assert log.exists(), log
    shown = row["Ours"]
    if log.suffix == ".jsonl":
        f_mse, a_mse, best_epoch, status = run_summary(log)
        value = {"test F-MSE": f_mse, "test A-MSE": a_mse}[row["Metric"].replace(" x1e-2", "")]
        if row["Metric"].endswith("x1e-2"):  # shown in units of 1e-2, as the paper does for mocap
            value *= 100
        assert row["Best epoch"] == str(best_epoch)
        assert row["Status"].startswith(status), f"the log says {status!r}"
    else:
        record = json.loads(log.read_text())
        value = record[METRIC_FIELDS[row["Metric"]][1]]
        assert row["Best epoch"] == str(record["checkpoint_epoch"])
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    assert float(shown) == pytest.approx(value, abs=0.5 * 10 ** -decimals + 1e-12), (shown, value)
