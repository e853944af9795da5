"""The EGNN layer's node half on the "cpp" backend (egno_fast/ops/egnn_node.py, csrc/cpu/egnn_node_cpu.cpp) against
its reference: outputs and gradients, gradcheck, bad input.
"""

import pytest
import torch

from conftest import F64, import_extension_or_skip
from egnn_cases import make_inputs
from egno_fast.ops.egnn_node import EGNNNodeWeights, egnn_node_cpp, egnn_node_reference
from egno_fast.ops.egnn_edge import EdgeSums

cpp = import_extension_or_skip()


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
        lambda *a: torch.ops.egno_fast.egnn_node_forward(a[0], a[1], a[2], a[3], a[4], degree, *a[5:])[:2],
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
