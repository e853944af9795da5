"""One training step (forward + backward) of EGNO on the N-body batch (100 graphs of 5 nodes, all pairs, H = 64,
four layers, P = 5) on one backend; prints the package's path and the median of 30 steps in ms.

For A/B comparisons of two checkouts (two builds of the C++ extension cannot be loaded in one process), run it
alternately from each, e.g. ``for i in 1 2 3 4 5; do PYTHONPATH=/path/to/a python -m benchmarks.ab_step; python -m
benchmarks.ab_step; done`` (only ``EGNO`` and ``build_graph`` are used, so older checkouts run it unchanged).
"""
import argparse
import statistics
import time

import torch

import egno_fast
from egno_fast import EGNO, build_graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cpp")
    parser.add_argument("--steps", type=int, default=40, help="steps timed; the first 10 are warm-up")
    args = parser.parse_args()
    torch.manual_seed(0)
    graphs, nodes = 100, 5
    x = torch.randn(graphs * nodes, 3)
    v, h = torch.randn_like(x), torch.randn(graphs * nodes, 1)
    pairs = torch.tensor([(i, j) for i in range(nodes) for j in range(nodes) if i != j]).T
    edge_index = torch.cat([pairs + g * nodes for g in range(graphs)], dim=1)
    batch = torch.arange(graphs).repeat_interleave(nodes)
    graph = build_graph(edge_index, graphs * nodes, torch.randn(edge_index.shape[1], 2), batch)
    model = EGNO(node_dim=1, edge_dim=2, hidden_dim=64, num_layers=4, num_frames=5, backend=args.backend)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        out = model(x, v, h, graph)
        (out.x.square().sum() + out.h.square().sum()).backward()
        times.append(time.perf_counter() - start)
    print(f"{egno_fast.__file__} {statistics.median(times[10:]) * 1000:.2f}")


if __name__ == "__main__":
    main()
