"""The trainer under torch.distributed (gloo on CPU, two processes): ranks stay in sync, rank 0 alone writes."""
import json
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from egno_fast.training import train
from egno_fast.training.launch import leave_without_finalization
from test_training import tiny_config


def _worker(rank, world, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        result = train(tiny_config(tmp_path / "data", "train.epochs=2"), tmp_path / "run", progress=False)
        flat = torch.cat([p.detach().flatten() for p in result.model.parameters()])
        gathered = [None] * world
        dist.all_gather_object(gathered, (flat, result.test_f_mse))
        if rank == 0:
            torch.save(gathered, tmp_path / "gathered.pt")
    finally:
        dist.destroy_process_group()
    leave_without_finalization()  # results gathered: the test checks the trainer, not torch's gloo teardown


def test_two_process_training_in_sync_and_written_once(tmp_path):
    mp.spawn(_worker, args=(2, tmp_path), nprocs=2, join=True)
    (params0, test0), (params1, test1) = torch.load(tmp_path / "gathered.pt")
    # each rank evaluated its own in-memory model during training (on different data shards): equal metrics
    # mean DistributedDataParallel kept the replicas identical
    assert test0 == test1
    assert torch.equal(params0, params1)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("start") == 1  # rank 1 wrote nothing
    assert [r["epoch"] for r in records if r["event"] == "eval"] == [0, 1]


def test_command_line_under_torchrun_trains_once_with_two_ranks(tmp_path):
    """``torchrun --nproc_per_node 2 -m egno_fast train``: one process group, one log, one summary (rank 0)."""
    import subprocess

    from test_training import TINY

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "egno_fast", "train", "--epochs", "2", "--data-dir", str(tmp_path / "data"),
               "--run-dir", str(tmp_path / "run"), "--no-progress"]
    for override in TINY:
        command += ["--set", override]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("best validation F-MSE") == 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("start") == 1
    assert [r["epoch"] for r in records if r["event"] == "eval"] == [0, 1]
    start = next(r for r in records if r["event"] == "start")
    assert start["world_size"] == 2  # the effective batch is world_size x train.batch_size


def test_torchrun_environment_refuses_an_indexed_gpu(monkeypatch):
    from egno_fast.training.launch import process_group_from_environment

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--device cuda"):
        with process_group_from_environment("cuda:1"):
            pass


def test_a_callers_process_group_is_left_alone(monkeypatch, tmp_path):
    """Under torchrun with a group the caller opened: nothing opened, nothing destroyed (and no early exit)."""
    from egno_fast.training.launch import process_group_from_environment

    monkeypatch.setenv("WORLD_SIZE", "2")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        with process_group_from_environment("cpu") as opened:
            assert opened == ""
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
