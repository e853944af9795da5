"""The EGNN layer's edge half on the "cpp" backend as a registered operator (egno_fast/ops/egnn_edge.py,
csrc/cpu/egnn_edge_cpu.cpp): torch.library.opcheck (schema, fake kernel, registered autograd, dynamic shapes) and
float64 gradcheck through the operator."""
import torch

from conftest import import_extension_or_skip, random_directed_graph
from egno_fast.ops import EGNNEdgeWeights, build_graph

cpp = import_extension_or_skip()


def _operator_inputs(seed=0, num_frames=2, hidden=5, edge_dim=3, store=True):
    """The positional inputs of torch.ops.egno_fast.egnn_edge_forward, float64, gradients on a, b, x, the edge
    features and the weights."""
    gen = torch.Generator().manual_seed(seed)
    edge_index, edge_attr = random_directed_graph(6, 16, gen, edge_dim=edge_dim)
    graph = build_graph(edge_index, 6, edge_attr.double())
    rand = lambda *shape: (torch.randn(*shape, generator=gen, dtype=torch.float64) / 2).requires_grad_()  # noqa
    weights = EGNNEdgeWeights(rand(hidden), rand(hidden, edge_dim), rand(hidden, hidden), rand(hidden),
                              rand(hidden, hidden), rand(hidden), rand(hidden), rand(1))
    return (rand(6, num_frames, hidden), rand(6, num_frames, hidden), rand(6, num_frames, 3) * 4,
            graph.edge_attr.clone().requires_grad_(), *weights, graph.rowptr, graph.sender, graph.receiver,
            graph.sender_rowptr, graph.sender_perm, store)


def test_edge_operator_passes_opcheck():
    for store in (True, False):  # activations stored for the backward, or recomputed there
        torch.library.opcheck(torch.ops.egno_fast.egnn_edge_forward, _operator_inputs(store=store))


def test_edge_operator_gradchecks_through_its_registered_autograd():
    inputs = _operator_inputs(seed=1)
    differentiable = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]

    def run(*tensors):
        args = list(inputs)
        for index, tensor in zip(differentiable, tensors):
            args[index] = tensor
        return torch.ops.egno_fast.egnn_edge_forward(*args)[:2]

    assert torch.autograd.gradcheck(run, [inputs[i] for i in differentiable], fast_mode=True)
