"""The benchmark runner (CI smoke): every point is recorded with a status, outputs are written, and a named
backend that cannot run is skipped with its reason rather than timed or dropped."""
import csv
import json

import pytest
import torch

from benchmarks.cases import lattice_graph, make_cases
from benchmarks.report import write_results
from benchmarks.runner import MODES, largest_fit, run_sweep
from egno_fast.backends import unavailable_reason


def test_smoke_sweep_records_every_point(tmp_path):
    cases = make_cases("smoke")[:1]
    result = run_sweep(cases, torch.device("cpu"), backends=("reference", "cpp", "triton"),
                       ops=("temporal_conv", "egnn_layer"), warmup=0, repeats=1, log=lambda _: None)
    records = result["records"]
    assert len(records) == 1 * 2 * 3 * len(MODES)
    runnable = {"reference"} | ({"cpp"} if unavailable_reason("cpp", "egnn_layer", "cpu") is None else set())
    measured = [r for r in records if r["status"] == "measured"]
    assert {r["backend"] for r in measured} == runnable and all(r["median_ms"] > 0 for r in measured)
    skipped = [r for r in records if r["backend"] not in runnable]  # triton on CPU (an interpreter only)
    assert skipped and all(r["status"] == "skipped" and r["reason"] for r in skipped)
    assert result["meta"]["ceilings"]["copy_GBps"] > 0 and result["meta"]["git_commit"]
    paths = write_results(result, tmp_path, "pytest smoke")
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == len(records) and rows[0]["meta_torch"] == torch.__version__
    assert json.loads(paths["json"].read_text())["meta"]["command"] == "pytest smoke"
    assert "| nbody | 5 | 64 | temporal_conv | reference |" in paths["summary"].read_text()
    assert paths["time"].read_bytes()[:4] == b"\x89PNG"


def test_the_compile_column_compiles_the_registered_fused_operators():
    """"compile" is torch.compile(fullgraph=True) of the module on "auto": on the CPU the cpp backend's registered
    operators inside one compiled graph; "compile_reference" compiles the plain-PyTorch reference."""
    if unavailable_reason("cpp", "egnn_layer", "cpu") is not None:
        pytest.skip("the cpp backend is unavailable here")
    cases = make_cases("smoke")[:1]
    result = run_sweep(cases, torch.device("cpu"), backends=("compile", "compile_reference"),
                       ops=("vector_temporal_conv", "model"), warmup=0, repeats=1, log=lambda _: None)
    records = result["records"]
    assert all(r["status"] == "measured" for r in records), [r.get("reason") for r in records]
    ran = {(r["backend"], r["op"]): r["ran"] for r in records}
    assert ran[("compile", "vector_temporal_conv")] == "cpp"
    assert json.loads(ran[("compile", "model")]) == {"temporal_residual": "cpp", "egnn_layer": "cpp"}
    assert json.loads(ran[("compile_reference", "model")]) == {"temporal_residual": "reference",
                                                                "egnn_layer": "reference"}


def test_lattice_graph_has_32_neighbours_inside():
    edges = lattice_graph(1000, torch.Generator().manual_seed(0))
    degree = torch.bincount(edges[1])
    assert degree.max() == 32 and (degree == 32).sum() > 0 and not (edges[0] == edges[1]).any()


def test_largest_fit_search_brackets_the_limit():
    calls = []

    def fits(n):
        calls.append(n)
        return n <= 123_456

    found = largest_fit(fits, start=10_000)
    assert 0.97 * 123_456 <= found["largest_fit_nodes"] <= 123_456 < found["first_failure_nodes"]
    assert largest_fit(lambda n: False)["largest_fit_nodes"] == 0
    assert largest_fit(lambda n: True, limit=40_000) == {"largest_fit_nodes": 40_000, "first_failure_nodes": None}


def test_egnn_target_summary_and_cpu_refusal(capsys):
    from benchmarks import egnn_target

    records = [dict(variant="reference", nodes=10, status="measured", median_ms=8.0, peak_memory_MB=100.0),
               dict(variant="compile_tf32", nodes=10, status="oom"),
               dict(variant="triton_tf32", nodes=10, status="measured", median_ms=2.0, peak_memory_MB=10.0,
                    max_rel_err_h=1e-6)]
    text = egnn_target.summarise(records, {"triton_tf32": {"largest_fit_nodes": 5}},
                                 dict(device="d", torch="t", triton="x", git_commit="c"))
    assert "| 10 | triton_tf32 | measured | 2.00 | 10 | 4.00x | - | 1.0e-06 |" in text
    assert "triton_tf32" in text.split("fits")[1]
    if not torch.cuda.is_available():
        assert egnn_target.main(["--nodes", "10"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_cpp_target_reports_paired_speedups(tmp_path):
    """benchmarks.cpp_target (the CPU targets of docs/design.md §6.4): the speed-up is the median of per-pair ratios,
    and the cpp backend's outputs and gradients agree with the reference's."""
    import os
    import statistics

    import pytest

    reason = unavailable_reason("cpp", "egnn_layer", "cpu")
    if reason is not None:
        if os.environ.get("EGNO_FAST_REQUIRE_EXTENSION") == "1":
            pytest.fail(f"the C++ extension is required: {reason}")
        pytest.skip(f"the C++ extension is not built: {reason}")
    from benchmarks import cpp_target

    output = tmp_path / "target.json"
    assert cpp_target.main(["--repeats", "3", "--cases", "nbody", "eghno_nbody", "--points", "--periodic-points",
                            "300", "--output", str(output)]) == 0
    periodic = json.loads(output.read_text())["periodic_radius_graph"][0]  # its edges were checked against ASE's
    assert periodic["points"] == 300 and periodic["cpp_s"] > 0 and periodic["ase_s"] > 0 and periodic["reference_s"] > 0
    points = json.loads(output.read_text())["model"]
    assert [point["case"] for point in points] == ["nbody", "eghno_nbody"]
    for point in points:
        assert len(point["pair_speedups"]) == 3
        assert point["speedup"] == statistics.median(point["pair_speedups"])
        assert point["ratio_of_medians"] == point["reference_s"] / point["cpp_s"]
        assert point["output_rel_diff"] < 1e-4 and point["grad_diff_of_largest"] < 1e-5
    assert points[0]["grad_rel_diff"] < 1e-4  # EGNO: every gradient tensor to 1e-4 of its own largest entry
    assert points[1]["ran"] == {"temporal_residual": "cpp", "egnn_layer": "cpp", "cluster_egnn_layer": "reference"}
    assert points[1]["clusters"] == 3


def test_the_sweep_times_eghno_on_every_backend_it_reports():
    """The "eghno_model" op: EGHNO's forward+backward, checked against its reference output before it is timed; the
    fused backend runs the node level, the cluster level stays on the reference (as recorded)."""
    if unavailable_reason("cpp", "egnn_layer", "cpu") is not None:
        pytest.skip("the cpp backend is unavailable here")
    result = run_sweep(make_cases("smoke")[:1], torch.device("cpu"), backends=("reference", "cpp"),
                       ops=("eghno_model",), warmup=0, repeats=1, log=lambda _: None)
    records = result["records"]
    assert len(records) == 2 * len(MODES) and all(r["status"] == "measured" for r in records), records
    ran = {r["backend"]: json.loads(r["ran"]) for r in records}
    assert ran["cpp"] == {"temporal_residual": "cpp", "egnn_layer": "cpp", "cluster_egnn_layer": "reference"}
    assert ran["reference"]["egnn_layer"] == "reference"
