"""benchmarks/gpu_check.sh on CPU: its step table (order, a limit per step, the 300 s budget), and real runs of the
script with each step's command replaced by a fast stub (or with a recording stand-in for python3 and timeout on
PATH): every step runs under `timeout` with its limit, a step that fails or runs out of time is recorded and the run
goes on, pytest reports what ran when its limit comes, and the output folder holds at most 8 files."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
ORDER = ["environment", "install", "build_cpp", "kernel_tests", "egnn_target", "temporal_bandwidth", "scale"]
BUDGET_S = 300
OUTPUTS = {"summary.md", "steps.tsv", "tests_tail.log", "gpu_check.tar.gz"}
REQUIRED_VARIANTS = {"reference", "reference_tf32", "reference_bf16", "compile_tf32", "triton_tf32", "triton_bf16"}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def clean_env(**extra):
    """The test process's environment without the variables the script reads, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GPU_CHECK_") and k not in ("EGNN_NODES", "EGNN_VARIANTS", "KERNEL_TESTS",
                                                           "KERNEL_TESTS_K", "PYTEST_ARGS", "BANDWIDTH_ARGS",
                                                           "SCALE_ARGS")}
    env.update(extra)
    return env


def run_script(*args, timeout=120, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=clean_env(**env), cwd=REPO)


def dry_run(**env):
    result = run_script("--dry-run", **env)
    steps = [line.split("\t", 3) for line in result.stdout.splitlines() if re.match(r"\d+\t", line)]
    return result, [(name, int(limit), command) for _, name, limit, command in steps]


def steps_table(out: Path):
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    return {name: dict(limit=int(limit), seconds=float(seconds), rc=rc, status=status)
            for name, limit, seconds, rc, status in rows}, [row[0] for row in rows]


def tar_text(out: Path, name: str) -> str:
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        return tar.extractfile(f"gpu_check/{name}").read().decode()


def test_bash_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_steps_in_order_each_with_a_limit_within_the_budget():
    result, steps = dry_run()
    assert result.returncode == 0, result.stderr
    assert [name for name, _, _ in steps] == ORDER
    assert all(limit >= 1 for _, limit, _ in steps)
    total = re.search(r"limits (\d+) s \+ (\d+) x (\d+) s kill grace \+ (\d+) s packing = (\d+) s, budget (\d+) s",
                      result.stdout)
    limits, count, grace, packing, needed, budget = map(int, total.groups())
    assert limits == sum(limit for _, limit, _ in steps) and count == len(steps)
    assert budget == BUDGET_S and needed == limits + count * grace + packing <= BUDGET_S
    assert packing > 0 and grace > 0  # time is kept for the tar and for steps that must be killed
    outputs = re.search(r"^outputs\t(.*)$", result.stdout, re.M).group(1).split()
    assert set(outputs) == OUTPUTS and len(outputs) <= 8
    commands = {name: command for name, _, command in steps}
    assert "pip install -q --no-deps --no-build-isolation -e ." in commands["install"]
    assert commands["build_cpp"] == "python3 -m egno_fast.cpp.build"


def test_over_budget_or_bad_limits_are_refused_before_anything_runs(tmp_path):
    result, _ = dry_run(GPU_CHECK_TIMEOUT_kernel_tests="200")
    assert result.returncode == 2 and "over the budget" in result.stderr
    out = tmp_path / "out"
    result = run_script(str(out), GPU_CHECK_STUB="1", GPU_CHECK_TIMEOUT_egnn_target="500")
    assert result.returncode == 2 and "over the budget" in result.stderr and not out.exists()
    result = run_script("--dry-run", GPU_CHECK_TIMEOUT_install="0")
    assert result.returncode == 2 and "whole number" in result.stderr
    result = run_script("--dry-run", EGNN_NODES="25000 50000")
    assert result.returncode == 2 and "one node count" in result.stderr


