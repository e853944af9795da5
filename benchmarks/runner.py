"""The benchmark runner: every op and the whole model, per backend, per mode, over a sweep of sizes.

Each point is recorded as measured, out of memory, skipped (with the reason) or failed; nothing is dropped.
Before a backend is timed its forward output is checked against the reference on the same inputs.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
import traceback
from typing import Callable, Dict, List, Optional

import torch

from egno_fast import EGNO
from egno_fast.backends import BackendUnavailableError, resolve_backend
from egno_fast.nn import EGNNLayer, TemporalConv, VectorTemporalConv
from egno_fast.training.trainer import git_commit

from .cases import Case

OPS = ("temporal_conv", "vector_temporal_conv", "egnn_layer", "model", "eghno_model")
MODELS = ("model", "eghno_model")  # EGNO, and EGHNO (the "eghn" backbone: see Workload)
MODES = ("forward", "backward", "forward+backward")
BACKENDS = ("reference", "compile_reference", "triton", "cpp", "compile", "auto")
# torch.compile(fullgraph=True) of the module on a backend: the reference in plain PyTorch, or "auto", whose fused ops
# are registered PyTorch operators (cpp on the CPU, Triton on a GPU) that the compiled graph calls
COMPILED = {"compile_reference": "reference", "compile": "auto"}
_OP_NAME = {"temporal_conv": "temporal_residual", "vector_temporal_conv": "temporal_residual",
            "egnn_layer": "egnn_layer"}


# ------------------------------------------------------------------------------------------------ timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_samples(run: Callable[[], None], device: torch.device, warmup: int, repeats: int,
                 setup: Optional[Callable[[], None]] = None) -> List[float]:
    """Seconds per call of ``run`` (``setup`` runs untimed before each call); CUDA events on GPU."""
    samples = []
    for index in range(warmup + repeats):
        if setup is not None:
            setup()
        _sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            begin = time.perf_counter()
            run()
            elapsed = time.perf_counter() - begin
        if index >= warmup:
            samples.append(elapsed)
    return samples


def measure_ceilings(device: torch.device) -> Dict[str, float]:
    """The copy bandwidth (read + write, GB/s) and the dense matrix rate (TFLOP/s: bf16 on GPU, fp32 on CPU)."""
    size = 1 << (26 if device.type == "cuda" else 24)
    src = torch.empty(size, device=device)
    dst = torch.empty_like(src)
    copy = statistics.median(time_samples(lambda: dst.copy_(src), device, 2, 5))
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    matmul = statistics.median(time_samples(lambda: a @ a, device, 2, 5))
    return {"copy_GBps": 2 * size * 4 / copy / 1e9, "matmul_TFLOPs": 2 * n ** 3 / matmul / 1e12,
            "matmul_dtype": str(dtype).replace("torch.", "")}


# ------------------------------------------------------------------------------------------- workloads

class Workload:
    """A module and its inputs for one (op, case); ``forward()`` returns the tensors that enter the loss.

    "model" is EGNO with 4 layers; "eghno_model" is EGHNO with 4 EGNN layers per level, 4 scoring and 2 decoder
    layers (EGHN's AdK configuration) and K = 20 clusters per graph (3 for graphs under 100 nodes, EGHN's mocap
    setting), its bond graph a chain through each graph's nodes (about one bond per atom, as a protein backbone).
    """

    def __init__(self, op: str, case: Case, device: torch.device):
        gen = torch.Generator().manual_seed(1)
        n, p, h = case.num_nodes, case.num_frames, case.hidden_dim
        rand = lambda *shape: torch.randn(*shape, generator=gen).to(device)
        torch.manual_seed(0)
        self.graph = case.graph.to(device)
        self.keywords = {}
        if op == "temporal_conv":
            self.module, self.inputs = TemporalConv(h, num_modes=min(2, p // 2 + 1)), (rand(n, p, h),)
        elif op == "vector_temporal_conv":
            self.module, self.inputs = VectorTemporalConv(2, num_modes=min(2, p // 2 + 1)), (rand(n, p, 3, 2),)
        elif op == "egnn_layer":
            self.module = EGNNLayer(h, case.edge_dim)
            self.inputs = (rand(n, p, 3), rand(n, p, 3), rand(n, p, h), self.graph)
        else:
            hierarchy = {}
            if op == "eghno_model":
                smallest = int(case.graph.nodes_per_graph.min())
                hierarchy = dict(backbone="eghn", num_clusters=20 if smallest >= 100 else 3, pooling_layers=4,
                                 decoder_layers=2)
                batch = case.graph.batch
                chain = torch.nonzero(batch[1:] == batch[:-1]).flatten()
                self.keywords["bonds"] = torch.cat([torch.stack([chain, chain + 1]),
                                                    torch.stack([chain + 1, chain])], dim=1).to(device)
            self.module = EGNO(node_dim=case.node_dim, edge_dim=case.edge_dim, hidden_dim=h, num_layers=4,
                               num_frames=p, num_modes=min(2, p // 2 + 1), validate=False, **hierarchy)
            self.inputs = (rand(n, 3), rand(n, 3), rand(n, case.node_dim), self.graph)
        self.module.to(device)
        for t in self.inputs:
            if isinstance(t, torch.Tensor):
                t.requires_grad_(True)
        self.call = self.module

    def set_backend(self, backend: str) -> None:
        self.call = self.module
        self.module.backend = COMPILED.get(backend, backend)
        if backend in COMPILED:
            torch._dynamo.reset()  # a fresh compilation per workload: no recompile limit reached across the sweep
            self.call = torch.compile(self.module, fullgraph=True)

    def forward(self):
        out = self.call(*self.inputs, **self.keywords)
        return tuple(out) if isinstance(out, tuple) else (out,)


def _loss(outputs) -> torch.Tensor:
    """The benchmarks' loss: the mean square of every output tensor (EGNO's aux_loss is None, EGHNO's a scalar)."""
    return sum(o.float().square().mean() for o in outputs if o is not None)


