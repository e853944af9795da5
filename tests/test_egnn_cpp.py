"""The EGNN layer on the "cpp" backend (egno_fast/ops/egnn.py; csrc/cpu/egnn_edge_cpu.cpp and egnn_node_cpu.cpp)
against the float64 reference: every graph kind, widths, float32, equivariance, thread-count independence, the
buffer cache and recompute mode, whole models, patching, bad input, and torch.compile.
"""

import pytest
import torch

from conftest import F32, F64, F64_MODEL, import_extension_or_skip, random_orthogonal
from egnn_cases import (KINDS, compare_layer_with_reference, graph_of, make_inputs,
                        model_matches_reference_on_nbody_batch, model_matches_reference_on_protein_sized_graph)
from egno_fast.nn import TemporalConv
from egno_fast.ops import build_graph
from egno_fast.ops import egnn_edge as edge_op
from egno_fast.ops.egnn import egnn_layer_cpp

cpp = import_extension_or_skip()


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
                                              graph.sender, graph.receiver, graph.sender_rowptr, graph.sender_perm,
                                              True)
    with pytest.raises(ValueError, match="sender.* is outside"):
        torch.ops.egno_fast.egnn_edge_forward(h, h, x, edge_attr, *[torch.zeros(1)] * 8, graph.rowptr,
                                              graph.sender + x.shape[0], graph.receiver, graph.sender_rowptr,
                                              graph.sender_perm, True)


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
