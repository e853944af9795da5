"""Contracts shared by every op (egno_fast/ops): named weights that match the C++ schemas, no host synchronisation
on the hot path, graphs changed by hand that cannot crash the process, the layer variants, and no import cycles."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from egno_fast import EGNO
from egno_fast.backends import BackendUnavailableError, unavailable_reason
from egno_fast.graph import GraphInputError
from egno_fast.nn import EGNNLayer
from egno_fast.ops import (EGNNEdgeWeights, EGNNNodeWeights, EGNNOptions, build_graph, egnn_edge_reference,
                           egnn_edge_sums, egnn_layer, egnn_layer_reference)
from egno_fast.ops.egnn import fused_unsupported

from conftest import random_directed_graph, random_orthogonal

ROOT = Path(__file__).resolve().parents[1]
BACKENDS_HERE = ["reference"] + [b for b in ("cpp", "triton") if unavailable_reason(b, "egnn_layer", "cpu") is None]
if os.environ.get("EGNO_FAST_REQUIRE_EXTENSION") == "1":
    assert "cpp" in BACKENDS_HERE, unavailable_reason("cpp", "egnn_layer", "cpu")


def _schema_names(op) -> list:
    return [argument.name for argument in op.default._schema.arguments]


@pytest.mark.skipif("cpp" not in BACKENDS_HERE, reason="the C++ extension is not built here")
def test_weight_fields_are_the_schema_argument_names():
    ops = torch.ops.egno_fast
    edge, node = list(EGNNEdgeWeights._fields), list(EGNNNodeWeights._fields)
    assert _schema_names(ops.egnn_edge_forward)[4:12] == edge
    assert _schema_names(ops.egnn_edge_backward)[7:15] == edge
    assert _schema_names(ops.egnn_node_forward)[6:14] == node
    assert _schema_names(ops.egnn_node_backward)[8:16] == node


def _small_model_inputs(seed=0, num_nodes=12, edge_dim=2):
    gen = torch.Generator().manual_seed(seed)
    edge_index, edge_attr = random_directed_graph(num_nodes, 40, gen, edge_dim=edge_dim)
    x, v = (torch.randn(num_nodes, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    h = torch.randn(num_nodes, 2, generator=gen, dtype=torch.float64)
    return x, v, h, edge_index, edge_attr.double()


class _NoHostSync:
    """Makes every Python-side conversion of a tensor to a host value raise while active."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in self.NAMES}

        def refuse(name):
            def method(*args, **kwargs):
                raise AssertionError(f"Tensor.{name} called on the hot path (a host synchronisation)")
            return method

        for name in self.NAMES:
            setattr(torch.Tensor, name, refuse(name))
        return self

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_forward_and_backward_on_a_prebuilt_graph_never_synchronise(backend):
    x, v, h, edge_index, edge_attr = _small_model_inputs()
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    model = EGNO(node_dim=2, edge_dim=2, hidden_dim=16, num_layers=2, num_frames=4, backend=backend).double()
    model(x, v, h, graph)  # the first forward reports the backend choice (logging, outside the hot path)
    with _NoHostSync():
        out = model(x, v, h, graph)
        (out.x.square().sum() + out.h.square().sum()).backward()
    assert model.active_backend == {"temporal_residual": backend, "egnn_layer": backend}
    with _NoHostSync(), pytest.raises(AssertionError, match="host synchronisation"):
        bool(x.sum() > 0)  # the probe itself works


# ---------------------------------------------------------------------------------------------------------------------
# graphs changed after build_graph
# ---------------------------------------------------------------------------------------------------------------------
def test_graph_stamp_follows_replacement_and_in_place_edits():
    from dataclasses import replace

    x, v, h, edge_index, edge_attr = _small_model_inputs()
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    assert graph.is_unchanged() and graph.to("cpu").is_unchanged()
    replaced = replace(graph, sender=graph.sender.clone())
    assert not replaced.is_unchanged()
    with pytest.raises(GraphInputError, match="changed since"):
        replaced.require_unchanged()
    assert replaced.validated().is_unchanged()
    graph.sender_perm[0] = 10**6
    assert not graph.is_unchanged()
    with pytest.raises(GraphInputError, match="sender_perm must be a permutation"):
        graph.validated()


