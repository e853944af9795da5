"""The whole model through its registered operators: torch.compile(fullgraph=True) on a prebuilt graph (forward and
backward, no graph break, the eager results, at most one recompilation for other edge counts) on "cpp" (CPU) and
"triton" (CUDA, marked gpu; also on CPU tensors under the interpreter); torch.export for inference (graph passed as
a pytree Graph, sizes symbolic), saved and loaded; and an AOTInductor package of the exported program on CPU."""
import os

import pytest
import torch

from conftest import F64
from egno_fast import EGNO, export_for_inference
from egno_fast.backends import unavailable_reason
from egno_fast.graph import GraphInputError
from egno_fast.ops import build_graph

CPP_REASON = unavailable_reason("cpp", "egnn_layer", "cpu")
if os.environ.get("EGNO_FAST_REQUIRE_EXTENSION") == "1":
    assert CPP_REASON is None, CPP_REASON
needs_cpp = pytest.mark.skipif(CPP_REASON is not None, reason=f"the cpp backend is unavailable: {CPP_REASON}")
needs_dynamic_export = pytest.mark.skipif(not hasattr(torch.export, "Dim") or not hasattr(torch.export.Dim, "AUTO"),
                                          reason="dynamic torch.export needs torch >= 2.6 (torch.export.Dim.AUTO)")
needs_aoti = pytest.mark.skipif(not hasattr(torch._inductor, "aoti_compile_and_package"),
                                reason="AOTInductor packages need torch >= 2.6")
# the registered forward operators each backend's model calls
FORWARD_OPERATORS = {"cpp": {"egno_fast.egnn_edge_forward", "egno_fast.egnn_node_forward",
                             "egno_fast.temporal_residual_forward"},
                     "triton": {"egno_fast.triton_egnn_edge_forward", "egno_fast.triton_temporal_residual_forward"}}


def called_operators(graph) -> set:
    """The egno_fast operators an FX graph calls (overload names dropped)."""
    targets = {str(node.target) for node in graph.nodes if node.op == "call_function"}
    return {t.removesuffix(".default") for t in targets if t.startswith("egno_fast.")}


