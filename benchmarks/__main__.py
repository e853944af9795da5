"""``python -m benchmarks [--sweep smoke|quick|full] [--device cpu|cuda] [--out DIR]``: time every op and the
whole model per backend and mode, write CSV, JSON, a Markdown summary and plots."""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .cases import make_cases
from .report import write_results
from .runner import BACKENDS, OPS, largest_fit, model_fits, run_sweep
from .throughput import training_throughput


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", choices=["smoke", "quick", "full"], default="quick")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--out", help="output folder (default: benchmarks/results/<device>-<sweep>-<time>)")
    parser.add_argument("--no-throughput", action="store_true", help="skip the training-throughput measurement")
    parser.add_argument("--max-fit", action="store_true",
                        help="on GPU: search the largest lattice graph whose model forward+backward fits, per backend")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats = args.repeats or (20 if device.type == "cuda" else 3 if args.sweep == "smoke" else 5)
    out = Path(args.out or Path(__file__).parent / "results" /
               f"{device.type}-{args.sweep}-{time.strftime('%Y%m%d-%H%M%S')}")
    result = run_sweep(make_cases(args.sweep), device, backends=args.backends, ops=args.ops,
                       warmup=3 if device.type == "cuda" else 1, repeats=repeats)
    if not args.no_throughput:
        result["meta"]["training_throughput"] = training_throughput(
            device, [b for b in ("reference", "auto") if b in args.backends], small=args.sweep == "smoke")
    if args.max_fit:
        fit = {}
        for backend in [b for b in ("reference", "auto") if b in args.backends]:
            fit[backend] = (largest_fit(model_fits(backend, device)) if device.type == "cuda" else
                            {"status": "skipped", "reason": "the search is for GPU memory; CPU memory is not the limit"})
            print(f"largest fit, model P=8 H=128, {backend}: {fit[backend]}")
        result["meta"]["largest_fit"] = fit
    paths = write_results(result, out, "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv))
    if not args.no_throughput:
        with open(paths["summary"], "a") as handle:
            handle.write("\n## Training throughput (N-body, batch 100, Adam steps)\n\n"
                         + "\n".join(f"- {json.dumps(r)}" for r in result["meta"]["training_throughput"]) + "\n")
    counts = {}
    for record in result["records"]:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    print(f"\n{len(result['records'])} points: {counts}; wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
