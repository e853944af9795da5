"""Experiment configuration: dataclasses filled from one JSON file per dataset (``egno_fast/configs``)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    """Which data, how many samples, and the sampling protocol (P target frames and their placement)."""

    name: str = "nbody"
    data_dir: str = ""  # empty: $EGNO_FAST_DATA or ~/.cache/egno_fast
    num_frames: int = 5
    discretisation: str = "uniform"  # "uniform" (EGNO-U) or "last" (EGNO-L)
    max_train_samples: Optional[int] = 3000
    max_eval_samples: Optional[int] = None
    # N-body generator (DESIGN.md §2): the stream of seed 43 with 10000/2000/2000 trajectories.
    num_train: int = 10000
    num_valid: int = 2000
    num_test: int = 2000
    generator_seed: int = 43
    # MD17 (DESIGN.md §2): which molecule, and "file" (md17_<molecule>.npz in the data folder, e.g. the sGDML
    # download) or "standin" (generated once with RDKit's MMFF94 into <data folder>/md17_standin/).
    molecule: str = "aspirin"
    md17_source: str = "file"
    # Protein (DESIGN.md §2): MDAnalysis-readable topology and trajectory files; both empty: the AdK test trajectory
    # of the MDAnalysisTests package (adk.psf, adk_dims.dcd). Contact-graph cutoff in Angstrom.
    topology: str = ""
    trajectory: str = ""
    cutoff: float = 10.0


@dataclass
class ModelConfig:
    """EGNO keyword arguments other than the data-dependent node_dim, edge_dim and num_frames."""

    hidden_dim: int = 64
    num_layers: int = 4
    num_modes: int = 2
    time_emb_dim: int = 32
    temporal_channels: List[str] = field(default_factory=lambda: ["h", "x", "v"])
    backend: Union[str, Dict[str, str]] = "auto"  # or op -> backend


@dataclass
class TrainConfig:
    """Optimisation and evaluation schedule (the reference's conventions, DESIGN.md §1)."""

    epochs: int = 5000
    batch_size: int = 100
    lr: float = 1e-4
    weight_decay: float = 1e-8
    lr_step: Optional[int] = None  # StepLR period in epochs (MD17: 2500), None: constant
    lr_gamma: float = 0.5
    eval_every: int = 5
    patience: int = 50  # early stopping, counted in evaluations without improvement
    seed: int = 1
    device: str = "cpu"
    num_threads: Optional[int] = None
    max_minutes: Optional[float] = None  # stop (resumably) once this much wall time is spent
    plot_samples: int = 3


@dataclass
class ExperimentConfig:
    name: str = "nbody"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Dict[str, Any]) -> "ExperimentConfig":
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        unknown = set(raw) - set(sections) - {"name"}
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}; expected name, data, model, train")
        built = {}
        for section, kind in sections.items():
            values = raw.get(section, {})
            names = {f.name for f in dataclasses.fields(kind)}
            bad = set(values) - names
            if bad:
                raise ValueError(f"unknown keys in config section {section!r}: {sorted(bad)}; known: {sorted(names)}")
            built[section] = kind(**values)
        return cls(name=raw.get("name", "experiment"), **built)


def available_configs() -> List[str]:
    """Names of the configurations shipped with the package."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(name_or_path: str) -> ExperimentConfig:
    """A shipped configuration by name (``nbody``, ``default``, ...) or a JSON file by path."""
    path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.exists():
        path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(f"no config named {name_or_path!r}: shipped configs are {available_configs()}, "
                                f"or pass the path of a JSON file")
    with open(path) as handle:
        try:
            raw = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"config file {path} is not valid JSON: {error}") from error
    return ExperimentConfig.from_dict(raw)


def apply_overrides(config: ExperimentConfig, overrides: List[str]) -> ExperimentConfig:
    """Apply ``section.key=value`` overrides (values parsed as JSON, else kept as strings)."""
    raw = config.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 2 or parts[0] not in ("data", "model", "train"):
            raise ValueError(f"override {item!r} must look like section.key=value, section one of data/model/train")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        raw[parts[0]][parts[1]] = value
    return ExperimentConfig.from_dict(raw)
