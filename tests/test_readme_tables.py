"""The README's "## Results" and "## Benchmarks" sections tell the truth: every cell of their tables and every number
in their prose is checked against a committed file (training logs, benchmark results, GPU logs, git history, and
docs/paper_numbers.json for the paper's values), with the checks of tests/test_results_page.py. A second test
changes each number of those sections (and swaps labels), one at a time, and expects each change to be caught."""
import functools
import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import pytest

from test_results_page import (REPO, Rule, apply_rules, assert_every_perturbation_caught, best_epoch_problems,
                               command_problems, equal, label_problems, load_record, log_problems, no_check,
                               paper_problems, section, section_span, shown_matches, status_problems, table,
                               table_perturbations, digit_perturbations, value_problems, wall_time_problems)

README = REPO / "README.md"
RESULTS_COLUMNS = ["run", "command", "seed", "test F-MSE", "test A-MSE", "paper F-MSE", "paper A-MSE", "best epoch",
                   "status", "wall time", "log"]
BENCH_COLUMNS = ["case", "op", "reference", "compiled reference", "cpp", "compiled cpp", "cpp vs reference",
                 "compiled cpp vs reference"]
# column -> the benchmark runner's backend whose median it shows ("compile": torch.compile on "auto", the cpp
# backend's registered operators on the CPU; "compile_reference": torch.compile of the reference)
BENCH_TIMES = {"reference": "reference", "compiled reference": "compile_reference", "cpp": "cpp",
               "compiled cpp": "compile"}
BENCH_RATIOS = {"cpp vs reference": "cpp", "compiled cpp vs reference": "compile"}
OPS = {"EGNN layer": "egnn_layer", "whole model": "model", "temporal convolution": "temporal_conv",
       "vector temporal convolution": "vector_temporal_conv"}
CASES = {"nbody": r"\bN-body\b", "mocap": r"\bmocap\b"}
KERNEL = "kernels/egnn.py"  # the file the GPU run measured (its record names it)
KERNEL_NOW = "kernels/egnn_edge.py"  # where that kernel lives since the ops got one home each
LINK = r"!?\[[^\]]*\]\([^)\s]+\)"
CODE = r"`[^`]*`"


def prose(body: str) -> str:
    """A section's text without its tables and code blocks, on one line."""
    body = re.sub(r"```.*?```", " ", body, flags=re.S)
    return " ".join(line.strip() for line in body.splitlines() if not line.startswith("|"))


def design_section_exists(match: re.Match) -> List[str]:
    design = (REPO / "docs" / "design.md").read_text()
    number = match.group(1)
    return [] if re.search(rf"^#+ {re.escape(number)}[. ]", design, flags=re.M) else [
        f"docs/design.md has no section {number}"]


def prose_problems(body: str, rules: Sequence[Rule], what: str, late_rules: Sequence[Rule] = ()) -> List[str]:
    """Links lead to existing files; every number of the prose is covered by one of ``rules`` (code spans and links
    aside; ``late_rules`` run on the text without its links)."""
    text = prose(body)
    problems = [f"{what}: link to a missing file {target}" for target in re.findall(r"\]\(([^)\s]+)\)", text)
                if not target.startswith("http") and not (REPO / target).exists()]
    every = list(rules) + [(r"§(\d+(?:\.\d+)*)", design_section_exists), (LINK, no_check)] + list(late_rules) + [
        (CODE, no_check)]
    return problems + apply_rules(text, every, what)


# ------------------------------------------------------------------------------------------------------ Results

def scaled_cell(cell: str) -> Tuple[str, bool]:
    """'37.3 x1e-2' -> ('37.3', True): a value in units of 1e-2 (mocap, as the paper reports it)."""
    return (cell[:-len(" x1e-2")], True) if cell.endswith(" x1e-2") else (cell, False)


def results_row_problems(row: dict) -> List[str]:
    path, problems = log_problems(row["log"], REPO)
    if path is None:
        return problems
    record = load_record(path)
    for letter in "FA":
        shown, scaled = scaled_cell(row[f"test {letter}-MSE"])
        problems += value_problems(shown, letter, scaled, record, f"test {letter}-MSE")
        paper, paper_scaled = scaled_cell(row[f"paper {letter}-MSE"])
        if paper != "-" and paper_scaled != scaled:
            problems.append(f"paper {letter}-MSE: units differ from ours")
        problems += paper_problems(paper, record, letter, scaled)
    problems += best_epoch_problems(row["best epoch"], record)
    problems += status_problems(row["status"], record)
    problems += command_problems(row["command"], record)
    problems += equal({int(row["seed"])} if row["seed"].isdigit() else row["seed"], record["seeds"], "seed")
    problems += wall_time_problems(row["wall time"], record)
    problems += label_problems(row["run"], record)
    return problems


