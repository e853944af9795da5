"""Test helpers: the fixtures folder, random graphs, and random orthogonal transforms."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter on CPU tensors; it must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"  # outputs of the public EGNO code (README there)

# Tolerances of the fused backends against the float64 references.
F64 = dict(rtol=1e-10, atol=1e-10)
# Whole models: four layers of sums over 34k edges in another order than the reference's; float64 rounding then
# reaches ~1e-10 relative in a few parameter gradients (any real error is many orders of magnitude larger).
F64_MODEL = dict(rtol=1e-9, atol=1e-10)
F32 = dict(rtol=1e-4, atol=1e-4)


def pytest_sessionstart(session):
    """Build the C++ extension (first use on a machine: a few minutes) before collection, with its progress lines on
    the terminal rather than captured; a build that fails is reported by the tests that need it."""
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        try:
            import egno_fast.cpp  # noqa: F401  (builds or loads the extension)
        except ImportError as error:
            print(f"egno_fast: the C++ extension is unavailable: {error}")


def import_extension_or_skip():
    """``egno_fast.cpp`` (the C++ extension, built on first use), or skip the calling test module; where CI sets
    EGNO_FAST_REQUIRE_EXTENSION=1 the build error is raised instead."""
    try:
        import egno_fast.cpp as cpp
    except ImportError as error:
        if os.environ.get("EGNO_FAST_REQUIRE_EXTENSION") == "1":
            raise
        pytest.skip(f"the C++ extension is not built: {error}", allow_module_level=True)
    return cpp


def random_orthogonal(generator: torch.Generator, reflect: bool = True) -> torch.Tensor:
    """A random 3x3 orthogonal matrix in float64, with determinant -1 when ``reflect``."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) > 0) == reflect:
        q[:, 0] = -q[:, 0]
    return q


def random_directed_graph(num_nodes: int, num_edges: int, generator: torch.Generator, edge_dim: int = 2):
    """Random directed edges without self loops (row 0 = sender) and asymmetric random edge features."""
    sender = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    receiver = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    keep = sender != receiver
    edge_index = torch.stack([sender[keep], receiver[keep]])
    edge_attr = torch.randn(edge_index.shape[1], edge_dim, generator=generator, dtype=torch.float64)
    return edge_index, edge_attr


def compile_every_configuration(module: str, production_archs=(), atomic_variants=frozenset(), spill_free=(),
                                title: str = "", spill_exempt=()):
    """Compile ``module``'s aot_configurations() for sm_90 (and its production ones for ``production_archs``) in a
    process without the interpreter; assert no errors, shared memory within the architecture's limit, atomic
    instructions exactly in the configurations named in ``atomic_variants`` (name prefixes), tensor-core
    instructions exactly where expected, and no spilled bytes (no stack frame) in the configurations named in
    ``spill_free`` (name prefixes) unless their name contains one of ``spill_exempt`` (each must name a
    configuration); the spills of the others are printed (see the kernels' README). Returns the per-configuration
    results."""
    import importlib

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    command = [sys.executable, "-m", "egno_fast.kernels.aot", module, "--arch", "90",
               "--jobs", str(os.cpu_count() or 1)]
    if production_archs:
        command += ["--production-arch", *map(str, production_archs)]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3000)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(line) for line in run.stdout.splitlines()]
    kernels = importlib.import_module(module)
    expected = len(list(kernels.aot_configurations())) + \
        len(production_archs) * len(list(kernels.aot_configurations(True)))
    assert len(results) == expected
    print(f"\n{title}, ahead-of-time compile (registers / spill bytes / shared bytes):")
    for r in results:
        print(f"  sm_{r['arch']} {r['name']}: " + (r.get("error") or f"{r['registers']} regs, {r['spills']} spill, "
                                                                     f"{r['shared_bytes']} shared"))
    assert not [r for r in results if "error" in r]
    spilling = [r for r in results if r.get("spills")]
    print(f"  {len(spilling)} of {len(results)} configurations spill; most: "
          f"{max((r['spills'] for r in spilling), default=0)} bytes per thread")
    assert not [r["name"] for r in results if r["shared_bytes"] > r["shared_limit"]], "shared memory over the limit"
    must_not_spill = [r for r in results if r["name"].startswith(tuple(spill_free))
                      and not any(exempt in r["name"] for exempt in spill_exempt)]
    assert len(must_not_spill) >= len(spill_free), "a spill_free prefix names no configuration"
    assert all(any(exempt in r["name"] for r in results) for exempt in spill_exempt), "an exemption names nothing"
    assert not [(r["name"], r["spills"]) for r in must_not_spill if r["spills"]], "spills where none are allowed"
    atomic = {r["name"] for r in results if r["atomics"]}
    assert atomic == {r["name"] for r in results if r["name"].startswith(tuple(atomic_variants))}, \
        "atomic instructions outside the opt-in atomic variants"
    assert all(r["mma"] == r["expect_mma"] for r in results), \
        [(r["name"], r["mma"]) for r in results if r["mma"] != r["expect_mma"]]
    return results


def make_backend_unavailable(monkeypatch, backend: str, reason: str) -> None:
    """Make ``backend`` report itself unavailable (as if its module failed to import) for this test."""
    from egno_fast import backends

    monkeypatch.setitem(backends._LOAD_ERRORS, backend, reason)
    monkeypatch.setattr(backends, "_LOADED", backends._LOADED | {backend})


# ------------------------------------------------------------------------------------------- the gpu marker

GPU_SKIP_REASON = ("needs a CUDA device (torch.cuda.is_available() is False here); runs with the real kernels in "
                   "benchmarks/gpu_check.sh")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped on CPU with the reason")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``@pytest.mark.gpu`` are skipped, with the reason, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
