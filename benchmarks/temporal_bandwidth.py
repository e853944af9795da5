"""Achieved memory bandwidth of the Triton temporal convolution on a GPU, forward / backward / forward+backward:
``python -m benchmarks.temporal_bandwidth [--nodes 250000] [--frames 8] [--hidden 128] [--modes 2] [--out DIR]``.

The convolution is memory-bound (a few hundred FLOPs per element at P = 8, I = 2), so its speed is judged by bytes
per second. Two shapes of the same size in bytes: the scalar block ``x + LeakyReLU(K x)`` on [N, P, H] (as in
TemporalConv) and the vector block ``x + K x`` on [N', P, 3, 2] (as in VectorTemporalConv), fp32. Per mode:

- ``GBps``: the bytes that must move at least once (the model of ``benchmarks.runner``: forward reads x and writes
  the output, 2 tensors; backward reads x and grad_out and writes grad_x, 3 tensors; forward+backward 5) per
  second, and ``fraction_of_copy`` of it against the device-to-device copy bandwidth measured in the same run;
- ``GBps_passes``: the bytes of the passes the implementation makes (each kernel reads its inputs and writes its
  output once; the weight gradient reads x and grad_pre once; the DFT spectra, I/P of a tensor, are left out):
  forward 2 tensors; backward 8 (leaky: act-grad kernel 3, adjoint kernel 3, weight gradient 2) or 5 (linear).

CUDA events, median of ``--repeats`` runs after 2 warm-ups (the first compiles the kernels). The Triton forward is
checked against the reference on the same inputs first; ``--backends`` adds the reference (torch.fft) for
comparison. On CPU Triton has only its interpreter (no speed measurement): it is recorded as skipped, with the
reason, unless TRITON_INTERPRET=1 is set (then it runs, for a smoke test only). Writes results.json and summary.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .runner import time_samples

TENSORS_MOVED = {"forward": 2, "backward": 3, "forward+backward": 5}  # at least once, any implementation
# what the Triton implementation reads and writes, in tensors of x's size (see the module docstring)
TENSOR_PASSES = {True: {"forward": 2, "backward": 8, "forward+backward": 10},
                 False: {"forward": 2, "backward": 5, "forward+backward": 7}}


def copy_bandwidth(device: torch.device, size_bytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (read + write), GB/s."""
    src = torch.empty(size_bytes // 4, device=device)
    dst = torch.empty_like(src)
    seconds = statistics.median(time_samples(lambda: dst.copy_(src), device, 2, 5))
    return 2 * src.numel() * 4 / seconds / 1e9


def shapes(nodes: int, frames: int, hidden: int) -> Dict[str, tuple]:
    """The scalar case [N, P, H] and the vector case [N', P, 3, 2] with N' chosen for the same bytes."""
    return {"scalar": (nodes, frames, hidden), "vector": (max(1, nodes * hidden // 6), frames, 3, 2)}


def _ops(backend: str):
    if backend == "triton":
        from egno_fast.ops.temporal_conv import temporal_residual_triton
        return temporal_residual_triton
    from egno_fast.ops.temporal_conv import temporal_residual_reference
    return temporal_residual_reference


def unavailable(backend: str, device: torch.device) -> Optional[str]:
    """Why ``backend`` cannot be measured on ``device`` (None if it can)."""
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton on CPU runs only in its interpreter: not a speed measurement (TRITON_INTERPRET=1 to smoke-test)"
    return None


def measure_case(case: str, shape: tuple, num_modes: int, backend: str, device: torch.device, repeats: int,
                 warmup: int = 2) -> List[Dict]:
    """One record per mode for ``backend`` on inputs of ``shape`` (leaky activation for the scalar case)."""
    leaky = case == "scalar"
    channels = shape[-1]
    base = dict(case=case, backend=backend, shape=list(shape), modes=num_modes, leaky=leaky,
                tensor_MB=torch.Size(shape).numel() * 4 / 2 ** 20)
    reason = unavailable(backend, device)
    if reason is not None:
        return [dict(base, mode=m, status="skipped", reason=reason) for m in TENSORS_MOVED]
    records = []
    try:
        gen = torch.Generator(device).manual_seed(0)
        x = torch.randn(*shape, generator=gen, device=device).requires_grad_()
        weight = (torch.randn(channels, channels, num_modes, 2, generator=gen, device=device) / channels)
        weight.requires_grad_()
        grad = torch.randn(*shape, generator=gen, device=device)
        op = _ops(backend)
        with torch.no_grad():
            out = op(x, weight, leaky)
            if backend != "reference":
                expected = _ops("reference")(x, weight, leaky)
                base["max_rel_err"] = float((out - expected).abs().max() / expected.abs().max())
                del expected
            del out
        holder = {}

        def forward():
            with torch.no_grad():
                op(x, weight, leaky)

        def prepare_backward():
            holder["out"] = op(x, weight, leaky)

        def backward():
            torch.autograd.grad(holder.pop("out"), (x, weight), grad)

        def forward_backward():
            torch.autograd.grad(op(x, weight, leaky), (x, weight), grad)

        plans = {"forward": (forward, None), "backward": (backward, prepare_backward),
                 "forward+backward": (forward_backward, None)}
        for mode, (run, setup) in plans.items():
            samples = time_samples(run, device, warmup, repeats, setup)
            seconds = statistics.median(samples)
            tensor_bytes = x.numel() * x.element_size()
            records.append(dict(base, mode=mode, status="measured", median_ms=seconds * 1e3,
                                min_ms=min(samples) * 1e3, repeats=len(samples),
                                GBps=TENSORS_MOVED[mode] * tensor_bytes / seconds / 1e9,
                                GBps_passes=TENSOR_PASSES[leaky][mode] * tensor_bytes / seconds / 1e9))
    except torch.OutOfMemoryError:
        records += [dict(base, mode=m, status="oom") for m in TENSORS_MOVED if m not in {r["mode"] for r in records}]
    except Exception as error:  # recorded; the other cases still run
        message = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {message[-1] if message else ''}"[:300]
        records += [dict(base, mode=m, status="failed", reason=reason)
                    for m in TENSORS_MOVED if m not in {r["mode"] for r in records}]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records


def summarise(records: List[Dict], meta: Dict) -> str:
    copy = meta.get("copy_GBps")
    lines = [f"# Temporal convolution bandwidth, P = {meta['frames']}, I = {meta['modes']}, fp32",
             "", f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}; device copy "
             + (f"{copy:.0f} GB/s" if copy else "not measured"), "",
             "| case | shape | backend | mode | status | median ms | GB/s (min bytes) | of copy | GB/s (passes) "
             "| max rel err |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        measured = r["status"] == "measured"
        num = lambda key, fmt: format(r[key], fmt) if measured and key in r else "-"
        share = f"{r['GBps'] / copy:.0%}" if measured and copy else "-"
        err = f"{r['max_rel_err']:.1e}" if "max_rel_err" in r else "-"
        status = r["status"] if measured else f"{r['status']}: {r.get('reason', '')}"
        lines.append(f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {r['backend']} | {r['mode']} | {status} | "
                     f"{num('median_ms', '.3f')} | {num('GBps', '.1f')} | {share} | {num('GBps_passes', '.1f')} | "
                     f"{err} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.temporal_bandwidth",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=250_000, help="N of the scalar case (the vector case matches "
                                                                   "its bytes)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--modes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cases", nargs="+", default=["scalar", "vector"], choices=["scalar", "vector"])
    parser.add_argument("--backends", nargs="+", default=["triton", "reference"], choices=["triton", "reference"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="folder for results.json and summary.md")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    meta = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                torch=torch.__version__, triton=triton_version, frames=args.frames, modes=args.modes,
                time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                command="python -m benchmarks.temporal_bandwidth " + " ".join(sys.argv[1:] if argv is None else argv))
    meta["copy_GBps"] = copy_bandwidth(device) if device.type == "cuda" else None
    records = []
    out = Path(args.out) if args.out else None
    for case, shape in shapes(args.nodes, args.frames, args.hidden).items():
        if case not in args.cases:
            continue
        for backend in args.backends:
            for record in measure_case(case, shape, args.modes, backend, device, args.repeats):
                print(json.dumps(record), flush=True)
                records.append(record)
            if out is not None:  # what is measured so far survives a time limit
                out.mkdir(parents=True, exist_ok=True)
                (out / "results.json").write_text(json.dumps(dict(meta=meta, records=records), indent=1))
    summary = summarise(records, meta)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(dict(meta=meta, records=records), indent=1))
        (out / "summary.md").write_text(summary)
    print(summary)
    return 0 if all(r["status"] in ("measured", "skipped") for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