def test_stubbed_run_leaves_at_most_8_files(tmp_path):
    out = tmp_path / "gpu_check"
    result = run_script(str(out), GPU_CHECK_STUB="1")
    assert result.returncode == 0, result.stdout + result.stderr
    files = {p.name for p in out.iterdir()}
    assert files == OUTPUTS and len(files) <= 8
    table, order = steps_table(out)
    assert order == ORDER and all(row["status"] == "ok" and row["rc"] == "0" for row in table.values())
    for name in ORDER:
        assert f"stub: {name}" in tar_text(out, f"{name}.log")
    summary = (out / "summary.md").read_text()
    assert "| temporal_bandwidth | 20 |" in summary and "| scale | 25 |" in summary and "budget 300 s" in summary
    # a second run into the same folder leaves the same files
    result = run_script(str(out), GPU_CHECK_STUB="1")
    assert result.returncode == 0 and {p.name for p in out.iterdir()} == OUTPUTS


def test_every_step_runs_under_timeout_with_its_limit(tmp_path):
    """A recording `timeout` first on PATH (it then runs the real one)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "timeout_calls"
    bin_dir.mkdir()
    (bin_dir / "timeout").write_text(f'#!/usr/bin/env bash\necho "$@" >> {calls}\nexec {shutil.which("timeout")} "$@"\n')
    (bin_dir / "timeout").chmod(0o755)
    _, steps = dry_run()
    result = run_script(str(tmp_path / "out"), GPU_CHECK_STUB="1", PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert result.returncode == 0, result.stderr
    recorded = calls.read_text().splitlines()
    assert len(recorded) == len(steps)
    for line, (name, limit, _) in zip(recorded, steps):
        assert line == f"-k 5 -s INT {limit} bash -c echo stub: {name}"


def test_real_commands_with_a_recording_python(tmp_path):
    """Every step's real command, with python3 replaced by a recorder (arguments and a few variables)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "python_calls"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        keys = ("EGNO_FAST_NO_EXTENSION", "TRITON_INTERPRET", "PIP_NO_INDEX")
        with open({str(calls)!r}, "a") as handle:
            handle.write(json.dumps(dict(argv=sys.argv[1:], env={{k: os.environ.get(k) for k in keys}})) + "\\n")
        """))
    (bin_dir / "python3").chmod(0o755)
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H200, 143771 MiB'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    out = tmp_path / "out"
    result = run_script(str(out), PATH=f"{bin_dir}:{os.environ['PATH']}", TRITON_INTERPRET="1")
    assert result.returncode == 0, result.stdout + result.stderr
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert all(call["env"]["TRITON_INTERPRET"] is None for call in recorded)  # the real kernels on the GPU
    by_kind = {}
    for call in recorded:
        argv = call["argv"]
        kind = ("pytest" if argv[0] == "-c" and "pytest.main" in argv[1] else
                "cpp" if argv[:2] == ["-m", "egno_fast.cpp.build"] else
                "facts" if argv[0] == "-c" else argv[1])
        by_kind.setdefault(kind, []).append(call)
    assert set(by_kind) == {"facts", "pip", "cpp", "pytest", "benchmarks.egnn_target", "benchmarks.temporal_bandwidth",
                            "benchmarks.scale"}
    install = by_kind["pip"][0]
    assert install["argv"] == ["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."]
    assert install["env"]["PIP_NO_INDEX"] == "1"
    assert by_kind["cpp"][0]["env"]["EGNO_FAST_NO_EXTENSION"] is None  # the build step builds
    # pytest: each kernel test file in its own process without the gpu-marked tests, and the gpu-marked ones
    pytest_runs = [call["argv"][2:] for call in by_kind["pytest"]]
    files = {tuple(a for a in argv if a.startswith("tests/")): argv for argv in pytest_runs}
    assert ("tests/test_egnn_triton.py",) in files and ("tests/test_temporal_conv_triton.py",) in files
    for name in ("tests/test_egnn_triton.py", "tests/test_temporal_conv_triton.py"):
        argv = files[(name,)]
        assert argv[argv.index("-m") + 1] == "not gpu"
        assert "not every_configuration_compiles" in argv
    gpu_run = next(argv for argv in pytest_runs if argv[argv.index("-m") + 1] == "gpu")
    assert "tests/test_temporal_bandwidth.py" in gpu_run and "tests/test_gpu_check.py" not in gpu_run
    # the EGNN target: one size, the six variants (names that benchmarks.egnn_target knows), no largest-graph search
    from benchmarks.egnn_target import VARIANTS

    argv = by_kind["benchmarks.egnn_target"][0]["argv"]
    nodes = argv[argv.index("--nodes") + 1:argv.index("--variants")]
    variants = argv[argv.index("--variants") + 1:argv.index("--repeats")]
    assert nodes == ["25000"] and set(variants) == REQUIRED_VARIANTS <= set(VARIANTS) and "--no-fit" in argv
    assert by_kind["benchmarks.temporal_bandwidth"][0]["argv"][2] == "--out"
    # the scale figures with Triton ("auto" on the GPU), sizes checked by a confirmation run, the GPU's memory
    from benchmarks.scale import main as scale_main  # noqa: F401  (the module the step runs)

    argv = by_kind["benchmarks.scale"][0]["argv"]
    assert argv[argv.index("--backend") + 1] == "auto" and argv[argv.index("--device") + 1] == "cuda"
    assert argv[argv.index("--confirm") + 1] == "16000" and "--output" in argv and "--plot" in argv
    assert {p.name for p in out.iterdir()} == OUTPUTS


def test_failures_and_timeouts_are_recorded_and_the_run_goes_on(tmp_path):
    out = tmp_path / "out"
    begin = time.monotonic()
    result = run_script(str(out), GPU_CHECK_STUB="1", GPU_CHECK_CMD_install="exit 3",
                        GPU_CHECK_CMD_build_cpp='trap "" INT; sleep 60', GPU_CHECK_TIMEOUT_build_cpp="1",
                        GPU_CHECK_CMD_egnn_target='echo "no extension: $EGNO_FAST_NO_EXTENSION"')
    assert time.monotonic() - begin < 30  # 1 s limit + 5 s until SIGKILL, not 60 s
    assert result.returncode == 1
    table, order = steps_table(out)
    assert order == ORDER
    assert table["install"]["status"] == "failed" and table["install"]["rc"] == "3"
    assert table["build_cpp"]["status"] == "timeout" and table["build_cpp"]["rc"] == "137"  # ignored SIGINT: killed
    assert all(table[name]["status"] == "ok" for name in ("environment", "kernel_tests", "temporal_bandwidth"))
    assert "no extension: 1" in tar_text(out, "egnn_target.log")  # nothing waits on a half-built extension
    assert "EGNO_FAST_NO_EXTENSION=1" in (out / "summary.md").read_text()
    assert "Killed" not in result.stderr
    assert {p.name for p in out.iterdir()} == OUTPUTS


def test_pytest_reports_what_ran_when_the_limit_comes(tmp_path):
    """The kernel-test step's pytest processes run in the background of a shell (where SIGINT is ignored unless
    handed back): at the limit they stop on SIGINT and print their counts, and the step is a timeout (124), not a
    kill."""
    tests = tmp_path / "test_limit.py"
    tests.write_text("import time\n\ndef test_quick():\n    pass\n\ndef test_slow():\n    time.sleep(120)\n")
    out = tmp_path / "out"
    result = run_script(str(out), GPU_CHECK_STUB="1", GPU_CHECK_CMD_kernel_tests="kernel_tests",
                        GPU_CHECK_TIMEOUT_kernel_tests="12", KERNEL_TESTS=str(tests), timeout=60)
    table, _ = steps_table(out)
    assert table["kernel_tests"]["status"] == "timeout" and table["kernel_tests"]["rc"] == "124", \
        tar_text(out, "kernel_tests.log")
    log = tar_text(out, "tests/test_limit.log")
    assert "KeyboardInterrupt" in log and "1 passed" in log
    assert "test_limit: 1 passed" in (out / "summary.md").read_text()
    assert "1 passed" in (out / "tests_tail.log").read_text()
