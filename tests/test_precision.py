"""bf16 training: the MLPs' linear layers under autocast, everything else in float32; a backend that cannot run
under autocast (the cpp EGNN layer) is passed over by "auto" and refused when named, never run silently in
float32."""
import json

import pytest
import torch

from egno_fast.backends import BackendUnavailableError, autocast_dtype, resolve_backend, unavailable_reason
from egno_fast.cli import main
from egno_fast.models import EGNO
from egno_fast.ops import build_graph
from egno_fast.ops.temporal_conv import temporal_residual
from egno_fast.ops.weights import LinearWeights, MLPWeights, mlp

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def small_problem(seed=0, nodes=12, frames=4):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(nodes, 3, generator=generator)
    v = torch.randn(nodes, 3, generator=generator)
    h = torch.randn(nodes, 5, generator=generator)
    sender, receiver = torch.meshgrid(torch.arange(nodes), torch.arange(nodes), indexing="ij")
    keep = sender != receiver
    edge_index = torch.stack([sender[keep], receiver[keep]])
    graph = build_graph(edge_index, nodes, torch.randn(edge_index.shape[1], 2, generator=generator))
    return x, v, h, graph


def test_the_autocast_state_is_read_and_the_fused_egnn_layers_refuse_it():
    assert autocast_dtype("cpu") is None
    with torch.autocast(**BF16):
        assert autocast_dtype("cpu") == torch.bfloat16
        assert resolve_backend("auto", "cpu", "egnn_layer") == "reference"  # cpp is passed over, not run in fp32
        with pytest.raises(BackendUnavailableError, match="does not run 'egnn_layer' under autocast"):
            resolve_backend("cpp", "cpu", "egnn_layer")
        reason = unavailable_reason("cpp", "temporal_residual", "cpu")  # runs in float32 under autocast
        assert reason is None or "autocast" not in reason
    assert "under autocast (bfloat16" in unavailable_reason("cpp", "egnn_layer", autocast=torch.bfloat16)
    triton = unavailable_reason("triton", "egnn_layer", autocast=torch.bfloat16)  # bf16 dots, float32 sums
    assert triton is None or "autocast" not in triton


def test_mlp_operands_are_bf16_and_results_come_back_in_float32():
    generator = torch.Generator().manual_seed(1)
    weights = MLPWeights(LinearWeights(torch.randn(8, 4, generator=generator), torch.randn(8, generator=generator)),
                         LinearWeights(torch.randn(3, 8, generator=generator), torch.randn(3, generator=generator)))
    x = torch.randn(5, 4, generator=generator)
    with torch.autocast(**BF16):
        out = mlp(x, weights, "silu")
    assert out.dtype == torch.float32
    exact = mlp(x, weights, "silu")
    assert not torch.equal(out, exact)  # the linear layers did run in bf16 ...
    torch.testing.assert_close(out, exact, rtol=0.05, atol=0.05)  # ... to bf16's precision
    temporal_input = torch.randn(6, 8, 4, generator=generator)
    weight = torch.randn(4, 4, 3, 2, generator=generator)
    with torch.autocast(**BF16):  # the temporal transform stays float32, bit for bit
        transformed = temporal_residual(temporal_input, weight, True, backend="reference")
    assert torch.equal(transformed, temporal_residual(temporal_input, weight, True, backend="reference"))


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_a_bf16_forward_keeps_coordinates_in_float32_close_to_the_float32_model(backend):
    torch.manual_seed(0)
    model = EGNO(node_dim=5, edge_dim=2, hidden_dim=16, num_layers=2, num_frames=4, backend=backend)
    x, v, h, graph = small_problem()
    exact = model(x, v, h, graph)
    with torch.autocast(**BF16):
        out = model(x, v, h, graph)
    assert out.x.dtype == out.v.dtype == torch.float32
    assert model.active_backend["egnn_layer"] == "reference"  # reported as run
    assert (out.x - exact.x).abs().max() < 0.05 * exact.x.abs().max()
    out.x.square().mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_training_in_bf16_and_a_named_backend_that_cannot(tmp_path, capsys):
    common = ["train", "--epochs", "1", "--no-progress", "--set", "data.max_train_samples=100", "--set",
              "data.max_eval_samples=100", "--set", "train.precision=\"bf16\""]
    assert main([*common, "--run-dir", str(tmp_path / "run")]) == 0
    assert "egnn_layer=reference" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["config"]["train"]["precision"] == "bf16"
    assert records[-1]["active_backend"]["egnn_layer"] == "reference" and records[-1]["peak_memory_mb"] > 0
    assert records[1]["train_atom_frames_per_s"] > 0
    assert main([*common, "--backend", "cpp", "--run-dir", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "under autocast" in err and err.count("\n") == 1 and not (tmp_path / "refused").exists()
    assert main(["train", "--set", "train.precision=\"fp16\"", "--run-dir", str(tmp_path / "x")]) == 2
    assert 'train.precision must be "fp32" or "bf16"' in capsys.readouterr().err
    assert main(["train", "--config", "eghno_mocap", "--set", "train.precision=\"bf16\"", "--run-dir",
                 str(tmp_path / "eghn")]) == 2
    assert 'not supported with model.backbone="eghn"' in capsys.readouterr().err and not (tmp_path / "eghn").exists()
