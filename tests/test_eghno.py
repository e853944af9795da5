"""EGHNO (the "eghn" backbone): the pooling ops against a per-graph, per-frame loop written from the equations,
gradients in float64, the model's symmetries with an assignment far from uniform, the fused backends inside the
hierarchy, and degenerate or wrong inputs."""
import pytest
import torch
from torch.nn import functional as F

from conftest import random_directed_graph, random_orthogonal
from egno_fast import EGNO, GraphInputError, build_graph
from egno_fast.backends import unavailable_reason
from egno_fast.ops.cluster_pooling import (DecoderLayerWeights, ClusterScoreLayerWeights, assign_clusters,
                                           cluster_edge_features, cluster_score_layer, complete_cluster_graph,
                                           decoder_layer, link_loss, pool_to_clusters, pooled_adjacency,
                                           unpool_to_nodes)
from egno_fast.ops.weights import LinearWeights, MLPWeights

SIZES = (5, 2, 7)  # nodes per graph: the middle graph has fewer nodes than clusters
K, P = 4, 3


def ragged_batch(seed, sizes=SIZES, edges_per_node=3, node_dim=2):
    """Random graphs of different sizes (float64): x, v, h, edge_index, edge_attr, batch, bonds (a chain per
    graph, one direction)."""
    gen = torch.Generator().manual_seed(seed)
    edges, attrs, bonds, first = [], [], [], 0
    for n in sizes:
        edge_index, edge_attr = random_directed_graph(n, edges_per_node * n, gen)
        edges.append(edge_index + first)
        attrs.append(edge_attr)
        bonds.append(torch.stack([torch.arange(n - 1), torch.arange(1, n)]) + first)
        first += n
    x, v = (torch.randn(first, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    h = torch.randn(first, node_dim, generator=gen, dtype=torch.float64)
    batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    return x, v, h, torch.cat(edges, 1), torch.cat(attrs), batch, torch.cat(bonds, 1)


def sharp_logits(num_nodes, seed, scale=6.0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(num_nodes, P, K, generator=gen, dtype=torch.float64)).requires_grad_()


# --------------------------------------------------------------------------- the loop reference, from the equations

def loop_reference(logits, values, cluster_values, edge_index, batch):
    """Per graph b and frame p: S = softmax(logits), pooled = S^T values / S^T 1, unpooled = S cluster_values,
    adjacency = S^T A S with A[i, j] = number of edges j -> i, link = mean ||rownorm(adjacency) - I||_F."""
    num_graphs = int(batch.max()) + 1
    pooled, unpooled, adjacency = [], torch.zeros(values.shape[0], P, cluster_values.shape[-1],
                                                  dtype=values.dtype), []
    for b in range(num_graphs):
        nodes = torch.nonzero(batch == b).flatten()
        local = {int(n): i for i, n in enumerate(nodes)}
        a = torch.zeros(len(nodes), len(nodes), dtype=values.dtype)
        for j, i in edge_index.t().tolist():
            if j in local:
                a[local[i], local[j]] += 1
        per_frame_pool, per_frame_adj = [], []
        for p in range(P):
            s = torch.softmax(logits[nodes, p], dim=-1)  # [n, K]
            per_frame_pool.append(s.t() @ values[nodes, p] / s.sum(0)[:, None])
            unpooled[nodes, p] = s @ cluster_values[b * K:(b + 1) * K, p]
            per_frame_adj.append(s.t() @ a @ s)
        pooled.append(torch.stack(per_frame_pool, 1))  # [K, P, D]
        adjacency.append(torch.stack(per_frame_adj))  # [P, K, K]
    adjacency = torch.stack(adjacency)
    loss = torch.stack([torch.linalg.matrix_norm(F.normalize(m, dim=-1) - torch.eye(K, dtype=m.dtype))
                        for m in adjacency.reshape(-1, K, K)]).mean()
    return torch.cat(pooled), unpooled, adjacency, loss


def test_pooling_ops_equal_the_loop_reference():
    x, v, h, edge_index, edge_attr, batch, bonds = ragged_batch(0)
    graph = build_graph(edge_index, x.shape[0], edge_attr, batch)
    logits = sharp_logits(x.shape[0], 1)
    gen = torch.Generator().manual_seed(2)
    values = torch.randn(x.shape[0], P, 5, generator=gen, dtype=torch.float64)
    cluster_values = torch.randn(len(SIZES) * K, P, 5, generator=gen, dtype=torch.float64)
    assignment = assign_clusters(logits, graph)
    want_pooled, want_unpooled, want_adjacency, want_loss = loop_reference(logits, values, cluster_values,
                                                                           edge_index, batch)
    torch.testing.assert_close(pool_to_clusters(assignment, values), want_pooled)
    torch.testing.assert_close(unpool_to_nodes(assignment, cluster_values), want_unpooled)
    torch.testing.assert_close(pooled_adjacency(assignment, edge_index), want_adjacency)
    torch.testing.assert_close(link_loss(pooled_adjacency(assignment, edge_index)), want_loss)
    # rows of S sum to 1, and the assignment is far from uniform here (the checks above are not weak)
    torch.testing.assert_close(assignment.scores.sum(-1), torch.ones(x.shape[0], P, dtype=torch.float64))
    assert assignment.scores.max(-1).values.mean() > 0.8


def test_cluster_centroid_identity():
    """sum_k c_k X_k / n equals the graph's centroid, per graph and frame (EGHN's identity)."""
    x, v, h, edge_index, edge_attr, batch, bonds = ragged_batch(3)
    graph = build_graph(edge_index, x.shape[0], edge_attr, batch)
    assignment = assign_clusters(sharp_logits(x.shape[0], 4), graph)
    positions = x[:, None, :].expand(-1, P, -1)
    centres = pool_to_clusters(assignment, positions).view(len(SIZES), K, P, 3)
    weighted = (assignment.mass.transpose(1, 2)[..., None] * centres).sum(1)  # [B, P, 3]
    sizes = torch.tensor(SIZES, dtype=torch.float64)
    centroid = torch.zeros(len(SIZES), 3, dtype=torch.float64).index_add_(0, batch, x) / sizes[:, None]
    torch.testing.assert_close(weighted / sizes[:, None, None], centroid[:, None, :].expand(-1, P, -1))


def test_pooling_stays_convex_where_a_cluster_mass_underflows():
    """Logit gaps beyond float32's exponent range: a cluster's mass underflows, its pooled position stays a convex
    combination (inside the graph's bounding box) instead of 0 / tiny."""
    x = torch.tensor([[10.0, 0, 0], [12.0, 0, 0], [11.0, 1, 0]])
    graph = build_graph(torch.tensor([[0, 1], [1, 2]]), 3)
    logits = torch.zeros(3, 1, 2)
    logits[:, :, 1] = -200.0  # exp(-200) underflows in float32
    assignment = assign_clusters(logits, graph)
    pooled = pool_to_clusters(assignment, x[:, None, :])
    assert torch.isfinite(pooled).all()
    assert (pooled[:, 0, 0] >= 10).all() and (pooled[:, 0, 0] <= 12).all()


def test_pooling_ops_gradcheck_float64():
    x, v, h, edge_index, edge_attr, batch, bonds = ragged_batch(5, sizes=(3, 2), edges_per_node=2)
    graph = build_graph(edge_index, x.shape[0], edge_attr, batch)
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(x.shape[0], P, K, generator=gen, dtype=torch.float64, requires_grad=True)
    values = torch.randn(x.shape[0], P, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    cluster_values = torch.randn(2 * K, P, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, f: pool_to_clusters(assign_clusters(s, graph), f), (logits, values))
    assert torch.autograd.gradcheck(lambda s, c: unpool_to_nodes(assign_clusters(s, graph), c),
                                    (logits, cluster_values))
    assert torch.autograd.gradcheck(lambda s: link_loss(pooled_adjacency(assign_clusters(s, graph), edge_index)),
                                    (logits,))


def _mlp_weights(gen, sizes):
    def linear(n_in, n_out):
        return LinearWeights(torch.randn(n_out, n_in, generator=gen, dtype=torch.float64, requires_grad=True) / 2,
                             torch.randn(n_out, generator=gen, dtype=torch.float64, requires_grad=True) / 2)
    return MLPWeights(linear(sizes[0], sizes[1]), linear(sizes[1], sizes[2]))


def test_scoring_and_decoder_layers_gradcheck_float64_and_rotate():
    gen = torch.Generator().manual_seed(7)
    hidden, channels, n = 3, 3, 4
    z = torch.randn(n, 2, 3, channels, generator=gen, dtype=torch.float64, requires_grad=True)
    h = torch.randn(n, 2, hidden, generator=gen, dtype=torch.float64, requires_grad=True)
    bonds = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 1]])
    bond_attr = torch.rand(4, 1, generator=gen, dtype=torch.float64)
    score = ClusterScoreLayerWeights(_mlp_weights(gen, (channels ** 2 + 2 * hidden + 1, hidden, hidden)),
                                     _mlp_weights(gen, (hidden, hidden, channels ** 2)),
                                     _mlp_weights(gen, (2 * hidden, hidden, hidden)))
    assert torch.autograd.gradcheck(lambda z, h: cluster_score_layer(z, h, bonds, bond_attr, score), (z, h))
    decode = DecoderLayerWeights(_mlp_weights(gen, (channels ** 2 + hidden, hidden, hidden)),
                                 _mlp_weights(gen, (hidden, hidden, channels)),
                                 _mlp_weights(gen, (hidden, hidden, hidden)))
    assert torch.autograd.gradcheck(lambda z, h: decoder_layer(z, h, decode), (z, h))
    rot = random_orthogonal(gen)
    z_out, h_out = cluster_score_layer(z, h, bonds, bond_attr, score)
    z_rot, h_rot = cluster_score_layer(torch.einsum("ab,npbc->npac", rot.t(), z), h, bonds, bond_attr, score)
    torch.testing.assert_close(z_rot, torch.einsum("ab,npbc->npac", rot.t(), z_out))
    torch.testing.assert_close(h_rot, h_out)
    vector, scalars = decoder_layer(z, h, decode)
    vector_rot, scalars_rot = decoder_layer(torch.einsum("ab,npbc->npac", rot.t(), z), h, decode)
    torch.testing.assert_close(vector_rot, vector @ rot)
    torch.testing.assert_close(scalars_rot, scalars)


