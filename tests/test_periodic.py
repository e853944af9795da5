"""Periodic cells of any shape: the minimum-image neighbour search (against ASE's neighbor_list), the graph's edge
shifts in the model, and the invariances a periodic model needs (lattice images, rotation of the whole system,
translation, and agreement with a replicated non-periodic supercell)."""
import logging

import pytest
import torch

from conftest import random_orthogonal
from egno_fast import EGNO, GraphInputError, build_graph, periodic_radius_graph
from egno_fast.backends import unavailable_reason
from egno_fast.ops import periodic_radius_graph_reference, perpendicular_widths, radius_graph

ase = pytest.importorskip("ase")  # a test dependency
from ase.neighborlist import neighbor_list  # noqa: E402

SKEWED = torch.tensor([[6.0, 0.0, 0.0], [2.1, 5.5, 0.0], [-1.4, 1.7, 5.8]], dtype=torch.float64)
MODEL_BACKENDS = ["reference"] + [b for b in ("cpp", "triton") if unavailable_reason(b, "egnn_layer", "cpu") is None]


def rotated_cell(seed=3):
    """SKEWED turned by a random rotation: a cell matrix that is not lower-triangular."""
    return SKEWED @ random_orthogonal(torch.Generator().manual_seed(seed)).double().T


def ase_edges(pos, cell, cutoff):
    """{(sender, receiver): shift} from ASE, in this package's convention (r = x_i - x_j + s for edge j -> i)."""
    atoms = ase.Atoms(positions=pos.numpy(), cell=cell.numpy(), pbc=True)
    first, second, images = neighbor_list("ijS", atoms, cutoff)
    # ASE: D = x_second - x_first + S @ cell; here the edge second -> first has r = x_first - x_second + s = -D
    shifts = -torch.from_numpy(images).double() @ cell
    return {(int(j), int(i)): shift for i, j, shift in zip(first, second, shifts)}


def edges_of(result):
    return {(int(s), int(r)): shift for (s, r), shift in zip(result.edge_index.T.tolist(), result.edge_shift)}


@pytest.mark.parametrize("cell", [SKEWED, rotated_cell(), torch.diag(torch.tensor([6.0, 7.0, 5.5])).double()],
                         ids=["skewed", "rotated", "orthorhombic"])
def test_minimum_image_edges_equal_ase(cell):
    """Every backend's edges and shifts equal ASE's neighbor_list on skewed, rotated (not lower-triangular) and
    orthorhombic cells, with atoms given outside the cell too; r = x_i - x_j + s is within the cutoff."""
    gen = torch.Generator().manual_seed(0)
    fractional = torch.rand(60, 3, generator=gen, dtype=torch.float64) * 1.6 - 0.3  # some atoms outside the cell
    pos = fractional @ cell
    cutoff = 0.49 * float(perpendicular_widths(cell).min())
    expected = ase_edges(pos, cell, cutoff)
    for backend in ("reference", "auto"):
        result = periodic_radius_graph(pos, cutoff, cell, backend=backend)
        found = edges_of(result)
        assert set(found) == set(expected) and len(found) == result.edge_index.shape[1]
        for pair, shift in found.items():
            torch.testing.assert_close(shift, expected[pair], rtol=0, atol=1e-9)
        r = pos[result.edge_index[1]] - pos[result.edge_index[0]] + result.edge_shift
        assert bool((r.norm(dim=-1) <= cutoff + 1e-12).all())
        assert torch.equal(result.edge_index, result.edge_index[:, torch.argsort(
            result.edge_index[1] * 1000 + result.edge_index[0])])  # sorted by receiver, then sender


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_cpp_search_equals_the_reference_on_every_cell(dtype):
    """Cell lists in fractional coordinates (any cell, one per graph or shared, bins fewer than 3 per axis or many,
    a left-handed cell) give exactly the reference's edges and shifts."""
    if unavailable_reason("cpp", "periodic_radius_graph", "cpu") is not None:
        pytest.skip("the C++ extension is not built here")
    gen = torch.Generator().manual_seed(1)
    cells = [SKEWED, rotated_cell(), torch.diag(torch.tensor([5.0, 6.0, 7.0])).double(), SKEWED * 4,
             torch.diag(torch.tensor([-10.0, 10.0, 10.0])).double()]
    for cell in cells:
        pos = ((torch.rand(150, 3, generator=gen, dtype=torch.float64) * 1.4 - 0.2) @ cell).to(dtype)
        cutoff = 0.45 * float(perpendicular_widths(cell).min()) / (4 if cell is cells[3] else 1)
        cpp = periodic_radius_graph(pos, cutoff, cell, backend="cpp")
        reference = periodic_radius_graph(pos, cutoff, cell, backend="reference")
        assert torch.equal(cpp.edge_index, reference.edge_index) and cpp.edge_index.shape[1] > 0
        assert torch.equal(cpp.edge_shift, reference.edge_shift) and cpp.edge_shift.dtype == dtype
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([40, 1, 60]))
    pos = torch.rand(101, 3, generator=gen, dtype=torch.float64) * 6
    per_graph = torch.stack([SKEWED, rotated_cell(7), SKEWED * 1.2])
    for cell in (SKEWED, per_graph):
        cpp = periodic_radius_graph(pos, 2.5, cell, batch, backend="cpp")
        reference = periodic_radius_graph(pos, 2.5, cell, batch, backend="reference")
        assert torch.equal(cpp.edge_index, reference.edge_index) and torch.equal(cpp.edge_shift, reference.edge_shift)