def section_table(text: str, name: str, columns: List[str]) -> Tuple[str, List[str], List[List[str]]]:
    """(body, header, rows) of the README section ``name``, whose table must have ``columns``; LookupError names
    what is missing or different."""
    body = section(text, name)
    header, rows = table(body)
    if header != columns:
        raise LookupError(f"columns {header}, expected {columns}")
    return body, header, rows


def results_problems(text: str) -> List[str]:
    """Everything wrong with the README's "## Results" section ([] when it is true)."""
    try:
        body, header, rows = section_table(text, "Results", RESULTS_COLUMNS)
    except LookupError as error:
        return [f"Results: {error}"]
    problems = []
    for number, cells in enumerate(rows, 1):
        row = dict(zip(header, cells))
        try:
            found = results_row_problems(row) if len(cells) == len(header) else [f"{len(cells)} cells"]
        except Exception as error:
            found = [f"unreadable: {error!r}"]
        problems += [f"Results row {number} ({cells[0]}): {p}" for p in found]
    names = set()
    for cells in rows:
        path, _ = log_problems(dict(zip(header, cells)).get("log", ""), REPO)
        if path is not None:
            names.add(load_record(path)["config"]["name"])
    if not {"nbody", "mocap", "default"} <= names:
        problems.append(f"Results: the headline runs (nbody, mocap, the default config) are not all there: {names}")
    return problems + prose_problems(body, [(r"\bMD17\b", no_check)], "Results prose")


# --------------------------------------------------------------------------------------------------- Benchmarks

def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


@functools.lru_cache(maxsize=None)
def cpu_runs() -> List[Tuple[str, Path]]:
    """(time, folder) of every committed CPU sweep (benchmarks/results/*/results.json with a CPU meta record)."""
    if not (REPO / ".git").exists():
        pytest.fail("the tests run from a git checkout (the latest committed benchmark run is found with git)")
    tracked = set(git("ls-files", "benchmarks/results").splitlines())
    runs = []
    for path in sorted((REPO / "benchmarks" / "results").glob("*/results.json")):
        data = json.loads(path.read_text())
        if str(path.relative_to(REPO)) in tracked and isinstance(data, dict) and "meta" in data \
                and data["meta"].get("device_type") == "cpu":
            runs.append((data["meta"]["time"], path.parent))
    return sorted(runs)


