"""torchrun support for the command line: a process group for the length of a command when the environment
describes one (``torchrun --nproc_per_node K -m egno_fast train ...``)."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator, Tuple

import torch
import torch.distributed as dist


def rank_and_world() -> Tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def leave_without_finalization() -> None:
    """Flush and exit with status 0, skipping interpreter finalization. For a process whose work is written and
    whose process group is destroyed: torch 2.13 on CPU, a process that ran DistributedDataParallel over gloo
    sometimes aborts in finalization (SIGABRT, "terminate called without an active exception"; about 1 run in 15
    here, also with a ten-line DDP script)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def process_group_from_environment(device: str) -> Iterator[str]:
    """Initialise the default process group while the block runs, when torchrun started this process and nobody
    has initialised one yet; otherwise do nothing. Yields the backend of the group it opened ("" when it opened
    none, whether or not the caller has one of its own).

    A CUDA ``device`` gives NCCL and one GPU per local rank (rank r trains on cuda:LOCAL_RANK, so ``device`` must
    name no index); any other device gives gloo."""
    if not launched_by_torchrun():
        yield ""
        return
    if not dist.is_available():
        raise RuntimeError("torchrun started this process but this torch build has no torch.distributed")
    if dist.is_initialized():
        yield ""
        return
    device_type = torch.device(device)
    if device_type.type == "cuda":
        if device_type.index is not None:
            raise ValueError(f"under torchrun give --device cuda, not {device!r}: each rank takes the GPU of its "
                             "local rank (cuda:LOCAL_RANK)")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    try:
        yield backend
    finally:
        dist.destroy_process_group()