def test_auto_runs_the_cell_lists_on_the_cpu_for_any_cell():
    if unavailable_reason("cpp", "periodic_radius_graph", "cpu") is not None:
        pytest.skip("the C++ extension is not built here")
    from egno_fast.ops.neighbor_graph import _cpp_periodic_unsupported

    assert _cpp_periodic_unsupported(SKEWED[None], device_type="cpu") is None
    # on CUDA the cpp search takes one orthorhombic cell: "auto" passes other cells to the reference, saying so
    assert "orthorhombic" in _cpp_periodic_unsupported(SKEWED[None], device_type="cuda")
    assert _cpp_periodic_unsupported(torch.diag(torch.tensor([5.0, 6.0, 7.0]))[None], device_type="cuda") is None


def test_one_cell_per_graph_of_a_batch():
    gen = torch.Generator().manual_seed(2)
    cells = torch.stack([SKEWED, rotated_cell(5) * 1.1])
    frac = torch.rand(2, 30, 3, generator=gen, dtype=torch.float64)
    pos = torch.cat([frac[0] @ cells[0], frac[1] @ cells[1]])
    batch = torch.repeat_interleave(torch.arange(2), 30)
    result = periodic_radius_graph(pos, 2.5, cells, batch)
    assert bool((batch[result.edge_index[0]] == batch[result.edge_index[1]]).all())
    for g in range(2):
        alone = edges_of(periodic_radius_graph(pos[batch == g], 2.5, cells[g]))
        found = {(s - 30 * g, r - 30 * g): shift for (s, r), shift in edges_of(result).items() if batch[r] == g}
        assert set(found) == set(alone)


def test_bad_cells_and_cutoffs_are_refused_by_name():
    pos = torch.rand(10, 3, dtype=torch.float64)
    width = float(perpendicular_widths(SKEWED).min())
    with pytest.raises(GraphInputError, match=rf"cutoff \(3.5\) must be at most half the cell's smallest "
                                              rf"perpendicular width \({width:.6g}\)"):
        periodic_radius_graph(pos, 3.5, SKEWED)
    flat = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]], dtype=torch.float64)
    with pytest.raises(GraphInputError, match="zero volume"):
        periodic_radius_graph(pos, 0.1, flat)
    with pytest.raises(GraphInputError, match="cell must be a floating-point tensor"):
        periodic_radius_graph(pos, 0.1, torch.eye(2, dtype=torch.float64))
    with pytest.raises(GraphInputError, match="NaN"):
        periodic_radius_graph(pos, 0.1, SKEWED * float("nan"))
    with pytest.raises(GraphInputError, match="one \\[3, 3\\] cell per graph"):
        periodic_radius_graph(pos, 0.1, torch.stack([SKEWED] * 3), torch.zeros(10, dtype=torch.long))