@functools.lru_cache(maxsize=None)
def bench_run(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def bench_time(run: dict, case: str, op: str, backend: str) -> Optional[dict]:
    found = [r for r in run["records"] if r["case"] == case and r["op"] == op and r["backend"] == backend
             and r["mode"] == "forward+backward"]
    return found[0] if len(found) == 1 else None


def bench_row_problems(row: dict, run: dict) -> List[str]:
    names = {name for name, pattern in CASES.items() if re.search(pattern, row["case"], flags=re.I)}
    if len(names) != 1:
        return [f"case: {row['case']!r} names no single case of {sorted(CASES)}"]
    case = names.pop()
    if row["op"] not in OPS:
        return [f"op: {row['op']!r} is none of {sorted(OPS)}"]
    op = OPS[row["op"]]
    records = {b: bench_time(run, case, op, b) for b in BENCH_TIMES.values()}
    if any(r is None or r["status"] != "measured" for r in records.values()):
        return [f"the run has no measured forward+backward time of {case}/{op} for each backend: {records}"]
    ref = records["reference"]
    rules = [(CASES[case], no_check),
             (r"(\d+) nodes", lambda m: equal(int(m.group(1)), ref["nodes"], "nodes")),
             (r"(\d+) edges", lambda m: equal(int(m.group(1)), ref["edges"], "edges")),
             (r"P = (\d+)", lambda m: equal(int(m.group(1)), ref["frames"], "P")),
             (r"H = (\d+)", lambda m: equal(int(m.group(1)), ref["hidden"], "H"))]
    problems = apply_rules(row["case"], rules, "case")
    ran = records["compile"]["ran"]  # one backend name, or the model's {op: backend} as JSON
    if (set(json.loads(ran).values()) if ran.startswith("{") else {ran}) != {"cpp"}:
        problems.append(f"compiled cpp: the compiled run ran {ran}, not cpp")
    for column, backend in BENCH_TIMES.items():
        match = re.fullmatch(r"(\d+(?:\.\d+)?) ms", row[column])
        problems += (shown_matches(match.group(1), records[backend]["median_ms"], f"{column} (median ms)", 2)
                     if match else [f"{column}: {row[column]!r} is not 'N ms'"])
    for column, backend in BENCH_RATIOS.items():
        match = re.fullmatch(r"(\d+(?:\.\d+)?)x", row[column])
        ratio = ref["median_ms"] / records[backend]["median_ms"]
        problems += (shown_matches(match.group(1), ratio, f"{column} (reference ms / {backend} ms)", 2)
                     if match else [f"{column}: {row[column]!r} is not 'Nx'"])
    return problems


def blob_hash(path: Path) -> str:
    """git's object id of a file's contents (computed here: no git history needed)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@functools.lru_cache(maxsize=None)
def kernel_history(folder: Path, run_time: str) -> Tuple[str, List[str]]:
    """The kernel commit a GPU run measured and the later commits of the kernel file, from the run's kernel.json;
    the kernel counts as changed since when the file's contents differ from the measured commit's. Where the git
    history is there (not a shallow clone), the record itself is checked against it."""
    record = json.loads((folder / "kernel.json").read_text())
    assert record["file"] == KERNEL
    later = list(record["later_commits"])
    if blob_hash(REPO / KERNEL_NOW) != record["measured_blob"] and not later:
        later = ["(uncommitted change)"]
    if (REPO / ".git").exists() and git("rev-parse", "--is-shallow-repository") == "false":
        assert git("log", "-1", "--format=%H", f"--before={run_time}", "--", KERNEL) == record["measured_commit"]
        history = git("log", "--reverse", "--format=%H", f"{record['measured_commit']}..HEAD", "--", KERNEL).split()
        assert history[:len(record["later_commits"])] == record["later_commits"]
        assert git("rev-parse", f"{record['measured_commit']}:{KERNEL}") == record["measured_blob"]
    return record["measured_commit"], later


def gpu_rules(folder: Path, text: str) -> Tuple[List[Rule], List[Rule]]:
    """Rules for the GPU sentence: the measured record of the fused EGNN layer in the GPU run's logs, the
    reference's out-of-memory records at that size, the GPU named in its environment, and the kernel's commit."""
    logs = sorted(folder.glob("run*/egnn_target.log"))
    records = [(log, json.loads(line)) for log in logs for line in log.read_text().splitlines() if line.strip()]
    bf16 = [(log, r) for log, r in records if r["variant"] == "triton_bf16" and r["status"] == "measured"]
    if len(bf16) != 1:
        return [(r".+", lambda m: [f"{folder.name}: {len(bf16)} measured triton_bf16 records, expected 1"])], []
    log, measured = bf16[0]
    environment = (log.parent / "environment.txt").read_text()
    run_time = re.search(r"^== (\S+)", environment, flags=re.M).group(1)
    kernel_commit, later = kernel_history(folder, run_time)

    def sentence(m: re.Match) -> List[str]:
        return (shown_matches(m.group(1), measured["nodes"] / 1e3, "nodes (thousands)")
                + shown_matches(m.group(2), measured["edges"] / 1e6, "edges (millions)")
                + equal(int(m.group(3)), measured["frames"], "P") + equal(int(m.group(4)), measured["hidden"], "H")
                + shown_matches(m.group(5), measured["median_ms"], "median ms", 3)
                + shown_matches(m.group(6), measured["peak_memory_MB"] / 1024, "peak GiB (the log's MiB / 1024)", 2))

    def oom(m: re.Match) -> List[str]:
        found = {r["variant"] for _, r in records if r["status"] == "oom" and r["nodes"] == measured["nodes"]}
        return equal(found >= {"reference", "reference_tf32", "compile_tf32"}, True,
                     "the reference (fp32, TF32) and torch.compile out of memory at that size")

    def commit(m: re.Match) -> List[str]:
        return equal(kernel_commit.startswith(m.group(1)), True,
                     f"the last commit of {KERNEL} before the run ({run_time}) is {kernel_commit[:7]}")

    def since(m: re.Match) -> List[str]:
        return equal(bool(later), True, f"no commit changed {KERNEL} after {kernel_commit[:7]}")

    def later_commit(m: re.Match) -> List[str]:
        return equal(any(c.startswith(m.group(0)) for c in later), True,
                     f"a commit of {KERNEL} after the measured {kernel_commit[:7]}")

    rules = [(r"\bH100 (\d+) ?GB\b", lambda m: equal(f"H100 {m.group(1)}GB" in environment, True, "the GPU")),
             (r"EGNN layer in bf16 ran forward\+backward of a (\d+)k-node, (\d+(?:\.\d+)?)M-edge graph "
              r"\(P = (\d+), H = (\d+)\) in (\d+) ms with (\d+(?:\.\d+)?) GiB peak", sentence),
             (r"the reference layer \(fp32, TF32 and torch\.compile\) is out of memory", oom),
             (r"the kernel of commit ([0-9a-f]{7,40})", commit),
             (r"the kernel has been rewritten since", since)]
    if later and "the kernel has been rewritten since" not in text:
        rules.append((r"the kernel of commit", lambda m: [
            f"{KERNEL} changed after the measured commit {kernel_commit[:7]}: "
            "say 'the kernel has been rewritten since'"]))
    return rules, [(r"\b(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b", later_commit)]


def benchmarks_problems(text: str) -> List[str]:
    """Everything wrong with the README's "## Benchmarks" section ([] when it is true)."""
    try:
        body, header, rows = section_table(text, "Benchmarks", BENCH_COLUMNS)
    except LookupError as error:
        return [f"Benchmarks: {error}"]
    folders = set(re.findall(r"\]\((benchmarks/results/cpu-[^/)]+)/", body))
    latest = cpu_runs()[-1][1] if cpu_runs() else None
    if len(folders) != 1 or latest is None or (REPO / folders.pop()) != latest:
        return [f"Benchmarks: the section must link one CPU run, the latest committed one "
                f"({latest.relative_to(REPO) if latest else 'none'}), not {sorted(folders)}"]
    run = bench_run(latest)
    meta = run["meta"]
    problems = []
    for number, cells in enumerate(rows, 1):
        row = dict(zip(header, cells))
        try:
            found = bench_row_problems(row, run) if len(cells) == len(header) else [f"{len(cells)} cells"]
        except Exception as error:
            found = [f"unreadable: {error!r}"]
        problems += [f"Benchmarks row {number} ({cells[0]} / {cells[1] if len(cells) > 1 else ''}): {p}"
                     for p in found]
    command = re.sub(r" --out \S+", "", meta["command"])
    rules = [(r"latest committed CPU run, `([^`]+)`", lambda m: equal(m.group(1), command, "the run's command")),
             (r"measured at commit ([0-9a-f]{7,40})( with uncommitted changes)?",
              lambda m: equal(meta["git_commit"].split("+")[0].startswith(m.group(1)), True, "the run's commit")
              + equal(bool(m.group(2)), meta["git_commit"].endswith("+dirty"), "uncommitted changes (+dirty)")),
             (r"with (\d+) threads?\b", lambda m: equal(int(m.group(1)), meta["threads"], "threads")),
             (r"median of (\d+) runs after (\d+) warm-ups?",
              lambda m: equal(int(m.group(1)), meta["repeats"], "repeats") + equal(int(m.group(2)), meta["warmup"],
                                                                                   "warm-ups"))]
    gpu = re.findall(r"\]\((benchmarks/results/gpu-[^/)]+)/", body)
    late: List[Rule] = []
    if gpu:
        more, late = gpu_rules(REPO / gpu[0], prose(body))
        rules += more
    return problems + prose_problems(body, rules, "Benchmarks prose", late)


def readme_problems(text: str) -> List[str]:
    return results_problems(text) + benchmarks_problems(text)


# ------------------------------------------------------------------------------------------------ perturbations

def prose_perturbations(text: str, heading: str) -> Iterator[Tuple[str, str]]:
    """Each run of digits in the prose of a section (not in tables, code spans, code blocks or links) changed."""
    start, end = section_span(text, heading)
    body = text[start:end]
    protected = [m.span() for m in re.finditer(r"```.*?```", body, flags=re.S)]
    protected += [m.span() for pattern in (r"^\|.*$", LINK, CODE) for m in re.finditer(pattern, body, flags=re.M)]
    for match in re.finditer(r"\d+", body):
        if any(a <= match.start() < b for a, b in protected):
            continue
        (changed,) = list(digit_perturbations(match.group(0)))
        context = body[max(0, match.start() - 30):match.end() + 10].replace("\n", " ")
        yield (f"{heading} prose: ...{context}... ({match.group(0)} -> {changed})",
               text[:start + match.start()] + changed + text[start + match.end():])


def readme_perturbations(text: str) -> Iterator[Tuple[str, str]]:
    yield from table_perturbations(text, "Results", ["run"], "log")
    yield from table_perturbations(text, "Benchmarks", ["case", "op"], None)
    yield from prose_perturbations(text, "Results")
    yield from prose_perturbations(text, "Benchmarks")


# --------------------------------------------------------------------------------------------------------- tests

def test_readme_results_match_the_committed_logs():
    problems = results_problems(README.read_text())
    assert not problems, "\n".join(problems)


def test_readme_benchmarks_are_the_latest_committed_cpu_run():
    problems = benchmarks_problems(README.read_text())
    assert not problems, "\n".join(problems)


def test_every_perturbation_of_the_readme_sections_is_caught():
    text = README.read_text()
    assert not readme_problems(text)
    assert_every_perturbation_caught(readme_perturbations(text), readme_problems, 100)


def test_the_benchmark_table_covers_each_op_of_each_case():
    header, rows = table(section(README.read_text(), "Benchmarks"))
    shown = {(next(n for n, p in CASES.items() if re.search(p, r[0], flags=re.I)), OPS[r[1]]) for r in rows}
    assert shown == {(case, op) for case in CASES for op in OPS.values()}
