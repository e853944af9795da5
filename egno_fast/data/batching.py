"""Samples and batches of graphs in PyTorch Geometric's convention (row 0 of edge_index = sender)."""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..graph import Graph
from ..ops import build_graph


class GraphSample(NamedTuple):
    """One graph: x, v [n, 3]; h [n, k]; edge_index [2, e]; edge_attr [e, f]; target [P, n, 3]; edge_shift [e, 3]
    (periodic images) or None; bonds [2, b] (row 0 = sender: the chemical bonds or skeleton bones that the "eghn"
    backbone's scoring network runs on) or None."""

    x: Tensor
    v: Tensor
    h: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    target: Tensor
    edge_shift: Optional[Tensor] = None
    bonds: Optional[Tensor] = None


class StartFrameDataset(Dataset):
    """Samples that start from one input frame: ``x``, ``v`` [S, n, 3], ``targets`` [S, P, n, 3] and one
    ``edge_index`` [2, e] shared by every sample (and ``bonds`` [2, b] or None); subclasses give the node and edge
    features in :meth:`features`."""

    x: Tensor
    v: Tensor
    targets: Tensor
    edge_index: Tensor
    bonds: Optional[Tensor] = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> GraphSample:
        x, v = self.x[index], self.v[index]
        sender, receiver = self.edge_index
        rel = x[receiver] - x[sender]
        h, edge_attr = self.features(index, x, v, sender, receiver, (rel * rel).sum(-1))
        return GraphSample(x=x, v=v, h=h, edge_index=self.edge_index, edge_attr=edge_attr,
                           target=self.targets[index], bonds=self.bonds)

    def features(self, index: int, x: Tensor, v: Tensor, sender: Tensor, receiver: Tensor,
                 dist2: Tensor) -> Tuple[Tensor, Tensor]:
        """(h [n, k], edge_attr [e, f]) of sample ``index``; dist2 [e] = |x_i - x_j|^2 of its input frame."""
        raise NotImplementedError


class GraphBatch(NamedTuple):
    """Concatenated graphs: x, v [N, 3]; h [N, k]; edge_index [2, E]; edge_attr [E, f]; batch [N];
    target [P, N, 3] (time-major, as the model's output); edge_shift [E, 3] or None; bonds [2, B'] (offset per graph,
    as edge_index) or None."""

    x: Tensor
    v: Tensor
    h: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    batch: Tensor
    target: Tensor
    edge_shift: Optional[Tensor] = None
    bonds: Optional[Tensor] = None

    @property
    def model_keywords(self) -> dict:
        """The keyword inputs of the model's forward that the batch carries: ``bonds`` where the data set gives them
        (the "eghn" backbone's bond graph; without them it uses the message-passing graph)."""
        return {} if self.bonds is None else {"bonds": self.bonds}

    @property
    def num_graphs(self) -> int:
        return int(self.batch[-1]) + 1 if self.batch.numel() else 0

    def to(self, device: torch.device | str) -> "GraphBatch":
        return GraphBatch(*(None if t is None else t.to(device) for t in self))

    def graph(self, validate: bool = True) -> Graph:
        """The batch's receiver-sorted :class:`Graph` (build it once, reuse it for every layer; build it where the
        batch is, on the CPU, and move it with ``Graph.to``: its checks then cost no device wait)."""
        return build_graph(self.edge_index, self.x.shape[0], self.edge_attr, self.batch, validate=validate,
                           edge_shift=self.edge_shift)


def complete_graph_edges(num_nodes: int) -> Tensor:
    """[2, n(n-1)] directed edges of the complete graph without self loops, row 0 = sender, row 1 = receiver,
    ordered by receiver then sender."""
    receiver, sender = torch.meshgrid(torch.arange(num_nodes), torch.arange(num_nodes), indexing="ij")
    keep = receiver != sender
    return torch.stack([sender[keep], receiver[keep]])


def collate_graphs(samples: List[GraphSample]) -> GraphBatch:
    """Concatenate graphs into one batch, offsetting edge indices; no edge is replicated over frames."""
    if not samples:
        raise ValueError("cannot collate an empty list of graphs")
    sizes = torch.tensor([s.x.shape[0] for s in samples])
    offsets = torch.cumsum(sizes, 0) - sizes
    edge_index = torch.cat([s.edge_index + int(o) for s, o in zip(samples, offsets)], dim=1)
    batch = torch.repeat_interleave(torch.arange(len(samples)), sizes)
    shifted = any(s.edge_shift is not None for s in samples)  # graphs without shifts get zeros beside periodic ones
    edge_shift = torch.cat([s.edge_shift if s.edge_shift is not None else s.x.new_zeros(s.edge_index.shape[1], 3)
                            for s in samples]) if shifted else None
    bonded = [s.bonds is not None for s in samples]
    if any(bonded) and not all(bonded):
        raise ValueError("cannot collate graphs with bonds and graphs without")
    bonds = torch.cat([s.bonds + int(o) for s, o in zip(samples, offsets)], dim=1) if all(bonded) else None
    return GraphBatch(x=torch.cat([s.x for s in samples]), v=torch.cat([s.v for s in samples]),
                      h=torch.cat([s.h for s in samples]), edge_index=edge_index,
                      edge_attr=torch.cat([s.edge_attr for s in samples]), batch=batch,
                      target=torch.cat([s.target for s in samples], dim=1), edge_shift=edge_shift, bonds=bonds)
