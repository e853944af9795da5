"""The fused Triton EGNN layer against the reference layer: forward and every gradient on the graph kinds of
docs/design.md §5.6, equivariance, determinism, NaN-poisoned outputs, no edge-sized activations, the whole model, a
training run, the patch function and ahead-of-time compilation of every configuration.

Without a GPU the kernel runs in Triton's interpreter in float64 (several owners per step there; the GPU's one-owner
configuration is exercised too); with a GPU the same tests run the compiled kernels in float32 against a float64
reference.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import compile_every_configuration, make_backend_unavailable, random_orthogonal
from egno_fast.nn import EGNNLayer
from egno_fast.ops import EGNNOptions, build_graph, egnn_layer_reference
from egno_fast.ops.egnn import egnn_layer_triton
from egnn_cases import (KINDS, compare_layer_with_reference, graph_of, make_inputs,
                        model_matches_reference_on_nbody_batch, model_matches_reference_on_protein_sized_graph)

import egno_fast.kernels.egnn_edge as egnn_kernels  # noqa: E402  (triton is a test dependency)

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPE = torch.float32 if ON_GPU else torch.float64
TOL = dict(rtol=1e-4, atol=1e-4) if ON_GPU else dict(rtol=1e-9, atol=1e-9)


def compare_with_reference(num_nodes, edge_index, edge_attr, num_frames, hidden, seed=0, atomic=False):
    """The Triton layer (DTYPE, DEVICE; atomic backward if asked) against the float64 reference."""
    egnn_kernels.use_atomic_backward(atomic)
    try:
        compare_layer_with_reference(egnn_layer_triton, num_nodes, edge_index, edge_attr, num_frames,
                                     hidden, seed, DTYPE, DEVICE, TOL)
    finally:
        egnn_kernels.use_atomic_backward(False)


@pytest.mark.parametrize("kind", KINDS)
def test_graph_kinds_match_reference(kind):
    num_nodes, edge_index, edge_attr = graph_of(kind, torch.Generator().manual_seed(KINDS.index(kind)))
    compare_with_reference(num_nodes, edge_index, edge_attr, num_frames=3, hidden=20, seed=KINDS.index(kind))


@pytest.mark.parametrize("num_frames, hidden", [(1, 1), (2, 7), (5, 64), (8, 100), (16, 128), (33, 20), (64, 32)])
def test_frames_and_widths_match_reference(num_frames, hidden):
    num_nodes, edge_index, edge_attr = graph_of("directed", torch.Generator().manual_seed(num_frames))
    compare_with_reference(num_nodes, edge_index, edge_attr, num_frames, hidden, seed=num_frames)


@pytest.mark.parametrize("owners_per_step", [1, 2])
def test_other_owner_blocks_match_reference(monkeypatch, owners_per_step):
    """The GPU's configuration (one owner per step) and a small block, under the interpreter."""
    if not ON_GPU:
        monkeypatch.setattr(egnn_kernels, "INTERPRETER_OWNERS_PER_STEP", owners_per_step)
    for kind in ("isolated", "skewed"):
        num_nodes, edge_index, edge_attr = graph_of(kind, torch.Generator().manual_seed(3))
        compare_with_reference(num_nodes, edge_index, edge_attr, num_frames=5, hidden=16, seed=3)


def test_atomic_backward_matches_reference():
    num_nodes, edge_index, edge_attr = graph_of("skewed", torch.Generator().manual_seed(4))
    compare_with_reference(num_nodes, edge_index, edge_attr, num_frames=4, hidden=24, seed=4, atomic=True)


def test_atomic_backward_is_refused_in_deterministic_mode():
    layer, x, v, h, edge_index, edge_attr = fused_layer_setup()
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    egnn_kernels.use_atomic_backward(True)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="deterministic"):
            layer(x, v, h, graph)
    finally:
        torch.use_deterministic_algorithms(False)
        egnn_kernels.use_atomic_backward(False)


def fused_layer_setup(seed=7, num_frames=4, hidden=16):
    gen = torch.Generator().manual_seed(seed)
    num_nodes, edge_index, edge_attr = graph_of("directed", gen)
    layer, nodes, edge_attr = make_inputs(num_nodes, edge_index, edge_attr, num_frames, hidden, seed)
    layer = layer.to(DEVICE, DTYPE)
    layer.backend = "triton"
    x, v, h = (t.to(DEVICE, DTYPE) for t in nodes)
    return layer, x, v, h, edge_index.to(DEVICE), edge_attr.to(DEVICE, DTYPE)


