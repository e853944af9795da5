"""The EGNN-layer speed target (docs/design.md §6.4), on a GPU:
``python -m benchmarks.egnn_target [--nodes 100000] [--out DIR] [--no-fit]``.

One EGNN layer, forward+backward, on a jittered-lattice radius graph (32 neighbours), P = 8, H = 128, fp32 weights:
the reference (eager), torch.compile of the reference, and the fused Triton layer with exact fp32, TF32 and bf16
(autocast) matrix products, deterministic and atomic backward. Every variant runs on the same inputs and its
outputs are checked against the reference's (where the reference fits). Then the largest lattice graph whose
forward+backward fits in memory, per backend (reference and Triton TF32). Writes results.json and summary.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from egno_fast import build_graph
from egno_fast.nn import EGNNLayer
from egno_fast.training.trainer import git_commit

from .cases import lattice_graph
from .runner import largest_fit, time_samples

FRAMES, HIDDEN = 8, 128
# name -> (module backend, TF32 allowed, autocast to bf16, atomic backward, torch.compile)
VARIANTS = {
    "triton_tf32": ("triton", True, False, False, False),
    "triton_tf32_atomic": ("triton", True, False, True, False),
    "triton_bf16": ("triton", False, True, False, False),
    "triton_ieee": ("triton", False, False, False, False),
    "reference": ("reference", False, False, False, False),
    "reference_tf32": ("reference", True, False, False, False),
    "reference_bf16": ("reference", False, True, False, False),
    "compile_tf32": ("reference", True, False, False, True),
}


@contextlib.contextmanager
def variant_settings(tf32: bool, bf16: bool, atomic: bool):
    """TF32 for torch's matmuls (and hence the kernel's), bf16 autocast, the atomic backward; restored after."""
    from egno_fast.kernels import egnn as egnn_kernels

    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    egnn_kernels.use_atomic_backward(atomic)
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
        egnn_kernels.use_atomic_backward(False)


def make_problem(num_nodes: int, device: torch.device, seed: int = 0):
    edges = lattice_graph(num_nodes, torch.Generator().manual_seed(seed)).to(device)
    nodes = int(edges.max()) + 1
    gen = torch.Generator(device).manual_seed(seed)  # inputs drawn on the device: fast for millions of nodes
    graph = build_graph(edges, nodes, torch.randn(edges.shape[1], 2, generator=gen, device=device), validate=False)
    torch.manual_seed(seed)
    layer = EGNNLayer(HIDDEN, 2).to(device)
    inputs = [torch.randn(nodes, FRAMES, d, generator=gen, device=device).requires_grad_() for d in (3, 3, HIDDEN)]
    return layer, inputs, graph


def forward_backward(layer, inputs, graph, call: Callable) -> None:
    layer.zero_grad(set_to_none=True)
    for t in inputs:
        t.grad = None
    out = call(*inputs, graph)
    sum(o.float().square().mean() for o in out).backward()


def measure(name: str, layer, inputs, graph, device, repeats: int, reference_out) -> Dict:
    backend, tf32, bf16, atomic, compiled = VARIANTS[name]
    layer.backend = backend
    call = torch.compile(layer) if compiled else layer
    record = dict(variant=name, nodes=graph.num_nodes, edges=graph.num_edges, frames=FRAMES, hidden=HIDDEN)
    try:
        with variant_settings(tf32, bf16, atomic):
            with torch.no_grad():
                out = call(*inputs, graph)
            if reference_out is not None:
                record["max_rel_err_h"] = float((out[2].float() - reference_out).abs().max()
                                                / reference_out.abs().max())
            del out
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            samples = time_samples(lambda: forward_backward(layer, inputs, graph, call), device, 2, repeats)
            record.update(status="measured", median_ms=statistics.median(samples) * 1e3,
                          min_ms=min(samples) * 1e3, max_ms=max(samples) * 1e3, repeats=len(samples),
                          peak_memory_MB=(torch.cuda.max_memory_allocated(device) - base) / 2 ** 20)
    except torch.OutOfMemoryError:
        record.update(status="oom")
    except Exception as error:  # recorded, the benchmark goes on
        message = str(error).strip().splitlines()
        record.update(status="failed", reason=f"{type(error).__name__}: {message[-1] if message else ''}"[:300])
    finally:
        layer.zero_grad(set_to_none=True)
        for t in inputs:
            t.grad = None
        torch.cuda.empty_cache()
    print(json.dumps(record), flush=True)
    return record


def run_size(num_nodes: int, device, repeats: int, variants) -> list:
    layer, inputs, graph = make_problem(num_nodes, device)
    reference_out: Optional[torch.Tensor] = None
    try:
        with torch.no_grad():
            reference_out = layer(*inputs, graph)[2].float()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
    records = [measure(name, layer, inputs, graph, device, repeats, reference_out) for name in variants]
    del layer, inputs, graph, reference_out
    torch.cuda.empty_cache()
    return records


def layer_fits(variant: str, device) -> Callable[[int], bool]:
    def fits(num_nodes: int) -> bool:
        backend, tf32, bf16, atomic, _ = VARIANTS[variant]
        try:
            layer, inputs, graph = make_problem(num_nodes, device)
            layer.backend = backend
            with variant_settings(tf32, bf16, atomic):
                forward_backward(layer, inputs, graph, layer)
            torch.cuda.synchronize(device)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    return fits


def summarise(records, fits, meta) -> str:
    lines = [f"# EGNN layer forward+backward, P = {FRAMES}, H = {HIDDEN}, 32-neighbour lattice graphs",
             "", f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}, commit {meta['git_commit']}",
             "", "| nodes | variant | status | median ms | peak MB | vs reference | vs compile_tf32 | max rel err h |",
             "|---|---|---|---|---|---|---|---|"]
    by_size: Dict[int, Dict[str, Dict]] = {}
    for r in records:
        by_size.setdefault(r["nodes"], {})[r["variant"]] = r
    for nodes, group in by_size.items():
        ref, comp = group.get("reference", {}), group.get("compile_tf32", {})
        for name, r in group.items():
            ratio = lambda other: (f"{other['median_ms'] / r['median_ms']:.2f}x"
                                   if r.get("status") == "measured" and other.get("status") == "measured" else "-")
            lines.append(f"| {nodes} | {name} | {r['status']} | {r.get('median_ms', float('nan')):.2f} | "
                         f"{r.get('peak_memory_MB', float('nan')):.0f} | {ratio(ref)} | {ratio(comp)} | "
                         f"{r.get('max_rel_err_h', float('nan')):.1e} |")
    if fits:
        lines += ["", "Largest lattice graph whose forward+backward fits (doubling from 10k nodes, then bisection):", ""]
        lines += [f"- {name}: {json.dumps(result)}" for name, result in fits.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import triton

    parser = argparse.ArgumentParser(prog="python -m benchmarks.egnn_target", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--fit-first", action="store_true", help="search the largest graphs before timing")
    parser.add_argument("--no-fit", action="store_true", help="skip the largest-graph search")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    meta = dict(device=torch.cuda.get_device_name(device), torch=torch.__version__, triton=triton.__version__,
                git_commit=git_commit(), time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                command="python -m benchmarks.egnn_target " + " ".join(sys.argv[1:] if argv is None else argv))
    out = Path(args.out or Path(__file__).parent / "results" / f"egnn-target-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    records, fits = [], {}

    def search():
        for name in ("reference", "triton_tf32"):
            fits[name] = largest_fit(layer_fits(name, device))
            print(f"largest fit, {name}: {fits[name]}", flush=True)

    if args.fit_first and not args.no_fit:
        search()
    for nodes in args.nodes:
        records += run_size(nodes, device, args.repeats, args.variants)
        (out / "results.json").write_text(json.dumps(dict(meta=meta, records=records, largest_fit=fits), indent=1))
    if not args.fit_first and not args.no_fit:
        search()
    (out / "results.json").write_text(json.dumps(dict(meta=meta, records=records, largest_fit=fits), indent=1))
    (out / "summary.md").write_text(summarise(records, fits, meta))
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