def test_validation_covers_the_transposed_csr_batch_and_layout():
    from dataclasses import replace

    x, v, h, edge_index, edge_attr = _small_model_inputs()
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    swapped = graph.sender_perm.clone()
    swapped[[0, -1]] = swapped[[-1, 0]]  # still a permutation, no longer sorted by sender
    with pytest.raises(GraphInputError, match="transposed CSR"):
        replace(graph, sender_perm=swapped).validated()
    with pytest.raises(GraphInputError, match="batch ids"):
        replace(graph, batch=torch.full_like(graph.batch, 3)).validated()
    strided = torch.stack([graph.sender, graph.sender], dim=1)[:, 0]
    with pytest.raises(GraphInputError, match="contiguous int64"):
        replace(graph, sender=strided).validated()


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_only_checked_graphs_are_stamped(backend):
    if backend not in BACKENDS_HERE:
        pytest.skip("the C++ extension is not built here")
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    assert build_graph(edge_index, 3, backend=backend).is_unchanged()
    # without validation, only the counting sort has checked the indices
    assert build_graph(edge_index, 3, validate=False, backend=backend).is_unchanged() == (backend == "cpp")


@pytest.mark.skipif("cpp" not in BACKENDS_HERE, reason="the C++ extension is not built here")
def test_cpp_kernels_check_that_rows_hold_their_own_edges():
    from dataclasses import replace

    x, v, h, edge_index, edge_attr = _small_model_inputs()
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    layer = EGNNLayer(8, 2, backend="cpp").double()
    frames = [t[:, None].expand(-1, 2, -1).contiguous() for t in (x, v)]
    hidden = torch.randn(x.shape[0], 2, 8, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="receiver at position .* lies in row"):
        layer(*frames, hidden, replace(graph, receiver=graph.receiver.flip(0).contiguous()))
    swapped = graph.sender_perm.clone()
    swapped[[0, -1]] = swapped[[-1, 0]]
    out = layer(*frames, hidden, replace(graph, sender_perm=swapped))
    with pytest.raises(ValueError, match=r"sender\[sender_perm\] at position"):
        out.h.sum().backward()


CRASH_SCRIPT = r"""
import json, sys, torch
from dataclasses import replace
from egno_fast.nn import EGNNLayer
from egno_fast.ops import build_graph
backend = sys.argv[1]
torch.manual_seed(0)
n, e = 10, 40
edge_index = torch.stack([torch.randint(0, n, (e,)), torch.randint(0, n, (e,))])
graph = build_graph(edge_index, n, torch.randn(e, 1, dtype=torch.float64))
layer = EGNNLayer(8, 1, backend=backend).double()
x, v, h = (torch.randn(n, 3, 3, dtype=torch.float64), torch.randn(n, 3, 3, dtype=torch.float64),
           torch.randn(n, 3, 8, dtype=torch.float64, requires_grad=True))
bad = {}
perm = graph.sender_perm.clone(); perm[3] = 10**9
bad["sender_perm"] = dict(sender_perm=perm)
offsets = graph.sender_rowptr.clone(); offsets[4] = 10**9
bad["sender_rowptr"] = dict(sender_rowptr=offsets)
rowptr = graph.rowptr.clone(); rowptr[5] = 10**9
bad["rowptr"] = dict(rowptr=rowptr)
results = {}
for name, change in bad.items():
    for stage in ("forward", "backward"):
        try:
            out = layer(x, v, h, replace(graph, **change) if stage == "forward" else graph)
            if stage == "backward":  # changed between the forward and the backward
                for key, value in change.items():
                    getattr(graph, key).data.copy_(value)  # unseen by autograd's version check
            out.h.sum().backward()
            results[f"{name}/{stage}"] = "no error"
        except Exception as error:
            results[f"{name}/{stage}"] = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
        finally:
            graph = build_graph(edge_index, n, graph.edge_attr[graph.edge_perm.argsort()])
print(json.dumps(results))
"""


