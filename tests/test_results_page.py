"""docs/RESULTS.md tells the truth: every cell of its results table (experiment label, metric, paper value, our
value, best epoch, status, command, seed, wall time, machine, log link) is checked against the committed file it
comes from, and every paper value against docs/paper_numbers.json, the one file that holds the paper's numbers.

Committed result files: a training log ``results/<run>/metrics.jsonl`` (egno_fast/training/trainer.py: one
"start" record per part a run ran in (each resume adds one) with the command, config, seed and device, "eval"
records, and an "end" record with how the run stopped, the test metrics at the best validation epoch and the wall
time), or the JSON that ``egno-fast eval --output`` writes (metrics, command, checkpoint epoch, config). No
checkpoint is read.

The checks are functions of the page text that return a list of problems (empty: the page is true), so that
``test_every_perturbation_of_the_page_is_caught`` can change every number of every cell, one at a time, and swap
labels, and expect each change to be reported. tests/test_readme_tables.py applies the same checks to the README.
"""
import functools
import json
import re
import shlex
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "RESULTS.md"
PAPER_FILE = REPO / "docs" / "paper_numbers.json"
DESIGN = REPO / "docs" / "design.md"

PAGE_COLUMNS = ["Experiment", "Metric", "Paper", "Ours", "Best epoch", "Status", "Command", "Seed", "Wall time",
                "Machine", "Log"]
DATASET_WORDS = {"nbody": r"\bN-body\b", "mocap": r"\b(?:Mocap|motion capture)\b", "md17": r"\bMD17\b",
                 "protein": r"\bProtein\b"}
MOLECULES = ("aspirin", "benzene", "ethanol", "malonaldehyde", "naphthalene", "salicylic", "toluene", "uracil")
# Options that say where or how long a run ran, not what it computes: a page may leave them out of a command.
RUNTIME_OPTIONS = ("--max-minutes", "--data-dir")  # each with a value
RUNTIME_FLAGS = ("--no-progress",)
RUNTIME_SETTINGS = ("train.num_threads",)  # --set KEY=VALUE
RUNTIME_CONFIG_KEYS = {("train", "max_minutes"), ("train", "num_threads"), ("data", "data_dir")}
STATUS_KEYWORDS = {"early_stopping": "early stopping", "max_epochs": "epoch budget", "time_limit": "time limit",
                   None: "in progress"}
SCALE_SUFFIX = " x1e-2"  # mocap numbers are shown in units of 1e-2, as the paper reports them

Rule = Tuple[str, Callable[[re.Match], List[str]]]


# ----------------------------------------------------------------------------------------------- reading markdown

