"""Datasets by name, built from a :class:`~egno_fast.config.DataConfig`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

from torch.utils.data import Dataset

from ..config import DataConfig
from .mocap import find_mocap_file, mocap_datasets
from .nbody import NBodyDataset, NBodyParams, load_or_generate_nbody
from .protocol import SPLITS

DATASETS = ("nbody", "mocap")


def resolve_data_dir(config: DataConfig) -> Path:
    """``config.data_dir``, else $EGNO_FAST_DATA, else ~/.cache/egno_fast."""
    if config.data_dir:
        return Path(config.data_dir).expanduser()
    return Path(os.environ.get("EGNO_FAST_DATA", Path.home() / ".cache" / "egno_fast")).expanduser()


def nbody_params(config: DataConfig) -> NBodyParams:
    return NBodyParams(num_train=config.num_train, num_valid=config.num_valid, num_test=config.num_test,
                       seed=config.generator_seed, train_simulated=config.max_train_samples)


def make_datasets(config: DataConfig, progress: bool = True) -> Dict[str, Dataset]:
    """The train, valid and test datasets of ``config`` (generating and caching data where needed)."""
    if config.name == "nbody":
        arrays = load_or_generate_nbody(resolve_data_dir(config), nbody_params(config), progress=progress)
        limits = {"train": config.max_train_samples, "valid": config.max_eval_samples,
                  "test": config.max_eval_samples}
        return {split: NBodyDataset(arrays, split, num_frames=config.num_frames, max_samples=limits[split],
                                    discretisation=config.discretisation) for split in SPLITS}
    if config.name == "mocap":
        path = find_mocap_file(config.data_dir or None)
        return mocap_datasets(path, config.num_frames, config.discretisation, config.max_train_samples,
                              config.max_eval_samples)
    raise ValueError(f"unknown dataset {config.name!r}; available: {DATASETS}")
