"""Shared helpers: paths to ../shared, random graphs, and random orthogonal transforms."""
import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter on CPU tensors; it must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EGNO_FAST_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared folder with fixtures is missing: {SHARED} (set EGNO_FAST_SHARED)")
    return SHARED


def random_orthogonal(generator: torch.Generator, reflect: bool = True) -> torch.Tensor:
    """A random 3x3 orthogonal matrix in float64, with determinant -1 when ``reflect``."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) > 0) == reflect:
        q[:, 0] = -q[:, 0]
    return q


def random_directed_graph(num_nodes: int, num_edges: int, generator: torch.Generator, edge_dim: int = 2):
    """Random directed edges without self loops (row 0 = sender) and asymmetric random edge features."""
    sender = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    receiver = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    keep = sender != receiver
    edge_index = torch.stack([sender[keep], receiver[keep]])
    edge_attr = torch.randn(edge_index.shape[1], edge_dim, generator=generator, dtype=torch.float64)
    return edge_index, edge_attr