def section(text: str, heading: str) -> str:
    """The body of '## heading' (up to the next '## ' heading)."""
    match = re.search(rf"^## {re.escape(heading)}[ \t]*\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    if match is None:
        raise LookupError(f"no section '## {heading}'")
    return match.group(1)


def section_span(text: str, heading: str) -> Tuple[int, int]:
    match = re.search(rf"^## {re.escape(heading)}[ \t]*\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    if match is None:
        raise LookupError(f"no section '## {heading}'")
    return match.start(1), match.end(1)


def split_cells(line: str) -> List[str]:
    return [cell.strip() for cell in line.strip()[1:-1].split("|")]


def join_cells(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table_lines(text: str) -> List[str]:
    """The lines of the first Markdown table in ``text``."""
    lines, started = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            lines.append(line)
            started = True
        elif started:
            break
    if len(lines) < 3:
        raise LookupError("no table")
    return lines


def table(text: str) -> Tuple[List[str], List[List[str]]]:
    """(header, rows) of the first Markdown table in ``text``."""
    lines = table_lines(text)
    return split_cells(lines[0]), [split_cells(line) for line in lines[2:]]


def link_target(cell: str) -> Optional[str]:
    match = re.fullmatch(r"\[([^\]]+)\]\(([^)\s]+)\)", cell.strip())
    return match.group(2) if match else None


# ------------------------------------------------------------------------------------------- checking numbers

def shown_matches(shown: str, value: float, what: str, min_digits: int = 1) -> List[str]:
    """[] if ``shown`` is ``value`` rounded to the digits shown (with at least ``min_digits`` significant digits)."""
    try:
        number = float(shown)
    except ValueError:
        return [f"{what}: {shown!r} is not a number"]
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    if len(shown.replace(".", "").lstrip("0")) < min_digits:
        return [f"{what}: {shown} shows fewer than {min_digits} significant digits of {value:.6g}"]
    if abs(number - value) > 0.5 * 10 ** -decimals * (1 + 1e-9) + 1e-12:
        return [f"{what}: the page says {shown}, the file says {value:.6g}"]
    return []


def equal(shown, actual, what: str) -> List[str]:
    return [] if shown == actual else [f"{what}: the page says {shown!r}, the file says {actual!r}"]


def apply_rules(text: str, rules: Sequence[Rule], what: str) -> List[str]:
    """Run each rule's check on each of its matches, then report any number that no rule covered."""
    problems = []
    for pattern, check in rules:
        for match in re.finditer(pattern, text):
            problems += [f"{what}: {match.group(0)!r}: {p}" for p in check(match)]
        text = re.sub(pattern, " ", text)
    leftover = re.findall(r"\S*\d\S*", text)
    if leftover:
        problems.append(f"{what}: numbers that no check covers: {leftover}")
    return problems


def no_check(match: re.Match) -> List[str]:
    return []


# ------------------------------------------------------------------------------------------ committed records

def _number_of(records: List[dict], event: str) -> int:
    return sum(1 for r in records if r["event"] == event)


@functools.lru_cache(maxsize=None)
def load_record(path: Path) -> dict:
    """What a committed result file says, in one form: a training log (metrics.jsonl) or an evaluation JSON."""
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        starts = [r for r in records if r["event"] == "start"]
        evals = [r for r in records if r["event"] == "eval"]
        end = records[-1] if records[-1]["event"] == "end" else None
        if end is not None:
            f_mse, a_mse, best_epoch, val_f = end["test_f_mse"], end["test_a_mse"], end["best_epoch"], end["val_f_mse"]
            wall_s, epochs_run, stopped = end["wall_s"], end["epochs_run"], end["stopped"]
        else:  # no end record: the run is in progress (or was killed)
            best = next(r for r in evals if r["epoch"] == evals[-1]["best_epoch"])
            f_mse, a_mse, best_epoch, val_f = best["test_f_mse"], best["test_a_mse"], best["epoch"], best["val_f_mse"]
            wall_s, epochs_run, stopped = evals[-1]["elapsed_s"], evals[-1]["epoch"], None
        return {"kind": "train", "path": path, "config": starts[0]["config"],
                "commands": [s["command"] for s in starts],
                "seeds": {s["seed"] for s in starts} | {s["config"]["train"]["seed"] for s in starts},
                "devices": {s["device"] for s in starts}, "f_mse": f_mse, "a_mse": a_mse, "best_epoch": best_epoch,
                "val_f_mse": val_f, "wall_s": wall_s, "epochs_run": epochs_run, "stopped": stopped,
                "parts": len(starts), "factor": 1, "training": None}
    record = json.loads(path.read_text())
    command = shlex.split(record["command"])
    device = command[command.index("--device") + 1] if "--device" in command else "cpu"
    training_log = (REPO / record["checkpoint"]).parent / "metrics.jsonl"
    return {"kind": "eval", "path": path, "config": record["config"], "commands": [record["command"]],
            "seeds": {record["config"]["train"]["seed"]}, "devices": {device}, "f_mse": record["f_mse"],
            "a_mse": record["a_mse"], "best_epoch": record["checkpoint_epoch"], "val_f_mse": None, "wall_s": None,
            "epochs_run": None, "stopped": None, "parts": None, "factor": record.get("factor", 1),
            "training": load_record(training_log) if training_log.exists() else None}


@functools.lru_cache(maxsize=None)
def shipped_config(name: str) -> dict:
    from egno_fast.config import load_config

    return load_config(name).to_dict()


@functools.lru_cache(maxsize=None)
def config_of_command(command: str) -> dict:
    """The config that ``egno-fast train ...`` builds from this command line today (the shipped configs)."""
    from egno_fast.cli import _config_from_args, build_parser

    args = build_parser().parse_args(shlex.split(command)[1:])
    return _config_from_args(args).to_dict()


@functools.lru_cache(maxsize=None)
def paper_numbers() -> Dict[str, dict]:
    return json.loads(PAPER_FILE.read_text())["numbers"]


# ------------------------------------------------------------------------------------------------ cell checks

def essential(tokens: List[str], keep_run_dir: bool) -> List[str]:
    """A command's tokens without the options that only say where or how long it ran."""
    out, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        if token in RUNTIME_FLAGS:
            i += 1
        elif token in RUNTIME_OPTIONS or (token == "--run-dir" and not keep_run_dir):
            i += 2
        elif token == "--set" and i + 1 < len(tokens) and tokens[i + 1].split("=", 1)[0] in RUNTIME_SETTINGS:
            i += 2
        else:
            out.append(token)
            i += 1
    return out


def command_problems(cell: str, record: dict) -> List[str]:
    """The command shown is the logged one (that of every part the run ran in), less runtime-only options; a training
    command also rebuilds the logged config with today's shipped configs, and its --run-dir is the folder of the
    linked log."""
    match = re.fullmatch(r"`([^`]+)`", cell)
    if match is None:
        return [f"Command: {cell!r} is not one code span"]
    try:
        shown = shlex.split(match.group(1))
    except ValueError as error:
        return [f"Command: {error}"]
    keep_run_dir = "--run-dir" in shown
    problems = []
    for logged in record["commands"]:
        if essential(shown, keep_run_dir) != essential(shlex.split(logged), keep_run_dir):
            problems.append(f"Command: {match.group(1)!r} is not the logged command {logged!r}")
    if record["kind"] != "train":
        return problems
    if keep_run_dir:
        index = shown.index("--run-dir") + 1
        if index >= len(shown) or (REPO / shown[index]).resolve() != record["path"].parent.resolve():
            problems.append(f"Command: --run-dir is not the folder of {record['path'].relative_to(REPO)}")
    try:
        rebuilt = config_of_command(match.group(1))
    except (Exception, SystemExit) as error:  # argparse exits on a bad command line
        return problems + [f"Command: egno-fast cannot read {match.group(1)!r}: {error!r}"]
    logged = record["config"]
    for part in ("data", "model", "train"):
        for key, value in logged[part].items():
            if (part, key) not in RUNTIME_CONFIG_KEYS and rebuilt[part].get(key, "(no such key)") != value:
                problems.append(f"Command: gives {part}.{key} = {rebuilt[part].get(key, '(no such key)')!r}, "
                                f"the run had {value!r}")
    if rebuilt["name"] != logged["name"]:
        problems.append(f"Command: config {rebuilt['name']!r}, the run had {logged['name']!r}")
    return problems


def paper_key(record: dict, letter: str) -> Optional[str]:
    """The docs/paper_numbers.json entry that a row of this run and metric ("F" or "A") compares with, if any."""
    data, model = record["config"]["data"], record["config"]["model"]
    if data["name"] == "nbody":
        if record["factor"] > 1:
            return "nbody_zero_shot"
        if model["num_modes"] == 0:
            key = "nbody_ablation_none"
        elif model["temporal_channels"] != ["h", "x", "v"]:
            key = "nbody_ablation_" + "".join(model["temporal_channels"])
        elif model["num_modes"] != 2:
            key = "nbody_modes"
        elif data["max_train_samples"] != 3000:
            key = f"nbody_f_mse_train{data['max_train_samples']}"
        elif data["num_frames"] != 5:
            key = f"nbody_f_mse_P{data['num_frames']}"
        else:
            return {"F": "nbody_f_mse", "A": "nbody_a_mse"}[letter]
        return key if letter == "F" else None  # those studies report the F-MSE only
    backbone = model.get("backbone", "egnn")  # absent from logs written before the option existed: EGNO's
    if data["name"] == "mocap":
        return {"F": "mocap_run_f_mse", "A": "mocap_run_a_mse"}[letter] if backbone == "egnn" else None
    if data["name"] == "protein":
        if letter != "F":
            return None
        if backbone == "eghn":
            return "protein_adk_f_mse_eghn" if model["num_modes"] == 0 else "protein_adk_f_mse_eghno"
        return "protein_adk_f_mse"
    return None  # the MD17 stand-in is not the paper's data


def paper_problems(cell: str, record: dict, letter: str, scaled: bool) -> List[str]:
    """The paper value: the docs/paper_numbers.json entry of this row's setting, or '-' where the paper has none;
    a table or figure named must be the entry's source."""
    numbers = paper_numbers()
    key = paper_key(record, letter)
    entry = numbers.get(key) if key else None
    match = re.match(r"(\d+(?:\.\d+)?|-)(?=\s|$)", cell)
    if match is None:
        return [f"Paper: {cell!r} starts with neither a number nor '-'"]
    problems = []
    if entry is None or entry["value"] is None:
        if match.group(1) != "-":
            problems.append(f"Paper: {match.group(1)} but docs/paper_numbers.json has no number for {key or 'this'}")
    elif match.group(1) == "-":
        problems.append(f"Paper: '-' but the paper reports {entry['value']} ({entry['source']})")
    else:
        if float(match.group(1)) != entry["value"]:
            problems.append(f"Paper: {match.group(1)} but docs/paper_numbers.json has {entry['value']} ({key})")
        if scaled != entry["units"].startswith("x1e-2"):
            problems.append(f"Paper: units {entry['units']!r} against a row {'in' if scaled else 'not in'} 1e-2")

    def source(found: re.Match) -> List[str]:
        named = found.group(0).strip()
        return [] if entry is not None and entry["source"] == named else [
            f"the paper's source of {key} is {entry['source'] if entry else 'none'}"]

    frames = numbers["protein_adk_trajectory_frames"]["value"]
    rules = [(r"\b(?:Table \d+|Fig\. \d+)", source),
             (r"\b(\d+)-frame trajectory", lambda m: equal(int(m.group(1)), frames, "the paper's AdK frames")),
             (r"\bMD17\b", no_check), (r"\bMMFF94\b", no_check)]
    return problems + apply_rules(cell[match.end():], rules, "Paper")


def value_problems(shown: str, letter: str, scaled: bool, record: dict, what: str) -> List[str]:
    if scaled != (record["config"]["data"]["name"] == "mocap"):
        return [f"{what}: mocap numbers, and only they, are shown in units of 1e-2"]
    value = record["f_mse" if letter == "F" else "a_mse"] * (100 if scaled else 1)
    return shown_matches(shown, value, what, min_digits=3)


def status_problems(cell: str, record: dict) -> List[str]:
    """How the run ended, in words that the log supports: complete (early stopping or the epoch budget) or cut short
    (time limit, or in progress), and every number in the cell."""
    config = record["config"]["train"]
    if record["kind"] == "eval":
        problems = [] if cell.startswith("evaluation of") else ["Status: an evaluation row says 'evaluation of ...'"]
        rules = [(r"epoch (\d+)", lambda m: equal(int(m.group(1)), record["best_epoch"], "checkpoint epoch"))]
        return problems + apply_rules(cell, rules, "Status")
    stopped = record["stopped"]
    expected = "complete" if stopped in ("early_stopping", "max_epochs") else "cut short"
    problems = [] if cell.startswith(expected) else [f"Status: the log says {expected!r} ({stopped or 'no end'})"]
    if STATUS_KEYWORDS[stopped] not in cell:
        problems.append(f"Status: the run stopped by {stopped or 'nothing yet'}: the cell says "
                        f"{STATUS_KEYWORDS[stopped]!r}")

    def early(m: re.Match) -> List[str]:
        return (equal(stopped, "early_stopping", "stopped by") + equal(int(m.group(1)), record["epochs_run"], "epochs")
                + equal(int(m.group(2)), config["epochs"], "epoch budget"))

    def after(m: re.Match) -> List[str]:
        return equal(int(m.group(1)), record["epochs_run"], "epochs run") + equal(int(m.group(2)), config["epochs"],
                                                                                   "epoch budget")

    rules = [(r"early stopping at epoch (\d+) of (\d+)", early),
             (r"(\d+) evaluations without a better validation",
              lambda m: equal(int(m.group(1)), config["patience"], "patience")),
             (r"after (\d+) of (\d+) epochs", after),
             (r"(\d+)-epoch budget", lambda m: equal(int(m.group(1)), config["epochs"], "epoch budget")
              + equal(stopped, "max_epochs", "stopped by")),
             (r"in (\d+) parts?", lambda m: equal(int(m.group(1)), record["parts"], "parts (start records)")),
             (r"validation F-MSE (?:is )?(\d+\.\d+)",
              lambda m: shown_matches(m.group(1), record["val_f_mse"], "validation F-MSE", min_digits=2))]
    return problems + apply_rules(cell, rules, "Status")


def wall_time_problems(cell: str, record: dict) -> List[str]:
    if record["wall_s"] is None:
        return [] if cell == "not recorded" else [f"Wall time: {cell!r}, but the file records no time"]
    match = re.fullmatch(r"(\d+(?:\.\d+)?) (s|min|h)", cell)
    if match is None:
        return [f"Wall time: {cell!r} is not 'N s|min|h'"]
    seconds = {"s": 1, "min": 60, "h": 3600}[match.group(2)]
    return shown_matches(match.group(1), record["wall_s"] / seconds, "Wall time (the log's wall_s)")


def machine_problems(cell: str, record: dict) -> List[str]:
    names = sorted({"GPU" if d.startswith("cuda") else d.upper() for d in record["devices"]})
    return equal(cell, " + ".join(names), "Machine (the device in the log)")


def seed_problems(cell: str, record: dict) -> List[str]:
    if not re.fullmatch(r"\d+", cell):
        return [f"Seed: {cell!r}"]
    return equal({int(cell)}, record["seeds"], "Seed (the log's seed)")


def best_epoch_problems(cell: str, record: dict) -> List[str]:
    if not re.fullmatch(r"\d+", cell):
        return [f"Best epoch: {cell!r}"]
    return equal(int(cell), record["best_epoch"], "Best epoch")


def label_problems(label: str, record: dict) -> List[str]:
    """What an experiment's label says about the run is what its config was: the data set; the training samples,
    frames P, epochs, Fourier modes I, temporal-convolution channels, gradient clipping, batch, molecule, target
    grid (EGNO-L/U), zero-shot factor and stand-in version where the label names them, and the shipped config's
    values where it does not; a table or figure named is the paper's source for the setting."""
    config = record["config"]
    data, model, train = config["data"], config["model"], config["train"]
    shipped = shipped_config(config["name"])
    problems = []
    named = {name for name, pattern in DATASET_WORDS.items() if re.search(pattern, label, flags=re.I)}
    problems += equal(named, {data["name"]}, "Experiment: the data set named")
    lowered = label.lower()

    def said(pattern: str) -> bool:
        return re.search(pattern, label) is not None

    # what the label leaves unsaid is as in the shipped config (the paper's setup for nbody, mocap, md17, protein)
    if not said(r"\d+ train\b"):
        problems += equal(data["max_train_samples"], shipped["data"]["max_train_samples"],
                          "Experiment: training samples")
    if not said(r"\bP = \d+"):
        problems += equal(data["num_frames"], shipped["data"]["num_frames"], "Experiment: P")
    if not said(r"\d+ epochs\b"):
        if "smoke run" in lowered:
            problems += [] if train["epochs"] <= 10 else [f"Experiment: a smoke run of {train['epochs']} epochs"]
        else:
            problems += equal(train["epochs"], shipped["train"]["epochs"], "Experiment: epochs")
    if "full training" in lowered:
        training = record["training"] or record
        problems += equal(train["epochs"], shipped["train"]["epochs"], "Experiment: full training's epoch budget")
        problems += equal(training["stopped"], "early_stopping", "Experiment: full training ends by early stopping")
    if "short run" in lowered and not train["epochs"] < shipped["train"]["epochs"]:
        problems.append(f"Experiment: a short run of the full {train['epochs']} epochs")
    if "no temporal convolution" in lowered:
        problems += equal(model["num_modes"], 0, "Experiment: Fourier modes")
    elif not said(r"I = \d+"):
        problems += equal(model["num_modes"], shipped["model"]["num_modes"], "Experiment: Fourier modes")
    channels = (["h", "x"] if "temporal convolution on h and x" in lowered
                else ["h"] if "temporal convolution on h only" in lowered else shipped["model"]["temporal_channels"])
    problems += equal(model["temporal_channels"], channels, "Experiment: temporal-convolution channels")
    clipping = train.get("grad_clip_norm")  # absent from logs written before the option existed: none
    problems += equal(clipping, None if "without gradient clipping" in lowered else
                      shipped["train"].get("grad_clip_norm"), "Experiment: gradient clipping")
    if not said(r"\bbatch \d+"):
        problems += equal(train["batch_size"], shipped["train"]["batch_size"], "Experiment: batch")
    if not said(r"\bEGNO-[LU]\b"):
        problems += equal(data["discretisation"], shipped["data"]["discretisation"], "Experiment: target frames")
    problems += equal("zero-shot" in lowered, record["factor"] > 1, "Experiment: zero-shot (resampled evaluation)")
    problems += equal("default config" in lowered, config["name"] == "default", "Experiment: the default config")
    molecules = {m for m in MOLECULES if m in lowered}
    problems += equal(molecules, {data["molecule"]} if data["name"] == "md17" else set(), "Experiment: molecule")
    if data["name"] == "md17":
        problems += equal("stand-in" in lowered, data.get("md17_source") == "standin", "Experiment: stand-in data")
    version = 2 if "md17v2" in record["path"].parent.name else 1
    if data["name"] == "md17" and not said(r"\bv\d+\b"):
        problems += equal(1, version, "Experiment: stand-in generator version")
    # the model: a label naming EGHNO (temporal convolutions) or EGHN (none) is a run of the "eghn" backbone, and
    # such a run's label names one of them
    backbone = model.get("backbone", "egnn")
    hierarchy = "EGHNO" if said(r"\bEGHNO\b") else "EGHN" if said(r"\bEGHN\b") else None
    expected = None if backbone == "egnn" else "EGHN" if model["num_modes"] == 0 else "EGHNO"
    problems += equal(hierarchy, expected, "Experiment: the model named (EGHNO, EGHN or EGNO)")
    if "equal_time" in record["path"].parent.name:  # a run of an equal-time comparison says so, and its budget
        problems += [] if "equal training time" in lowered else ["Experiment: an equal-time run's label says so"]
        problems += [] if said(r"\d+-minute budget") else ["Experiment: an equal-time run's label names its budget"]
    if backbone == "eghn" and not said(r"\bK = \d+"):
        problems += equal(model["num_clusters"], shipped["model"].get("num_clusters"), "Experiment: clusters K")
    key = paper_key(record, "F")
    source = paper_numbers().get(key, {}).get("source") if key else None

    rules = [
        (r"\bMD17\b", no_check),
        (r"\bMMFF94\b", lambda m: equal(data.get("md17_source"), "standin", "MMFF94 stand-in")),
        (r"\b(\d+) train\b", lambda m: equal(int(m.group(1)), data["max_train_samples"], "training samples")),
        (r"\bP = (\d+)", lambda m: equal(int(m.group(1)), data["num_frames"], "P")),
        (r"\b(\d+)P\b", lambda m: equal(int(m.group(1)), record["factor"], "resampling factor")),
        (r"evaluated on (\d+) uniform frames",
         lambda m: equal(int(m.group(1)), record["factor"] * data["num_frames"], "frames evaluated")),
        (r"\b(\d+) epochs\b", lambda m: equal(int(m.group(1)), train["epochs"], "epochs")),
        (r"\bI = (\d+) Fourier modes?", lambda m: equal(int(m.group(1)), model["num_modes"], "Fourier modes")),
        (r"\b(?:Table \d+|Fig\. \d+)", lambda m: equal(m.group(0), source, "the paper's source for the setting")),
        (r"\bbatch (\d+)", lambda m: equal(int(m.group(1)), train["batch_size"], "batch")),
        (r"\bv(\d+)\b", lambda m: equal(int(m.group(1)), version, "stand-in generator version (md17v2 runs)")),
        (r"\bEGNO-([LU])\b", lambda m: equal({"L": "last", "U": "uniform"}[m.group(1)], data["discretisation"],
                                            "target frames")),
        (r"\bK = (\d+)", lambda m: equal(int(m.group(1)), model.get("num_clusters"), "clusters K")),
        (r"\b(\d+)-minute budget", lambda m: equal(float(m.group(1)), train.get("max_minutes"),
                                                   "the training-time budget (train.max_minutes)")),
    ]
    return problems + apply_rules(label, rules, "Experiment")


def log_problems(cell: str, base: Path) -> Tuple[Optional[Path], List[str]]:
    match = re.fullmatch(r"\[([^\]]+)\]\(([^)\s]+)\)", cell.strip())
    if match is None:
        return None, [f"Log: {cell!r} is not one link"]
    path = (base / match.group(2)).resolve()
    if not path.is_file():
        return None, [f"Log: {match.group(2)} does not exist"]
    if REPO / "results" not in path.parents:
        return None, [f"Log: {match.group(2)} is not a committed result under results/"]
    return path, equal(match.group(1), path.name, "Log: the link's text (the file's name)")


def metric_of(cell: str) -> Optional[Tuple[str, bool]]:
    match = re.fullmatch(r"test ([FA])-MSE( x1e-2)?", cell)
    return (match.group(1), bool(match.group(2))) if match else None


def page_row_problems(row: Dict[str, str], previous_log: Optional[Path]) -> Tuple[Optional[Path], List[str]]:
    path, problems = log_problems(row["Log"], PAGE.parent)
    if path is None:
        return None, problems
    record = load_record(path)
    metric = metric_of(row["Metric"])
    if metric is None:
        problems.append(f"Metric: {row['Metric']!r} is not 'test F-MSE' or 'test A-MSE' (with ' x1e-2')")
    else:
        letter, scaled = metric
        problems += value_problems(row["Ours"], letter, scaled, record, "Ours")
        problems += paper_problems(row["Paper"], record, letter, scaled)
    problems += best_epoch_problems(row["Best epoch"], record)
    problems += status_problems(row["Status"], record)
    if row["Command"] in ("same run", "same command"):
        problems += [] if previous_log == path else [f"Command: {row['Command']!r} but the row above links another log"]
    else:
        problems += command_problems(row["Command"], record)
    problems += seed_problems(row["Seed"], record)
    problems += wall_time_problems(row["Wall time"], record)
    problems += machine_problems(row["Machine"], record)
    problems += label_problems(row["Experiment"], record)
    return path, problems


def page_problems(text: str) -> List[str]:
    """Everything wrong with the results table of a docs/RESULTS.md text ([] when every cell is true)."""
    try:
        header, rows = table(section(text, "Results"))
    except LookupError as error:
        return [str(error)]
    if header != PAGE_COLUMNS:
        return [f"columns {header}, expected {PAGE_COLUMNS}"]
    problems, previous_log = [], None
    for number, cells in enumerate(rows, 1):
        if len(cells) != len(header):
            problems.append(f"row {number}: {len(cells)} cells")
            previous_log = None
            continue
        row = dict(zip(header, cells))
        try:
            previous_log, found = page_row_problems(row, previous_log)
        except Exception as error:  # a cell the checks cannot even read is a problem of the page
            previous_log, found = None, [f"unreadable: {error!r}"]
        problems += [f"row {number} ({row['Experiment']} / {row['Metric']}): {p}" for p in found]
    if len(rows) < 3:
        problems.append("fewer than 3 rows")
    return problems


# ------------------------------------------------------------------------------------------------ perturbations

def digit_perturbations(cell: str) -> Iterator[str]:
    """The cell with one run of digits changed (its last digit plus one, modulo 10), for each run of digits."""
    for match in re.finditer(r"\d+", cell):
        digits = match.group(0)
        yield cell[:match.start()] + digits[:-1] + str((int(digits[-1]) + 1) % 10) + cell[match.end():]


def table_perturbations(text: str, heading: str, label_columns: Sequence[str],
                        identity_column: Optional[str]) -> Iterator[Tuple[str, str]]:
    """(what, perturbed text): every run of digits of every cell of the table under ``heading`` changed, one at a
    time; and every label cell (``label_columns``) replaced by each other row's label, where that row differs in
    ``identity_column`` (another run or case), and the Metric's F and A swapped."""
    start, end = section_span(text, heading)
    body = text[start:end]
    lines = table_lines(body)
    header = split_cells(lines[0])
    rows = [split_cells(line) for line in lines[2:]]

    def replaced(index: int, column: int, new: str) -> str:
        cells = list(rows[index])
        cells[column] = new
        return text[:start] + body.replace(lines[index + 2], join_cells(cells), 1) + text[end:]

    for i, cells in enumerate(rows):
        for j, cell in enumerate(cells):
            for new in digit_perturbations(cell):
                yield f"{heading} row {i + 1} {header[j]}: {cell!r} -> {new!r}", replaced(i, j, new)
        for name in label_columns:
            j = header.index(name)
            key = header.index(identity_column) if identity_column else None
            for other in rows:
                if other[j] != cells[j] and (key is None or other[key] != cells[key]):
                    yield f"{heading} row {i + 1} {name}: {cells[j]!r} -> {other[j]!r}", replaced(i, j, other[j])
        if "Metric" in header:
            j = header.index("Metric")
            swapped = cells[j].replace("F-MSE", "@").replace("A-MSE", "F-MSE").replace("@", "A-MSE")
            yield f"{heading} row {i + 1} Metric: {cells[j]!r} -> {swapped!r}", replaced(i, j, swapped)


# --------------------------------------------------------------------------------------------------------- tests

def test_the_page_has_rows_with_numbers():
    header, rows = table(section(PAGE.read_text(), "Results"))
    assert len(rows) >= 3 and all(re.fullmatch(r"\d+\.\d+", dict(zip(header, r))["Ours"]) for r in rows)


def test_every_cell_of_the_page_matches_the_committed_files():
    problems = page_problems(PAGE.read_text())
    assert not problems, "\n".join(problems)


def assert_every_perturbation_caught(perturbations, problems, at_least: int) -> None:
    """Each (description, perturbed text) of ``perturbations`` makes ``problems`` report something; there are more
    than ``at_least`` of them."""
    missed, count = [], 0
    for what, perturbed in perturbations:
        count += 1
        if not problems(perturbed):
            missed.append(what)
    assert count > at_least
    assert not missed, "perturbations the checks do not catch:\n" + "\n".join(missed)


def test_every_perturbation_of_the_page_is_caught():
    """Each number of each cell changed, each experiment label swapped with another run's, each metric swapped:
    the checks must report every one of them."""
    text = PAGE.read_text()
    assert not page_problems(text)
    assert_every_perturbation_caught(table_perturbations(text, "Results", ["Experiment"], "Log"), page_problems, 300)


def test_paper_numbers_file():
    """Every entry names its value (null: a figure without a number), metric, units, model, setting and source."""
    numbers = paper_numbers()
    assert len(numbers) >= 10
    for key, entry in numbers.items():
        assert set(entry) == {"value", "metric", "units", "model", "setting", "source"}, key
        assert entry["value"] is None or isinstance(entry["value"], (int, float)), key
        assert re.match(r"(Table \d+|Fig\. \d+|main |study |text: )", entry["source"]), key
        assert entry["units"], key


def test_the_design_reference_quotes_the_paper_numbers_file():
    """docs/design.md §3 lists the paper's numbers too: each of them (EGNN and EGNO columns) is in the file."""
    values = {entry["value"] for entry in paper_numbers().values()}
    header, rows = table(section(DESIGN.read_text(), "3. Numbers to reproduce"))
    quoted = [float(n) for row in rows for column in ("EGNN", "EGNO")
              for n in re.findall(r"\d+\.\d+", dict(zip(header, row))[column])]
    assert quoted and not [n for n in quoted if n not in values]


# ------------------------------------------------------------------------------------------- the main job's seeds

MAIN_JOB_SEEDS = range(1, 6)
EARLIER_RECIPE_SEED_1 = 0.0140  # the main job's seed-1 test F-MSE before the recipe clipped the gradient


def main_job_record(folder: str, seed: int) -> dict:
    """The committed log of results/<folder><seed>, checked to be the shipped default config with that seed and
    complete (so a recipe change without new runs fails here)."""
    from egno_fast.config import ExperimentConfig

    record = load_record(REPO / "results" / f"{folder}{seed}" / "metrics.jsonl")
    expected = shipped_config("default")
    expected = {**expected, "train": {**expected["train"], "seed": seed}}
    if folder == "default_noclip_seed":
        expected["train"]["grad_clip_norm"] = None
    defaults = ExperimentConfig().to_dict()  # settings added since the run have their default there
    logged = {section: {**defaults[section], **values} if isinstance(values, dict) else values
              for section, values in record["config"].items()}
    assert logged == expected, f"{folder}{seed} is not the shipped default recipe"
    assert record["stopped"] == "max_epochs" and record["parts"] == 1
    return record


def test_the_main_job_trains_stably_for_seeds_1_to_5():
    """The default recipe (`egno-fast train --seed S`, S = 1..5): every final test F-MSE is at most 1.5x seed 1's, and
    seed 1's is no worse than the earlier recipe's. The same runs without gradient clipping (the earlier recipe's
    optimiser, at the current epoch budget) are not stable: the reason for the clipping (docs/RESULTS.md)."""
    clipped = {seed: main_job_record("default_seed", seed)["f_mse"] for seed in MAIN_JOB_SEEDS}
    assert clipped[1] <= EARLIER_RECIPE_SEED_1, clipped
    assert max(clipped.values()) <= 1.5 * clipped[1], clipped
    unclipped = {seed: main_job_record("default_noclip_seed", seed)["f_mse"] for seed in MAIN_JOB_SEEDS}
    assert max(unclipped.values()) > 1.5 * unclipped[1], unclipped
