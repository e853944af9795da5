"""How EGNO's training step scales with the system: time and peak memory of one forward+backward of the 4-layer
model (H = 128, P = 8) on periodic boxes of increasing size, fitted on three sizes, extrapolated to 100k atoms and to
the largest system that fits a memory budget, and the fit checked by one more run at a larger size.

    python -m benchmarks.scale [--sizes 4000 8000 16000] [--confirm 32000] [--backend cpp] [--device cpu]
                               [--threads 1] [--memory-gib 24] [--output scale.json] [--plot scale.png]

The systems: atoms uniformly placed in a cubic periodic box at liquid water's atom density (0.1003 per
Angstrom^3), the radius graph within 4.5 Angstrom (about 38 neighbours per atom, minimum images and edge shifts),
one-hot node features of 2 kinds and the edge features [d, d^2] of the trajectory data set. Each size runs in its
own process (so that its peak memory is its own): the graph is built, one untimed step warms up, then ``--repeats``
timed steps (median). Peak memory: the process's peak resident set on CPU (torch, Python and the graph included;
the fit's intercept takes the fixed part), torch's peak allocation on CUDA. Both grow linearly with the atoms at a
fixed density (edges ~ 38 n), so the fits are lines: t = a + b n, m = c + d n; the largest size for a budget of M
GiB is (M - c) / d. The confirmation run is predicted before it runs and its relative errors are reported.

On a GPU (the GPU check's last step): ``--backend auto --device cuda`` (Triton), sizes a GPU's memory takes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

DENSITY = 0.1003  # atoms per Angstrom^3: liquid water (3 atoms per 29.9 Angstrom^3)
CUTOFF = 4.5
HIDDEN, LAYERS, FRAMES = 128, 4, 8
TARGET_ATOMS = 100_000
CPU_MEMORY_GIB = 24.0  # the development machine's memory


def measure(atoms: int, backend: str, device: str, repeats: int, threads: int) -> Dict:
    """One size, in this process: the seconds of a forward+backward step and the peak memory (MiB)."""
    import torch

    from egno_fast import EGNO
    from egno_fast.data.batching import collate_graphs
    from egno_fast.data.trajectory import trajectory_sample
    from egno_fast.training.metrics import peak_memory_mb

    if threads:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(atoms)
    side = (atoms / DENSITY) ** (1.0 / 3.0)
    cell = torch.eye(3, dtype=torch.float64) * side
    x = torch.rand(atoms, 3, generator=generator, dtype=torch.float64).mul(side).float()
    v = torch.randn(atoms, 3, generator=generator) * 0.1
    kinds = torch.nn.functional.one_hot(torch.arange(atoms) % 3 // 2, 2).float()  # "O H H"
    begin = time.perf_counter()
    sample = trajectory_sample(kinds, x, v, CUTOFF, cell)
    graph_s = time.perf_counter() - begin
    batch = collate_graphs([sample._replace(target=x[None].expand(FRAMES, -1, -1).contiguous())])
    graph = batch.graph().to(device)
    batch = batch.to(device)
    torch.manual_seed(0)
    model = EGNO(node_dim=batch.h.shape[1], edge_dim=2, hidden_dim=HIDDEN, num_layers=LAYERS, num_frames=FRAMES,
                 vector_centre="input", backend=backend).to(device)

    def step():
        out = model(batch.x, batch.v, batch.h, graph)
        loss = (out.x - batch.target).square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()  # warm-up: allocations, buffer caches, kernel compilation
    seconds = []
    for _ in range(repeats):
        begin = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - begin)
    return dict(atoms=atoms, edges=int(graph.num_edges), neighbours=graph.num_edges / atoms, box_angstrom=side,
                step_s=statistics.median(seconds), step_samples_s=seconds, graph_build_s=graph_s,
                peak_memory_mib=peak_memory_mb(device), active_backend=model.active_backend,
                threads=torch.get_num_threads())


def run_size(atoms: int, args) -> Dict:
    """``measure`` on CPU in a fresh process (its own peak resident set), on CUDA in this one (torch's peak
    statistics reset first; no second CUDA start-up)."""
    if args.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(args.device)
        return measure(atoms, args.backend, args.device, args.repeats, args.threads)
    command = [sys.executable, "-m", "benchmarks.scale", "--one", str(atoms), "--backend", args.backend,
               "--device", args.device, "--repeats", str(args.repeats), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"the run at {atoms} atoms failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fit_line(xs: List[float], ys: List[float]) -> Dict[str, float]:
    """Least-squares y = intercept + slope x."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return dict(intercept=mean_y - slope * mean_x, slope=slope)


def predict(line: Dict[str, float], x: float) -> float:
    return line["intercept"] + line["slope"] * x