def test_complete_cluster_graph_and_its_edge_features():
    graph = complete_cluster_graph(2, 3, "cpu")
    assert graph.num_nodes == 6 and graph.num_edges == 18
    assert (graph.batch[graph.sender] == graph.batch[graph.receiver]).all()
    assert int((graph.sender == graph.receiver).sum()) == 6  # self-loops, as EGHN
    adjacency = torch.arange(2 * 1 * 9, dtype=torch.float64).view(2, 1, 3, 3)
    features = cluster_edge_features(adjacency, graph)
    for e in range(18):
        b, k, l = int(graph.batch[graph.receiver[e]]), int(graph.receiver[e]) % 3, int(graph.sender[e]) % 3
        assert features[e, 0, 0] == adjacency[b, 0, k, l]


# --------------------------------------------------------------------------- the whole model

def make_eghno(seed=0, sharpen=True, **kwargs):
    """A small float64 EGHNO whose scoring head is scaled up so that S is far from uniform."""
    torch.manual_seed(seed)
    config = dict(node_dim=2, edge_dim=2, hidden_dim=8, num_layers=2, num_frames=P, num_modes=2,
                  backbone="eghn", num_clusters=K, pooling_layers=2, decoder_layers=2, link_weight=0.5,
                  coord_clamp="none", backend="reference")
    config.update(kwargs)
    model = EGNO(**config).double()
    if sharpen:
        with torch.no_grad():
            model.hierarchy.scorer.head[2].weight.mul_(40.0)
    return model


