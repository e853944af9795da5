"""Shared inputs and comparisons for the fused EGNN backends ("triton", "cpp") against the float64 reference:
the graph kinds of docs/design.md §5.6, a layer-level comparison of the outputs and every gradient, and whole-model
comparisons on an N-body batch and a protein-sized graph."""
import torch

from conftest import random_directed_graph
from egno_fast.nn import EGNNLayer
from egno_fast.ops import build_graph, egnn_layer_reference


def make_inputs(num_nodes, edge_index, edge_attr, num_frames, hidden, seed):
    gen = torch.Generator().manual_seed(seed)
    layer = EGNNLayer(hidden, edge_attr.shape[1])
    with torch.no_grad():  # larger weights than the default init, so every term matters
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / max(1, p.shape[-1]) ** 0.5)
    nodes = [torch.randn(num_nodes, num_frames, d, generator=gen, dtype=torch.float64) for d in (3, 3, hidden)]
    return layer.double(), nodes, edge_attr


def compare_layer_with_reference(fused_fn, num_nodes, edge_index, edge_attr, num_frames, hidden, seed, dtype,
                                 device, tol):
    """Run ``fused_fn`` (an egnn_layer entry point ``(x, v, h, graph, weights)``, in ``dtype`` on ``device``) and the float64 reference on the same inputs;
    compare the outputs and the gradients of x, v, h, the edge features and every parameter."""
    layer, nodes, edge_attr = make_inputs(num_nodes, edge_index, edge_attr, num_frames, hidden, seed)
    results = []
    for fused in (True, False):
        run_dtype, run_device = (dtype, device) if fused else (torch.float64, "cpu")
        module = layer.to(run_device, run_dtype)
        x, v, h = (t.to(run_device, run_dtype).requires_grad_() for t in nodes)
        attr = edge_attr.to(run_device, run_dtype).requires_grad_()
        graph = build_graph(edge_index.to(run_device), num_nodes, attr)
        args = (x, v, h, graph, module.weights())
        out = fused_fn(*args) if fused else egnn_layer_reference(*args)
        gen = torch.Generator().manual_seed(seed + 1)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(run_device, run_dtype)).sum()
                   for o in out)
        params = [x, v, h, attr] + list(module.parameters())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        results.append(([o.detach().double().cpu() for o in out],
                        [torch.zeros_like(p) if g is None else g.double().cpu() for p, g in zip(params, grads)]))
        layer.double().cpu()
    (fused_out, fused_grads), (ref_out, ref_grads) = results
    for name, a, b in zip("xvh", fused_out, ref_out):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"output {name}: {m}")
    names = ["x", "v", "h", "edge_attr"] + [n for n, _ in layer.named_parameters()]
    for name, a, b in zip(names, fused_grads, ref_grads):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"gradient of {name}: {m}")


def graph_of(kind, gen):
    """(num_nodes, edge_index, edge_attr) of the graph kinds of docs/design.md §5.6."""
    if kind == "directed":
        edge_index, edge_attr = random_directed_graph(12, 60, gen, edge_dim=3)
        return 12, edge_index, edge_attr
    if kind == "isolated":  # nodes 0, 5 and 9 receive nothing; node 9 sends nothing either
        edge_index, edge_attr = random_directed_graph(9, 30, gen, edge_dim=2)
        keep = (edge_index[1] != 0) & (edge_index[1] != 5)
        return 10, edge_index[:, keep], edge_attr[keep]
    if kind == "single_node":
        return 1, torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 1, dtype=torch.float64)
    if kind == "self_loop":
        return 1, torch.zeros(2, 1, dtype=torch.long), torch.randn(1, 2, generator=gen, dtype=torch.float64)
    if kind == "skewed":  # node 0 receives 1000 edges, the other 30 nodes 3 each
        hub_senders = torch.randint(1, 31, (1000,), generator=gen)
        others = torch.arange(1, 31).repeat_interleave(3)
        senders = torch.cat([hub_senders, (others + torch.randint(1, 30, (90,), generator=gen)) % 31])
        edge_index = torch.stack([senders, torch.cat([torch.zeros(1000, dtype=torch.long), others])])
        return 31, edge_index, torch.randn(edge_index.shape[1], 2, generator=gen, dtype=torch.float64)
    if kind == "no_features":
        edge_index, _ = random_directed_graph(8, 30, gen)
        return 8, edge_index, torch.zeros(edge_index.shape[1], 0, dtype=torch.float64)
    if kind == "wide_features":  # 19 features: two chunks of 16
        edge_index, edge_attr = random_directed_graph(8, 30, gen, edge_dim=19)
        return 8, edge_index, edge_attr
    raise ValueError(kind)