# ------------------------------------------------------------------------------------------------ the model

def periodic_system(num_atoms=12, seed=0, cell=SKEWED):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.rand(num_atoms, 3, generator=gen, dtype=torch.float64) @ cell
    vel = torch.randn(num_atoms, 3, generator=gen, dtype=torch.float64) * 0.3
    h = torch.randn(num_atoms, 2, generator=gen, dtype=torch.float64)
    return pos, vel, h


def periodic_model(backend, vector_centre="input", num_layers=2):
    torch.manual_seed(0)
    model = EGNO(node_dim=2, edge_dim=1, hidden_dim=16, num_layers=num_layers, num_frames=4,
                 vector_centre=vector_centre, backend=backend).double()
    with torch.no_grad():  # weights away from the initialisation's near-zero coordinate messages
        for layer in model.message_layers:
            layer.coord_mlp[-1].weight.mul_(20.0)
    return model


def predict(model, pos, vel, h, cell, cutoff=2.6):
    """Predicted displacements [P, N, 3] from the input positions, on the minimum-image graph with edge features
    |r|^2."""
    edges = periodic_radius_graph(pos, cutoff, cell)
    r = pos[edges.edge_index[1]] - pos[edges.edge_index[0]] + edges.edge_shift
    graph = build_graph(edges.edge_index, pos.shape[0], (r * r).sum(-1, keepdim=True), edge_shift=edges.edge_shift)
    return model(pos, vel, h, graph).x - pos


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_predictions_do_not_depend_on_the_lattice_images_of_the_atoms(backend):
    """Atoms moved by lattice vectors (another image of the same system): with vector_centre="input" the predicted
    displacements are unchanged; the paper's centring on the mean ("mean") is not invariant (why the option
    exists)."""
    pos, vel, h = periodic_system()
    moved = pos + torch.randint(-2, 3, pos.shape, generator=torch.Generator().manual_seed(4)).double() @ SKEWED
    model = periodic_model(backend)
    torch.testing.assert_close(predict(model, moved, vel, h, SKEWED), predict(model, pos, vel, h, SKEWED),
                               rtol=1e-9, atol=1e-9)
    assert model.active_backend["egnn_layer"] == backend
    mean_centred = periodic_model(backend, vector_centre="mean")  # warns once that it is image-dependent
    assert not torch.allclose(predict(mean_centred, moved, vel, h, SKEWED), predict(mean_centred, pos, vel, h, SKEWED),
                              atol=1e-6)


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_rotating_the_whole_system_rotates_the_prediction_and_translating_it_changes_nothing(backend):
    pos, vel, h = periodic_system(seed=1)
    rotation = random_orthogonal(torch.Generator().manual_seed(8)).double()
    model = periodic_model(backend)
    base = predict(model, pos, vel, h, SKEWED)
    turned = predict(model, pos @ rotation.T, vel @ rotation.T, h, SKEWED @ rotation.T)
    torch.testing.assert_close(turned, base @ rotation.T, rtol=1e-9, atol=1e-9)
    shifted = predict(model, pos + torch.tensor([0.7, -3.1, 12.0], dtype=torch.float64), vel, h, SKEWED)
    torch.testing.assert_close(shifted, base, rtol=1e-9, atol=1e-9)


def test_an_edge_across_the_boundary_acts_as_in_a_replicated_supercell():
    """The periodic model's prediction for the atoms of the cell equals the non-periodic model's for the central
    copy of a 5 x 5 x 5 supercell (two layers see two cutoffs away: the copies around the centre hold all of it)."""
    pos, vel, h = periodic_system(num_atoms=6, seed=2)
    model = periodic_model("reference")
    periodic = predict(model, pos, vel, h, SKEWED)
    copies = torch.cartesian_prod(*[torch.arange(-2, 3)] * 3).double() @ SKEWED  # [125, 3], the centre is 62
    big_pos = (pos[None] + copies[:, None]).reshape(-1, 3)
    big_vel, big_h = vel.repeat(len(copies), 1), h.repeat(len(copies), 1)
    edge_index = radius_graph(big_pos, 2.6)
    r = big_pos[edge_index[1]] - big_pos[edge_index[0]]
    out = model(big_pos, big_vel, big_h, edge_index, (r * r).sum(-1, keepdim=True)).x - big_pos
    centre = out.reshape(out.shape[0], len(copies), pos.shape[0], 3)[:, 62]
    torch.testing.assert_close(centre, periodic, rtol=1e-9, atol=1e-9)