def _gb_moved(op: str, case: Case, mode: str) -> Optional[float]:
    """Bytes that must move at least once for the temporal convolutions (fp32): forward reads x and writes the
    output; backward reads x and grad_out and writes grad_x."""
    if op not in ("temporal_conv", "vector_temporal_conv"):
        return None
    width = case.hidden_dim if op == "temporal_conv" else 6
    tensor = case.num_nodes * case.num_frames * width * 4
    return {"forward": 2, "backward": 3, "forward+backward": 5}[mode] * tensor / 1e9


def _flops(op: str, case: Case, mode: str) -> Optional[float]:
    """Matrix FLOPs of the EGNN layer as the reference computes it (edge MLP on [E*P, 1+2H+f], coordinate MLP per
    edge, node MLPs per node); backward counts twice the forward."""
    if op != "egnn_layer":
        return None
    h, f, p = case.hidden_dim, case.edge_dim, case.num_frames
    edge = 2 * case.graph.num_edges * p * ((1 + 2 * h + f) * h + h * h + h * h + h)
    node = 2 * case.num_nodes * p * (2 * h * h + h * h + h * h + h)
    return (edge + node) * {"forward": 1, "backward": 2, "forward+backward": 3}[mode]


# ----------------------------------------------------------------------------------------------- the sweep

def run_point(workload: Workload, reference_out, op: str, case: Case, backend: str, device: torch.device,
              warmup: int, repeats: int, ceilings: Dict[str, float]) -> List[Dict]:
    """Time one (op, case, backend) in every mode; returns one record per mode."""
    base = dict(op=op, backend=backend, **case.describe())
    try:
        if backend == "triton" and device.type != "cuda":
            raise BackendUnavailableError("Triton on CPU runs only in its interpreter: not a speed measurement")
        if backend not in (*COMPILED, "auto") and op not in MODELS:
            resolve_backend(backend, device, _OP_NAME[op])
        workload.set_backend(backend)
        out = workload.forward()
        torch.testing.assert_close(out[0].detach(), reference_out, rtol=1e-3, atol=1e-4)
    except BackendUnavailableError as error:
        return [dict(base, mode=m, status="skipped", reason=str(error).split(". Use")[0]) for m in MODES]
    except torch.OutOfMemoryError:
        return [dict(base, mode=m, status="oom", reason="out of memory in the first forward") for m in MODES]
    except Exception as error:  # a backend that fails or disagrees is a result, not a crash of the sweep
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
        return [dict(base, mode=m, status="failed", reason=reason) for m in MODES]
    ran = (workload.module.active_backend if op in MODELS
           else resolve_backend(COMPILED.get(backend, backend), device, _OP_NAME[op]))
    records = []
    holder = {}

    def forward_only():
        holder["out"] = workload.forward()

    def prepare_backward():
        workload.module.zero_grad(set_to_none=True)
        holder["loss"] = _loss(workload.forward())

    def backward_only():
        holder["loss"].backward()

    def forward_backward():
        workload.module.zero_grad(set_to_none=True)
        _loss(workload.forward()).backward()

    plans = {"forward": (forward_only, None), "backward": (backward_only, prepare_backward),
             "forward+backward": (forward_backward, None)}
    for mode, (run, setup) in plans.items():
        record = dict(base, mode=mode, ran=json.dumps(ran) if isinstance(ran, dict) else ran)
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                start_memory = torch.cuda.memory_allocated(device)
            samples = time_samples(run, device, warmup, repeats, setup)
            quantiles = statistics.quantiles(samples, n=5) if len(samples) > 1 else samples * 4
            record.update(status="measured", median_ms=statistics.median(samples) * 1e3,
                          p20_ms=quantiles[0] * 1e3, p80_ms=quantiles[-1] * 1e3, repeats=len(samples))
            if device.type == "cuda":
                record["peak_memory_MB"] = (torch.cuda.max_memory_allocated(device) - start_memory) / 2 ** 20
            seconds = record["median_ms"] / 1e3
            moved, flops = _gb_moved(op, case, mode), _flops(op, case, mode)
            if moved is not None:
                record["GBps"] = moved / seconds
                record["fraction_of_copy_bandwidth"] = record["GBps"] / ceilings["copy_GBps"]
            if flops is not None:
                record["TFLOPs"] = flops / seconds / 1e12
                record["fraction_of_matmul_rate"] = record["TFLOPs"] / ceilings["matmul_TFLOPs"]
        except torch.OutOfMemoryError:
            record.update(status="oom", reason=f"out of memory during {mode}")
        except Exception as error:  # e.g. torch.compile failing at a later call: recorded, the sweep goes on
            message = str(error).strip().splitlines()
            record.update(status="failed", reason=f"{type(error).__name__}: {message[-1] if message else ''}"[:300])
        holder.clear()
        records.append(record)
    return records


