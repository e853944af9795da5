"""Property-based tests (hypothesis, derandomised: the same examples on every run): the whole model on every
backend that runs here against the reference in float64, and the neighbour lists of every backend against brute
force on integer lattices, where distances tie exactly."""
import itertools
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import F64_MODEL
from egno_fast import EGNO
from egno_fast.backends import unavailable_reason
from egno_fast.ops import build_graph, knn_graph, radius_graph

REPRODUCIBLE = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUSED = [b for b in ("cpp", "triton") if unavailable_reason(b, "egnn_layer", "cpu") is None]
if os.environ.get("EGNO_FAST_REQUIRE_EXTENSION") == "1":
    assert "cpp" in FUSED, unavailable_reason("cpp", "egnn_layer", "cpu")
GRAPH_BACKENDS = ["reference"] + (["cpp"] if "cpp" in FUSED else [])
EXAMPLES = {"cpp": 50, "triton": 10}  # the interpreter runs the Triton kernels one program at a time


@st.composite
def model_cases(draw):
    """A tiny EGNO configuration and a batch of 1-3 graphs (edges within each graph, self loops and empty edge
    sets included)."""
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    batch = torch.cat([torch.full((n,), g) for g, n in enumerate(sizes)])
    starts = torch.tensor([0] + list(itertools.accumulate(sizes))[:-1])
    edges = draw(st.lists(st.tuples(st.integers(0, len(sizes) - 1), st.integers(0, 4), st.integers(0, 4)),
                          max_size=20))
    pairs = [(int(starts[g]) + a % sizes[g], int(starts[g]) + b % sizes[g]) for g, a, b in edges]
    edge_index = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2).T
    num_frames = draw(st.integers(1, 5))
    config = dict(hidden_dim=draw(st.integers(2, 8)), num_layers=draw(st.integers(1, 2)), num_frames=num_frames,
                  num_modes=draw(st.integers(0, num_frames // 2 + 1)), edge_dim=draw(st.integers(0, 2)),
                  node_dim=draw(st.integers(1, 2)), time_emb_dim=4)
    seed = draw(st.integers(0, 2**31 - 1))
    return config, batch, edge_index, seed


def _outputs_and_gradients(backend, config, batch, edge_index, seed):
    torch.manual_seed(seed)
    model = EGNO(**config, backend=backend).double()
    gen = torch.Generator().manual_seed(seed)
    n = batch.shape[0]
    x, v = (torch.randn(n, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    h = torch.randn(n, config["node_dim"], generator=gen, dtype=torch.float64)
    edge_attr = torch.randn(edge_index.shape[1], config["edge_dim"], generator=gen, dtype=torch.float64)
    graph = build_graph(edge_index, n, edge_attr, batch)
    x.requires_grad_()
    out = model(x, v, h, graph)
    loss = (out.x * out.x.detach().sin()).sum() + out.v.square().sum() + out.h.square().mean()
    return [o.detach() for o in out[:3]] + list(torch.autograd.grad(loss, [x, *model.parameters()],
                                                                allow_unused=True))


def _check_against_reference(backend, case):
    config, batch, edge_index, seed = case
    want = _outputs_and_gradients("reference", config, batch, edge_index, seed)
    got = _outputs_and_gradients(backend, config, batch, edge_index, seed)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, **F64_MODEL)


@pytest.mark.parametrize("backend", FUSED)
def test_the_model_on_each_fused_backend_equals_the_reference(backend):
    @settings(max_examples=EXAMPLES[backend], **REPRODUCIBLE)
    @given(model_cases())
    def check(case):
        _check_against_reference(backend, case)

    check()


# ---------------------------------------------------------------------------------------------------------------------
# neighbour lists on integer lattices: exact ties
# ---------------------------------------------------------------------------------------------------------------------
@st.composite
def lattice_points(draw):
    """Integer points (many at equal distances), 1-2 graphs, optionally an integer periodic box."""
    count = draw(st.integers(1, 14))
    coords = draw(st.lists(st.tuples(*[st.integers(-3, 3)] * 3), min_size=count, max_size=count))
    split = draw(st.integers(0, count))
    batch = torch.tensor([0] * split + [1] * (count - split)) if draw(st.booleans()) else None
    box = draw(st.one_of(st.none(), st.tuples(*[st.integers(7, 9)] * 3)))
    return coords, batch, box


def _squared_distance(a, b, box):
    total = 0
    for axis in range(3):
        d = abs(a[axis] - b[axis])
        if box is not None:
            d = min(d, box[axis] - d)  # the minimum image (every |d| <= 6 is below the box length)
        total += d * d
    return total


def _candidates(coords, batch):
    n = len(coords)
    for i, j in itertools.permutations(range(n), 2):
        if batch is None or batch[i] == batch[j]:
            yield i, j


def _as_inputs(coords, batch, box):
    pos = torch.tensor(coords, dtype=torch.float64)
    return pos, batch, (None if box is None else torch.tensor(box, dtype=torch.float64))


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
@settings(max_examples=60, **REPRODUCIBLE)
@given(lattice_points(), st.integers(1, 4))
def test_radius_graph_equals_brute_force_with_exact_ties(backend, points, cutoff):
    coords, batch, box = points
    assume(box is None or 2 * cutoff <= min(box))  # the documented limit of a periodic cutoff (refused above it)
    want = sorted((i, j) for i, j in _candidates(coords, batch)
                  if _squared_distance(coords[i], coords[j], box) <= cutoff * cutoff)
    pos, batch_tensor, box_tensor = _as_inputs(coords, batch, box)
    edge_index = radius_graph(pos, float(cutoff), batch_tensor, box_tensor, backend=backend)
    got = sorted(zip(edge_index[1].tolist(), edge_index[0].tolist()))  # (receiver i, sender j)
    assert got == want


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
@settings(max_examples=60, **REPRODUCIBLE)
@given(lattice_points(), st.integers(1, 5))
def test_knn_graph_equals_brute_force_with_ties_to_the_smaller_index(backend, points, k):
    coords, batch, box = points
    want = []
    for i in range(len(coords)):
        others = sorted((_squared_distance(coords[i], coords[j], box), j) for a, j in _candidates(coords, batch)
                        if a == i)
        want += [(i, j) for _, j in others[:k]]
    pos, batch_tensor, box_tensor = _as_inputs(coords, batch, box)
    edge_index = knn_graph(pos, k, batch_tensor, box_tensor, backend=backend)
    got = sorted(zip(edge_index[1].tolist(), edge_index[0].tolist()))
    assert got == sorted(want)


@pytest.mark.skipif("cpp" not in GRAPH_BACKENDS, reason="compares the cpp neighbour lists with the reference's")
@settings(max_examples=200, **REPRODUCIBLE)
@given(st.integers(0, 2**31 - 1), st.booleans())
def test_cpp_and_reference_neighbour_lists_agree_at_float64_ties(seed, periodic):
    """Non-integer float64 points with ties in exact arithmetic (a neighbour and its mirror image with two
    coordinates swapped) and cutoffs at a pair's computed distance and one ulp on either side: the C++ builder (no
    fused multiply-adds or reassociation in its distance code) decides every tie as the reference does."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.rand(10, 3, generator=gen, dtype=torch.float64) * 4 - 2
    offset = torch.rand(3, generator=gen, dtype=torch.float64)
    pos[1], pos[2] = pos[0] + offset, pos[0] + offset[[1, 0, 2]]
    box = torch.full((3,), 8.0, dtype=torch.float64) if periodic else None
    for k in (1, 2, 3):
        assert torch.equal(knn_graph(pos, k, None, box, backend="cpp"),
                           knn_graph(pos, k, None, box, backend="reference")), k
    diff = pos[1] - pos[0]
    distance = float(((diff[0] * diff[0] + diff[1] * diff[1]) + diff[2] * diff[2]).sqrt())
    for cutoff in (distance, math.nextafter(distance, 0.0), math.nextafter(distance, 9.0)):
        assert torch.equal(radius_graph(pos, cutoff, None, box, backend="cpp"),
                           radius_graph(pos, cutoff, None, box, backend="reference")), cutoff