@pytest.mark.parametrize("backend", [b for b in BACKENDS_HERE if b != "reference"])
def test_hand_changed_graphs_raise_instead_of_crashing(backend):
    """Out-of-range sender_perm, sender_rowptr or interior rowptr entries, in the forward and between the forward and
    the backward: a Python exception every time (a crash would end the subprocess with a signal)."""
    run = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, backend], capture_output=True, text=True, cwd=ROOT,
                         timeout=600, env=dict(os.environ, EGNO_FAST_BUILD_VERBOSE="0"))
    assert run.returncode == 0, f"the process ended with {run.returncode}: {run.stderr[-2000:]}"
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == 6
    for case, outcome in results.items():
        assert outcome.startswith(("ValueError", "RuntimeError")) and ("invalid graph" in outcome or case.split("/")[
            0] in outcome), (case, outcome)


# ---------------------------------------------------------------------------------------------------------------------
# the layer variants
# ---------------------------------------------------------------------------------------------------------------------
VARIANTS = [EGNNOptions(activation="relu"), EGNNOptions(activation="leaky_relu", residual=True),
            EGNNOptions(attention=True), EGNNOptions(normalize=True, tanh=True), EGNNOptions(clamp="norm"),
            EGNNOptions(clamp="edge", clamp_value=0.5), EGNNOptions(clamp="none")]


def _layer_inputs(options, seed=3, coord_bias=True):
    torch.manual_seed(seed)
    layer = EGNNLayer(8, 2, options=options, coord_bias=coord_bias).double()
    gen = torch.Generator().manual_seed(seed)
    edge_index, edge_attr = random_directed_graph(9, 30, gen, edge_dim=2)
    graph = build_graph(edge_index, 9, edge_attr.double())
    x, v, h = (torch.randn(9, 3, d, generator=gen, dtype=torch.float64) * 3 for d in (3, 3, 8))
    return layer, graph, x, v, h


@pytest.mark.parametrize("options", VARIANTS, ids=str)
def test_every_variant_of_the_reference_is_e3_equivariant(options):
    layer, graph, x, v, h = _layer_inputs(options)
    rotation = random_orthogonal(torch.Generator().manual_seed(1)).double()
    shift = torch.randn(3, dtype=torch.float64)
    out = egnn_layer_reference(x, v, h, graph, layer.weights(), options)
    moved = egnn_layer_reference(x @ rotation.T + shift, v @ rotation.T, h, graph, layer.weights(), options)
    if options.clamp != "edge":  # a per-component clamp of each message is not rotation-equivariant once it bites
        torch.testing.assert_close(moved.x, out.x @ rotation.T + shift)
    torch.testing.assert_close(moved.h, out.h)


def test_edge_shift_and_per_frame_edge_features_enter_the_reference():
    layer, graph, x, v, h = _layer_inputs(EGNNOptions())
    base = egnn_layer_reference(x, v, h, graph, layer.weights())
    zero = egnn_layer_reference(x, v, h, graph, layer.weights(), edge_shift=torch.zeros(graph.num_edges, 3))
    torch.testing.assert_close(zero.x, base.x)
    shifted = egnn_layer_reference(x, v, h, graph, layer.weights(), edge_shift=torch.ones(graph.num_edges, 3))
    assert not torch.allclose(shifted.x, base.x)
    with pytest.raises(GraphInputError, match=r"edge_shift must be a floating-point tensor \[E, 3\]"):
        egnn_layer_reference(x, v, h, graph, layer.weights(), edge_shift=torch.zeros(2, 3))
    wide = EGNNLayer(8, 2 + 1).double()  # per-frame features are appended after the shared ones
    per_frame = torch.randn(graph.num_edges, 3, 1, dtype=torch.float64)
    out = egnn_layer_reference(x, v, h, graph, wide.weights(), frame_edge_attr=per_frame)
    assert out.h.shape == h.shape
    with pytest.raises(GraphInputError, match="frame_edge_attr must have shape"):
        egnn_layer_reference(x, v, h, graph, wide.weights(), frame_edge_attr=per_frame[:, :2])


