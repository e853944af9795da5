"""benchmarks.temporal_bandwidth: the CPU smoke test (reference measured, Triton skipped with its reason or run in the
interpreter, files written) and, on a GPU, the real kernels' bandwidth (marked ``gpu``)."""
import json

import pytest
import torch

from benchmarks import temporal_bandwidth


def test_cpu_run_measures_the_reference_and_skips_triton_with_the_reason(tmp_path, monkeypatch):
    try:  # triton imported while TRITON_INTERPRET=1 holds (conftest), so its own jit helpers stay interpreted
        import triton  # noqa: F401
    except ImportError:
        pass
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "bw"
    assert temporal_bandwidth.main(["--device", "cpu", "--nodes", "32", "--hidden", "8", "--repeats", "1",
                                    "--out", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    assert len(records) == 2 * 2 * 3  # cases x backends x modes
    assert {r["case"] for r in records} == {"scalar", "vector"}
    for r in records:
        if r["backend"] == "reference":
            assert r["status"] == "measured" and r["median_ms"] > 0 and r["GBps"] > 0
        else:
            assert r["status"] == "skipped" and "interpreter" in r["reason"]
    vector = next(r for r in records if r["case"] == "vector")
    assert vector["shape"] == [32 * 8 // 6, 8, 3, 2]  # about the scalar case's bytes
    summary = (out / "summary.md").read_text()
    assert "| scalar | 32x8x8 | reference | forward+backward | measured |" in summary


def test_bytes_model():
    moved = temporal_bandwidth.TENSORS_MOVED
    assert moved["forward"] + moved["backward"] == moved["forward+backward"]
    for leaky in (True, False):
        passes = temporal_bandwidth.TENSOR_PASSES[leaky]
        assert passes["forward"] + passes["backward"] == passes["forward+backward"]
        assert all(passes[m] >= moved[m] for m in moved)


def test_triton_path_in_the_interpreter():
    """With TRITON_INTERPRET=1 (set by conftest on CPU) the Triton path runs and is checked against the reference."""
    if torch.cuda.is_available():
        pytest.skip("covered by the gpu test")
    records = temporal_bandwidth.measure_case("scalar", (6, 4, 3), 2, "triton", torch.device("cpu"), repeats=1,
                                              warmup=0)
    assert [r["status"] for r in records] == ["measured"] * 3, records[0].get("reason")
    assert records[0]["max_rel_err"] < 1e-5


@pytest.mark.gpu
def test_gpu_bandwidth_of_the_real_kernels():
    device = torch.device("cuda")
    copy = temporal_bandwidth.copy_bandwidth(device)
    for case, shape in temporal_bandwidth.shapes(65_536, 8, 128).items():
        records = temporal_bandwidth.measure_case(case, shape, 2, "triton", device, repeats=3)
        assert [r["status"] for r in records] == ["measured"] * 3, records[0].get("reason")
        assert records[0]["max_rel_err"] < 1e-4
        # 256 MB tensors: well beyond the L2 cache, so the bytes that must move cannot beat the copy bandwidth by much
        assert all(0 < r["GBps"] < 1.5 * copy for r in records), (copy, records)
