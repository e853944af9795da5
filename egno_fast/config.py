"""Experiment configuration: dataclasses filled from one JSON file per dataset (``egno_fast/configs``)."""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

CONFIG_DIR = Path(__file__).parent / "configs"
# The "eghn" backbone's settings and their defaults (EGHN's AdK configuration; docs/eghno.md): EGNO's keyword
# arguments and the model config's keys.
EGHN_DEFAULTS: Dict[str, Any] = dict(num_clusters=20, pooling_layers=4, decoder_layers=2, link_weight=2.0,
                                     assignment="per_frame", cluster_inputs="input")
# The most clusters per graph: the cluster level is a complete graph (K^2 edges per graph and frame, on the reference
# EGNN layer) and the assignment is dense (N x K per frame); docs/eghno.md, "cost".
MAX_CLUSTERS = 128
BACKBONES = ("egnn", "eghn")
ASSIGNMENTS = ("per_frame", "shared")
CLUSTER_INPUTS = ("input", "node_level")
PRECISIONS = ("fp32", "bf16")


@dataclass
class DataConfig:
    """Which data, how many samples, and the sampling protocol (P target frames and their placement)."""

    name: str = "nbody"
    data_dir: str = ""  # empty: $EGNO_FAST_DATA or ~/.cache/egno_fast
    num_frames: int = 5
    discretisation: str = "uniform"  # "uniform" (EGNO-U) or "last" (EGNO-L)
    max_train_samples: Optional[int] = 3000
    max_eval_samples: Optional[int] = None
    # N-body generator (docs/design.md §2.2): the stream of seed 43 with 10000/2000/2000 trajectories.
    num_train: int = 10000
    num_valid: int = 2000
    num_test: int = 2000
    generator_seed: int = 43
    # MD17 (docs/design.md §2.4): which molecule, and "file" (md17_<molecule>.npz in the data folder, e.g. the sGDML
    # download) or "standin" (generated once with RDKit's MMFF94 into <data folder>/md17_standin/).
    molecule: str = "aspirin"
    md17_source: str = "file"
    # Protein (docs/design.md §2.5): MDAnalysis-readable topology and trajectory files; both empty: the AdK test
    # trajectory of the MDAnalysisTests package (adk.psf, adk_dims.dcd). Contact-graph cutoff in Angstrom.
    topology: str = ""
    trajectory: str = ""
    cutoff: float = 10.0
    # Any trajectory file ("trajectory", egno_fast/data/trajectory.py): the file(s) (a path, a glob, or several
    # separated by commas: replicas), the reader ("auto", "ase", "mdanalysis"; a topology in data.topology where the
    # format needs one), the atoms (MDAnalysis selection, or "all" / "element C N O" with ASE), Delta = span frames
    # between input and last target, the step between sample starts, ps between frames (0: the reader's), and the
    # element list of the one-hot node feature (empty: the training file's, then kept in the run's config).
    path: str = ""
    reader: str = "auto"
    format: str = ""  # the ASE format name where the extension does not say it (e.g. "lammps-dump-text")
    selection: str = "all"
    span: int = 10
    stride: int = 1
    frame_interval: float = 0.0
    elements: List[str] = field(default_factory=list)
    # The OpenMM water box ("water", egno_fast/data/water.py; then read as a trajectory): side in nm, recorded frames,
    # 2 fs steps between frames and before the first; seeded by generator_seed.
    water_box_nm: float = 6.0
    water_frames: int = 600
    water_steps_per_frame: int = 5
    water_equilibration_steps: int = 1000


@dataclass
class ModelConfig:
    """EGNO keyword arguments other than the data-dependent node_dim, edge_dim and num_frames."""

    hidden_dim: int = 64
    num_layers: int = 4
    num_modes: int = 2
    time_emb_dim: int = 32
    temporal_channels: List[str] = field(default_factory=lambda: ["h", "x", "v"])
    coord_clamp: str = "mean"  # "mean" (the public code's), "norm" (equivariant), "edge" or "none": see EGNO
    vector_centre: str = "mean"  # "mean" (the paper's) or "input" (each atom's own: periodic systems), see EGNO
    backend: Union[str, Dict[str, str]] = "auto"  # or op -> backend
    # "egnn" (EGNO) or "eghn" (EGHNO: num_layers EGNN layers per level, the rest below; see EGNO and docs/eghno.md)
    backbone: str = "egnn"
    num_clusters: int = EGHN_DEFAULTS["num_clusters"]
    pooling_layers: int = EGHN_DEFAULTS["pooling_layers"]
    decoder_layers: int = EGHN_DEFAULTS["decoder_layers"]
    link_weight: float = EGHN_DEFAULTS["link_weight"]
    assignment: str = EGHN_DEFAULTS["assignment"]  # "per_frame" or "shared"
    cluster_inputs: str = EGHN_DEFAULTS["cluster_inputs"]  # "input" or "node_level"