FUSED_VARIANTS = [EGNNOptions(clamp="norm"), EGNNOptions(clamp="none"), EGNNOptions(clamp="edge"),
                  EGNNOptions(clamp="mean", clamp_value=0.5), EGNNOptions(clamp="norm", clamp_value=0.5),
                  EGNNOptions(clamp="edge", clamp_value=0.5), EGNNOptions(clamp="edge", clamp_value=0.1)]


@pytest.mark.parametrize("backend", [b for b in BACKENDS_HERE if b != "reference"])
@pytest.mark.parametrize("options", FUSED_VARIANTS, ids=str)
def test_every_clamp_runs_fused_and_equals_the_reference(backend, options):
    """The coordinate clamps "mean", "norm", "edge" and "none" at any bound: the fused layer equals the reference,
    outputs and gradients, with clamping active (bound 0.5: the output differs from the unclamped layer's) or not."""
    layer, graph, x, v, h = _layer_inputs(options)
    unclamped = egnn_layer_reference(x, v, h, graph, layer.weights(), EGNNOptions(clamp="none")).x
    clamped = egnn_layer_reference(x, v, h, graph, layer.weights(), options).x
    assert torch.equal(clamped, unclamped) == (options.clamp_value == 100.0 or options.clamp == "none")
    results = []
    for run in (lambda *a: egnn_layer(*a, options, backend=backend), lambda *a: egnn_layer_reference(*a, options)):
        xs, hs = x.clone().requires_grad_(), h.clone().requires_grad_()
        out = run(xs, v, hs, graph, layer.weights())
        loss = (out.x * out.x.detach().cos()).sum() + out.h.square().sum()
        results.append([out.x.detach(), *torch.autograd.grad(loss, [xs, hs, *layer.parameters()])])
    for got, want in zip(*results):  # float64 to 1e-10: the bound (0.1 too) is the exact float64 value
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", [b for b in BACKENDS_HERE if b != "reference"])
@pytest.mark.parametrize("options", [EGNNOptions(), EGNNOptions(clamp="edge", clamp_value=0.5)], ids=str)
def test_edge_shifts_run_fused_and_equal_the_reference(backend, options):
    """Periodic shifts (lattice vectors of a skewed cell, per edge) added to r = x_i - x_j: the fused layer equals
    the reference, outputs and gradients of x, h and the weights, and the shifts change the result; no gradient
    reaches the shifts (a constant of the graph)."""
    layer, graph, x, v, h = _layer_inputs(options)
    gen = torch.Generator().manual_seed(11)
    cell = torch.tensor([[4.0, 0.0, 0.0], [1.3, 3.5, 0.0], [-0.7, 0.9, 3.8]], dtype=torch.float64)
    images = torch.randint(-1, 2, (graph.num_edges, 3), generator=gen).double()
    shift = (images @ cell).requires_grad_()
    results = []
    for run in (lambda *a: egnn_layer(*a, options, edge_shift=shift, backend=backend),
                lambda *a: egnn_layer_reference(*a, options, edge_shift=shift)):
        xs, hs = x.clone().requires_grad_(), h.clone().requires_grad_()
        out = run(xs, v, hs, graph, layer.weights())
        loss = (out.x * out.x.detach().cos()).sum() + out.h.square().sum()
        *grads, g_shift = torch.autograd.grad(loss, [xs, hs, *layer.parameters(), shift], allow_unused=True)
        assert g_shift is None
        results.append([out.x.detach(), out.h.detach(), *grads])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
    unshifted = egnn_layer(x, v, h, graph, layer.weights(), options, backend=backend)
    assert not torch.allclose(unshifted.x, results[0][0])
    with pytest.raises(GraphInputError, match="edge_shift must be a floating-point tensor"):
        egnn_layer(x, v, h, graph, layer.weights(), options, edge_shift=shift[:3], backend=backend)


