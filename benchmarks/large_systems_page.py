"""The "Large systems and mixed precision" section of docs/RESULTS.md, rendered from the committed result files: the water box's
training log, evaluation (with the baselines) and rollout, the scale benchmark, and the bf16 runs and speed
benchmark. ``tests/test_large_systems_page.py`` checks that the page holds exactly this text.

    python -m benchmarks.large_systems_page        print the section (paste it over the page's)
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Dict, List

from egno_fast.ops.egnn_edge import DEFAULT_STORE_BUDGET_MB, STORE_BUDGET_ENV

REPO = Path(__file__).resolve().parents[1]
WATER_RUN = REPO / "results" / "water_seed1"
SCALE = REPO / "benchmarks" / "results" / "cpu-scale-20261202" / "scale.json"
PRECISION_BENCHMARK = REPO / "benchmarks" / "results" / "cpu-precision-20261202" / "precision.json"
PRECISION_RUNS = {precision: [REPO / "results" / f"precision_{precision}_seed{seed}" for seed in (1, 2, 3)]
                  for precision in ("fp32", "bf16")}
HEADING = "Large systems and mixed precision"


def records(path: Path) -> List[Dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def link(path: Path) -> str:
    """A Markdown link from docs/ to a committed file."""
    return f"[{path.name}](../{path.relative_to(REPO).as_posix()})"


def g(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}"


def water_section() -> List[str]:
    log = records(WATER_RUN / "metrics.jsonl")
    start, end = log[0], log[-1]
    evals = [r for r in log if r.get("event") == "eval"]
    evaluated = json.loads((WATER_RUN / "test_eval.json").read_text())
    rollout = json.loads((WATER_RUN / "rollout" / "rollout.json").read_text())
    data, train = start["config"]["data"], start["config"]["train"]
    throughput = statistics.median(r["train_atom_frames_per_s"] for r in evals)
    lines = [
        f"`{start['command']}` ({link(WATER_RUN / 'metrics.jsonl')}), then "
        f"`{evaluated['command']}` ({link(WATER_RUN / 'test_eval.json')}) and "
        f"`{rollout['command']}` ({link(WATER_RUN / 'rollout' / 'rollout.json')}, "
        f"[rollout_error.png](../results/water_seed1/rollout/rollout_error.png)).",
        "",
        f"The box: {rollout['atoms']} atoms, {data['water_frames']} frames "
        f"{g(rollout['frame_interval_ps'] * 1000)} fs apart (`egno-fast data --config water`); the model sees P = "
        f"{data['num_frames']} frames over Delta = {data['span']} frames "
        f"({g(data['span'] * rollout['frame_interval_ps'] * 1000)} fs). "
        f"Training stopped by {end['stopped'].replace('_', ' ')} after {end['epochs_run']} of {train['epochs']} "
        f"epochs ({g(end['wall_s'] / 60)} min, one thread, beside other work), best validation at epoch "
        f"{end['best_epoch']}.",
        "",
        "| test split | F-MSE (A^2) | A-MSE (A^2) |",
        "|---|---|---|",
        f"| EGNO (best epoch) | {g(evaluated['f_mse'], 4)} | {g(evaluated['a_mse'], 4)} |",
    ]
    for name, label in (("frozen", "frozen positions"), ("constant_velocity", "constant velocity")):
        baseline = evaluated["baselines"][name]
        lines.append(f"| {label} | {g(baseline['f_mse'], 4)} | {g(baseline['a_mse'], 4)} |")
    best = min(evaluated["baselines"].values(), key=lambda b: b["f_mse"])
    ratio = evaluated["f_mse"] / best["f_mse"]
    lines += ["", f"EGNO's test F-MSE is {ratio:.0%} of the better baseline's "
                  f"({'it beats both' if ratio < 1 else 'it does not beat the better baseline'})."]
    lines += [
        "",
        f"Training throughput: {g(throughput)} atom-frames per second (median over epochs: atoms x predicted frames "
        f"trained per second); peak memory {g(end['peak_memory_mb'] / 1024)} GiB (the process's resident set).",
        "",
        f"Rollout of {rollout['windows']} windows from frame {rollout['start_frame']} (a test-split frame), "
        f"MSE in A^2 at the end of each window:",
        "",
        "| horizon (fs) | EGNO rollout | frozen positions | constant velocity |",
        "|---|---|---|---|",
    ]
    errors = rollout["errors"]
    window = data["span"]
    for k, frame in enumerate(errors["frames"]):
        if frame and frame % window == 0:
            lines.append(f"| {g(frame * rollout['frame_interval_ps'] * 1000)} | {g(errors['model'][k])} | "
                         f"{g(errors['frozen'][k])} | {g(errors['constant_velocity'][k])} |")
    return lines


def scale_section() -> List[str]:
    record = json.loads(SCALE.read_text())
    summary, environment = record["summary"], record["environment"]
    lines = [
        f"`{record['command']}` ({link(SCALE)}, {link(SCALE.parent / 'scale.png')}): "
        f"the {environment['layers']}-layer model, H = {environment['hidden']}, P = {environment['frames']}, one "
        f"forward+backward with the `{environment['backend']}` backend on {environment['threads']} thread(s), periodic "
        f"boxes at water's atom density with a {g(environment['cutoff'])} A cutoff.",
        "",
        "| atoms | neighbours | step (s) | peak memory (GiB) |",
        "|---|---|---|---|",
    ]
    for point in record["points"] + ([record["confirmation_point"]] if record["confirmation_point"] else []):
        lines.append(f"| {point['atoms']} | {g(point['neighbours'])} | {g(point['step_s'])} | "
                     f"{g(point['peak_memory_mib'] / 1024)} |")
    confirm, at, largest = summary["confirmation"], summary["at_100k"], summary["largest_in_budget"]
    neighbours = statistics.fmean(p["neighbours"] for p in record["points"])
    per_atom = 24 * neighbours * environment["frames"] * environment["hidden"]
    threshold = int(DEFAULT_STORE_BUDGET_MB * 2**20 / per_atom)
    lines += [
        "",
        f"Fitted on the first three sizes: a step takes {g(summary['time_fit']['slope'] * 1000)} ms per atom "
        f"(+{g(summary['time_fit']['intercept'])} s) and {g(summary['memory_fit']['slope'])} MiB per atom "
        f"(+{g(summary['memory_fit']['intercept'] / 1024)} GiB). The fit predicted {g(confirm['predicted_step_s'])} s "
        f"and {g(confirm['predicted_peak_memory_mib'] / 1024)} GiB at {confirm['atoms']} atoms; the run measured "
        f"{g(confirm['measured_step_s'])} s ({confirm['step_error']:+.0%}) and "
        f"{g(confirm['measured_peak_memory_mib'] / 1024)} GiB ({confirm['memory_error']:+.0%}). Extrapolated: "
        f"{at['atoms']} atoms take {g(at['step_s'])} s a step and {g(at['peak_memory_mib'] / 1024)} GiB; the largest "
        f"system in {g(summary['memory_budget_gib'])} GiB has about {largest['atoms']} atoms "
        f"({g(largest['step_s'])} s a step).",
        "",
        f"The cpp EGNN layer keeps 24 bytes per edge, frame and channel for its backward while that fits "
        f"`{STORE_BUDGET_ENV}` ({DEFAULT_STORE_BUDGET_MB} MB a layer), here up to about {threshold} atoms, and "
        f"recomputes them in the backward above it: every size above is in that regime, the one large systems run "
        f"in, where memory grows with the nodes' P x H features and the graph, not with the edges' activations.",
    ]
    return lines


def precision_section() -> List[str]:
    lines = ["| precision | test F-MSE, seeds 1, 2, 3 | mean | range | EGNN layer ran | logs |",
             "|---|---|---|---|---|---|"]
    means, ranges = {}, {}
    for precision, runs in PRECISION_RUNS.items():
        ends = [records(run / "metrics.jsonl")[-1] for run in runs]
        values = [e["test_f_mse"] for e in ends]
        means[precision], ranges[precision] = statistics.fmean(values), max(values) - min(values)
        logs = ", ".join(f"[{k}](../{(run / 'metrics.jsonl').relative_to(REPO).as_posix()})"
                         for k, run in enumerate(runs, 1))
        lines.append(f"| {precision} | {', '.join(g(v, 4) for v in values)} | {g(means[precision], 4)} | "
                     f"{g(min(values), 4)} to {g(max(values), 4)} | {ends[0]['active_backend']['egnn_layer']} | "
                     f"{logs} |")
    command = records(PRECISION_RUNS["bf16"][0] / "metrics.jsonl")[0]["command"]
    difference = means["bf16"] - means["fp32"]
    lines += ["", f"Command (seed 1 of bf16; fp32 the same with `train.precision=\"fp32\"`, seeds 2 and 3 with "
                  f"`--seed`): `{command}`. The bf16 mean differs from the fp32 mean by {difference:+.2g}, "
                  f"{'within' if abs(difference) <= ranges['fp32'] else 'outside'} the fp32 seed-to-seed range "
                  f"({g(ranges['fp32'], 2)})."]
    bench = json.loads(PRECISION_BENCHMARK.read_text())
    lines += ["", f"`{bench['command']}` ({link(PRECISION_BENCHMARK)}), {bench['threads']} thread(s), median step "
                  f"(forward+backward) in ms:", "",
              "| case | reference fp32 | reference bf16 | auto fp32 (cpp) | auto bf16 (reference EGNN layer) | "
              "bf16 speed-up, reference | bf16 speed-up, auto |",
              "|---|---|---|---|---|---|---|"]
    for point in bench["points"]:
        steps = point["step_s"]
        lines.append(f"| {point['case']} ({point['nodes']} nodes, H = {point['hidden']}) | "
                     + " | ".join(f"{steps[setting] * 1000:.0f}"
                                  for setting in ("reference_fp32", "reference_bf16", "auto_fp32", "auto_bf16"))
                     + f" | {steps['reference_fp32'] / steps['reference_bf16']:.2f}x | "
                       f"{steps['auto_fp32'] / steps['auto_bf16']:.2f}x |")
    protein = next(p for p in bench["points"] if p["case"] == "protein")["step_s"]
    lines += ["", f"bf16 makes the plain-PyTorch layers faster on this CPU, but a bf16 run cannot use the fused cpp "
                  f"EGNN layer, so on the protein-sized graph it takes "
                  f"{protein['auto_bf16'] / protein['auto_fp32']:.1f} times as long a step as fp32 with the cpp "
                  f"backend: on the CPU, fp32 with cpp is the fast way to train; bf16 is for GPUs (Triton's EGNN layer "
                  f"runs bf16 dots)."]
    return lines


def render() -> str:
    """The section's text, from its heading's next line to the next section."""
    intro = ("A periodic box of water simulated with OpenMM, a model trained on it with the `cpp` backend within a "
             "time budget and rolled out; the time and memory of a training step as systems grow; bf16 training. "
             "This section is rendered from the files it links by `python -m benchmarks.large_systems_page`, and "
             "`tests/test_large_systems_page.py` checks that it still is.")
    parts = ["", intro, "", "### The water box", "", *water_section(), "", "### Scale", "", *scale_section(), "",
             "### bf16 training", "", *precision_section(), ""]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(f"## {HEADING}\n" + render(), end="")
