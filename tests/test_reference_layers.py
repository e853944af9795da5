"""The pure-PyTorch reference layers against independent formulas, symmetries and float64 gradcheck."""
import math

import pytest
import torch

from conftest import random_directed_graph, random_orthogonal
from egno_fast.ops import build_graph
from egno_fast.nn import EGNNLayer, TemporalConv, VectorTemporalConv
from egno_fast.nn.time_embedding import sinusoidal_time_embedding
from egno_fast.ops import temporal_conv_reference


def direct_spectral_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Truncated DFT -> complex channel mixing -> inverse real DFT, written out term by term.

    x [N, P, ..., C_in], weight [C_in, C_out, I, 2]. Only the real parts of the DC bin and (even P) the Nyquist
    bin contribute; other kept bins count twice (their conjugate partner).
    """
    num_frames, num_modes = x.shape[1], weight.shape[2]
    w = torch.complex(weight[..., 0], weight[..., 1]).to(torch.complex128)
    t = torch.arange(num_frames, dtype=torch.float64)
    out = torch.zeros(*x.shape[:-1], weight.shape[1], dtype=torch.float64)
    for k in range(num_modes):
        basis = torch.exp(-2j * math.pi * k * t / num_frames)  # [P]
        coeff = torch.einsum("np...c,p->n...c", x.to(torch.complex128), basis)
        mixed = torch.einsum("n...c,co->n...o", coeff, w[:, :, k])
        self_conjugate = k == 0 or (num_frames % 2 == 0 and k == num_frames // 2)
        for p in range(num_frames):
            term = (mixed * torch.exp(torch.tensor(2j * math.pi * k * p / num_frames, dtype=torch.complex128))).real
            out[:, p] += term if self_conjugate else 2 * term
    return out / num_frames


def test_time_embedding_matches_formula():
    times = torch.arange(5)
    emb = sinusoidal_time_embedding(times, 32)
    freqs = torch.exp(-torch.arange(16, dtype=torch.float64) * math.log(10000) / 15)
    expected = torch.cat([torch.sin(times[:, None] * freqs), torch.cos(times[:, None] * freqs)], dim=1)
    assert emb.shape == (5, 32) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.double(), expected, rtol=1e-6, atol=1e-6)
    # fractional times interpolate the same functions; odd widths pad one zero column
    half = sinusoidal_time_embedding(torch.tensor([0.5], dtype=torch.float64), 33)
    assert half.shape == (1, 33) and half[0, -1] == 0
    torch.testing.assert_close(half[0, :16], torch.sin(0.5 * freqs))


@pytest.mark.parametrize("num_frames", [1, 2, 3, 4, 5, 8, 10])
def test_spectral_conv_matches_direct_dft(num_frames):
    gen = torch.Generator().manual_seed(num_frames)
    for num_modes in range(1, num_frames // 2 + 2):
        x = torch.randn(4, num_frames, 6, generator=gen, dtype=torch.float64)
        weight = torch.randn(6, 5, num_modes, 2, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(temporal_conv_reference(x, weight), direct_spectral_conv(x, weight))
        vec = torch.randn(4, num_frames, 3, 2, generator=gen, dtype=torch.float64)
        wvec = torch.randn(2, 2, num_modes, 2, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(temporal_conv_reference(vec, wvec), direct_spectral_conv(vec, wvec))


def test_spectral_conv_ignores_dc_and_nyquist_imaginary_parts():
    x = torch.randn(3, 4, 2, dtype=torch.float64)
    weight = torch.randn(2, 2, 3, 2, dtype=torch.float64)  # P = 4, I = 3 keeps the Nyquist bin
    changed = weight.clone()
    changed[:, :, 0, 1] += 1.0  # imaginary part of the DC weights multiplies a real DC coefficient ...
    changed[:, :, 2, 1] += 1.0  # ... and likewise at Nyquist: the result's imaginary part is dropped
    torch.testing.assert_close(temporal_conv_reference(x, weight), temporal_conv_reference(x, changed))


def test_spectral_conv_rejects_too_many_modes():
    with pytest.raises(ValueError, match="num_modes"):
        temporal_conv_reference(torch.randn(2, 4, 3), torch.randn(3, 3, 4, 2))


def test_temporal_blocks_residual_and_activation():
    torch.manual_seed(0)
    conv = TemporalConv(6, num_modes=2).double()
    h = torch.randn(5, 4, 6, dtype=torch.float64)
    expected = h + torch.nn.functional.leaky_relu(direct_spectral_conv(h, conv.weight.detach()), 0.01)
    torch.testing.assert_close(conv(h), expected)
    vconv = VectorTemporalConv(2, num_modes=3).double()
    z = torch.randn(5, 4, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(vconv(z), z + direct_spectral_conv(z, vconv.weight.detach()))
    # reference initialisation ranges
    assert 0 <= conv.weight.min() and conv.weight.max() < 1 / 36
    assert 0 <= vconv.weight.min() and vconv.weight.max() < 0.1


def test_vector_temporal_conv_is_rotation_equivariant():
    gen = torch.Generator().manual_seed(1)
    vconv = VectorTemporalConv(2, num_modes=2).double()
    z = torch.randn(7, 5, 3, 2, generator=gen, dtype=torch.float64)
    rot = random_orthogonal(gen)
    rotated = torch.einsum("npdc,de->npec", z, rot)
    torch.testing.assert_close(vconv(rotated), torch.einsum("npdc,de->npec", vconv(z), rot))


def test_temporal_conv_gradcheck():
    torch.manual_seed(2)
    conv = TemporalConv(3, num_modes=2).double()
    vconv = VectorTemporalConv(2, num_modes=3).double()
    h = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 5, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h, w: torch.nn.functional.leaky_relu(temporal_conv_reference(h, w)) + h,
                                    (h, conv.weight.detach().clone().requires_grad_()))
    assert torch.autograd.gradcheck(lambda z, w: temporal_conv_reference(z, w), (z, vconv.weight.detach().clone()
                                                                                  .requires_grad_()))


# ----------------------------------------------------------------------------------------------- EGNN layer

def explicit_egnn_layer(layer: EGNNLayer, x, v, h, edge_index, edge_attr):
    """The EGNN layer with velocity written as loops over receivers i and their incoming edges j -> i
    (edge_index row 0 = sender j, row 1 = receiver i): an independent check of the edge direction."""
    num_nodes, num_frames = x.shape[:2]
    x_out, h_out = torch.empty_like(x), torch.empty_like(h)
    for i in range(num_nodes):
        incoming = (edge_index[1] == i).nonzero().flatten().tolist()
        for p in range(num_frames):
            coord_sum = torch.zeros(3, dtype=x.dtype)
            message_sum = torch.zeros(h.shape[-1], dtype=h.dtype)
            for e in incoming:
                j = int(edge_index[0, e])
                rel = x[i, p] - x[j, p]
                m = layer.edge_mlp(torch.cat([(rel * rel).sum()[None], h[i, p], h[j, p], edge_attr[e]]))
                coord_sum = coord_sum + rel * layer.coord_mlp(m)
                message_sum = message_sum + m
            coord = (coord_sum / max(len(incoming), 1)).clamp(-100, 100)
            x_out[i, p] = x[i, p] + layer.velocity_mlp(h[i, p]) * v[i, p] + coord
            h_out[i, p] = layer.node_mlp(torch.cat([h[i, p], message_sum]))
    return x_out, v, h_out


def make_layer_inputs(seed, num_nodes=6, num_edges=14, num_frames=3, hidden=5, edge_dim=2):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = EGNNLayer(hidden, edge_dim).double()
    edge_index, edge_attr = random_directed_graph(num_nodes, num_edges, gen, edge_dim)
    x = torch.randn(num_nodes, num_frames, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(num_nodes, num_frames, 3, generator=gen, dtype=torch.float64)
    h = torch.randn(num_nodes, num_frames, hidden, generator=gen, dtype=torch.float64)
    return layer, x, v, h, edge_index, edge_attr


def test_egnn_layer_matches_explicit_loops_on_directed_graph():
    layer, x, v, h, edge_index, edge_attr = make_layer_inputs(3)
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    out = layer(x, v, h, graph)
    expected = explicit_egnn_layer(layer, x, v, h, edge_index, edge_attr)
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want)
    # reading edge_index the other way round (row 0 as receiver) gives a different layer output
    flipped = layer(x, v, h, build_graph(edge_index.flip(0), x.shape[0], edge_attr))
    assert not torch.allclose(flipped[0], out[0]) and not torch.allclose(flipped[2], out[2])


def test_egnn_layer_isolated_nodes_keep_mean_finite():
    layer, x, v, h, _, _ = make_layer_inputs(4)
    edge_index = torch.tensor([[0, 1], [1, 0]])  # nodes 2.. receive nothing
    graph = build_graph(edge_index, x.shape[0], torch.randn(2, 2, dtype=torch.float64))
    x_out, _, h_out = layer(x, v, h, graph)
    assert torch.isfinite(x_out).all() and torch.isfinite(h_out).all()
    torch.testing.assert_close(x_out[2:], x[2:] + layer.velocity_mlp(h[2:]) * v[2:])


def test_egnn_layer_e3_and_permutation_equivariance():
    layer, x, v, h, edge_index, edge_attr = make_layer_inputs(5)
    gen = torch.Generator().manual_seed(50)
    rot, shift = random_orthogonal(gen), torch.randn(3, generator=gen, dtype=torch.float64)
    graph = build_graph(edge_index, x.shape[0], edge_attr)
    x_out, v_out, h_out = layer(x, v, h, graph)
    xr, vr, hr = layer(x @ rot + shift, v @ rot, h, graph)
    torch.testing.assert_close(xr, x_out @ rot + shift)
    torch.testing.assert_close(vr, v_out @ rot)
    torch.testing.assert_close(hr, h_out)
    perm = torch.randperm(x.shape[0], generator=gen)
    inverse = torch.argsort(perm)
    permuted_graph = build_graph(inverse[edge_index], x.shape[0], edge_attr)
    xp, vp, hp = layer(x[perm], v[perm], h[perm], permuted_graph)
    torch.testing.assert_close(xp, x_out[perm])
    torch.testing.assert_close(hp, h_out[perm])


def test_egnn_layer_gradcheck():
    layer, x, v, h, edge_index, edge_attr = make_layer_inputs(6, num_nodes=4, num_edges=8, num_frames=2, hidden=3)
    params = list(layer.parameters())

    def run(x, v, h, edge_attr, *weights):
        graph = build_graph(edge_index, x.shape[0], edge_attr)
        x_out, _, h_out = layer(x, v, h, graph)
        return x_out, h_out

    inputs = [t.clone().requires_grad_() for t in (x, v, h, edge_attr)]
    assert torch.autograd.gradcheck(run, (*inputs, *params))