def model_and_batches(backend, sizes, device="cpu", dtype=torch.float32, seed=0):
    """A small EGNO and one (x, v, h, graph) batch per (nodes, edges, graphs) in ``sizes``."""
    torch.manual_seed(seed)
    model = EGNO(node_dim=2, edge_dim=1, hidden_dim=16, num_layers=2, num_frames=4, backend=backend)
    model = model.to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for num_nodes, num_edges, num_graphs in sizes:
        batch = torch.arange(num_graphs).repeat_interleave(num_nodes // num_graphs)
        batch = torch.cat([batch, batch.new_full((num_nodes - batch.numel(),), num_graphs - 1)])
        starts = torch.searchsorted(batch, torch.arange(num_graphs))
        counts = torch.bincount(batch, minlength=num_graphs)
        owner = torch.randint(0, num_graphs, (num_edges,), generator=gen)  # edges within each graph
        ends = [starts[owner] + (torch.rand(num_edges, generator=gen) * counts[owner]).long() for _ in range(2)]
        graph = build_graph(torch.stack(ends), num_nodes, torch.randn(num_edges, 1, generator=gen), batch)
        x, v, h = (torch.randn(num_nodes, d, generator=gen) for d in (3, 3, 2))
        batches.append(tuple(t.to(device=device, dtype=dtype) for t in (x, v, h)) + (graph.to(device),))
    return model, batches


def loss_and_gradients(fn, model, batch):
    x = batch[0].clone().requires_grad_()
    out = fn(x, *batch[1:])
    loss = out.x.square().sum() + out.h.square().sum() + out.v.square().sum()
    return [loss.detach(), *torch.autograd.grad(loss, [x, *model.parameters()])]


def check_compiled_model(backend, device, dtype, tolerance):
    """fullgraph compile (inductor) matches eager, forward and backward, then three batches with other numbers of
    edges (and of nodes and graphs) compile at most twice (one recompilation, for dynamic shapes), calling the
    backend's registered operators."""
    model, batches = model_and_batches(backend, [(20, 70, 2), (26, 50, 3), (31, 90, 2)], device, dtype)
    compiled = torch.compile(model, fullgraph=True)
    got = loss_and_gradients(compiled, model, batches[0])
    assert model.active_backend == {"temporal_residual": backend, "egnn_layer": backend}  # set by the compiled run
    for got_value, want in zip(got, loss_and_gradients(model, model, batches[0])):
        torch.testing.assert_close(got_value, want, **tolerance)

    torch._dynamo.reset()
    compiles = []

    def counting_backend(graph_module, example_inputs):
        compiles.append(graph_module)
        return graph_module.forward

    counted = torch.compile(model, fullgraph=True, backend=counting_backend)
    for batch in batches:
        for got, want in zip(loss_and_gradients(counted, model, batch), loss_and_gradients(model, model, batch)):
            torch.testing.assert_close(got, want, **tolerance)
    assert len(compiles) <= 2, f"{len(compiles)} compilations for three edge counts"
    called = set().union(*(called_operators(gm.graph) for gm in compiles))
    assert called == FORWARD_OPERATORS[backend], sorted(called)


@needs_cpp
def test_the_whole_model_compiles_in_one_graph_on_cpp():
    check_compiled_model("cpp", "cpu", torch.float32, dict(rtol=1e-4, atol=1e-5))


def test_the_whole_model_compiles_in_one_graph_on_triton_under_the_interpreter():
    if torch.cuda.is_available() or unavailable_reason("triton", "egnn_layer", "cpu") is not None:
        pytest.skip("runs the Triton operators on CPU tensors (TRITON_INTERPRET=1 without a GPU)")
    check_compiled_model("triton", "cpu", torch.float64, F64)


@pytest.mark.gpu
def test_the_whole_model_compiles_in_one_graph_on_triton():
    check_compiled_model("triton", "cuda", torch.float32, dict(rtol=1e-3, atol=1e-4))


# ---------------------------------------------------------------------------------------------------------------------
# torch.export and AOTInductor (CPU, cpp)
# ---------------------------------------------------------------------------------------------------------------------
SIZES = [(20, 70, 2), (33, 150, 3), (7, 12, 2)]


def _eager(model, batch):
    with torch.no_grad():
        return model.eval()(*batch)


@needs_cpp
@needs_dynamic_export
def test_the_exported_program_runs_other_batch_sizes_and_matches_eager(tmp_path):
    model, batches = model_and_batches("cpp", SIZES)
    program = export_for_inference(model, *batches[0])
    assert called_operators(program.graph) == FORWARD_OPERATORS["cpp"]
    torch.export.save(program, tmp_path / "egno.pt2")
    loaded = torch.export.load(tmp_path / "egno.pt2")
    for batch in batches:  # other numbers of nodes, edges and graphs
        want = _eager(model, batch)
        for program_module in (program.module(), loaded.module()):
            got = program_module(*batch)
            assert type(got).__name__ == "EGNOOutput"
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


@needs_cpp
@needs_dynamic_export
@needs_aoti
def test_an_aot_inductor_package_of_the_exported_program_matches_eager(tmp_path):
    model, batches = model_and_batches("cpp", SIZES)
    program = export_for_inference(model, *batches[0])
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "egno_aoti.pt2"))
    runner = torch._inductor.aoti_load_package(path)
    for batch in batches:
        want = _eager(model, batch)
        got = runner(*batch)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_dynamic_export
def test_export_refuses_an_example_batch_whose_sizes_it_would_fix():
    model, (batch,) = model_and_batches("reference", [(20, 70, 1)])
    with pytest.raises(GraphInputError, match="at least 2 nodes, edges and graphs.*1 graphs"):
        export_for_inference(model, *batch)
    program = export_for_inference(model, *batch, dynamic=False)  # fixed shapes: this batch's sizes only
    torch.testing.assert_close(program.module()(*batch).x, _eager(model, batch).x, rtol=0, atol=0)
