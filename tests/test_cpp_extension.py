"""The "cpp" backend (the C++ extension built from csrc/): the fused CPU layers against the references, graph
construction against brute force, error messages, backend reporting, and the CUDA sources compiled for sm_90.

The extension is built on first use (egno_fast/cpp/build.py; tests/conftest.py builds it before collection). CI sets
EGNO_FAST_REQUIRE_EXTENSION=1, so these tests fail there instead of skipping if it did not build.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from conftest import random_orthogonal
from egnn_cases import (KINDS, compare_layer_with_reference, graph_of, make_inputs,
                        model_matches_reference_on_nbody_batch, model_matches_reference_on_protein_sized_graph)
from egno_fast.backends import BackendUnavailableError, backend_status, resolve_backend
from egno_fast.graph import GraphInputError
from egno_fast.nn import TemporalConv, VectorTemporalConv
from egno_fast.ops import (build_graph, knn_graph, knn_graph_reference, radius_graph, radius_graph_reference,
                           receiver_csr_reference, temporal_residual_reference)
from egno_fast.ops import egnn_edge as edge_op, egnn_node as node_op
from egno_fast.ops.egnn import egnn_layer_cpp
from egno_fast.ops.egnn_node import EGNNNodeWeights, egnn_node_cpp, egnn_node_reference
from egno_fast.ops.egnn_edge import EdgeSums
from egno_fast.ops.neighbor_graph import knn_graph_cpp, radius_graph_cpp
from egno_fast.ops.receiver_csr import receiver_csr_cpp
from egno_fast.ops.temporal_conv import temporal_residual_cpp

CSRC = Path(__file__).resolve().parents[1] / "csrc"
try:
    import egno_fast.cpp as cpp
except ImportError as error:
    if os.environ.get("EGNO_FAST_REQUIRE_EXTENSION") == "1":
        raise
    pytest.skip(f"the C++ extension is not built: {error}", allow_module_level=True)

F64 = dict(rtol=1e-10, atol=1e-10)
# Whole models: four layers of sums over 34k edges in another order than the reference's; float64 rounding then
# reaches ~1e-10 relative in a few parameter gradients (any real error is many orders of magnitude larger).
F64_MODEL = dict(rtol=1e-9, atol=1e-10)
F32 = dict(rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------- EGNN layer

@pytest.mark.parametrize("kind", KINDS)
def test_egnn_graph_kinds_match_reference(kind):
    num_nodes, edge_index, edge_attr = graph_of(kind, torch.Generator().manual_seed(KINDS.index(kind)))
    compare_layer_with_reference(egnn_layer_cpp, num_nodes, edge_index, edge_attr, 3, 20,
                                 KINDS.index(kind), torch.float64, "cpu", F64)


@pytest.mark.parametrize("num_frames, hidden", [(1, 1), (2, 7), (5, 64), (8, 33), (16, 128)])
def test_egnn_frames_and_widths_match_reference(num_frames, hidden):
    num_nodes, edge_index, edge_attr = graph_of("directed", torch.Generator().manual_seed(hidden))
    compare_layer_with_reference(egnn_layer_cpp, num_nodes, edge_index, edge_attr, num_frames, hidden,
                                 hidden, torch.float64, "cpu", F64)


@pytest.mark.parametrize("kind, tol", [("directed", F32), ("skewed", dict(rtol=1e-3, atol=1e-3))])
def test_egnn_float32_matches_the_float64_reference(kind, tol):
    """float32 within 1e-4; 1e-3 where a node sums 1000 edges' float32 terms (the skewed graph's hub)."""
    num_nodes, edge_index, edge_attr = graph_of(kind, torch.Generator().manual_seed(3))
    compare_layer_with_reference(egnn_layer_cpp, num_nodes, edge_index, edge_attr, 4, 32, 3,
                                 torch.float32, "cpu", tol)


def _layer_setup(dtype=torch.float64):
    gen = torch.Generator().manual_seed(7)
    num_nodes, edge_index, edge_attr = graph_of("skewed", gen)
    layer, nodes, edge_attr = make_inputs(num_nodes, edge_index, edge_attr, 4, 16, 7)
    layer = layer.to(dtype)
    layer.backend = "cpp"
    return layer, [t.to(dtype) for t in nodes], edge_index, edge_attr.to(dtype)


def test_egnn_e3_and_permutation_equivariance():
    layer, (x, v, h), edge_index, edge_attr = _layer_setup()
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    base = layer(x, v, h, graph)
    gen = torch.Generator().manual_seed(8)
    rot, shift = random_orthogonal(gen), torch.randn(3, generator=gen, dtype=torch.float64)
    moved = layer(x @ rot + shift, v @ rot, h, graph)
    torch.testing.assert_close(moved[0], base[0] @ rot + shift, **F64)
    torch.testing.assert_close(moved[1], base[1] @ rot, **F64)
    torch.testing.assert_close(moved[2], base[2], **F64)
    perm = torch.randperm(x.shape[0], generator=gen)
    inverse = torch.argsort(perm)
    permuted = layer(x[perm], v[perm], h[perm], build_graph(inverse[edge_index], x.shape[0], edge_attr))
    for a, b in zip(permuted, base):
        torch.testing.assert_close(a, b[perm], **F64)


def test_egnn_results_are_bitwise_equal_for_any_thread_count():
    layer, (x, v, h), edge_index, edge_attr = _layer_setup(torch.float32)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (threads, 1, threads):
            torch.set_num_threads(count)
            inputs = [t.clone().requires_grad_() for t in (x, h, edge_attr)]
            out = layer(inputs[0], v, inputs[1], build_graph(edge_index, x.shape[0], inputs[2]))
            loss = sum(o.square().sum() for o in out)
            runs.append([o.detach() for o in out] + list(torch.autograd.grad(loss, inputs + list(layer.parameters()))))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], run))


def test_egnn_buffer_cache_reuses_memory_without_changing_results():
    """The stored activations (>= 1 MB here) come from the buffer cache: a run on buffers left by another input gives
    bitwise the results of a run on fresh memory, and empty_cache() gives the memory back."""
    layer, (x, v, h), edge_index, edge_attr = _layer_setup(torch.float32)
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    assert 6 * graph.num_edges * x.shape[1] * h.shape[2] * 4 >= 2**20

    def run(scale):
        inputs = [(t * scale).requires_grad_() for t in (x, h)]
        out = layer(inputs[0], v, inputs[1], graph)
        loss = sum(o.square().sum() for o in out)
        return [o.detach() for o in out] + list(torch.autograd.grad(loss, inputs + list(layer.parameters())))

    cpp.empty_cache()
    fresh = run(1.0)
    assert cpp.cached_bytes() > 0, "the activations went back to the cache after the backward"
    run(3.0)  # leaves its own activations in the cached buffers
    reused = run(1.0)
    assert all(torch.equal(a, b) for a, b in zip(fresh, reused))
    held = cpp.cached_bytes()
    assert cpp.empty_cache() == held and cpp.cached_bytes() == 0


def test_egnn_recompute_mode_gives_bitwise_the_stored_results(monkeypatch):
    """Above the store budget (EGNO_FAST_CPU_STORE_MB; 0 here) the edge op keeps no activations and the backward
    recomputes them tile by tile: outputs and every gradient bitwise as when they are stored. Without gradients
    nothing is stored at all."""
    layer, (x, v, h), edge_index, edge_attr = _layer_setup(torch.float32)

    def run():
        inputs = [t.clone().requires_grad_() for t in (x, h, edge_attr)]
        out = layer(inputs[0], v, inputs[1], build_graph(edge_index, x.shape[0], inputs[2]))
        loss = sum(o.square().sum() for o in out)
        return [o.detach() for o in out] + list(torch.autograd.grad(loss, inputs + list(layer.parameters())))

    stored = run()
    monkeypatch.setenv(edge_op.STORE_BUDGET_ENV, "0")
    cpp.empty_cache()
    recomputed = run()
    assert all(torch.equal(a, b) for a, b in zip(stored, recomputed))
    monkeypatch.delenv(edge_op.STORE_BUDGET_ENV)
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    assert 6 * graph.num_edges * x.shape[1] * h.shape[2] * 4 >= 2**20  # would come from the buffer cache
    cpp.empty_cache()
    with torch.no_grad():
        layer(x, v, h, graph)
    assert cpp.cached_bytes() == 0


@pytest.mark.parametrize("value", ["lots", "-1"])
def test_store_budget_refuses_bad_values(monkeypatch, value):
    monkeypatch.setenv(edge_op.STORE_BUDGET_ENV, value)
    with pytest.raises(ValueError, match=edge_op.STORE_BUDGET_ENV):
        edge_op.store_budget_bytes()


def test_egnn_model_matches_reference_on_nbody_batch():
    model_matches_reference_on_nbody_batch("cpp", torch.float64, "cpu", F64_MODEL)


def test_egnn_model_matches_reference_on_protein_sized_graph():
    model_matches_reference_on_protein_sized_graph("cpp", torch.float64, "cpu", F64_MODEL, neighbours=40, hidden=64)


def test_patch_swaps_a_model_to_cpp_and_back():
    import egno_fast
    from test_model import make_model, small_batch

    model = make_model(backend="reference", hidden_dim=16).double()
    x, v, h, edge_index, edge_attr, batch = (t.double() if t.is_floating_point() else t for t in small_batch(3))
    before = model(x, v, h, edge_index, edge_attr, batch)
    egno_fast.patch(model, "cpp")
    after = model(x, v, h, edge_index, edge_attr, batch)
    assert model.active_backend == {"temporal_residual": "cpp", "egnn_layer": "cpp"}
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, **F64)
    egno_fast.unpatch(model)
    model(x, v, h, edge_index, edge_attr, batch)
    assert model.active_backend == {"temporal_residual": "reference", "egnn_layer": "reference"}


def test_egnn_refuses_other_dtypes_and_mismatched_edge_features():
    layer, (x, v, h), edge_index, edge_attr = _layer_setup()
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    with pytest.raises(TypeError, match="float32 or float64"):
        egnn_layer_cpp(x.half(), v.half(), h.half(), graph, layer.weights())
    with pytest.raises(RuntimeError, match="x must be"):
        torch.ops.egno_fast.egnn_edge_forward(h, h, x[:, :2], edge_attr, *[torch.zeros(1)] * 8, graph.rowptr,
                                              graph.sender, graph.receiver, True)
    with pytest.raises(ValueError, match="sender.* is outside"):
        torch.ops.egno_fast.egnn_edge_forward(h, h, x, edge_attr, *[torch.zeros(1)] * 8, graph.rowptr,
                                              graph.sender + x.shape[0], graph.receiver, True)


def _node_weights(layer) -> EGNNNodeWeights:
    velocity, node = layer.velocity_mlp, layer.node_mlp
    return EGNNNodeWeights(velocity[0].weight, velocity[0].bias, velocity[2].weight.reshape(-1), velocity[2].bias,
                           node[0].weight, node[0].bias, node[2].weight, node[2].bias)


def _node_half_inputs(num_nodes, num_frames, hidden, seed):
    gen = torch.Generator().manual_seed(seed)
    layer = make_inputs(1, torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 0), 1, hidden, seed)[0]
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    x, v, h, msg_sum, coord_sum = (rand(num_nodes, num_frames, d) for d in (3, 3, hidden, hidden, 3))
    degree = torch.randint(1, 5, (num_nodes,), generator=gen).double()
    if num_nodes:
        coord_sum[0, 0] = torch.tensor([450.0, -450.0, 0.5]) * degree[0]  # clamped at +-100 (gradient 0)
    return layer, [x, v, h, msg_sum, coord_sum], degree


@pytest.mark.parametrize("num_nodes, num_frames, hidden", [(7, 3, 5), (1, 1, 1), (0, 2, 4), (300, 5, 16), (900, 5, 64)])
def test_egnn_node_half_matches_torch_and_gradchecks(num_nodes, num_frames, hidden):
    """The fused node half (csrc/cpu/egnn_node_cpu.cpp) against its reference: outputs and every
    gradient in float64, clamped coordinates included (several tiles from 300 x 5 rows at H = 16, more tiles than
    groups at 900 x 5 x 64), and gradcheck of the op itself on the small cases."""
    layer, inputs, degree = _node_half_inputs(num_nodes, num_frames, hidden, seed=hidden)
    results = []
    for update in (egnn_node_cpp, egnn_node_reference):
        tensors = [t.clone().requires_grad_() for t in inputs]
        x, v, h, msg_sum, coord_sum = tensors
        out = update(x, v, h, EdgeSums(msg_sum, coord_sum), degree, _node_weights(layer))
        gen = torch.Generator().manual_seed(1)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum() for o in out)
        params = tensors + list(layer.velocity_mlp.parameters()) + list(layer.node_mlp.parameters())
        results.append([o.detach() for o in out] + list(torch.autograd.grad(loss, params)))
    for fused, ref in zip(*results):
        torch.testing.assert_close(fused, ref, **F64)
    if num_nodes:
        g_coord = results[0][2 + 4]  # after the two outputs: x, v, h, msg_sum, coord_sum
        assert g_coord[0, 0, :2].abs().max() == 0 and g_coord[0, 0, 2] != 0  # clamped entries get no gradient
    if num_nodes * num_frames * hidden > 200:
        return

    vel_hidden, vel_out = layer.velocity_mlp[0], layer.velocity_mlp[2]
    node_hidden, node_out = layer.node_mlp[0], layer.node_mlp[2]
    weights = [w.detach().clone().contiguous().requires_grad_() for w in (
        vel_hidden.weight, vel_hidden.bias, vel_out.weight.reshape(-1), vel_out.bias, node_hidden.weight,
        node_hidden.bias, node_out.weight, node_out.bias)]
    x, v, h, msg_sum, coord_sum = (t.clone().requires_grad_() for t in inputs)  # the clamped entry is 350 from the kink
    assert torch.autograd.gradcheck(
        lambda *a: node_op.EGNNNodeCppFunction.apply(a[0], a[1], a[2], a[3], a[4], degree, *a[5:]),
        (h, msg_sum, coord_sum, x, v, *weights), fast_mode=True)


def test_egnn_node_half_refuses_bad_input():
    layer, (x, v, h, msg_sum, coord_sum), degree = _node_half_inputs(6, 2, 8, seed=0)
    weights = [torch.zeros(8, 8), torch.zeros(8), torch.zeros(8), torch.zeros(1), torch.zeros(8, 16), torch.zeros(8),
               torch.zeros(8, 8), torch.zeros(8)]
    weights = [w.double() for w in weights]
    forward = torch.ops.egno_fast.egnn_node_forward
    with pytest.raises(RuntimeError, match="x, v and coord_sum must be"):
        forward(h, msg_sum, coord_sum, x[:, :, :2].contiguous(), v, degree, *weights)
    with pytest.raises(RuntimeError, match="degree must be"):
        forward(h, msg_sum, coord_sum, x, v, degree[:3], *weights)
    with pytest.raises(RuntimeError, match="W_n1 must have shape"):
        forward(h, msg_sum, coord_sum, x, v, degree, *weights[:4], torch.zeros(8, 8).double(), *weights[5:])
    with pytest.raises(RuntimeError, match="one dtype"):
        forward(h.float(), msg_sum, coord_sum, x, v, degree, *weights)


# ------------------------------------------------------------------------------------- temporal convolution

@pytest.mark.parametrize("vector, channels", [(False, 13), (True, 2), (True, 11)])  # vector C <= 8: as scalar 3C
@pytest.mark.parametrize("num_frames, num_modes", [(1, 1), (2, 2), (5, 2), (8, 5), (16, 3)])
def test_temporal_residual_matches_reference(vector, channels, num_frames, num_modes):
    gen = torch.Generator().manual_seed(num_frames * 10 + num_modes)
    shape = (9, num_frames, 3, channels) if vector else (9, num_frames, channels)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(channels, channels, num_modes, 2, generator=gen, dtype=torch.float64)
    results = []
    for fn in (temporal_residual_cpp, temporal_residual_reference):
        xi, wi = x.clone().requires_grad_(), weight.clone().requires_grad_()
        out = fn(xi, wi, not vector)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        results.append([out.detach(), *torch.autograd.grad(out, [xi, wi], grad_out)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **F64)


def test_temporal_layers_run_on_cpp_and_match_in_float32():
    gen = torch.Generator().manual_seed(5)
    for layer, x in ((TemporalConv(64, num_modes=2), torch.randn(300, 5, 64, generator=gen)),
                     (VectorTemporalConv(2, num_modes=3), torch.randn(300, 6, 3, 2, generator=gen))):
        layer.backend = "cpp"
        fused = layer(x)
        layer.backend = "reference"
        torch.testing.assert_close(fused, layer(x), **F32)


def test_temporal_residual_gradcheck():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 4, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: temporal_residual_cpp(a, w, True), (x, weight))


# ------------------------------------------------------------------------------------------ graph builders

def test_receiver_csr_matches_a_stable_sort():
    gen = torch.Generator().manual_seed(0)
    for num_nodes, num_edges in ((1, 0), (5, 40), (1000, 20000)):
        receiver = torch.randint(0, num_nodes, (num_edges,), generator=gen)
        for got, want in zip(receiver_csr_cpp(receiver, num_nodes),
                             receiver_csr_reference(receiver, num_nodes)):
            assert torch.equal(got, want)
    with pytest.raises(RuntimeError, match="span"):
        receiver_csr_cpp(torch.tensor([0, 3]), 3)


def _clouds():
    gen = torch.Generator().manual_seed(1)
    uniform = torch.rand(2000, 3, generator=gen, dtype=torch.float64) * 10
    # two far-apart clusters: most cells of the bounding box are empty
    clusters = torch.cat([torch.randn(300, 3, generator=gen), torch.randn(300, 3, generator=gen) + 40]).float()
    lattice = torch.stack(torch.meshgrid(*(torch.arange(6.0),) * 3, indexing="ij"), -1).reshape(-1, 3)
    return {"uniform": uniform, "clusters": clusters, "lattice": lattice}


@pytest.mark.parametrize("cloud, periodic", [("uniform", False), ("uniform", True), ("clusters", False),
                                             ("lattice", False), ("lattice", True)])
def test_radius_graph_matches_brute_force(cloud, periodic):
    pos = _clouds()[cloud]
    # on the integer lattice every neighbour is exactly at the cutoff 1.0 (or sqrt 2, 2): the boundary is inclusive
    cutoff = 1.0 if cloud == "lattice" else 1.3
    box = torch.tensor([10.0, 10.0, 12.0]) if periodic and cloud == "uniform" else \
        (torch.tensor([6.0, 6.0, 6.0]) if periodic and cloud == "lattice" else None)
    for c in (cutoff, 2.0 ** 0.5, 2.0) if cloud == "lattice" else (cutoff,):
        got = radius_graph(pos, c, box=box, backend="cpp")
        assert torch.equal(got, radius_graph_reference(pos, c, box=box))
    if cloud == "lattice":
        # a point in the middle: 6 + 12 + 8 neighbours at 1, sqrt 2, sqrt 3 and the 6 exactly at the cutoff 2
        assert (got[1] == 3 * 36 + 3 * 6 + 3).sum() == 32


def test_radius_graph_with_batch_and_empty_inputs():
    gen = torch.Generator().manual_seed(2)
    pos = torch.rand(500, 3, generator=gen) * 4
    batch = torch.arange(5).repeat_interleave(100)
    assert torch.equal(radius_graph(pos, 1.0, batch, backend="cpp"), radius_graph_reference(pos, 1.0, batch))
    assert radius_graph(torch.zeros(0, 3), 1.0, backend="cpp").shape == (2, 0)
    assert radius_graph(torch.zeros(1, 3), 1.0, backend="cpp").shape == (2, 0)


@pytest.mark.parametrize("periodic", [False, True])
def test_knn_graph_matches_brute_force(periodic):
    clouds = _clouds()
    box = torch.tensor([10.0, 10.0, 10.0]) if periodic else None
    for name, k in (("uniform", 8), ("clusters", 17), ("lattice", 6)):
        pos = clouds[name] % 10 if periodic else clouds[name]
        got = knn_graph(pos, k, box=box, backend="cpp")
        assert torch.equal(got, knn_graph_reference(pos, k, box=box)), name
    batch = torch.tensor([0, 0, 0, 1, 1])
    small = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(knn_graph(small, 4, batch, backend="cpp"), knn_graph_reference(small, 4, batch))


def test_graph_builders_refuse_bad_input():
    pos = torch.rand(10, 3)
    with pytest.raises(GraphInputError, match="NaN"):
        radius_graph(torch.full((4, 3), float("nan")), 1.0, backend="cpp")
    with pytest.raises(GraphInputError, match="half the smallest box"):
        radius_graph(pos, 3.0, box=torch.tensor([5.0, 5.0, 5.0]), backend="cpp")
    with pytest.raises(GraphInputError, match="k must be"):
        knn_graph(pos, 0, backend="cpp")
    with pytest.raises(GraphInputError, match="pos must be"):
        radius_graph(pos[:, :2], 1.0, backend="cpp")
    with pytest.raises(RuntimeError, match="box lengths"):
        torch.ops.egno_fast.radius_graph(pos, 1.0, None, torch.tensor([1.0, -1.0, 1.0]))


def test_build_graph_gives_the_same_graph_on_every_backend():
    gen = torch.Generator().manual_seed(4)
    edge_index = torch.randint(0, 50, (2, 400), generator=gen)
    a = build_graph(edge_index, 50, torch.randn(400, 2, generator=gen), backend="cpp")
    b = build_graph(edge_index, 50, a.edge_attr[torch.argsort(a.edge_perm)], backend="reference")
    for name, value in a.__dict__.items():
        if name == "_stamp":  # the (id, version) of each tensor: its own
            continue
        assert torch.equal(value, getattr(b, name)) if isinstance(value, torch.Tensor) else value == getattr(b, name)


# ------------------------------------------------------------------------------- reporting and the build

def test_backend_reporting():
    status = backend_status("cpu")["cpp"]
    assert set(status.values()) == {"available"}
    assert resolve_backend("auto", "cpu", "egnn_layer") == "cpp"
    with pytest.raises(BackendUnavailableError, match="cpu tensors only"):
        resolve_backend("cpp", "cuda", "egnn_layer")
    assert set(cpp.build_info()) == {"cuda", "openmp"}


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})


REPORT = ("from egno_fast.backends import backend_status, resolve_backend\n"
          "print(backend_status('cpu')['cpp']['egnn_layer']); print(resolve_backend('auto', 'cpu', 'egnn_layer'))")


def test_package_imports_and_reports_a_switched_off_extension():
    result = _python(REPORT, EGNO_FAST_NO_EXTENSION="1")
    reason, auto = result.stdout.strip().splitlines()
    assert "switched off (EGNO_FAST_NO_EXTENSION=1)" in reason and auto == "reference"
    # "auto" passing over the backend is said on stderr, once, with the reason
    assert result.stderr.count("backend 'cpp' is unavailable") == 1 and "EGNO_FAST_NO_EXTENSION" in result.stderr


def test_missing_compiler_is_named(tmp_path):
    result = _python(REPORT, CXX="no-such-compiler", EGNO_FAST_BUILD_DIR=str(tmp_path))
    reason, auto = result.stdout.strip().splitlines()
    assert "no C++ compiler found ('no-such-compiler' is not on PATH" in reason and "install one" in reason
    assert auto == "reference" and not any(tmp_path.iterdir())


def test_failed_build_keeps_the_compiler_output(tmp_path, monkeypatch):
    """A compile error becomes one ExtensionBuildError naming its first error line and the log file."""
    from egno_fast.cpp import build

    broken = tmp_path / "csrc"
    (broken / "cpu").mkdir(parents=True)
    (broken / "ops.cpp").write_text("this is not C++;\n")
    monkeypatch.setattr(build, "source_root", lambda: broken)
    monkeypatch.setenv("EGNO_FAST_BUILD_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EGNO_FAST_CUDA", "0")
    with pytest.raises(build.ExtensionBuildError, match="building the C.. extension failed .*build_error.log") as info:
        build._build_and_load()
    log = next((tmp_path / "cache").glob("*/build_error.log"))
    assert "this is not C++" in log.read_text() and str(log) in str(info.value)
    # load_extension tries once per process: the second call raises the same error without building again
    monkeypatch.setattr(build, "_LOADED", None)
    monkeypatch.setattr(build, "_FAILED", None)
    builds = []

    def failing_build():
        builds.append(1)
        raise info.value

    monkeypatch.setattr(build, "_build_and_load", failing_build)
    for _ in range(2):
        with pytest.raises(build.ExtensionBuildError, match="build_error.log"):
            build.load_extension()
    assert builds == [1]


def test_unwritable_build_folder_is_named(tmp_path, monkeypatch):
    from egno_fast.cpp import build

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("EGNO_FAST_BUILD_DIR", str(blocker / "cache"))  # a folder below a file cannot be made
    monkeypatch.setenv("EGNO_FAST_CUDA", "0")
    with pytest.raises(build.ExtensionBuildError, match="cannot create the build folder .*EGNO_FAST_BUILD_DIR"):
        build._build_and_load()


def test_build_cache_key_covers_sources_flags_and_torch(monkeypatch, tmp_path):
    """The cache folder changes with the sources, the -march flag and torch's version; it is stable otherwise."""
    from egno_fast.cpp import build

    monkeypatch.setenv("EGNO_FAST_CUDA", "0")
    first = build.build_plan()
    assert build.build_plan().directory == first.directory
    edited = tmp_path / "csrc"
    shutil.copytree(build.source_root(), edited)
    assert build.build_plan().directory == first.directory
    monkeypatch.setattr(build, "source_root", lambda: edited)
    assert build.build_plan().directory == first.directory  # the same sources elsewhere: the same build
    with open(edited / "cpu" / "tiles.h", "a") as header:  # a header counts too
        header.write("\n")
    assert build.build_plan().directory != first.directory
    monkeypatch.undo()
    monkeypatch.setenv("EGNO_FAST_CUDA", "0")
    assert first.directory.parent == build.cache_root() and "-march=native" in first.cxx_flags
    monkeypatch.setenv("EGNO_FAST_CPU_ARCH", "x86-64-v2")
    assert build.build_plan().directory != first.directory
    monkeypatch.delenv("EGNO_FAST_CPU_ARCH")
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert build.build_plan().directory != first.directory
    monkeypatch.undo()
    monkeypatch.setenv("EGNO_FAST_CUDA", "0")
    monkeypatch.setattr(build, "_compiler_version", lambda name: "another compiler 1.0")
    assert build.build_plan().directory != first.directory