@dataclass
class TrainConfig:
    """Optimisation and evaluation schedule (the reference's conventions, docs/design.md §1.6)."""

    epochs: int = 5000
    batch_size: int = 100
    lr: float = 1e-4
    weight_decay: float = 1e-8
    lr_step: Optional[int] = None  # StepLR period in epochs (MD17: 2500), None: constant
    lr_gamma: float = 0.5
    grad_clip_norm: Optional[float] = None  # rescale the gradient to this global L2 norm when above it; None: never
    eval_every: int = 5
    patience: int = 50  # early stopping, counted in evaluations without improvement
    seed: int = 1
    device: str = "cpu"
    num_threads: Optional[int] = None
    max_minutes: Optional[float] = None  # stop (resumably) once this much wall time is spent
    # "fp32", or "bf16": the MLPs' linear layers under torch.autocast with bf16 operands; coordinates, sums over
    # edges, the temporal transform and the loss stay float32 (the cpp EGNN layer does not run under autocast:
    # "auto" takes the reference there, naming "cpp" is refused; Triton's runs bf16 dots with float32 sums)
    precision: str = "fp32"
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
            if not isinstance(values, dict):
                raise ValueError(f"config section {section!r} must be a JSON object, got {values!r}")
            names = {f.name for f in dataclasses.fields(kind)}
            bad = set(values) - names
            if bad:
                raise ValueError(f"unknown keys in config section {section!r}: {sorted(bad)}"
                                 f"{_did_you_mean(section, sorted(bad)[0], names)}; known: {sorted(names)}")
            checked = {}
            for key, value in values.items():
                ok, checked[key] = check_value(kind, key, value)
                if not ok:
                    raise ValueError(f"config value {section}.{key} must be {describe_type(kind, key)}, got "
                                     f"{value!r}")
                problem = range_problem(section, key, checked[key])
                if problem:
                    raise ValueError(f"config value {section}.{key} must be {problem}, got {value!r}")
            built[section] = kind(**checked)
        name = raw.get("name", "experiment")
        if not isinstance(name, str):
            raise ValueError(f"config value name must be a string, got {name!r}")
        return cls(name=name, **built)


# The allowed values of each numeric or named setting, beyond its type: (test, what it says). A null (None) of an
# optional setting is always allowed. Checked where a configuration is read (file, --set), before anything runs.
def _at_least(bound):
    return (lambda v: v >= bound), f">= {bound}"


_POSITIVE = ((lambda v: v > 0 and v != float("inf")), "a finite number > 0")
_FINITE_NON_NEGATIVE = ((lambda v: 0 <= v < float("inf")), "a finite number >= 0")
LIMITS = {
    "data.num_frames": _at_least(1), "data.max_train_samples": _at_least(1), "data.max_eval_samples": _at_least(1),
    "data.num_train": _at_least(1), "data.num_valid": _at_least(1), "data.num_test": _at_least(1),
    "data.generator_seed": _at_least(0), "data.cutoff": _POSITIVE,
    "data.reader": ((lambda v: v in ("auto", "ase", "mdanalysis")), '"auto", "ase" or "mdanalysis"'),
    "data.span": _at_least(1), "data.stride": _at_least(1), "data.frame_interval": _FINITE_NON_NEGATIVE,
    "data.discretisation": ((lambda v: v in ("uniform", "last")), '"uniform" or "last"'),
    "data.md17_source": ((lambda v: v in ("file", "standin")), '"file" or "standin"'),
    "data.water_box_nm": ((lambda v: 1.2 <= v < float("inf")), "a box side >= 1.2 nm"),
    "data.water_frames": _at_least(2), "data.water_steps_per_frame": _at_least(1),
    "data.water_equilibration_steps": _at_least(0),
    "model.hidden_dim": _at_least(1), "model.num_layers": _at_least(1), "model.num_modes": _at_least(0),
    "model.time_emb_dim": _at_least(4),
    "model.coord_clamp": ((lambda v: v in ("mean", "norm", "edge", "none")), '"mean", "norm", "edge" or "none"'),
    "model.vector_centre": ((lambda v: v in ("mean", "input")), '"mean" or "input"'),
    "model.backbone": ((lambda v: v in BACKBONES), '"egnn" or "eghn"'),
    "model.num_clusters": ((lambda v: 1 <= v <= MAX_CLUSTERS), f"an integer in [1, {MAX_CLUSTERS}]"), "model.pooling_layers": _at_least(1), "model.decoder_layers": _at_least(1),
    "model.link_weight": _FINITE_NON_NEGATIVE,
    "model.assignment": ((lambda v: v in ASSIGNMENTS), '"per_frame" or "shared"'),
    "model.cluster_inputs": ((lambda v: v in CLUSTER_INPUTS), '"input" or "node_level"'),
    "model.temporal_channels": ((lambda v: set(v) <= {"h", "x", "v"} and len(set(v)) == len(v)),
                                'a list of distinct channels among "h", "x", "v"'),
    "train.epochs": _at_least(1), "train.batch_size": _at_least(1), "train.lr": _POSITIVE,
    "train.weight_decay": _FINITE_NON_NEGATIVE, "train.lr_step": _at_least(1), "train.lr_gamma": _POSITIVE,
    "train.grad_clip_norm": _POSITIVE,
    "train.eval_every": _at_least(1), "train.patience": _at_least(1), "train.seed": _at_least(0),
    "train.precision": ((lambda v: v in PRECISIONS), '"fp32" or "bf16"'),
    "train.num_threads": _at_least(1), "train.max_minutes": _FINITE_NON_NEGATIVE, "train.plot_samples": _at_least(0),
}


