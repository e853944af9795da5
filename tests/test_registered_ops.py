"""Every fused backend of every op is a registered PyTorch operator in the ``egno_fast`` namespace.

For each operator: ``torch.library.opcheck`` (schema, fake kernel, registered autograd, traced with static and
dynamic shapes) on the cpp operators (CPU) and the Triton operators (CPU tensors under the interpreter, tiny sizes),
with dense permuted (non-contiguous) inputs; and float64 gradcheck through each differentiable operator, with the
same inputs. A test checks that the table below covers every operator the namespace has.
"""
import os

import pytest
import torch

from conftest import random_directed_graph
from egno_fast.backends import unavailable_reason
from egno_fast.ops import EGNNEdgeWeights, EGNNNodeWeights, build_graph
from egno_fast.ops.egnn_edge import GRAPH_INPUTS

CPP_REASON = unavailable_reason("cpp", "egnn_layer", "cpu")
TRITON_REASON = unavailable_reason("triton", "egnn_layer", "cpu")
if os.environ.get("EGNO_FAST_REQUIRE_EXTENSION") == "1":
    assert CPP_REASON is None, CPP_REASON
if TRITON_REASON is None:
    import egno_fast.kernels.egnn_edge  # noqa: F401  (importing the kernels registers the Triton operators)
    import egno_fast.kernels.temporal_conv  # noqa: F401,F811
NUM_NODES, NUM_FRAMES, HIDDEN, EDGE_DIM = 6, 3, 5, 3


def permuted(t: torch.Tensor) -> torch.Tensor:
    """The same values in a dense, non-contiguous layout (the first two axes stored transposed)."""
    if t.dim() < 2:
        return t
    return t.transpose(0, 1).contiguous().transpose(0, 1)