KINDS = ("directed", "isolated", "single_node", "self_loop", "skewed", "no_features", "wide_features")




def model_matches_reference_on_nbody_batch(backend, dtype, device, tol):
    """The EGNO model on ``backend`` (dtype, device) vs the float64 reference model: outputs and gradients."""
    from test_model import make_model, small_batch

    x, v, h, edge_index, edge_attr, batch = small_batch(9)
    outputs = {}
    for name in ("reference", backend):
        model = make_model(backend=name, hidden_dim=16)
        run_dtype, run_device = (dtype, device) if name == backend else (torch.float64, "cpu")
        model = model.to(run_device, run_dtype)
        inputs = [t.to(run_device, run_dtype) for t in (x, v, h)]
        out = model(*inputs, edge_index.to(run_device), edge_attr.to(run_device, run_dtype), batch.to(run_device))
        (out.x.square().sum() + out.h.square().sum() + out.v.square().sum()).backward()
        outputs[name] = (out, {n: p.grad.double().cpu() for n, p in model.named_parameters()},
                         model.active_backend)
    (ref, ref_grads, _), (fused, fused_grads, active) = outputs.values()
    assert active == {"temporal_residual": backend, "egnn_layer": backend}
    for a, b in zip(ref[:3], fused[:3]):  # x, v, h (aux_loss: None for EGNO)
        torch.testing.assert_close(b.double().cpu(), a, **tol)
    for name in ref_grads:
        torch.testing.assert_close(fused_grads[name], ref_grads[name], **tol, msg=lambda m: f"{name}: {m}")


def model_matches_reference_on_protein_sized_graph(backend, dtype, device, tol, neighbours=16, hidden=32):
    """855 nodes with ``neighbours`` nearest neighbours each (a protein backbone's size), P = 4, four layers."""
    from benchmarks.cases import knn_graph
    from egno_fast import EGNO

    gen = torch.Generator().manual_seed(11)
    num_nodes, frames = 855, 4
    edge_index = knn_graph(num_nodes, neighbours, gen)
    edge_attr = torch.randn(edge_index.shape[1], 2, generator=gen, dtype=torch.float64)
    x, v = (torch.randn(num_nodes, 3, generator=gen, dtype=torch.float64) * 3 for _ in range(2))
    h = torch.randn(num_nodes, 1, generator=gen, dtype=torch.float64)
    results = {}
    for name in ("reference", backend):
        torch.manual_seed(0)
        model = EGNO(node_dim=1, edge_dim=2, hidden_dim=hidden, num_layers=4, num_frames=frames, backend=name)
        run_dtype, run_device = (dtype, device) if name == backend else (torch.float64, "cpu")
        model = model.to(run_device, run_dtype)
        out = model(*(t.to(run_device, run_dtype) for t in (x, v, h)), edge_index.to(run_device),
                    edge_attr.to(run_device, run_dtype))
        (out.x.square().sum() + out.h.square().sum()).backward()
        results[name] = (out, {n: p.grad.double().cpu() for n, p in model.named_parameters()})
    (ref, ref_grads), (fused, fused_grads) = results.values()
    for a, b in zip(ref[:3], fused[:3]):  # x, v, h (aux_loss: None for EGNO)
        torch.testing.assert_close(b.double().cpu(), a, **tol)
    for name in ref_grads:
        torch.testing.assert_close(fused_grads[name], ref_grads[name], **tol, msg=lambda m: f"{name}: {m}")