def test_the_graph_carries_its_shifts_through_pytrees_and_the_layers():
    import torch.utils._pytree as pytree

    pos, vel, h = periodic_system(seed=3)
    edges = periodic_radius_graph(pos, 2.6, SKEWED)
    graph = build_graph(edges.edge_index, pos.shape[0], edge_shift=edges.edge_shift)
    leaves, spec = pytree.tree_flatten(graph)
    rebuilt = pytree.tree_unflatten(leaves, spec)
    assert torch.equal(rebuilt.edge_shift, graph.edge_shift) and len(leaves) == 10
    model = EGNO(node_dim=2, edge_dim=0, hidden_dim=8, num_layers=1, num_frames=3, vector_centre="input").double()
    torch.testing.assert_close(model(pos, vel, h, graph).x,
                               model(pos, vel, h, edges.edge_index, edge_shift=edges.edge_shift).x)
    with pytest.raises(GraphInputError, match="edge_shift"):
        model(pos, vel, h, graph, edge_shift=edges.edge_shift)
    with pytest.raises(GraphInputError, match="edge_shift must have shape \\[E, 3\\]"):
        build_graph(edges.edge_index, pos.shape[0], edge_shift=edges.edge_shift[:, :2])
    with pytest.raises(ValueError, match="vector_centre must be one of"):
        EGNO(node_dim=2, edge_dim=0, vector_centre="origin")


@pytest.mark.skipif(unavailable_reason("cpp", "egnn_layer", "cpu") is not None, reason="needs the C++ extension")
def test_a_periodic_model_compiles_and_exports_with_its_shifts():
    """torch.compile (fullgraph) and torch.export of a model on a graph with edge shifts: the shifts are an input of
    the program (a graph leaf) and the results equal eager on another batch."""
    from egno_fast import export_for_inference

    if not hasattr(torch.export, "ShapesCollection") or not hasattr(torch.export.Dim, "AUTO"):
        pytest.skip("dynamic export needs torch >= 2.6")
    model = periodic_model("cpp").float()

    def system(seed, atoms):  # two periodic systems in one batch, each with its cell
        parts = [periodic_system(atoms + k, seed + k, SKEWED * (1 + 0.1 * k)) for k in range(2)]
        pos, vel, h = (torch.cat([part[i] for part in parts]).float() for i in range(3))
        batch = torch.repeat_interleave(torch.arange(2), torch.tensor([atoms, atoms + 1]))
        edges = periodic_radius_graph(pos, 2.6, torch.stack([SKEWED, SKEWED * 1.1]).float(), batch)
        return pos, vel, h, build_graph(edges.edge_index, len(pos), torch.ones(edges.edge_index.shape[1], 1), batch,
                                        edge_shift=edges.edge_shift)

    example, other = system(0, 12), system(1, 15)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(*other).x, model(*other).x)
    program = export_for_inference(model, *example)
    torch.testing.assert_close(program.module()(*other).x, model(*other).x)


def test_the_paper_centring_on_a_periodic_graph_is_reported_once_and_odd_cells_take_the_reference(caplog):
    pos, vel, h = periodic_system(seed=5)
    model = periodic_model("reference", vector_centre="mean")
    with caplog.at_level(logging.WARNING, logger="egno_fast"):
        predict(model, pos, vel, h, SKEWED)
        predict(model, pos, vel, h, SKEWED)
    assert caplog.text.count("depend on which lattice image") == 1
    negative = torch.diag(torch.tensor([-10.0, 10.0, 10.0], dtype=torch.float64))  # a left-handed box
    points = torch.rand(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 10
    auto = periodic_radius_graph(points, 2.0, negative)
    reference = periodic_radius_graph_reference(points, 2.0, negative)  # a [3, 3] cell, as the wrapper takes
    assert torch.equal(auto.edge_index, reference.edge_index) and torch.equal(auto.edge_shift, reference.edge_shift)
