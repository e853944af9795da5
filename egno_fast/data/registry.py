"""Datasets by name, built from a :class:`~egno_fast.config.DataConfig`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict

from torch.utils.data import Dataset

from ..config import DataConfig
from .io import default_data_dir, generation_lock
from .md17 import MD17Dataset, generate_md17_standin, is_current_standin, md17_path
from .mocap import find_mocap_file, mocap_datasets
from .nbody import NBodyDataset, NBodyParams, load_or_generate_nbody
from .protein import adk_test_files, protein_datasets
from .protocol import SPLITS
from .trajectory import trajectory_datasets
from .water import load_or_generate_water, water_folder, water_params

DATASETS = ("nbody", "mocap", "md17", "protein", "trajectory", "water")


def resolve_data_dir(config: DataConfig) -> Path:
    """``config.data_dir``, else $EGNO_FAST_DATA, else ~/.cache/egno_fast."""
    return Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()


def data_location(config: DataConfig) -> str:
    """Where the data of ``config`` comes from, for messages: the motion-capture file, the protein's topology and
    trajectory, or the folder where generated data sets are cached."""
    if config.name == "mocap":
        return str(find_mocap_file(config.data_dir or None))
    if config.name == "protein":
        return f"{config.topology} with {config.trajectory}" if config.topology else "the AdK files of MDAnalysisTests"
    if config.name == "trajectory":
        return config.path + (f" with {config.topology}" if config.topology else "")
    if config.name == "water":
        return str(water_folder(resolve_data_dir(config), water_params(config)))
    return str(resolve_data_dir(config))


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
    if config.name == "md17":
        path = md17_file(config)
        limits = {"train": config.max_train_samples, "valid": config.max_eval_samples,
                  "test": config.max_eval_samples}
        return {split: MD17Dataset(path, split, config.num_frames, limits[split],
                                   discretisation=config.discretisation) for split in SPLITS}
    if config.name == "protein":
        if bool(config.topology) != bool(config.trajectory):
            raise ValueError("give both data.topology and data.trajectory, or neither (the AdK test trajectory)")
        topology, trajectory = (config.topology, config.trajectory) if config.topology else adk_test_files()
        return protein_datasets(topology, trajectory, config.num_frames, cache_dir=resolve_data_dir(config),
                                cutoff=config.cutoff,
                                max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples,
                                discretisation=config.discretisation)
    if config.name == "trajectory":
        return trajectory_datasets(config, resolve_data_dir(config))
    if config.name == "water":
        as_trajectory = water_trajectory_config(config)
        datasets = trajectory_datasets(as_trajectory, resolve_data_dir(config))
        config.elements = as_trajectory.elements  # the encoding the run keeps
        return datasets
    raise ValueError(f"unknown dataset {config.name!r}; available: {DATASETS}")


def water_trajectory_config(config: DataConfig) -> DataConfig:
    """``config`` reading the simulated water box (generated on first use) as a trajectory: its DCD and PDB, all
    atoms, through MDAnalysis."""
    dcd, pdb = load_or_generate_water(resolve_data_dir(config), water_params(config))
    return dataclasses.replace(config, name="trajectory", path=str(dcd), topology=str(pdb), reader="mdanalysis",
                               selection="all", elements=list(config.elements))


def md17_file(config: DataConfig) -> Path:
    """The npz of ``config.molecule``: the user's file ("file"), or the RDKit stand-in, generated once per generator
    version ("standin")."""
    if config.md17_source == "standin":
        path = md17_path(resolve_data_dir(config) / "md17_standin", config.molecule)
        if not path.exists() or not is_current_standin(path):  # missing, or from an older generator
            with generation_lock(path):  # one process generates; another waits and reads its file
                if not path.exists() or not is_current_standin(path):
                    generate_md17_standin(path, config.molecule)
        return path
    if config.md17_source != "file":
        raise ValueError(f"data.md17_source must be 'file' or 'standin', got {config.md17_source!r}")
    path = md17_path(resolve_data_dir(config), config.molecule)
    if not path.exists():
        raise FileNotFoundError(f"MD17 file not found: {path}. Put the sGDML md17_{config.molecule}.npz there "
                                "(--data-dir), or use the RDKit stand-in: --set data.md17_source=\"standin\"")
    return path
