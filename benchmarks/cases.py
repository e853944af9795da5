"""Benchmark inputs: the graphs and sweep sizes of docs/design.md §6.3-§6.4, built identically for every backend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from egno_fast import build_graph
from egno_fast.data.batching import complete_graph_edges
from egno_fast.graph import Graph


@dataclass
class Case:
    """One benchmark size: a batch of graphs with P frames and width H."""

    name: str
    graph: Graph
    num_frames: int
    hidden_dim: int
    node_dim: int = 2
    edge_dim: int = 2

    @property
    def num_nodes(self) -> int:
        return self.graph.num_nodes

    def describe(self) -> dict:
        return {"case": self.name, "nodes": self.num_nodes, "edges": self.graph.num_edges,
                "frames": self.num_frames, "hidden": self.hidden_dim}


def _batched(edge_index: torch.Tensor, nodes: int, copies: int):
    edges = torch.cat([edge_index + g * nodes for g in range(copies)], dim=1)
    return edges, torch.arange(copies).repeat_interleave(nodes)


def _skeleton_edges(joints: int = 31) -> torch.Tensor:
    """A tree of ``joints`` nodes (parent = (i - 1) // 2 for a stand-in skeleton), 1-hop and 2-hop pairs, both ways."""
    parent = torch.arange(1, joints)
    bones = torch.stack([parent, (parent - 1) // 2])
    adjacency = torch.zeros(joints, joints, dtype=torch.bool)
    adjacency[bones[0], bones[1]] = adjacency[bones[1], bones[0]] = True
    two_hop = (adjacency.float() @ adjacency.float()) > 0
    pairs = (adjacency | two_hop) & ~torch.eye(joints, dtype=torch.bool)
    receiver, sender = pairs.nonzero().T
    return torch.stack([sender, receiver])


def knn_graph(num_nodes: int, neighbours: int, generator: torch.Generator) -> torch.Tensor:
    """A protein-sized contact graph: each node of a random compact cloud receives from its ``neighbours`` nearest
    nodes. Returns edge_index [2, E] (row 0 = sender)."""
    points = torch.randn(num_nodes, 3, generator=generator) * 10
    nearest = torch.cdist(points, points).topk(neighbours + 1, largest=False).indices[:, 1:]
    return torch.stack([nearest.flatten(), torch.arange(num_nodes).repeat_interleave(neighbours)])


def lattice_graph(num_nodes: int, generator: torch.Generator) -> torch.Tensor:
    """A jittered cubic lattice of about ``num_nodes`` points, each receiving from its 32 nearest lattice
    neighbours (offsets with squared length 1, 2, 3 and 4 along the axes): a radius graph with ~32 neighbours
    whose construction costs O(N). Returns edge_index [2, E] (row 0 = sender)."""
    side = max(2, round(num_nodes ** (1 / 3)))
    coords = torch.stack(torch.meshgrid(*(torch.arange(side),) * 3, indexing="ij"), -1).reshape(-1, 3)
    offsets = torch.stack(torch.meshgrid(*(torch.arange(-2, 3),) * 3, indexing="ij"), -1).reshape(-1, 3)
    norm2 = (offsets ** 2).sum(-1)
    offsets = offsets[(norm2 > 0) & ((norm2 <= 3) | ((norm2 == 4) & (offsets.abs().max(-1).values == 2)))]
    neighbours = coords[:, None, :] + offsets[None]  # [N, 32, 3]
    inside = ((neighbours >= 0) & (neighbours < side)).all(-1)
    flat = (neighbours[..., 0] * side + neighbours[..., 1]) * side + neighbours[..., 2]
    receiver = torch.arange(coords.shape[0])[:, None].expand_as(flat)
    return torch.stack([flat[inside], receiver[inside]])


def make_cases(sweep: str) -> List[Case]:
    """The sizes of a sweep: "smoke" (CI), "quick" (CPU or a few GPU minutes) or "full"."""
    gen = torch.Generator().manual_seed(0)
    nbody_edges, nbody_batch = _batched(complete_graph_edges(5), 5, 100)
    skeleton = _skeleton_edges()
    mocap_edges, mocap_batch = _batched(skeleton, 31, 12)
    cases = [Case("nbody", build_graph(nbody_edges, 500, torch.randn(nbody_edges.shape[1], 2, generator=gen),
                                       nbody_batch), 5, 64, node_dim=1),
             Case("mocap", build_graph(mocap_edges, 372, torch.randn(mocap_edges.shape[1], 2, generator=gen),
                                       mocap_batch), 5, 128)]
    if sweep == "smoke":
        return cases
    protein_edges, protein_batch = _batched(knn_graph(855, 40, gen), 855, 8)
    cases.append(Case("protein", build_graph(protein_edges, 855 * 8,
                                             torch.randn(protein_edges.shape[1], 2, generator=gen), protein_batch),
                      4, 128))
    sizes = [10_000] if sweep == "quick" else [10_000, 100_000, 1_000_000]
    widths, frames = ((64,), (8,)) if sweep == "quick" else ((64, 128), (4, 8, 16))
    for size in sizes:
        edges = lattice_graph(size, gen)
        nodes = int(edges.max()) + 1
        graph = build_graph(edges, nodes, torch.randn(edges.shape[1], 2, generator=gen))
        for p in frames:
            for h in widths:
                cases.append(Case(f"lattice{size // 1000}k", graph, p, h))
    return cases
