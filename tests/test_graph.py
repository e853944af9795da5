"""The receiver-sorted CSR graph and input validation."""
import pytest
import torch

from egno_fast.backends import unavailable_reason
from egno_fast.graph import GraphInputError, graph_mean
from egno_fast.ops import build_graph


def test_csr_sorts_by_receiver_and_keeps_edges():
    # 0 -> 2, 1 -> 2, 2 -> 0, 3 -> 1, 1 -> 0 ; node 4 is isolated, edges are directed
    edge_index = torch.tensor([[0, 1, 2, 3, 1], [2, 2, 0, 1, 0]])
    edge_attr = torch.arange(10, dtype=torch.float32).view(5, 2)
    g = build_graph(edge_index, 5, edge_attr)
    assert g.rowptr.dtype == torch.int64
    assert g.rowptr.tolist() == [0, 2, 3, 5, 5, 5]
    assert g.receiver.tolist() == [0, 0, 1, 2, 2]
    assert g.in_degree.tolist() == [2, 1, 2, 0, 0]
    # every sorted edge is the input edge edge_perm[k], with its features
    assert torch.equal(g.sender, edge_index[0, g.edge_perm])
    assert torch.equal(g.receiver, edge_index[1, g.edge_perm])
    assert torch.equal(g.edge_attr, edge_attr[g.edge_perm])
    # the transposed CSR groups the edges by sender
    senders = g.sender[g.sender_perm]
    assert torch.all(senders[1:] >= senders[:-1])
    assert g.sender_rowptr.tolist() == [0, 1, 3, 4, 5, 5]


def test_single_node_and_no_edges():
    g = build_graph(torch.zeros(2, 0, dtype=torch.long), 1)
    assert g.num_edges == 0 and g.rowptr.tolist() == [0, 0]
    assert g.edge_attr.shape == (0, 0)
    assert g.num_graphs == 1


def test_graph_mean_per_graph():
    batch = torch.tensor([0, 0, 1, 1, 1])
    g = build_graph(torch.zeros(2, 0, dtype=torch.long), 5, batch=batch)
    values = torch.tensor([[1.0], [3.0], [0.0], [3.0], [6.0]])
    assert graph_mean(values, g).flatten().tolist() == [2.0, 2.0, 3.0, 3.0, 3.0]


@pytest.mark.parametrize("edge_index, num_nodes, edge_attr, batch, message", [
    (torch.tensor([0, 1]), 3, None, None, "shape \\[2, E\\]"),
    (torch.tensor([[0.0], [1.0]]), 3, None, None, "int64"),
    (torch.tensor([[0, 5], [1, 2]]), 3, None, None, "out of range"),
    (torch.tensor([[0, -1], [1, 2]]), 3, None, None, "out of range"),
    (torch.tensor([[0], [1]]), 3, torch.ones(2, 1), None, "edge_attr must have shape"),
    (torch.tensor([[0], [1]]), 3, torch.tensor([[float("nan")]]), None, "NaN"),
    (torch.tensor([[0], [1]]), 3, torch.ones(1, 1, dtype=torch.long), None, "floating-point"),
    (torch.tensor([[0], [2]]), 3, None, torch.tensor([0, 0, 1]), "different graphs"),
    (torch.tensor([[0], [1]]), 3, None, torch.tensor([1, 0, 0]), "sorted"),
    (torch.tensor([[0], [1]]), 3, None, torch.tensor([0, 0]), "batch must have shape"),
    (torch.zeros(2, 0, dtype=torch.long), 0, None, None, "empty"),
])
def test_bad_graph_inputs_raise_clear_errors(edge_index, num_nodes, edge_attr, batch, message):
    with pytest.raises(GraphInputError, match=message):
        build_graph(edge_index, num_nodes, edge_attr, batch)


def test_validation_can_be_switched_off():
    # an out-of-range index passes unchecked when validate=False (the caller vouches for its inputs)
    g = build_graph(torch.tensor([[0], [1]]), 2, validate=False)
    assert g.num_edges == 1


# ---------------------------------------------------------------------------------------------------------------------
# the reference neighbour lists at the edges of the float64 range
# ---------------------------------------------------------------------------------------------------------------------
def _pairs(edge_index):
    return set(map(tuple, edge_index.T.tolist()))


GRAPH_BACKENDS = ["reference"] + (["cpp"] if unavailable_reason("cpp", "radius_graph", "cpu") is None else [])


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_radius_graph_with_a_huge_cutoff_adds_no_self_loops_or_cross_graph_edges(backend):
    from egno_fast.ops import radius_graph

    pos = torch.randn(7, 3, dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    within = {(j, i) for i in range(7) for j in range(7) if i != j and batch[i] == batch[j]}
    for cutoff in (1e10, 1e200, 1.7e308):  # the squared cutoff overflows float64 for the last two
        assert _pairs(radius_graph(pos, cutoff, batch, backend=backend)) == within, cutoff


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_neighbour_lists_of_points_far_apart_or_close_together(backend):
    """Points 1e300 apart (squared distances overflow float64) or 1e-300 apart (they underflow) keep their edges:
    the same graph as the same points at unit scale (both backends divide by a power of two first)."""
    from egno_fast.ops import knn_graph, radius_graph

    def knn(pos, k):
        return knn_graph(pos, k, backend=backend)

    def radius(pos, cutoff):
        return radius_graph(pos, cutoff, backend=backend)

    gen = torch.Generator().manual_seed(0)
    unit = torch.randint(-8, 9, (12, 3), generator=gen).double()  # an integer lattice: exact ties of distances
    for k in (1, 3, 11):
        want = _pairs(knn(unit, k))
        assert len(want) == 12 * k
        for scale in (2.0 ** 996, 2.0 ** -1000, 3.0 ** 600, 1e-280):
            got = _pairs(knn(unit * scale, k))
            if scale in (2.0 ** 996, 2.0 ** -1000):  # exact scalings: ties broken as at unit scale
                assert got == want, (k, scale)
            else:
                assert len(got) == 12 * k, (k, scale)
    for scale in (2.0 ** 996, 2.0 ** -1000):
        assert _pairs(radius(unit * scale, 5.0 * scale)) == _pairs(radius(unit, 5.0))


def test_sizes_that_would_only_exhaust_memory_are_refused_or_bounded():
    """A batch id of 1e9 (one graph per id would be allocated), k = 2**62 neighbours and a zero hidden width: a
    one-line error or the bounded answer, never an allocator message."""
    from egno_fast import EGNO
    from egno_fast.ops import knn_graph, radius_graph

    pos = torch.randn(6, 3, dtype=torch.float64)
    far = torch.tensor([0, 0, 0, 1, 1, 10**9])
    edge_index = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(GraphInputError, match="batch ids must be below the number of nodes \\(6"):
        build_graph(edge_index, 6, batch=far)
    for build in (lambda: radius_graph(pos, 1.0, far), lambda: knn_graph(pos, 2, far)):
        with pytest.raises(GraphInputError, match="batch ids must be below the number of points \\(6"):
            build()
    everyone = knn_graph(pos, 2**62)
    assert everyone.shape == (2, 30)  # each of the 6 points from all 5 others
    for name, value in (("hidden_dim", 0), ("num_layers", 0), ("time_emb_dim", 2), ("node_dim", -1)):
        with pytest.raises(ValueError, match=f"{name} must be an integer >= "):
            EGNO(**dict(dict(node_dim=1, edge_dim=0), **{name: value}))