def range_problem(section: str, key: str, value: Any) -> Optional[str]:
    """What ``section.key`` must be if ``value`` (already of the right type) is outside its allowed values, else
    None."""
    limit = LIMITS.get(f"{section}.{key}")
    if limit is None or value is None:
        return None
    test, allowed = limit
    return None if test(value) else allowed


def _did_you_mean(section: str, key: str, names) -> str:
    close = difflib.get_close_matches(key, sorted(names), n=1)
    return f" (did you mean {section}.{close[0]}?)" if close else ""


def _field_type(kind: type, key: str) -> Any:
    return typing.get_type_hints(kind)[key]


def _matches(annotation: Any, value: Any) -> Tuple[bool, Any]:
    """Whether ``value`` (parsed JSON) fits ``annotation``, and the value to keep (ints widened for float fields)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True, value
    if origin is Union:
        for option in args:
            ok, converted = _matches(option, value)
            if ok:
                return True, converted
        return False, value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (list, List):
        if not isinstance(value, list):
            return False, value
        items = [_matches(args[0], item) if args else (True, item) for item in value]
        return all(ok for ok, _ in items), [item for _, item in items]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            return False, value
        if args:
            ok = all(_matches(args[0], k)[0] and _matches(args[1], v)[0] for k, v in value.items())
            return ok, value
        return True, value
    return True, value  # a type this checker does not know: accepted as given


def check_value(kind: type, key: str, value: Any) -> Tuple[bool, Any]:
    """Whether ``value`` fits the field ``key`` of the config dataclass ``kind``, and the value to store."""
    return _matches(_field_type(kind, key), value)


def describe_type(kind: type, key: str) -> str:
    """The expected type of a config field in words ("an integer", "a number or null", ...)."""
    def words(annotation: Any) -> str:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is Union:
            return " or ".join(words(option) for option in args)
        if origin in (list, List):
            return f"a list of {words(args[0]).split(' ', 1)[1]}s" if args else "a list"
        if origin in (dict, Dict):
            return "an object"
        return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                type(None): "null"}.get(annotation, str(annotation))
    return words(_field_type(kind, key))


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


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def apply_overrides(config: ExperimentConfig, overrides: List[str]) -> ExperimentConfig:
    """Apply ``section.key=value`` overrides (values parsed as JSON, else kept as strings).

    Raises ValueError, naming the override and what it should look like, for an unknown section or key and for a
    value of the wrong type (``model.hidden_dim=abc``). A field that takes a string also takes unquoted text that
    happens to parse as JSON (``data.molecule=123`` is the string "123")."""
    raw = config.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 2 or parts[0] not in _SECTIONS:
            raise ValueError(f"override {item!r} must look like section.key=value, section one of data/model/train "
                             f"(e.g. --set train.lr=5e-4)")
        section, name = parts
        kind = _SECTIONS[section]
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if name not in {f.name for f in dataclasses.fields(kind)}:
            raw[section][name] = value  # ExperimentConfig.from_dict names it, and the key meant
            continue
        ok, value = check_value(kind, name, value)
        if not ok and text and check_value(kind, name, text)[0]:
            ok, value = True, text  # unquoted text for a string field
        if not ok:
            example = _example(getattr(getattr(config, section), name))
            raise ValueError(f"override {item!r}: {section}.{name} must be {describe_type(kind, name)}, got "
                             f"{text!r} (e.g. --set {section}.{name}={example})")
        raw[section][name] = value
    return ExperimentConfig.from_dict(raw)


def _example(current: Any) -> str:
    """A value in --set syntax for the example of an error message (the current one)."""
    text = json.dumps(current)
    return f"'{text}'" if any(c in text for c in ' "[{') else text
