"""The temporal convolution on the "cpp" backend (egno_fast/ops/temporal_conv.py, csrc/cpu/temporal_conv_cpu.cpp)
against the reference: scalar and vector channels, float32 layers, gradcheck.
"""

import pytest
import torch

from conftest import F32, F64, import_extension_or_skip
from egno_fast.nn import TemporalConv, VectorTemporalConv
from egno_fast.ops import temporal_residual_reference
from egno_fast.ops.temporal_conv import temporal_residual_cpp

cpp = import_extension_or_skip()


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