def test_cached_extension_loads_without_compiling():
    """A second process finds the build of the first: no build message, the module loads."""
    result = _python("import egno_fast.cpp as c; print(c.build_info())")
    assert result.returncode == 0, result.stderr
    assert "building the C++ extension" not in result.stderr and "openmp" in result.stdout


def _cuda_home() -> Path:
    from torch.utils.cpp_extension import CUDA_HOME

    for home in (os.environ.get("CUDA_HOME"), CUDA_HOME, "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return Path(home)
    if os.environ.get("EGNO_FAST_REQUIRE_EXTENSION") == "1":
        raise AssertionError("nvcc not found ($CUDA_HOME or /usr/local/cuda): CI compiles the CUDA sources")
    pytest.skip("nvcc is not installed")


@pytest.mark.parametrize("source", sorted(p.name for p in (CSRC / "cuda").glob("*.cu")))
def test_cuda_sources_compile_for_sm90(source, tmp_path):
    result = subprocess.run([str(_cuda_home() / "bin" / "nvcc"), "-c", "-std=c++17", "-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v",
                             "-I", str(CSRC), str(CSRC / "cuda" / source), "-o", str(tmp_path / "out.o")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "spill stores" in result.stderr  # ptxas reported every kernel's resources


def test_cuda_bindings_compile_against_torch_headers(tmp_path):
    """The torch-facing CUDA glue, syntax-checked with the host compiler (the CPU build of torch lacks one
    generated CUDA header, supplied here)."""
    cuda_home = _cuda_home()
    shim = tmp_path / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    from torch.utils.cpp_extension import include_paths

    includes = [tmp_path, CSRC, *include_paths(), cuda_home / "include", sysconfig.get_paths()["include"]]
    command = ["g++", "-fsyntax-only", "-std=c++20", *(f"-I{p}" for p in includes), str(CSRC / "cuda_bindings.cpp")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


def test_cpp_ops_run_under_torch_compile():
    """The registered fake kernels let torch.compile trace the ops; forward and gradients match eager."""
    layer, (x, v, h), edge_index, edge_attr = _layer_setup()
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    conv = TemporalConv(h.shape[-1], backend="cpp").double()

    def loss_of(x, h):
        x_new, _, h_new = layer(x, v, h, graph)
        return x_new.square().sum() + conv(h_new).square().sum()

    results = []
    for fn in (loss_of, torch.compile(loss_of)):
        xi, hi = x.clone().requires_grad_(), h.clone().requires_grad_()
        loss = fn(xi, hi)
        results.append([loss.detach(), *torch.autograd.grad(loss, [xi, hi])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **F64)