def assignment_of(model, *inputs, **kw):
    captured = {}
    handle = model.hierarchy.register_forward_hook(lambda m, a, out: captured.update(scores=out.scores))
    out = model(*inputs, **kw)
    handle.remove()
    return out, captured["scores"]


@pytest.mark.parametrize("options", [{}, dict(assignment="shared"), dict(cluster_inputs="node_level")])
def test_model_e3_and_permutation_equivariance(options):
    model = make_eghno(**options)
    x, v, h, edge_index, edge_attr, batch, bonds = ragged_batch(8)
    out, scores = assignment_of(model, x, v, h, edge_index, edge_attr, batch, bonds=bonds)
    assert scores.max(-1).values.mean() > 0.7, "the assignment is nearly uniform: the test would be weak"
    assert out.aux_loss.dim() == 0 and out.aux_loss > 0
    gen = torch.Generator().manual_seed(9)
    for reflect in (False, True):
        rot, shift = random_orthogonal(gen, reflect), torch.randn(3, generator=gen, dtype=torch.float64)
        moved = model(x @ rot + shift, v @ rot, h, edge_index, edge_attr, batch, bonds=bonds)
        torch.testing.assert_close(moved.x, out.x @ rot + shift)
        torch.testing.assert_close(moved.v, out.v @ rot)
        torch.testing.assert_close(moved.h, out.h)
        torch.testing.assert_close(moved.aux_loss, out.aux_loss)
    first = torch.tensor([0, *torch.cumsum(torch.tensor(SIZES), 0)[:-1].tolist()])
    perm = torch.cat([torch.randperm(n, generator=gen) + int(f) for n, f in zip(SIZES, first)])
    inverse = torch.argsort(perm)
    permuted = model(x[perm], v[perm], h[perm], inverse[edge_index], edge_attr, batch, bonds=inverse[bonds])
    torch.testing.assert_close(permuted.x, out.x[:, perm])
    torch.testing.assert_close(permuted.h, out.h[:, perm])
    torch.testing.assert_close(permuted.aux_loss, out.aux_loss)
    if options.get("assignment") == "shared":
        torch.testing.assert_close(scores, scores[:, :1].expand_as(scores))