def summarise(points: List[Dict], confirm: Optional[Dict], memory_gib: float) -> Dict:
    atoms = [p["atoms"] for p in points]
    time_line = fit_line(atoms, [p["step_s"] for p in points])
    memory_line = fit_line(atoms, [p["peak_memory_mib"] for p in points])
    largest = (memory_gib * 1024 - memory_line["intercept"]) / memory_line["slope"]
    summary = dict(time_fit=time_line, memory_fit=memory_line,
                   at_100k=dict(atoms=TARGET_ATOMS, step_s=predict(time_line, TARGET_ATOMS),
                                peak_memory_mib=predict(memory_line, TARGET_ATOMS)),
                   memory_budget_gib=memory_gib,
                   largest_in_budget=dict(atoms=int(largest), step_s=predict(time_line, largest)))
    if confirm is not None:
        predicted_s, predicted_mib = predict(time_line, confirm["atoms"]), predict(memory_line, confirm["atoms"])
        summary["confirmation"] = dict(atoms=confirm["atoms"], predicted_step_s=predicted_s,
                                       measured_step_s=confirm["step_s"], predicted_peak_memory_mib=predicted_mib,
                                       measured_peak_memory_mib=confirm["peak_memory_mib"],
                                       step_error=confirm["step_s"] / predicted_s - 1,
                                       memory_error=confirm["peak_memory_mib"] / predicted_mib - 1)
    return summary


def plot(record: Dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from egno_fast.data.io import atomic_path

    points, summary = record["points"], record["summary"]
    confirm = record.get("confirmation_point")
    largest = summary["largest_in_budget"]["atoms"]
    span = [0, max(TARGET_ATOMS, largest) * 1.05]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, fit, unit, scale in ((axes[0], "step_s", summary["time_fit"], "s", 1.0),
                                      (axes[1], "peak_memory_mib", summary["memory_fit"], "GiB", 1 / 1024)):
        ax.plot([p["atoms"] for p in points], [p[key] * scale for p in points], "o", label="fitted sizes")
        if confirm is not None:
            ax.plot([confirm["atoms"]], [confirm[key] * scale], "s", color="C3", label="confirmation run")
        ax.plot(span, [predict(fit, s) * scale for s in span], "-", color="grey", linewidth=1, label="linear fit")
        ax.axvline(TARGET_ATOMS, color="C2", linestyle=":", label="100k atoms")
        ax.set_xlabel("atoms")
        ax.set_ylabel(f"{'step time' if key == 'step_s' else 'peak memory'} ({unit})")
        ax.legend(fontsize=8)
    axes[1].axhline(summary["memory_budget_gib"], color="C1", linestyle="--", linewidth=1)
    axes[1].axvline(largest, color="C1", linestyle="--", linewidth=1)
    environment = record["environment"]
    fig.suptitle(f"EGNO {LAYERS} layers, H = {HIDDEN}, P = {FRAMES}, forward+backward, backend "
                 f"{environment['backend']} on {environment['device']} ({environment['threads']} thread(s))")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=3, default=[4000, 8000, 16000], help="the three fitted sizes")
    parser.add_argument("--confirm", type=int, default=32000, help="the size that checks the fit (0: none)")
    parser.add_argument("--backend", default="cpp")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--memory-gib", type=float, help="the memory budget to extrapolate to (default: the GPU's "
                        "memory on CUDA, 24 GiB on the CPU)")
    parser.add_argument("--output", help="write the points, fits and confirmation as JSON here")
    parser.add_argument("--plot", help="and the figure here")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print its record
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.backend, args.device, args.repeats, args.threads)))
        return 0
    if args.memory_gib is None:
        args.memory_gib = CPU_MEMORY_GIB
        if args.device.startswith("cuda"):
            import torch

            args.memory_gib = torch.cuda.get_device_properties(args.device).total_memory / 2**30
    points = []
    for atoms in args.sizes:
        points.append(run_size(atoms, args))
        p = points[-1]
        print(f"{atoms:>8d} atoms  {p['neighbours']:.1f} neighbours  step {p['step_s']:.3f} s  peak "
              f"{p['peak_memory_mib'] / 1024:.2f} GiB", flush=True)
    summary = summarise(points, None, args.memory_gib)
    confirm = None
    if args.confirm:
        print(f"predicted at {args.confirm} atoms: step {predict(summary['time_fit'], args.confirm):.3f} s, peak "
              f"{predict(summary['memory_fit'], args.confirm) / 1024:.2f} GiB", flush=True)
        confirm = run_size(args.confirm, args)
        summary = summarise(points, confirm, args.memory_gib)
        check = summary["confirmation"]
        print(f"measured  at {args.confirm} atoms: step {confirm['step_s']:.3f} s ({check['step_error']:+.1%}), "
              f"peak {confirm['peak_memory_mib'] / 1024:.2f} GiB ({check['memory_error']:+.1%})")
    at, largest = summary["at_100k"], summary["largest_in_budget"]
    print(f"extrapolated: {TARGET_ATOMS} atoms: step {at['step_s']:.1f} s, peak {at['peak_memory_mib'] / 1024:.1f} "
          f"GiB; largest in {args.memory_gib:g} GiB: {largest['atoms']} atoms (step {largest['step_s']:.1f} s)")
    record = dict(points=points, confirmation_point=confirm, summary=summary,
                  environment=dict(backend=args.backend, device=args.device, threads=points[0]["threads"],
                                   machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                                   python=platform.python_version(), density=DENSITY, cutoff=CUTOFF,
                                   hidden=HIDDEN, layers=LAYERS, frames=FRAMES),
                  command=" ".join(["python -m benchmarks.scale", *(argv if argv is not None else sys.argv[1:])]))
    if args.output:
        from egno_fast.data.io import atomic_path

        with atomic_path(args.output) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
    if args.plot:
        plot(record, Path(args.plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