def _rand(gen, *shape, scale=0.5):
    return permuted(torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()


def _graph(seed):
    gen = torch.Generator().manual_seed(seed)
    edge_index, edge_attr = random_directed_graph(NUM_NODES, 18, gen, edge_dim=EDGE_DIM)
    return build_graph(edge_index, NUM_NODES, edge_attr)


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values every other element of a buffer twice as long (a non-contiguous 1-D layout)."""
    return torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]


def _graph_args(graph, layout=lambda t: t):
    return [layout(getattr(graph, name)) for name in GRAPH_INPUTS]


EDGE_CLAMP = 0.3  # clamps some components of the coordinate messages of edge_forward_args (a test checks)


def edge_forward_args(seed=0, flag=True, graph_layout=lambda t: t, edge_clamp=None, shifted=False):
    """The inputs of egnn_edge_forward / triton_egnn_edge_forward: node tensors, weights, graph (its index tensors
    passed through ``graph_layout``), then the flag (store_activations / atomic_backward), the edge clamp and, if
    ``shifted``, periodic edge shifts (a constant: no gradient)."""
    gen = torch.Generator().manual_seed(seed)
    graph = _graph(seed)
    n, p, h, f = NUM_NODES, NUM_FRAMES, HIDDEN, EDGE_DIM
    weights = EGNNEdgeWeights(_rand(gen, h), _rand(gen, h, f), _rand(gen, h, h), _rand(gen, h), _rand(gen, h, h),
                              _rand(gen, h), _rand(gen, h), _rand(gen, 1))
    return [_rand(gen, n, p, h), _rand(gen, n, p, h), _rand(gen, n, p, 3, scale=2.0),
            permuted(graph.edge_attr.clone()).requires_grad_(), *weights, *_graph_args(graph, graph_layout), flag,
            edge_clamp, permuted(torch.randn(graph.num_edges, 3, generator=gen, dtype=torch.float64)) if shifted
            else None]


def node_forward_args(seed=0, clamp_mode=0, clamp_value=0.7):
    """The inputs of egnn_node_forward; the clamp (0 per component, 1 norm, 2 none) acts on some rows at 0.7."""
    gen = torch.Generator().manual_seed(seed)
    n, p, h = NUM_NODES, NUM_FRAMES, HIDDEN
    degree = torch.arange(1, n + 1, dtype=torch.float64)
    weights = EGNNNodeWeights(_rand(gen, h, h), _rand(gen, h), _rand(gen, h), _rand(gen, 1), _rand(gen, h, 2 * h),
                              _rand(gen, h), _rand(gen, h, h), _rand(gen, h))
    return [_rand(gen, n, p, h), _rand(gen, n, p, h), _rand(gen, n, p, 3, scale=2.0), _rand(gen, n, p, 3),
            _rand(gen, n, p, 3), degree, *weights, clamp_mode, clamp_value]


def temporal_forward_args(seed=0, vector=False, leaky=True):
    gen = torch.Generator().manual_seed(seed)
    channels = 2 if vector else 4
    shape = (NUM_NODES, 6, 3, channels) if vector else (NUM_NODES, 6, channels)
    return [_rand(gen, *shape), _rand(gen, channels, channels, 3, 2), leaky]


def _detached(args):
    return [a.detach() if isinstance(a, torch.Tensor) else a for a in args]


def _gradients_for(outputs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [permuted(torch.randn(o.shape, generator=gen, dtype=o.dtype)) for o in outputs]


# ------------------------------------------------------------------------------------------ backward inputs
def cpp_edge_backward_args(edge_clamp=None, shifted=False):
    args = _detached(edge_forward_args(edge_clamp=edge_clamp, shifted=shifted))
    msg_sum, coord_sum, activations = torch.ops.egno_fast.egnn_edge_forward(*args)
    return [*_gradients_for((msg_sum, coord_sum)), activations, *args[:-3], *args[-2:]]


def cpp_node_backward_args():
    args = _detached(node_forward_args())
    x_new, h_new, activations = torch.ops.egno_fast.egnn_node_forward(*args)
    h, msg_sum, coord_sum, _x, v, degree, *weights_and_clamp = args
    return [*_gradients_for((x_new, h_new)), activations, h, msg_sum, coord_sum, v, degree, *weights_and_clamp]


def cpp_temporal_backward_args():
    x, weight, leaky = _detached(temporal_forward_args())
    out, pre = torch.ops.egno_fast.temporal_residual_forward(x, weight, leaky)
    return [*_gradients_for((out,)), x, pre, weight, leaky]


def triton_edge_backward_args(convert=lambda value: value, edge_clamp=None, shifted=False):
    """``convert``: where and in which dtype the inputs go (the forward that gives the gradients' shapes runs there)."""
    args = [convert(a) for a in _detached(edge_forward_args(flag=False, edge_clamp=edge_clamp, shifted=shifted))]
    outputs = torch.ops.egno_fast.triton_egnn_edge_forward(*args)
    return [*(convert(g) for g in _gradients_for(o.cpu() for o in outputs)), *args]


def triton_temporal_backward_args(convert=lambda value: value):
    x, weight, leaky = _detached(temporal_forward_args())
    (grad_out,) = _gradients_for((x,))
    return [convert(t) for t in (grad_out, x, weight)] + [leaky, True, True]


SKEWED_CELL = torch.tensor([[4.0, 0.0, 0.0], [1.1, 3.6, 0.0], [-0.8, 0.9, 3.9]], dtype=torch.float64)


def _points(seed=0, num_points=40):
    gen = torch.Generator().manual_seed(seed)
    pos = permuted(torch.rand(3, num_points, generator=gen, dtype=torch.float64).T * 4)
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([num_points // 2, num_points - num_points // 2]))
    return pos, batch


# operator -> (backend, [argument lists]); differentiable ones are gradchecked too
CASES = {
    "egno_fast::egnn_edge_forward": ("cpp", [edge_forward_args(0, True), edge_forward_args(1, False, strided),
                                             edge_forward_args(2, True, edge_clamp=EDGE_CLAMP),
                                             edge_forward_args(3, False, shifted=True)]),
    "egno_fast::egnn_edge_backward": ("cpp", [cpp_edge_backward_args, lambda: cpp_edge_backward_args(EDGE_CLAMP),
                                              lambda: cpp_edge_backward_args(shifted=True)]),
    "egno_fast::egnn_node_forward": ("cpp", [node_forward_args(0, 0), node_forward_args(1, 1), node_forward_args(2, 2)]),
    "egno_fast::egnn_node_backward": ("cpp", [cpp_node_backward_args]),
    "egno_fast::temporal_residual_forward": ("cpp", [temporal_forward_args(), temporal_forward_args(1, True, False)]),
    "egno_fast::temporal_residual_backward": ("cpp", [cpp_temporal_backward_args]),
    "egno_fast::receiver_csr": ("cpp", [lambda: [strided(_graph(0).receiver.flip(0)), NUM_NODES]]),
    "egno_fast::radius_graph": ("cpp", [lambda: [_points()[0], 1.0, _points()[1], None],
                                        lambda: [_points()[0], 1.5, None, torch.full((3,), 4.0, dtype=torch.float64)]]),
    "egno_fast::knn_graph": ("cpp", [lambda: [_points()[0], 4, _points()[1], None]]),
    "egno_fast::periodic_radius_graph": ("cpp", [lambda: [_points()[0], 1.2, SKEWED_CELL[None],
                                                          torch.linalg.inv(SKEWED_CELL)[None], _points()[1]]]),
    "egno_fast::triton_egnn_edge_forward": ("triton", [edge_forward_args(0, False),
                                                       edge_forward_args(1, True, strided),
                                                       edge_forward_args(2, False, edge_clamp=EDGE_CLAMP),
                                                       edge_forward_args(3, False, shifted=True)]),
    "egno_fast::triton_egnn_edge_backward": ("triton", [triton_edge_backward_args,
                                                        lambda **kw: triton_edge_backward_args(edge_clamp=EDGE_CLAMP,
                                                                                               **kw),
                                                        lambda **kw: triton_edge_backward_args(shifted=True, **kw)]),
    "egno_fast::triton_temporal_residual_forward": ("triton", [temporal_forward_args(),
                                                               temporal_forward_args(1, True, False)]),
    "egno_fast::triton_temporal_residual_backward": ("triton", [triton_temporal_backward_args]),
}
DIFFERENTIABLE_OUTPUTS = {"egno_fast::egnn_edge_forward": 2, "egno_fast::egnn_node_forward": 2,
                          "egno_fast::temporal_residual_forward": 1, "egno_fast::triton_egnn_edge_forward": 2,
                          "egno_fast::triton_temporal_residual_forward": 1}


def _operator(name: str):
    namespace, op = name.split("::")
    return getattr(getattr(torch.ops, namespace), op)


def _skip_unless_available(backend: str) -> None:
    reason = CPP_REASON if backend == "cpp" else TRITON_REASON
    if reason is not None:
        pytest.skip(f"backend {backend!r} is unavailable here: {reason}")


def _cases():
    return [pytest.param(name, index, id=f"{name.split('::')[1]}-{index}")
            for name, (_, inputs) in CASES.items() for index in range(len(inputs))]


def _arguments(name: str, index: int):
    backend, inputs = CASES[name]
    _skip_unless_available(backend)
    args = inputs[index]
    return args() if callable(args) else args


def test_the_edge_clamp_cases_clamp_some_coordinate_messages_and_not_all():
    """The clamped cases of the table are meaningful: the reference edge half's messages r phi of those inputs lie
    on both sides of the bound."""
    from egno_fast.ops.egnn_edge import egnn_edge_reference

    args = _detached(edge_forward_args(2, edge_clamp=EDGE_CLAMP))
    a, b, x, edge_attr, *rest = args
    graph = _graph(2)
    weights = EGNNEdgeWeights(*rest[:len(EGNNEdgeWeights._fields)])
    free = egnn_edge_reference(a, b, x, edge_attr, graph, weights).coord_sum
    clamped = egnn_edge_reference(a, b, x, edge_attr, graph, weights, EDGE_CLAMP).coord_sum
    changed = (free - clamped).abs() > 1e-12
    assert 0 < int(changed.sum()) < changed.numel()


def test_the_table_covers_every_operator_of_the_namespace():
    if CPP_REASON is not None or TRITON_REASON is not None:
        pytest.skip("needs both fused backends")
    registered = {name for name in torch._C._dispatch_get_all_op_names() if name.startswith("egno_fast::")}
    assert registered == set(CASES), registered ^ set(CASES)


@pytest.mark.parametrize("name, index", _cases())
def test_operator_passes_opcheck(name, index):
    args = _arguments(name, index)
    assert any(isinstance(a, torch.Tensor) and not a.is_contiguous() for a in args)  # permuted or strided layouts
    torch.library.opcheck(_operator(name), args)


@pytest.mark.parametrize("name, index", [case for case in _cases() if case.values[0] in DIFFERENTIABLE_OUTPUTS])
def test_operator_gradchecks_in_float64(name, index):
    """Through all differentiable outputs, then through each alone (the other's gradient is None: the registered
    backward's no-gradient branch)."""
    args = _arguments(name, index)
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    count = DIFFERENTIABLE_OUTPUTS[name]

    def run_keeping(kept):
        def run(*tensors):
            full = list(args)
            for position, tensor in zip(positions, tensors):
                full[position] = tensor
            result = _operator(name)(*full)
            return tuple(result[k] for k in kept) if isinstance(result, (tuple, list)) else result
        return run

    for kept in [range(count)] + ([[k] for k in range(count)] if count > 1 else []):
        assert torch.autograd.gradcheck(run_keeping(kept), [args[i] for i in positions], fast_mode=True), kept


@pytest.mark.gpu
def test_the_triton_operators_pass_opcheck_on_cuda():
    """The Triton cases of the table on CUDA tensors (float32, the real kernels)."""
    import egno_fast.kernels.egnn_edge  # noqa: F401  (registers the Triton operators)
    import egno_fast.kernels.temporal_conv  # noqa: F401,F811

    def to_cuda(value):
        if not isinstance(value, torch.Tensor):
            return value
        moved = value.detach().to("cuda", torch.float32 if value.is_floating_point() else value.dtype)
        return moved.requires_grad_(value.requires_grad)

    for name, (backend, inputs) in CASES.items():
        if backend != "triton":
            continue
        for args in inputs:
            args = args(convert=to_cuda) if callable(args) else [to_cuda(a) for a in args]
            torch.library.opcheck(_operator(name), args, atol=1e-4, rtol=1e-4)


def test_the_triton_operators_check_shapes_before_a_kernel_reads_them():
    """Called directly, with a weight of the wrong shape: a ValueError naming it, in the operator and in its fake
    kernel (what torch.compile runs), never an out-of-bounds read."""
    _skip_unless_available("triton")
    x, weight, leaky = _detached(temporal_forward_args())
    edge_args = _detached(edge_forward_args())
    edge_args[6] = edge_args[6][:, :2]  # w_msg [H, 2] instead of [H, H]
    calls = [(torch.ops.egno_fast.triton_temporal_residual_forward, (x, weight[:2], leaky), "weight must be"),
             (torch.ops.egno_fast.triton_egnn_edge_forward, edge_args, r"w_msg must have shape \[5, 5\]")]
    for op, args, message in calls:
        with pytest.raises(ValueError, match=message):
            op(*args)
        with torch._subclasses.FakeTensorMode() as mode, pytest.raises(ValueError, match=message):
            op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
