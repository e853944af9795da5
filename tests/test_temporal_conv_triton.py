"""The fused Triton temporal convolution against the reference: forward, every gradient, NaN-poisoned outputs,
equivariance, determinism, the model and a training run; and ahead-of-time compilation of every configuration.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set in conftest) in float64; the
compilation for sm_90 / sm_80 runs in a separate process, where the interpreter is off.
"""

import pytest
import torch

from conftest import compile_every_configuration, random_orthogonal
from egno_fast.ops.temporal_conv import temporal_residual_reference, temporal_residual_triton

import egno_fast.kernels.temporal_conv as triton_kernels  # noqa: E402  (triton is a test dependency)
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPE = torch.float32 if ON_GPU else torch.float64  # fp64 dots in the interpreter; the GPU checks fp32
# on a GPU: fp32 kernels against a float64 reference (weight gradients sum N x P products)
TOL = dict(rtol=1e-4, atol=1e-4) if ON_GPU else dict(rtol=1e-10, atol=1e-10)

FRAMES = (1, 2, 3, 4, 5, 8, 10, 16)
WIDTHS = (1, 7, 64, 100, 128)
NODES = (1, 17, 300)
# every (P, I) pair with 1 <= I <= P//2+1; widths and node counts rotate so each value meets several P and I
# (300 nodes only with widths <= 64: the interpreter's time grows with nodes x width)
GRID = [(p, i, WIDTHS[k % len(WIDTHS)],
         17 if WIDTHS[k % len(WIDTHS)] >= 100 and NODES[k % len(NODES)] == 300 else NODES[k % len(NODES)])
        for k, (p, i) in enumerate((p, i) for p in FRAMES for i in range(1, p // 2 + 2))]


def check_against_reference(shape, num_modes, leaky, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE, DTYPE).requires_grad_()
    channels = shape[-1]
    weight = (torch.randn(channels, channels, num_modes, 2, generator=gen, dtype=torch.float64) / channels) \
        .to(DEVICE, DTYPE).requires_grad_()
    out = temporal_residual_triton(x, weight, leaky)
    x64, weight64 = (t.detach().double().requires_grad_() for t in (x, weight))
    expected = temporal_residual_reference(x64, weight64, leaky)
    torch.testing.assert_close(out.double(), expected, **TOL)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(DEVICE, DTYPE)
    got = torch.autograd.grad(out, (x, weight), grad)
    want = torch.autograd.grad(expected, (x64, weight64), grad.double())
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, **TOL)


@pytest.mark.parametrize("num_frames, num_modes, width, nodes", GRID)
def test_scalar_block_matches_reference(num_frames, num_modes, width, nodes):
    check_against_reference((nodes, num_frames, width), num_modes, True, seed=num_frames * 100 + num_modes)


@pytest.mark.parametrize("num_frames", FRAMES)
@pytest.mark.parametrize("channels", (1, 2))
def test_vector_block_matches_reference(num_frames, channels):
    for num_modes in range(1, num_frames // 2 + 2):
        check_against_reference((17, num_frames, 3, channels), num_modes, False, seed=num_frames + 7 * num_modes)


def test_frames_up_to_64():
    check_against_reference((5, 64, 16), 33, True, seed=64)
    check_against_reference((5, 33, 3, 2), 17, False, seed=33)


@pytest.mark.parametrize("mode, leaky, adjoint", [(triton_kernels.MODE_FORWARD, True, False),
                                                  (triton_kernels.MODE_FORWARD, False, True),
                                                  (triton_kernels.MODE_ACT_GRAD, True, False)])
@pytest.mark.parametrize("shape", [(19, 5, 100), (23, 7, 3, 2), (1, 1, 7)])
def test_every_output_element_is_written(mode, leaky, adjoint, shape):
    x = torch.randn(*shape, dtype=DTYPE, device=DEVICE)
    weight = torch.randn(shape[-1], shape[-1], 1, 2, dtype=DTYPE, device=DEVICE)
    out = torch.full_like(x, float("nan"))
    triton_kernels._launch(x, x, weight, out, leaky, mode, adjoint)
    assert torch.isfinite(out).all()


def test_vector_block_rotation_equivariance():
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(9, 6, 3, 2, generator=gen, dtype=torch.float64).to(DEVICE, DTYPE)
    weight = torch.rand(2, 2, 3, 2, generator=gen, dtype=torch.float64).to(DEVICE, DTYPE)
    rot = random_orthogonal(gen).to(DEVICE, DTYPE)
    rotate = lambda t: torch.einsum("npdc,de->npec", t, rot)
    torch.testing.assert_close(temporal_residual_triton(rotate(z), weight, False),
                               rotate(temporal_residual_triton(z, weight, False)), **TOL)


def test_backward_is_bitwise_deterministic():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(40, 8, 64, generator=gen, dtype=torch.float64).to(DEVICE, DTYPE).requires_grad_()
    weight = torch.randn(64, 64, 2, 2, generator=gen, dtype=torch.float64).to(DEVICE, DTYPE).requires_grad_()
    grad = torch.randn(40, 8, 64, generator=gen, dtype=torch.float64).to(DEVICE, DTYPE)
    runs = [torch.autograd.grad(temporal_residual_triton(x, weight, True), (x, weight), grad)
            for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_rejects_unsupported_sizes():
    with pytest.raises(ValueError, match="1 <= P <= 64"):
        triton_kernels.block_config(65, 8)
    with pytest.raises(ValueError, match="weight must be"):
        temporal_residual_triton(torch.randn(2, 4, 3, device=DEVICE), torch.randn(4, 4, 1, 2,
                                                                                                device=DEVICE), True)


# ------------------------------------------------------------------------------------------ the whole model

MIXED = {"temporal_residual": "triton", "egnn_layer": "reference"}


def test_model_with_triton_temporal_convs_matches_reference():
    from test_model import make_model, small_batch

    x, v, h, edge_index, edge_attr, batch = small_batch(9)
    x, v, h, edge_attr = (t.to(DEVICE, DTYPE) for t in (x, v, h, edge_attr))
    edge_index, batch = edge_index.to(DEVICE), batch.to(DEVICE)
    outputs = {}
    for backend in ("reference", MIXED):
        model = make_model(backend=backend).to(DEVICE, DTYPE)
        out = model(x, v, h, edge_index, edge_attr, batch)
        (out.x.square().sum() + out.h.square().sum()).backward()
        outputs[str(backend)] = (out, {n: p.grad for n, p in model.named_parameters()}, model.active_backend)
    (ref, ref_grads, _), (fused, fused_grads, active) = outputs.values()
    assert active == MIXED
    for a, b in zip(ref, fused):
        torch.testing.assert_close(b, a, **TOL)
    for name in ref_grads:
        torch.testing.assert_close(fused_grads[name], ref_grads[name], **TOL)
    # translation and rotation of the input move the prediction alike
    gen = torch.Generator().manual_seed(12)
    rot = random_orthogonal(gen).to(DEVICE, DTYPE)
    shift = torch.randn(3, generator=gen, dtype=torch.float64).to(DEVICE, DTYPE)
    model = make_model(backend=MIXED).to(DEVICE, DTYPE)
    base = model(x, v, h, edge_index, edge_attr, batch).x
    moved = model(x @ rot + shift, v @ rot, h, edge_index, edge_attr, batch).x
    torch.testing.assert_close(moved, base @ rot + shift, **TOL)


def test_training_follows_the_reference_loss_curve(tmp_path):
    from test_training import training_loss_curves

    curves = training_loss_curves(tmp_path, {"reference": "reference", "triton": MIXED}, DEVICE)
    assert len(curves["triton"]) == 3
    torch.testing.assert_close(torch.tensor(curves["triton"]), torch.tensor(curves["reference"]), rtol=1e-4,
                               atol=0)


# --------------------------------------------------------------------------------- ahead-of-time compilation

def test_every_configuration_compiles_for_sm90_without_spills_or_atomics():
    """Every configuration for sm_90 (and the production ones for sm_80): no spills, no atomics."""
    compile_every_configuration("egno_fast.kernels.temporal_conv", production_archs=(80,),
                                spill_free=tuple(f"{name}_" for name, _, _ in triton_kernels.VARIANTS),
                                title="Triton temporal convolution")


def test_reference_and_fused_modules_share_state_dicts():
    from egno_fast.nn import TemporalConv, VectorTemporalConv

    for kind, shape in ((TemporalConv, (6, 5, 12)), (VectorTemporalConv, (6, 5, 3, 2))):
        channels = shape[-1]
        reference = kind(channels, num_modes=2, backend="reference").to(DEVICE, DTYPE)
        fused = kind(channels, num_modes=2, backend="triton").to(DEVICE, DTYPE)
        fused.load_state_dict(reference.state_dict())
        x = torch.randn(*shape, dtype=DTYPE, device=DEVICE)
        torch.testing.assert_close(fused(x), reference(x), **TOL)
        reference.load_state_dict(fused.state_dict())


def test_dispatcher_only_picks_configurations_of_the_compiled_table():
    table = triton_kernels.all_block_configs()
    for frames in range(1, 65):
        for channels in (1, 2, 3, 7, 8, 9, 16, 33, 64, 100, 128, 256):
            assert triton_kernels.block_config(frames, channels) in table, (frames, channels)
