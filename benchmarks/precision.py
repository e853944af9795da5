"""bf16 training on the CPU: the speed of a forward+backward step with ``train.precision="bf16"`` (bf16 autocast on
the MLPs' linear layers) against float32, measured as ratios in one run on the same inputs and parameters.

    python -m benchmarks.precision [--cases protein nbody] [--repeats 7] [--threads 0] [--output precision.json]

The cases of benchmarks.cpp_target: a protein-sized graph (855 nodes, 40 nearest neighbours, P = 4, H = 128) and
the N-body batch (100 graphs x 5 nodes, P = 5, H = 64), the 4-layer EGNO. Four settings: the reference backend in
float32 and in bf16 (the same code, the precision alone differs), "auto" in float32 (the cpp backend) and "auto"
in bf16 (what a bf16 training run gets: the cpp EGNN layer does not run under autocast, so the reference EGNN layer
with cpp's temporal convolutions). Timed steps go round the settings in turn (the shared machine's drift falls on
all of them alike); each setting's median, and the ratios of medians to the float32 reference, are reported with the
largest relative difference of bf16's outputs from float32's.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Dict, List, Optional

import torch

from egno_fast.data.io import atomic_path
from egno_fast.training.precision import precision_context

from .cpp_target import model_case

SETTINGS = {"reference_fp32": ("reference", "fp32"), "reference_bf16": ("reference", "bf16"),
            "auto_fp32": ("auto", "fp32"), "auto_bf16": ("auto", "bf16")}


def precision_point(name: str, repeats: int) -> Dict:
    model, inputs, graph, keywords, info = model_case(name)

    def step(setting: str):
        backend, precision = SETTINGS[setting]
        model.backend = backend
        model.zero_grad(set_to_none=True)
        with precision_context(precision, "cpu"):
            out = model(*inputs, graph, **keywords)
        (out.x.float().square().mean() + out.h.float().square().mean()).backward()
        return out.x.detach().float().clone()

    outputs = {setting: step(setting) for setting in SETTINGS}  # warm-up, and the outputs compared below
    ran = {}
    for setting in SETTINGS:
        step(setting)
        ran[setting] = dict(model.active_backend)
    times: Dict[str, List[float]] = {setting: [] for setting in SETTINGS}
    for _ in range(repeats):
        for setting in SETTINGS:
            begin = time.perf_counter()
            step(setting)
            times[setting].append(time.perf_counter() - begin)
    medians = {setting: statistics.median(samples) for setting, samples in times.items()}
    exact = outputs["reference_fp32"]
    info.update(step_s=medians, samples_s=times, ran=ran,
                time_vs_reference_fp32={s: medians[s] / medians["reference_fp32"] for s in SETTINGS},
                bf16_speedup_reference=medians["reference_fp32"] / medians["reference_bf16"],
                bf16_auto_vs_fp32_auto=medians["auto_fp32"] / medians["auto_bf16"],
                bf16_output_rel_diff=float((outputs["reference_bf16"] - exact).abs().max() / exact.abs().max()))
    return info


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["protein", "nbody"], choices=["protein", "nbody"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--output", help="write the points as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    points = []
    for case in args.cases:
        point = precision_point(case, args.repeats)
        points.append(point)
        steps = ", ".join(f"{s} {t * 1000:.0f} ms" for s, t in point["step_s"].items())
        print(f"{case}: {steps}; bf16 / fp32 speed-up: reference {point['bf16_speedup_reference']:.2f}x, auto "
              f"{point['bf16_auto_vs_fp32_auto']:.2f}x; bf16 output differs by {point['bf16_output_rel_diff']:.1e}")
    if args.output:
        record = dict(points=points, threads=torch.get_num_threads(), torch=torch.__version__,
                      machine=platform.processor() or platform.machine(),
                      command=" ".join(["python -m benchmarks.precision",
                                        *(argv if argv is not None else __import__("sys").argv[1:])]))
        with atomic_path(args.output) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
