"""End-to-end training throughput: optimizer steps on real batches, per backend (samples/s and epoch time)."""
from __future__ import annotations

import statistics
import tempfile
from typing import Dict, List

import torch

from egno_fast.config import apply_overrides, load_config
from egno_fast.data.batching import collate_graphs
from egno_fast.data.registry import make_datasets
from egno_fast.training.metrics import frame_mse
from egno_fast.training.trainer import build_model

from .runner import time_samples


def _step_records(config, dataset, device, backends, steps, batches_per_epoch) -> List[Dict]:
    """Median Adam-step time on the first batch of ``dataset`` for each backend."""
    batch = collate_graphs([dataset[i] for i in range(config.train.batch_size)]).to(device)
    graph = batch.graph()
    records = []
    for backend in backends:
        record = {"dataset": config.data.name, "backend": backend, "batch_size": config.train.batch_size}
        try:
            torch.manual_seed(0)
            model = build_model(config, dataset[0]).to(device)
            model.backend = backend
            optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)

            def step():
                optimizer.zero_grad(set_to_none=True)
                out = model(batch.x, batch.v, batch.h, graph, **batch.model_keywords)
                loss = frame_mse(out.x, batch.target).mean()
                (loss if out.aux_loss is None else loss + out.aux_loss).backward()
                optimizer.step()

            seconds = statistics.median(time_samples(step, device, 1, steps))
            record.update(status="measured", step_ms=seconds * 1e3, samples_per_s=config.train.batch_size / seconds,
                          epoch_s=seconds * batches_per_epoch, ran=str(model.active_backend))
        except Exception as error:  # recorded, like every other point
            record.update(status="failed", reason=f"{type(error).__name__}: {error}"[:300])
        records.append(record)
    return records


def training_throughput(device: torch.device, backends: List[str], steps: int = 5, small: bool = False) -> List[Dict]:
    """Samples per second and epoch time of Adam steps with the paper configs of N-body (batch 100, 3000 samples;
    ``small`` generates 200 trajectories in a temporary folder instead of using the cached set) and mocap (batch
    12, 200 samples; the data file shipped with the package, or $EGNO_FAST_MOCAP)."""
    overrides = ["data.num_train=200", "data.num_valid=10", "data.num_test=10", "data.max_train_samples=200"] \
        if small else []
    paper = load_config("nbody")
    with tempfile.TemporaryDirectory() as tmp:
        if small:
            overrides.append(f'data.data_dir="{tmp}"')
        config = apply_overrides(paper, overrides)
        dataset = make_datasets(config.data, progress=False)["train"]
    records = _step_records(config, dataset, device, backends, steps,
                            paper.data.max_train_samples // paper.train.batch_size)
    mocap = load_config("mocap")
    dataset = make_datasets(mocap.data, progress=False)["train"]
    return records + _step_records(mocap, dataset, device, backends, steps,
                                   mocap.data.max_train_samples // mocap.train.batch_size)
