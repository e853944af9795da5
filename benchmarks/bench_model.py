"""Whole-model forward + backward time per available backend, on the sizes of DESIGN.md §6.

Usage: python benchmarks/bench_model.py [--repeats 5] [--threads 2]
Prints the median wall time per case and backend, and each backend's speed-up over "reference" measured in the
same run on the same inputs (outputs are checked equal to the reference's before timing).
"""
import argparse
import statistics
import time

import torch

from egno_fast import EGNO, backend_status, build_graph


def nbody_batch(graphs=100, nodes=5):
    """100 complete directed 5-node graphs (20 edges each)."""
    sender, receiver = torch.meshgrid(torch.arange(nodes), torch.arange(nodes), indexing="ij")
    keep = sender != receiver
    single = torch.stack([sender[keep], receiver[keep]])
    edge_index = torch.cat([single + g * nodes for g in range(graphs)], dim=1)
    batch = torch.arange(graphs).repeat_interleave(nodes)
    return graphs * nodes, edge_index, batch, dict(node_dim=1, edge_dim=2, hidden_dim=64, num_frames=5)


def protein_graph(nodes=855, neighbours=40):
    """One protein-sized graph: each node receives from its 40 nearest neighbours in a random compact cloud."""
    x = torch.randn(nodes, 3) * 10
    nearest = torch.cdist(x, x).topk(neighbours + 1, largest=False).indices[:, 1:]
    edge_index = torch.stack([nearest.flatten(), torch.arange(nodes).repeat_interleave(neighbours)])
    return nodes, edge_index, torch.zeros(nodes, dtype=torch.long), dict(node_dim=2, edge_dim=2, hidden_dim=128,
                                                                          num_frames=4)


def time_case(name, nodes, edge_index, batch, config, backends, repeats):
    torch.manual_seed(0)
    x, v = torch.randn(nodes, 3), torch.randn(nodes, 3)
    h = torch.randn(nodes, config["node_dim"])
    edge_attr = torch.randn(edge_index.shape[1], config["edge_dim"])
    graph = build_graph(edge_index, nodes, edge_attr, batch)
    model = EGNO(num_layers=4, num_modes=2, **config)
    reference_out, times = None, {}
    for backend in backends:
        model.backend = backend
        out = model(x, v, h, graph).x
        if reference_out is None:
            reference_out = out.detach()
        torch.testing.assert_close(out, reference_out, rtol=1e-4, atol=1e-5)
        samples = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            out = model(x, v, h, graph)
            (out.x.square().sum() + out.h.square().sum()).backward()
            samples.append(time.perf_counter() - start)
        times[backend] = statistics.median(samples[1:])
    for backend, seconds in times.items():
        print(f"{name:8s} {backend:10s} forward+backward {seconds * 1e3:9.1f} ms   "
              f"speed-up vs reference {times['reference'] / seconds:5.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backends = [name for name, ops in backend_status(device).items()
                if all(status == "available" for status in ops.values())]
    print(f"torch {torch.__version__}, {args.threads} threads, backends: {backends}")
    time_case("n-body", *nbody_batch(), backends, args.repeats)
    time_case("protein", *protein_graph(), backends, args.repeats)


if __name__ == "__main__":
    main()