@pytest.mark.parametrize("backend", [b for b in BACKENDS_HERE if b != "reference"])
def test_fused_backends_refuse_variants_they_do_not_run_and_auto_reports_the_reference(backend):
    for options in VARIANTS:
        if options.clamp != "mean" and fused_unsupported(options) is None:  # run fused (the test above)
            continue
        layer, graph, x, v, h = _layer_inputs(options)
        with pytest.raises(BackendUnavailableError, match=f"backend '{backend}' cannot run 'egnn_layer'.*not "
                                                          "supported"):
            egnn_layer(x, v, h, graph, layer.weights(), options, backend=backend)
    layer, graph, x, v, h = _layer_inputs(EGNNOptions())
    assert fused_unsupported(EGNNOptions(), weights=layer.weights()) is None


@pytest.mark.skipif("cpp" not in BACKENDS_HERE, reason="the C++ extension is not built here")
def test_auto_passes_over_a_fused_backend_for_a_variant_and_says_so(caplog):
    options = EGNNOptions(tanh=True)
    layer, graph, x, v, h = _layer_inputs(options)
    with caplog.at_level("INFO", logger="egno_fast"):
        out = egnn_layer(x, v, h, graph, layer.weights(), options, backend="auto")
    assert "passes over 'cpp'" in caplog.text and "tanh" in caplog.text
    torch.testing.assert_close(out.x, egnn_layer_reference(x, v, h, graph, layer.weights(), options).x)


