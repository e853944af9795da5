"""The repository as a stranger gets it: self-contained, small, with a README whose commands and snippet are the
ones that run (CI calls the README's test command; the Python snippet runs verbatim)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
MAX_TRACKED_BYTES = 40 * 2**20


def tracked_files():
    """The files git tracks (the repository as a clone has it)."""
    if not (REPO / ".git").exists():
        pytest.fail("the tests run from a git checkout of the repository")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in out.decode().split("\0") if name]


def fenced_blocks(language: str):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    commands = [block.strip() for block in fenced_blocks("bash")]
    test_command = next(c for c in commands if c.endswith("python3 -m pytest"))
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert ci_lines[-1] == test_command


def test_nothing_reads_a_folder_beside_the_clone():
    """Data, fixtures and design notes are in the repository; no file points to a shared folder outside it."""
    outside = ["..", "shared"]
    patterns = ["/".join(outside), "EGNO_FAST_" + "SHARED", "shared" + "/data", "shared" + "/fixtures",
                "shared" + "_dir"]
    offenders = []
    for path in tracked_files():
        if path.suffix in (".npz", ".pt", ".png", ".gz") or not path.is_file() or is_record_of_a_past_run(path):
            continue
        text = path.read_text(errors="ignore")
        offenders += [f"{path.relative_to(REPO)}: {p}" for p in patterns if p in text]
    assert not offenders


def is_record_of_a_past_run(path: Path) -> bool:
    """Logs and configs of finished runs (results/, benchmarks/results/) record the command as it was typed; they
    are history, not something that reads files."""
    relative = path.relative_to(REPO).parts
    in_results = relative[0] == "results" or relative[:2] == ("benchmarks", "results")
    return in_results and path.suffix in (".jsonl", ".json", ".log", ".csv")


def test_tracked_files_are_small():
    total = sum(path.stat().st_size for path in tracked_files() if path.is_file())
    assert total < MAX_TRACKED_BYTES, f"{total / 2**20:.1f} MB tracked"


def test_committed_models_are_weights_only_model_files():
    """No training checkpoint (optimizer state) is committed; the model files load with weights_only=True."""
    from egno_fast.training.checkpoint import MODEL_FILE_FORMAT, tensor_checksum

    committed = [p for p in tracked_files() if p.suffix == ".pt" and "fixtures" not in p.parts]
    assert {p.parent.name for p in committed} >= {"nbody_full_seed1", "mocap_seed1"}
    for path in committed:
        assert path.name == "model.pt", path
        record = torch.load(path, weights_only=True)
        assert record["format"] == MODEL_FILE_FORMAT and "optimizer" not in record
        assert record["checksum"] == tensor_checksum({k: v for k, v in record.items() if k != "checksum"})
        assert not record["config"]["data"]["data_dir"], "a committed model reads its data from the default place"


def test_readme_snippet_runs_verbatim(tmp_path):
    """The "Use it" snippet, as written, from the repository root (it loads a committed model file)."""
    snippet = fenced_blocks("python")[0]
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    result = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "temporal_residual" in result.stdout and "egnn_layer" in result.stdout  # the printed active backends


def test_readme_periodic_snippet_runs_verbatim(tmp_path):
    """The "Periodic systems" snippet, as written, with a check of what it computes appended."""
    snippet = fenced_blocks("python")[2]
    assert "periodic_radius_graph" in snippet
    check = "\nassert predicted.shape == (5, 40, 3) and bool(torch.isfinite(predicted).all())\nprint(len(r))\n"
    (tmp_path / "snippet.py").write_text(snippet + check)
    result = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 0  # it found edges


def test_readme_compile_and_export_snippet_runs_verbatim(tmp_path):
    """The torch.compile / torch.export / AOTInductor snippet, as written, in an empty folder (it writes its
    files there); then the saved program loads (load_exported_program) and runs in a fresh process."""
    from egno_fast.backends import unavailable_reason

    snippet = fenced_blocks("python")[1]
    assert "torch.compile(model, fullgraph=True)" in snippet and "export_for_inference" in snippet
    reason = unavailable_reason("cpp", "egnn_layer", "cpu")
    if reason is not None and os.environ.get("EGNO_FAST_REQUIRE_EXTENSION") != "1":
        pytest.skip(f"the snippet runs the cpp backend, unavailable here: {reason}")
    if not hasattr(torch._inductor, "aoti_compile_and_package"):
        pytest.skip("the snippet's export and AOTInductor package need torch >= 2.6")
    (tmp_path / "snippet.py").write_text(snippet)
    result = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "egno_program.pt2").is_file() and (tmp_path / "egno_aoti.pt2").is_file()
    reload = ("import torch\n"
              "from egno_fast import build_graph, load_exported_program\n"
              "program = load_exported_program('egno_program.pt2')\n"
              "edge_index = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 0, 4, 3]])\n"
              "graph = build_graph(edge_index, 5, torch.randn(5, 2), torch.tensor([0, 0, 0, 1, 1]))\n"
              "out = program.module()(torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 1), graph)\n"
              "print(type(out).__name__, tuple(out.x.shape))\n")
    result = subprocess.run([sys.executable, "-c", reload], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["EGNOOutput", "(5,", "5,", "3)"]


def test_readme_times_come_from_the_fresh_machine_record():
    """The install, main-job and test-suite times the README states are those of the committed fresh-machine run
    (benchmarks/fresh_machine.sh), and that run used the README's commands."""
    section = " ".join(README.split("## Two commands for a fresh machine", 1)[1].split("\n## ", 1)[0].split())
    link = re.search(r"\]\((benchmarks/results/fresh-machine-[^)]+/timings\.json)\)", section)
    assert link, "the times link the record they come from"
    record = json.loads((REPO / link.group(1)).read_text())
    commands = [block.strip() for block in fenced_blocks("bash")]
    assert [record["main_command"], record["test_command"]] == commands[:2]
    assert record["test_status"] == 0 and " passed" in record["tests_summary"] and "failed" not in record[
        "tests_summary"]
    rules = {r"(\d+) CPU cores": record["cpus"], r"Python (\d+\.\d+)": ".".join(record["python"].split(".")[:2]),
             r"torch (\S+) pre-installed": record["torch"], r"at commit ([0-9a-f]{7,40})": record["commit"],
             r"installing the package took (\d+) s": round(record["install_s"]),
             r"the first `egno-fast train` took ([\d.]+) min": round(record["main_job_s"] / 60, 1),
             r"of which (\d+) s compiled the C\+\+ extension": record["extension_build_s"],
             r"and ([\d.]+) min trained": record["main_job_training_min"],
             r"the test command took ([\d.]+) min": round(record["test_command_s"] / 60, 1),
             r"\((\d+) tests passed": int(re.search(r"(\d+) passed", record["tests_summary"]).group(1)),
             r"passed, (\d+) skipped": int(re.search(r"(\d+) skipped", record["tests_summary"]).group(1)),
             r"trained \((\d+) epochs\)": int(re.search(r"after (\d+) epochs", (REPO / link.group(1)).with_name(
                 "main_job.log").read_text()).group(1))}
    main_job = (REPO / link.group(1)).with_name("main_job.log").read_text()
    assert "backend: temporal_residual=cpp, egnn_layer=cpp on cpu" in main_job  # the main job ran the C++ backend
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "fresh_machine.sh")]).returncode == 0
    for pattern, expected in rules.items():
        found = re.search(pattern, section)
        assert found, f"the README states {pattern!r}"
        shown = found.group(1)
        if isinstance(expected, str):
            assert expected.startswith(shown) if pattern.startswith("at commit") else shown == expected, pattern
        else:
            assert float(shown) == expected, (pattern, shown, expected)
