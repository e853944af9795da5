"""Write a sweep's results: CSV and JSON (every point, with the run's metadata), a Markdown summary and plots."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict

from egno_fast.data.io import atomic_path

COLUMNS = ("op", "backend", "ran", "mode", "case", "nodes", "edges", "frames", "hidden", "status", "median_ms",
           "p20_ms", "p80_ms", "repeats", "peak_memory_MB", "GBps", "fraction_of_copy_bandwidth", "TFLOPs",
           "fraction_of_matmul_rate", "reason")


def write_results(result: Dict, out_dir: Path, command: str) -> Dict[str, Path]:
    """results.csv, results.json, summary.md and time.png (memory.png on GPU) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta, records = dict(result["meta"], command=command), result["records"]
    paths = {"csv": out_dir / "results.csv", "json": out_dir / "results.json", "summary": out_dir / "summary.md"}
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS + tuple(f"meta_{k}" for k in ("device", "torch", "triton",
                                                                                        "git_commit")))
        writer.writeheader()
        for record in records:
            writer.writerow({**{k: record.get(k, "") for k in COLUMNS},
                             **{f"meta_{k}": meta[k] for k in ("device", "torch", "triton", "git_commit")}})
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    with atomic_path(paths["summary"]) as tmp:
        tmp.write_text(summary_markdown(meta, records))
    paths.update(plot(records, out_dir, meta))
    return paths


def summary_markdown(meta: Dict, records) -> str:
    """A table of forward+backward medians per (case, op) and backend, with the speed-up over the reference."""
    ceilings = meta["ceilings"]
    lines = [f"# Benchmark: {meta['device']} ({meta['device_type']})", "",
             f"`{meta['command']}` — torch {meta['torch']}, triton {meta['triton']}, commit {meta['git_commit']}, "
             f"{meta['threads']} threads, {meta['time']}.", "",
             f"Measured ceilings: copy {ceilings['copy_GBps']:.1f} GB/s (read + write), {ceilings['matmul_dtype']} "
             f"matmul {ceilings['matmul_TFLOPs']:.2f} TFLOP/s. Times are medians of {meta['repeats']} runs after "
             f"{meta['warmup']} warm-up; every backend's forward was checked against the reference first.", "",
             "| case | P | H | op | backend | forward+backward ms | vs reference | peak MB | roofline |",
             "|---|---|---|---|---|---|---|---|---|"]
    fb = [r for r in records if r["mode"] == "forward+backward"]
    reference = {(r["case"], r["frames"], r["hidden"], r["op"]): r.get("median_ms") for r in fb
                 if r["backend"] == "reference" and r["status"] == "measured"}
    for r in fb:
        key = (r["case"], r["frames"], r["hidden"], r["op"])
        if r["status"] == "measured":
            ref = reference.get(key)
            ratio = f"{ref / r['median_ms']:.2f}x" if ref else ""
            roof = (f"{r['fraction_of_copy_bandwidth']:.0%} of copy BW" if "GBps" in r else
                    f"{r['fraction_of_matmul_rate']:.1%} of matmul" if "TFLOPs" in r else "")
            memory = f"{r['peak_memory_MB']:.0f}" if "peak_memory_MB" in r else "n/a"
            cells = [f"{r['median_ms']:.2f}", ratio, memory, roof]
        else:
            cells = [f"{r['status']}: {r.get('reason', '')}", "", "", ""]
        lines.append(f"| {r['case']} | {r['frames']} | {r['hidden']} | {r['op']} | {r['backend']} | "
                     + " | ".join(cells) + " |")
    if "largest_fit" in meta:
        lines += ["", "Largest lattice graph whose 4-layer model forward+backward (P = 8, H = 128) fits: "
                  + "; ".join(f"{b}: {v}" for b, v in meta["largest_fit"].items())]
    return "\n".join(lines) + "\n"


def plot(records, out_dir: Path, meta: Dict) -> Dict[str, Path]:
    """Log-log time (and, on GPU, peak memory) against node count per op and backend (forward+backward)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in records if r["status"] == "measured" and r["mode"] == "forward+backward"]
    paths = {}
    metrics = [("median_ms", "forward+backward time (ms)", "time.png")]
    if meta["device_type"] == "cuda":
        metrics.append(("peak_memory_MB", "peak memory (MB)", "memory.png"))
    ops = sorted({r["op"] for r in measured})
    for key, label, name in metrics:
        fig, axes = plt.subplots(1, max(1, len(ops)), figsize=(4.5 * max(1, len(ops)), 4), squeeze=False)
        for axis, op in zip(axes[0], ops):
            # one line per backend and (P, H): only points of the same widths are joined
            for series in sorted({(r["backend"], r["frames"], r["hidden"]) for r in measured if r["op"] == op}):
                points = sorted((r["nodes"], r[key]) for r in measured if r["op"] == op and key in r
                                and (r["backend"], r["frames"], r["hidden"]) == series)
                axis.loglog(*zip(*points), "o-", label="{} P={} H={}".format(*series))
            axis.set_title(op)
            axis.set_xlabel("nodes")
            axis.set_ylabel(label)
            axis.legend(fontsize=8)
        fig.suptitle(f"{meta['device']} — torch {meta['torch']}")
        fig.tight_layout()
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        paths[name.split(".")[0]] = out_dir / name
    return paths