def test_normalised_messages_have_finite_gradients_on_self_loops():
    options = EGNNOptions(normalize=True)
    layer = EGNNLayer(8, 0, options=options).double()
    graph = build_graph(torch.tensor([[0, 1, 1], [0, 0, 1]]), 2)  # two self loops: r = 0
    x, v = (torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    h = torch.randn(2, 2, 8, dtype=torch.float64, requires_grad=True)
    out = egnn_layer_reference(x, v, h, graph, layer.weights(), options)
    grads = torch.autograd.grad(out.x.sum() + out.h.sum(), [x, h, *layer.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.skipif("triton" not in BACKENDS_HERE, reason="Triton runs here only under TRITON_INTERPRET=1")
def test_the_triton_edge_half_checks_shapes_before_launching():
    a, b, x, edge_attr, graph, weights = _edge_inputs()
    with pytest.raises(ValueError, match=r"w_msg must have shape \[6, 6\]"):
        egnn_edge_sums(a, b, x, edge_attr, graph, weights._replace(w_msg=weights.w_msg[:, :5]), backend="triton")
    strided = EGNNEdgeWeights(*(w.t().contiguous().t() if w.dim() == 2 else w for w in weights))
    torch.testing.assert_close(egnn_edge_sums(a, b, x, edge_attr, graph, strided, backend="triton").msg_sum,
                               egnn_edge_reference(a, b, x, edge_attr, graph, weights).msg_sum)


@pytest.mark.parametrize("backend", [b for b in BACKENDS_HERE if b != "reference"])
def test_a_bias_free_coordinate_output_runs_fused(backend):
    layer, graph, x, v, h = _layer_inputs(EGNNOptions(), coord_bias=False)
    assert layer.coord_mlp[2].bias is None
    fused = egnn_layer(x, v, h, graph, layer.weights(), backend=backend)
    reference = egnn_layer_reference(x, v, h, graph, layer.weights())
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b)


def test_options_are_validated():
    with pytest.raises(ValueError, match="activation must be one of"):
        EGNNOptions(activation="gelu")
    with pytest.raises(ValueError, match="clamp must be one of"):
        EGNNOptions(clamp="sometimes")
    with pytest.raises(ValueError, match="clamp_value must be positive"):
        EGNNOptions(clamp_value=0)


# ---------------------------------------------------------------------------------------------------------------------
# the edge half as an op of tensors: gradcheck and agreement across backends
# ---------------------------------------------------------------------------------------------------------------------
def _edge_inputs(seed=5, num_frames=2, hidden=6, edge_dim=3):
    gen = torch.Generator().manual_seed(seed)
    edge_index, edge_attr = random_directed_graph(7, 20, gen, edge_dim=edge_dim)
    graph = build_graph(edge_index, 7, edge_attr.double())
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64) / 2  # noqa: E731
    a, b = rand(7, num_frames, hidden), rand(7, num_frames, hidden)
    x = rand(7, num_frames, 3) * 4
    weights = EGNNEdgeWeights(rand(hidden), rand(hidden, edge_dim), rand(hidden, hidden), rand(hidden),
                              rand(hidden, hidden), rand(hidden), rand(hidden), rand(1))
    return a, b, x, graph.edge_attr, graph, weights


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_edge_sums_gradcheck_and_match_the_reference(backend):
    a, b, x, edge_attr, graph, weights = _edge_inputs()
    tensors = [t.clone().requires_grad_() for t in (a, b, x, edge_attr, *weights)]

    def run(*t):
        return tuple(egnn_edge_sums(t[0], t[1], t[2], t[3], graph, EGNNEdgeWeights(*t[4:]), backend=backend))

    assert torch.autograd.gradcheck(run, tensors, fast_mode=True)
    for got, want in zip(run(*tensors), egnn_edge_reference(a, b, x, edge_attr, graph, weights)):
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------------------------------------------------
# import structure
# ---------------------------------------------------------------------------------------------------------------------
def _module_level_imports(path: Path, module: str) -> set:
    """The egno_fast modules that ``module`` imports when it is imported (function bodies and TYPE_CHECKING blocks
    excluded)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", []) +
                      [n for handler in getattr(node, "handlers", []) for n in handler.body])
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("egno_fast"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                if target.startswith("egno_fast"):
                    found.add(target)
                    found.update(f"{target}.{alias.name}" for alias in node.names)
    visit(tree.body)
    return found


def test_the_package_has_no_import_cycles():
    """No chain of module-level imports leads back to its start. Importing a submodule first imports its package
    (an implicit edge); a cycle through that edge is a package importing its own submodules, which is allowed when
    every module of the cycle lies inside that package."""
    modules = {}
    for path in (ROOT / "egno_fast").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in (ROOT / "kernels").glob("*.py"):
        modules["egno_fast.kernels" + ("" if path.stem == "__init__" else f".{path.stem}")] = path
    edges = {name: {(m, False) for m in _module_level_imports(path, name) if m in modules and m != name}
             for name, path in modules.items()}
    for name in modules:
        parent = name.rsplit(".", 1)[0]
        if parent != name and parent in modules:
            edges[name].add((parent, True))
    state, stack = {}, []  # stack: (module, whether the edge into it was implicit)

    def visit(node):
        state[node] = "open"
        for nxt, implicit in sorted(edges[node]):
            stack.append((nxt, implicit))
            if state.get(nxt) == "open":
                start = [n for n, _ in stack].index(nxt)
                cycle = [node_ for node_, _ in stack[start:]]
                packages = [n for n, imp in stack[start + 1:] if imp]
                inside = packages and all(m == packages[0] or m.startswith(packages[0] + ".") for m in cycle)
                assert inside, "import cycle: " + " -> ".join(cycle)
            elif nxt not in state:
                visit(nxt)
            stack.pop()
        state[node] = "done"

    for node in sorted(modules):
        if node not in state:
            stack[:] = [(node, False)]
            visit(node)


def test_the_references_trace_whole_under_torch_compile():
    """The reference path is plain PyTorch: the benchmarks' compile baseline traces it in one graph."""
    from egno_fast.ops import temporal_residual_reference

    layer, graph, x, v, h = _layer_inputs(EGNNOptions())
    compiled = torch.compile(egnn_layer_reference, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x, v, h, graph, layer.weights()), egnn_layer_reference(x, v, h, graph,
                                                                                         layer.weights())):
        torch.testing.assert_close(got, want)
    weight = torch.randn(8, 8, 2, 2, dtype=torch.float64)
    conv = torch.compile(temporal_residual_reference, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(conv(h, weight, True), temporal_residual_reference(h, weight, True))


def test_the_reference_modules_trace_whole_through_the_backend_choice():
    """What the benchmarks compile: the modules on the "reference" backend, dispatch included, in one graph."""
    from egno_fast.nn import TemporalConv

    layer, graph, x, v, h = _layer_inputs(EGNNOptions())
    conv = TemporalConv(8).double()

    def step(x, v, h):
        x, v, h = layer(x, v, h, graph)
        return x, conv(h)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x, v, h), step(x, v, h)):
        torch.testing.assert_close(got, want)
