"""torchrun support for the command line: a process group for the length of a command when the environment
describes one (``torchrun --nproc_per_node K -m egno_fast train ...``)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist


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
    if not launched_by_torchrun() or dist.is_initialized():
        yield ""
        return
    if not dist.is_available():
        raise RuntimeError("torchrun started this process but this torch build has no torch.distributed")
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