def test_a_batch_equals_its_graphs_one_by_one_and_isolated_atoms_work():
    model = make_eghno(link_weight=1.0)
    x, v, h, edge_index, edge_attr, batch, bonds = ragged_batch(10)
    keep = (edge_index != 0).all(0)  # node 0 becomes isolated in the message-passing graph (it keeps no edge)
    edge_index, edge_attr = edge_index[:, keep], edge_attr[keep]
    bonds = bonds[:, (bonds != 0).all(0)]  # and in the bond graph
    out = model(x, v, h, edge_index, edge_attr, batch, bonds=bonds)
    assert torch.isfinite(out.x).all()
    first, losses = 0, []
    for b, n in enumerate(SIZES):
        nodes = slice(first, first + n)
        inside = (edge_index[1] >= first) & (edge_index[1] < first + n)
        in_bonds = (bonds[1] >= first) & (bonds[1] < first + n)
        alone = model(x[nodes], v[nodes], h[nodes], edge_index[:, inside] - first, edge_attr[inside],
                      bonds=bonds[:, in_bonds] - first)
        torch.testing.assert_close(alone.x, out.x[:, nodes])
        losses.append(alone.aux_loss)
        first += n
    torch.testing.assert_close(torch.stack(losses).mean(), out.aux_loss)  # the mean over graphs (and frames)


def test_bonds_default_to_the_message_passing_graph():
    model = make_eghno()
    x, v, h, edge_index, edge_attr, batch, bonds = ragged_batch(11)
    implicit = model(x, v, h, edge_index, edge_attr, batch)
    explicit = model(x, v, h, edge_index, edge_attr, batch, bonds=edge_index)
    torch.testing.assert_close(implicit.x, explicit.x)
    assert not torch.allclose(model(x, v, h, edge_index, edge_attr, batch, bonds=bonds).x, implicit.x)


