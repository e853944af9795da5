"""Radius and kNN graphs on the "cpp" backend (egno_fast/ops/neighbor_graph.py, csrc/cpu/neighbor_graph_cpu.cpp)
against brute force, with batches, periodic boxes, empty inputs and bad input.
"""

import pytest
import torch

from conftest import import_extension_or_skip
from egno_fast.graph import GraphInputError
from egno_fast.ops import knn_graph, knn_graph_reference, radius_graph, radius_graph_reference

cpp = import_extension_or_skip()


def _clouds():
    gen = torch.Generator().manual_seed(1)
    uniform = torch.rand(2000, 3, generator=gen, dtype=torch.float64) * 10
    # two far-apart clusters: most cells of the bounding box are empty
    clusters = torch.cat([torch.randn(300, 3, generator=gen), torch.randn(300, 3, generator=gen) + 40]).float()
    lattice = torch.stack(torch.meshgrid(*(torch.arange(6.0),) * 3, indexing="ij"), -1).reshape(-1, 3)
    return {"uniform": uniform, "clusters": clusters, "lattice": lattice}


@pytest.mark.parametrize("cloud, periodic", [("uniform", False), ("uniform", True), ("clusters", False),
                                             ("lattice", False), ("lattice", True)])
def test_radius_graph_matches_brute_force(cloud, periodic):
    pos = _clouds()[cloud]
    # on the integer lattice every neighbour is exactly at the cutoff 1.0 (or sqrt 2, 2): the boundary is inclusive
    cutoff = 1.0 if cloud == "lattice" else 1.3
    box = torch.tensor([10.0, 10.0, 12.0]) if periodic and cloud == "uniform" else \
        (torch.tensor([6.0, 6.0, 6.0]) if periodic and cloud == "lattice" else None)
    for c in (cutoff, 2.0 ** 0.5, 2.0) if cloud == "lattice" else (cutoff,):
        got = radius_graph(pos, c, box=box, backend="cpp")
        assert torch.equal(got, radius_graph_reference(pos, c, box=box))
    if cloud == "lattice":
        # a point in the middle: 6 + 12 + 8 neighbours at 1, sqrt 2, sqrt 3 and the 6 exactly at the cutoff 2
        assert (got[1] == 3 * 36 + 3 * 6 + 3).sum() == 32


def test_radius_graph_with_batch_and_empty_inputs():
    gen = torch.Generator().manual_seed(2)
    pos = torch.rand(500, 3, generator=gen) * 4
    batch = torch.arange(5).repeat_interleave(100)
    assert torch.equal(radius_graph(pos, 1.0, batch, backend="cpp"), radius_graph_reference(pos, 1.0, batch))
    assert radius_graph(torch.zeros(0, 3), 1.0, backend="cpp").shape == (2, 0)
    assert radius_graph(torch.zeros(1, 3), 1.0, backend="cpp").shape == (2, 0)


@pytest.mark.parametrize("periodic", [False, True])
def test_knn_graph_matches_brute_force(periodic):
    clouds = _clouds()
    box = torch.tensor([10.0, 10.0, 10.0]) if periodic else None
    for name, k in (("uniform", 8), ("clusters", 17), ("lattice", 6)):
        pos = clouds[name] % 10 if periodic else clouds[name]
        got = knn_graph(pos, k, box=box, backend="cpp")
        assert torch.equal(got, knn_graph_reference(pos, k, box=box)), name
    batch = torch.tensor([0, 0, 0, 1, 1])
    small = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(knn_graph(small, 4, batch, backend="cpp"), knn_graph_reference(small, 4, batch))


def test_graph_builders_refuse_bad_input():
    pos = torch.rand(10, 3)
    with pytest.raises(GraphInputError, match="NaN"):
        radius_graph(torch.full((4, 3), float("nan")), 1.0, backend="cpp")
    with pytest.raises(GraphInputError, match="half the smallest box"):
        radius_graph(pos, 3.0, box=torch.tensor([5.0, 5.0, 5.0]), backend="cpp")
    with pytest.raises(GraphInputError, match="k must be"):
        knn_graph(pos, 0, backend="cpp")
    with pytest.raises(GraphInputError, match="pos must be"):
        radius_graph(pos[:, :2], 1.0, backend="cpp")
    with pytest.raises(RuntimeError, match="box lengths"):
        torch.ops.egno_fast.radius_graph(pos, 1.0, None, torch.tensor([1.0, -1.0, 1.0]))