def test_e3_and_permutation_equivariance():
    layer, x, v, h, edge_index, edge_attr = fused_layer_setup()
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    base = layer(x, v, h, graph)
    gen = torch.Generator().manual_seed(8)
    rot = random_orthogonal(gen).to(DEVICE, DTYPE)
    shift = torch.randn(3, generator=gen, dtype=torch.float64).to(DEVICE, DTYPE)
    moved = layer(x @ rot + shift, v @ rot, h, graph)
    torch.testing.assert_close(moved[0], base[0] @ rot + shift, **TOL)
    torch.testing.assert_close(moved[1], base[1] @ rot, **TOL)
    torch.testing.assert_close(moved[2], base[2], **TOL)
    perm = torch.randperm(x.shape[0], generator=gen).to(DEVICE)
    inverse = torch.argsort(perm)
    permuted = layer(x[perm], v[perm], h[perm], build_graph(inverse[edge_index], x.shape[0], edge_attr))
    for a, b in zip(permuted, base):
        torch.testing.assert_close(a, b[perm], **TOL)


def test_default_backward_is_bitwise_deterministic():
    layer, x, v, h, edge_index, edge_attr = fused_layer_setup()
    x.requires_grad_()
    edge_attr.requires_grad_()
    runs = []
    for _ in range(2):
        out = layer(x, v, h.requires_grad_(), build_graph(edge_index, x.shape[0], edge_attr))
        loss = sum(o.square().sum() for o in out)
        runs.append(torch.autograd.grad(loss, [x, h, edge_attr] + list(layer.parameters())))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("edge_clamp", [None, 0.5])
@pytest.mark.parametrize("mode", [egnn_kernels.MODE_FORWARD, egnn_kernels.MODE_RECEIVER_GRAD,
                                  egnn_kernels.MODE_SENDER_GRAD])
def test_every_output_element_is_written(mode, edge_clamp):
    """Outputs start as NaN; isolated nodes, padded frames and channels must still be written (as zeros), with and
    without the per-edge clamp."""
    gen = torch.Generator().manual_seed(9)
    num_nodes, edge_index, edge_attr = graph_of("isolated", gen)
    graph = build_graph(edge_index.to(DEVICE), num_nodes, edge_attr.to(DEVICE, DTYPE))
    hidden, frames = 20, 3
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE, DTYPE)
    tensors = dict(a=rand(num_nodes, frames, hidden), b=rand(num_nodes, frames, hidden), x=rand(num_nodes, frames, 3),
                   ea=graph.edge_attr, wd=rand(hidden), we=rand(hidden, 2), w2=rand(hidden, hidden), b2=rand(hidden),
                   wc1=rand(hidden, hidden), bc1=rand(hidden), wc2=rand(hidden), bc2=rand(1),
                   gm=rand(num_nodes, frames, hidden), gc=rand(num_nodes, frames, 3))
    nan = lambda t: torch.full_like(t, float("nan"))
    outputs = dict(node_out=nan(tensors["a"]), coord_out=nan(tensors["x"]))
    programs = egnn_kernels._num_programs(tensors["a"], 2)
    block_h = egnn_kernels._launch_config(tensors["a"])["BLOCK_H"]
    if mode != egnn_kernels.MODE_FORWARD:  # the partial weight gradients are summed into zeroed buffers
        outputs.update(part_mat=torch.zeros(programs, 1, block_h, block_h, dtype=DTYPE, device=DEVICE),
                       part_vec=torch.zeros(programs, 5, block_h, dtype=DTYPE, device=DEVICE))
    if mode == egnn_kernels.MODE_SENDER_GRAD:  # the edge-feature gradients
        outputs.update(g_ea=nan(graph.edge_attr), part_we=torch.zeros(programs, block_h, 16, dtype=DTYPE,
                                                                      device=DEVICE))
    csr = ((graph.sender_rowptr, graph.receiver, graph.sender_perm) if mode == egnn_kernels.MODE_SENDER_GRAD
           else (graph.rowptr, graph.sender, graph.sender))
    egnn_kernels._launch(mode, False, edge_clamp, tensors, csr, outputs, programs)
    for name, value in outputs.items():
        assert torch.isfinite(value).all(), name
    for isolated in (0, 5, 9) if mode != egnn_kernels.MODE_SENDER_GRAD else (9,):
        assert not outputs["node_out"][isolated].any() and not outputs["coord_out"][isolated].any()


