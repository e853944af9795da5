"""The receiver CSR on the "cpp" backend (egno_fast/ops/receiver_csr.py, csrc/cpu/receiver_csr_cpu.cpp): the same
stable order as the reference, and the same graph from build_graph.
"""

import pytest
import torch

from conftest import import_extension_or_skip
from egno_fast.ops import build_graph, receiver_csr_reference
from egno_fast.ops.receiver_csr import receiver_csr_cpp

cpp = import_extension_or_skip()


def test_receiver_csr_matches_a_stable_sort():
    gen = torch.Generator().manual_seed(0)
    for num_nodes, num_edges in ((1, 0), (5, 40), (1000, 20000)):
        receiver = torch.randint(0, num_nodes, (num_edges,), generator=gen)
        for got, want in zip(receiver_csr_cpp(receiver, num_nodes),
                             receiver_csr_reference(receiver, num_nodes)):
            assert torch.equal(got, want)
    with pytest.raises(RuntimeError, match="span"):
        receiver_csr_cpp(torch.tensor([0, 3]), 3)


def test_build_graph_gives_the_same_graph_on_every_backend():
    gen = torch.Generator().manual_seed(4)
    edge_index = torch.randint(0, 50, (2, 400), generator=gen)
    a = build_graph(edge_index, 50, torch.randn(400, 2, generator=gen), backend="cpp")
    b = build_graph(edge_index, 50, a.edge_attr[torch.argsort(a.edge_perm)], backend="reference")
    for name, value in a.__dict__.items():
        if name == "_stamp":  # the (id, version) of each tensor: its own
            continue
        assert torch.equal(value, getattr(b, name)) if isinstance(value, torch.Tensor) else value == getattr(b, name)