def run_sweep(cases: List[Case], device: torch.device, backends=BACKENDS, ops=OPS, warmup: int = 1,
              repeats: int = 5, log: Callable[[str], None] = print) -> Dict:
    """Run the sweep; returns {"meta": ..., "records": [...]}."""
    import triton

    ceilings = measure_ceilings(device)
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "device_type": device.type, "torch": torch.__version__, "triton": triton.__version__,
            "git_commit": git_commit(), "threads": torch.get_num_threads(), "ceilings": ceilings,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "warmup": warmup, "repeats": repeats}
    log(f"ceilings on {meta['device']}: copy {ceilings['copy_GBps']:.1f} GB/s, "
        f"{ceilings['matmul_dtype']} matmul {ceilings['matmul_TFLOPs']:.2f} TFLOP/s")
    records = []
    for case in cases:
        for op in ops:
            try:
                workload = Workload(op, case, device)
                workload.set_backend("reference")
                reference_out = workload.forward()[0].detach()
            except torch.OutOfMemoryError:
                records += [dict(op=op, backend=b, mode=m, status="oom", reason="inputs or reference forward",
                                 **case.describe()) for b in backends for m in MODES]
                continue
            except Exception:
                raise RuntimeError(f"building {op} on {case.name} failed:\n{traceback.format_exc()}") from None
            for backend in backends:
                point = run_point(workload, reference_out, op, case, backend, device, warmup, repeats, ceilings)
                records += point
                fb = point[-1]
                log(f"{case.name:10s} P={case.num_frames:<2d} H={case.hidden_dim:<3d} {op:21s} {backend:9s} "
                    + (f"fwd+bwd {fb['median_ms']:9.2f} ms" if fb["status"] == "measured"
                       else f"{fb['status']}: {fb.get('reason', '')}"))
            del workload
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"meta": meta, "records": records}


def largest_fit(fits: Callable[[int], bool], start: int = 10_000, limit: int = 64_000_000) -> Dict:
    """The largest node count n (start * 2^k, refined by bisection to ~3%) for which ``fits(n)`` holds.

    Returns {"largest_fit_nodes": n or 0, "first_failure_nodes": m or None}.
    """
    low, high = 0, None
    n = start
    while n <= limit:
        if fits(n):
            low, n = n, n * 2
        else:
            high = n
            break
    if high is not None and low:
        while high - low > 0.03 * low:
            middle = (low + high) // 2
            if fits(middle):
                low = middle
            else:
                high = middle
    return {"largest_fit_nodes": low, "first_failure_nodes": high}


def model_fits(backend: str, device: torch.device, num_frames: int = 8, hidden_dim: int = 128) -> Callable[[int], bool]:
    """A predicate: does one forward+backward of the 4-layer model on an n-node lattice graph fit on ``device``?"""
    from .cases import Case, lattice_graph
    from egno_fast import build_graph

    def fits(num_nodes: int) -> bool:
        try:
            edges = lattice_graph(num_nodes, torch.Generator().manual_seed(0)).to(device)
            nodes = int(edges.max()) + 1
            graph = build_graph(edges, nodes, torch.randn(edges.shape[1], 2, device=device), validate=False)
            workload = Workload("model", Case("fit", graph, num_frames, hidden_dim), device)
            workload.set_backend(backend)
            _loss(workload.forward()).backward()
            _sync(device)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()

    return fits