class _AllocationRecorder(TorchDispatchMode):
    """Records the number of elements of every tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.sizes.append((t.numel(), str(func)))
        return out


def largest_tensors(layer_fn):
    """(largest tensor saved for backward, largest tensor any op allocated) in a forward+backward of layer_fn."""
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    recorder = _AllocationRecorder()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), recorder:
        loss = sum(o.square().sum() for o in layer_fn())
        loss.backward()
    return max(saved), max(recorder.sizes)


def test_no_edge_by_hidden_tensor_is_allocated_or_saved():
    gen = torch.Generator().manual_seed(10)
    num_nodes, hidden, frames, degree = 40, 32, 2, 30
    receiver = torch.arange(num_nodes).repeat_interleave(degree)
    sender = (receiver + torch.randint(1, num_nodes, receiver.shape, generator=gen)) % num_nodes
    edge_index = torch.stack([sender, receiver]).to(DEVICE)
    layer, nodes, edge_attr = make_inputs(num_nodes, edge_index, torch.randn(edge_index.shape[1], 2, generator=gen,
                                                                             dtype=torch.float64), frames, hidden, 10)
    layer = layer.to(DEVICE, DTYPE)
    x, v, h = (t.to(DEVICE, DTYPE).requires_grad_() for t in nodes)
    graph = build_graph(edge_index, num_nodes, edge_attr.to(DEVICE, DTYPE))
    edge_hidden = edge_index.shape[1] * hidden  # E x H = 38400; node tensors are N x P x 2H = 5120 at most
    saved, allocated = largest_tensors(lambda: egnn_layer_triton(x, v, h, graph, layer.weights()))
    assert saved < edge_hidden and allocated[0] < edge_hidden, (saved, allocated)
    # the probe sees the reference's edge-sized tensors
    saved, allocated = largest_tensors(lambda: egnn_layer_reference(x, v, h, graph, layer.weights()))
    assert saved >= edge_hidden * frames and allocated[0] >= edge_hidden * frames


def test_rejects_unsupported_layers_and_sizes():
    with pytest.raises(ValueError, match="1 <= P <= 64"):
        egnn_kernels.block_config(65, 16)
    with pytest.raises(ValueError, match="H <= 128"):
        egnn_kernels.block_config(4, 129)
    layer, x, v, h, edge_index, edge_attr = fused_layer_setup()
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    with pytest.raises(ValueError, match="not supported: options activation"):
        egnn_layer_triton(x, v, h, graph, layer.weights(), EGNNOptions(activation="relu"))


def test_dispatcher_only_picks_configurations_of_the_compiled_table():
    table = egnn_kernels.all_block_configs()
    for frames in range(1, 65):
        for hidden in (1, 2, 16, 17, 31, 32, 33, 64, 65, 100, 128):
            assert egnn_kernels.block_config(frames, hidden) in table, (frames, hidden)


# ------------------------------------------------------------------------------------------ the whole model

def test_model_with_triton_backend_matches_reference_on_nbody_batch():
    model_matches_reference_on_nbody_batch("triton", DTYPE, DEVICE, TOL)


def test_model_with_triton_backend_matches_reference_on_protein_sized_graph():
    model_matches_reference_on_protein_sized_graph("triton", DTYPE, DEVICE, TOL)


def test_training_with_triton_backend_follows_the_reference_loss_curve(tmp_path):
    from test_training import training_loss_curves

    curves = training_loss_curves(tmp_path, {"reference": "reference", "triton": "triton"}, DEVICE)
    assert len(curves["triton"]) == 3
    torch.testing.assert_close(torch.tensor(curves["triton"]), torch.tensor(curves["reference"]), rtol=1e-4, atol=0)


def test_patch_swaps_layers_in_place_and_unpatch_restores_them():
    import egno_fast
    from test_model import make_model, small_batch

    x, v, h, edge_index, edge_attr, batch = small_batch(3)
    model = make_model(backend="reference").to(DEVICE, DTYPE)
    inputs = [t.to(DEVICE, DTYPE) for t in (x, v, h)] + [edge_index.to(DEVICE), edge_attr.to(DEVICE, DTYPE),
                                                          batch.to(DEVICE)]
    state = {k: t.clone() for k, t in model.state_dict().items()}
    parameters = [id(p) for p in model.parameters()]
    expected = model(*inputs)
    assert egno_fast.patch(model) is model
    assert all(layer.backend == "triton" for layer in model.message_layers)
    assert all(conv.backend == "triton" for conv in list(model.scalar_convs) + list(model.vector_convs))
    patched = model(*inputs)
    assert model.active_backend == {"temporal_residual": "triton", "egnn_layer": "triton"}
    assert [id(p) for p in model.parameters()] == parameters
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())
    for a, b in zip(patched, expected):
        torch.testing.assert_close(a, b, **TOL)
    egno_fast.patch(model, "reference", ops=["egnn_layer"])  # a second patch keeps the first saved state
    assert model.message_layers[0].backend == "reference" and model.scalar_convs[0].backend == "triton"
    egno_fast.unpatch(model)
    assert model.backend == "reference"
    assert all(layer.backend == "reference" for layer in model.message_layers)
    with pytest.raises(ValueError, match="not patched"):
        egno_fast.unpatch(model)


def test_patch_of_layers_outside_the_model_and_refusals(monkeypatch):
    import egno_fast
    from egno_fast.nn import TemporalConv

    stack = torch.nn.Sequential(EGNNLayer(8, 2), TemporalConv(8))
    egno_fast.patch(stack, ops=["egnn_layer"])
    assert stack[0].backend == "triton" and stack[1].backend == "reference"
    egno_fast.unpatch(stack)
    assert stack[0].backend == "reference"
    with pytest.raises(ValueError, match="no egno_fast"):
        egno_fast.patch(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown ops"):
        egno_fast.patch(stack, ops=["attention"])
    make_backend_unavailable(monkeypatch, "cpp", "simulated: not built")
    with pytest.raises(egno_fast.BackendUnavailableError, match="cpp.*simulated: not built"):
        egno_fast.patch(stack, "cpp")
    assert stack[0].backend == "reference"  # nothing changed by the refused patch


# --------------------------------------------------------------------------------- ahead-of-time compilation

# The backward passes of the per-edge clamp at H = 128 (which compute phi once more before the fused loop; with or
# without periodic shifts) spill a few hundred bytes per thread, its opt-in atomic pass at H = 64 with 8-frame tiles
# 32; the opt-in atomic pass with periodic shifts at H = 128 16-24 (kernels/README.md); every other configuration is
# spill-free.
_H128 = [f"BLOCK_R1_BLOCK_E{e}_BLOCK_P{p}_BLOCK_H128" for e, p in ((4, 4), (2, 8))]
SPILLING_CONFIGURATIONS = tuple(
    f"{variant}_{extra}tf32_{tag}" for variant in ("receiver_grad", "sender_grad", "receiver_grad_atomic")
    for extra in ("edgeclamp_", "edgeclamp_shift_") for tag in _H128) + tuple(
    f"receiver_grad_atomic_shift_tf32_{tag}" for tag in _H128) + tuple(
    f"receiver_grad_atomic_{extra}tf32_BLOCK_R1_BLOCK_E2_BLOCK_P8_BLOCK_H64"
    for extra in ("edgeclamp_", "edgeclamp_shift_"))


def test_every_configuration_compiles_for_sm90_without_spills_or_atomics():
    """Atomics only in the opt-in atomic variant; the deterministic ones have none (the GPU-independent evidence
    for the determinism claim: under the interpreter programs run one after another). No register spills (no
    stack frame) in any configuration: every block size the dispatcher can pick, every variant and precision."""
    compile_every_configuration("egno_fast.kernels.egnn_edge", atomic_variants={"receiver_grad_atomic"},
                                spill_free=tuple(f"{name}_" for name, _, _ in egnn_kernels.VARIANTS),
                                spill_exempt=SPILLING_CONFIGURATIONS, title="Triton EGNN layer")
