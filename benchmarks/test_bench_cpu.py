"""pytest-benchmark timings of the CPU-measurable ops (``pytest benchmarks/ --benchmark-only``; the normal test
command collects only tests/)."""
import pytest
import torch

from benchmarks.cases import make_cases
from benchmarks.runner import Workload, _loss

CASES = {case.name: case for case in make_cases("smoke")}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("op", ["temporal_conv", "vector_temporal_conv", "egnn_layer", "model"])
def test_reference_forward_backward(benchmark, op, case):
    workload = Workload(op, CASES[case], torch.device("cpu"))
    workload.set_backend("reference")

    def step():
        workload.module.zero_grad(set_to_none=True)
        _loss(workload.forward()).backward()

    benchmark(step)