@pytest.mark.parametrize("backend", [name for name in ("cpp", "triton")
                                     if unavailable_reason(name, "egnn_layer", "cpu") is None])
def test_fused_backends_equal_the_reference_inside_eghno(backend):
    """The node level on a fused backend, the cluster level on the reference (reported): outputs and every
    parameter gradient equal the all-reference model in float64."""
    x, v, h, edge_index, edge_attr, batch, bonds = ragged_batch(12)
    results = []
    for chosen in (backend, "reference"):
        model = make_eghno(backend=chosen)
        out = model(x, v, h, edge_index, edge_attr, batch, bonds=bonds)
        assert model.active_backend == {"temporal_residual": chosen, "egnn_layer": chosen,
                                        "cluster_egnn_layer": "reference"}
        loss = out.x.square().sum() + out.aux_loss
        results.append([out.x.detach(), *torch.autograd.grad(loss, list(model.parameters()), allow_unused=True,
                                                             materialize_grads=True)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * max(1.0, float(want.abs().max())))


def test_every_parameter_gets_a_gradient():
    model = make_eghno(sharpen=False)
    x, v, h, edge_index, edge_attr, batch, bonds = ragged_batch(13)
    out = model(x, v, h, edge_index, edge_attr, batch, bonds=bonds)
    (out.x.square().mean() + out.aux_loss).backward()
    idle = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # the decoder's last scalar head feeds only the h output, as the last EGNN layer's node MLP does
    assert all(name.startswith(("hierarchy.decoder.layers.1.scalar", "hierarchy.cluster_layers.1.node_mlp"))
               for name in idle), idle


def test_config_rebuilds_the_model():
    model = make_eghno(assignment="shared", cluster_inputs="node_level")
    config = model.config
    assert config["backbone"] == "eghn" and config["num_clusters"] == K and config["pooling_layers"] == 2
    rebuilt = EGNO(**config).double()
    rebuilt.load_state_dict(model.state_dict())
    x, v, h, edge_index, edge_attr, batch, bonds = ragged_batch(14)
    torch.testing.assert_close(rebuilt(x, v, h, edge_index, edge_attr, batch, bonds=bonds).x,
                               model(x, v, h, edge_index, edge_attr, batch, bonds=bonds).x)
    assert "backbone" not in EGNO(node_dim=1, edge_dim=1).config  # EGNO's saved configs are unchanged


def test_bad_inputs_and_settings_raise_clear_errors():
    model = make_eghno()
    x, v, h, edge_index, edge_attr, batch, bonds = ragged_batch(15)
    with pytest.raises(GraphInputError, match="bonds hold node indices in"):
        model(x, v, h, edge_index, edge_attr, batch, bonds=bonds + 100)
    crossing = torch.cat([bonds, torch.tensor([[0], [6]])], 1)
    with pytest.raises(GraphInputError, match="joins two different graphs"):
        model(x, v, h, edge_index, edge_attr, batch, bonds=crossing)
    for wrong in (bonds.double(), bonds.to(torch.uint8), bonds[0]):
        with pytest.raises(GraphInputError, match=r"bonds must be an int64 or int32 tensor of shape \[2, b\]"):
            model(x, v, h, edge_index, edge_attr, batch, bonds=wrong)
    with pytest.raises(GraphInputError, match="bonds are on meta, the inputs on cpu"):
        model(x, v, h, edge_index, edge_attr, batch, bonds=bonds.to("meta"))
    with pytest.raises(GraphInputError, match="does not support periodic graphs"):
        model(x, v, h, edge_index, edge_attr, batch, edge_shift=torch.zeros(edge_index.shape[1], 3,
                                                                             dtype=torch.float64))
    empty_graph = torch.tensor([0] * 5 + [2] * 9)  # graph 1 has no node
    with pytest.raises(GraphInputError, match="at least one node"):
        model(x, v, h, edge_index, edge_attr, empty_graph, bonds=bonds)
    for bad, message in ((dict(num_clusters=0), "num_clusters must be an integer >= 1"),
                         (dict(decoder_layers=0), "decoder_layers must be an integer >= 1"),
                         (dict(num_clusters=129), "num_clusters = 129 is above the limit of 128"),
                         (dict(link_weight=-1.0), "link_weight must be a finite number >= 0"),
                         (dict(assignment="global"), "assignment must be one of"),
                         (dict(cluster_inputs="output"), "cluster_inputs must be one of"),
                         (dict(backbone="gmn"), "backbone must be one of")):
        with pytest.raises(ValueError, match=message):
            make_eghno(**bad)


def test_patching_an_eghno_model_leaves_its_cluster_level_on_the_reference():
    from egno_fast import patch, unpatch

    if unavailable_reason("cpp", "egnn_layer", "cpu") is not None:
        pytest.skip("the cpp backend is unavailable here")
    model = make_eghno()
    x, v, h, edge_index, edge_attr, batch, bonds = ragged_batch(16)
    want = model(x, v, h, edge_index, edge_attr, batch, bonds=bonds).x
    patch(model, "cpp")
    assert [layer.backend for layer in model.hierarchy.node_layers] == ["cpp", "cpp"]
    assert [layer.backend for layer in model.hierarchy.cluster_layers] == ["reference", "reference"]
    torch.testing.assert_close(model(x, v, h, edge_index, edge_attr, batch, bonds=bonds).x, want)
    assert model.active_backend["cluster_egnn_layer"] == "reference"
    unpatch(model)
    assert [layer.backend for layer in model.hierarchy.node_layers] == ["reference", "reference"]


# --------------------------------------------------------------------------- numbers in the docs

def test_the_docs_report_the_committed_eghno_benchmark():
    import json
    import re

    from conftest import REPO

    target = json.loads((REPO / "benchmarks/results/cpu-eghno-20261202/target.json").read_text())
    speedup = {point["case"]: point["speedup"] for point in target["model"]}
    paragraph = re.search(r"^EGHNO \(`backbone=\"eghn\"`.*?(?=\n\n)", (REPO / "docs/eghno.md").read_text(),
                          flags=re.S | re.M).group(0)
    shown = [float(x) for x in re.findall(r"(\d+\.\d+)x", paragraph)]
    assert shown == [round(speedup[c], 2) for c in ("eghno_protein", "protein", "eghno_nbody", "nbody")]
    assert all(p["ran"]["cluster_egnn_layer"] == "reference" for p in target["model"] if "eghno" in p["case"])
    assert all(p["output_rel_diff"] < 1e-4 and p["grad_diff_of_largest"] < 1e-5 for p in target["model"])


def test_the_openmm_estimate_follows_from_its_probe():
    import json
    import re

    from conftest import REPO

    probe = json.loads((REPO / "benchmarks/results/cpu-openmm-adk-20261202/estimate.json").read_text())
    text = (REPO / "docs/eghno_openmm_estimate.md").read_text()
    assert f"**{probe['atoms']} atoms**" in text and f"**{probe['box_nm']:.2f} nm**" in text
    assert f"**{probe['steps_for_span']:.2e} steps**".replace("e+0", "e") in text
    water_atoms, water_rate = (float(x) for x in re.search(r"\((\d+)\s+atoms, PME, 2 fs steps\) at about "
                                                           r"\*\*(\d+) steps/s\*\*", text).groups())
    rate = water_rate * water_atoms / probe["atoms"]
    assert f"**{rate:.1f} steps/s**" in text
    days = probe["steps_for_span"] / rate / 86400
    assert f"about **{round(days, -1):.0f} days ({days / 365.25:.1f} years)**" in text
    assert f"about {days / 10:.0f} days" in text


def test_export_refuses_the_hierarchical_backbone():
    from egno_fast import export_for_inference

    model = make_eghno()
    x, v, h, edge_index, edge_attr, batch, bonds = ragged_batch(17)
    with pytest.raises(ValueError, match="supports the 'egnn' backbone, not 'eghn'"):
        export_for_inference(model, x, v, h, build_graph(edge_index, x.shape[0], edge_attr, batch))
