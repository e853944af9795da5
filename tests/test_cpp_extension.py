"""The C++ extension built from csrc/ (the "cpp" backend): its build on first use, its cache, the reports when it is
missing, and the CUDA sources compiled for sm_90. Each op's tests on this backend are in tests/test_<op>_cpp.py.

The extension is built on first use (egno_fast/cpp/build.py; tests/conftest.py builds it before collection). CI sets
EGNO_FAST_REQUIRE_EXTENSION=1, so these tests fail there instead of skipping if it did not build.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from conftest import import_extension_or_skip
from egno_fast.backends import BackendUnavailableError, backend_status, resolve_backend

CSRC = Path(__file__).resolve().parents[1] / "csrc"
cpp = import_extension_or_skip()


# ------------------------------------------------------------------------------- reporting and the build

def test_backend_reporting():
    status = backend_status("cpu")["cpp"]
    assert set(status.values()) == {"available"}
    assert resolve_backend("auto", "cpu", "egnn_layer") == "cpp"
    with pytest.raises(BackendUnavailableError, match="cpu tensors only"):
        resolve_backend("cpp", "cuda", "egnn_layer")
    assert set(cpp.build_info()) == {"cuda", "openmp"}


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})


REPORT = ("from egno_fast.backends import backend_status, resolve_backend\n"
          "print(backend_status('cpu')['cpp']['egnn_layer']); print(resolve_backend('auto', 'cpu', 'egnn_layer'))")


def test_package_imports_and_reports_a_switched_off_extension():
    result = _python(REPORT, EGNO_FAST_NO_EXTENSION="1")
    reason, auto = result.stdout.strip().splitlines()
    assert "switched off (EGNO_FAST_NO_EXTENSION=1)" in reason and auto == "reference"
    # "auto" passing over the backend is said on stderr, once, with the reason
    assert result.stderr.count("backend 'cpp' is unavailable") == 1 and "EGNO_FAST_NO_EXTENSION" in result.stderr


def test_missing_compiler_is_named(tmp_path):
    result = _python(REPORT, CXX="no-such-compiler", EGNO_FAST_BUILD_DIR=str(tmp_path))
    reason, auto = result.stdout.strip().splitlines()
    assert "no C++ compiler found ('no-such-compiler' is not on PATH" in reason and "install one" in reason
    assert auto == "reference" and not any(tmp_path.iterdir())


def test_failed_build_keeps_the_compiler_output(tmp_path, monkeypatch):
    """A compile error becomes one ExtensionBuildError naming its first error line and the log file."""
    from egno_fast.cpp import build

    broken = tmp_path / "csrc"
    (broken / "cpu").mkdir(parents=True)
    (broken / "ops.cpp").write_text("this is not C++;\n")
    monkeypatch.setattr(build, "source_root", lambda: broken)
    monkeypatch.setenv("EGNO_FAST_BUILD_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EGNO_FAST_CUDA", "0")
    with pytest.raises(build.ExtensionBuildError, match="building the C.. extension failed .*build_error.log") as info:
        build._build_and_load()
    log = next((tmp_path / "cache").glob("*/build_error.log"))
    assert "this is not C++" in log.read_text() and str(log) in str(info.value)
    # load_extension tries once per process: the second call raises the same error without building again
    monkeypatch.setattr(build, "_LOADED", None)
    monkeypatch.setattr(build, "_FAILED", None)
    builds = []

    def failing_build():
        builds.append(1)
        raise info.value

    monkeypatch.setattr(build, "_build_and_load", failing_build)
    for _ in range(2):
        with pytest.raises(build.ExtensionBuildError, match="build_error.log"):
            build.load_extension()
    assert builds == [1]


def test_unwritable_build_folder_is_named(tmp_path, monkeypatch):
    from egno_fast.cpp import build

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("EGNO_FAST_BUILD_DIR", str(blocker / "cache"))  # a folder below a file cannot be made
    monkeypatch.setenv("EGNO_FAST_CUDA", "0")
    with pytest.raises(build.ExtensionBuildError, match="cannot create the build folder .*EGNO_FAST_BUILD_DIR"):
        build._build_and_load()


def test_build_cache_key_covers_sources_flags_and_torch(monkeypatch, tmp_path):
    """The cache folder changes with the sources, their folder, the -march flag and torch's version; it is stable
    otherwise."""
    from egno_fast.cpp import build

    monkeypatch.setenv("EGNO_FAST_CUDA", "0")
    first = build.build_plan()
    assert build.build_plan().directory == first.directory
    edited = tmp_path / "csrc"
    shutil.copytree(build.source_root(), edited)
    assert build.build_plan().directory == first.directory
    monkeypatch.setattr(build, "source_root", lambda: edited)
    # the same sources elsewhere (another clone, a git worktree): a folder of their own, since torch writes the
    # sources' paths into the build folder and would otherwise recompile each tree's objects for the other
    elsewhere = build.build_plan().directory
    assert elsewhere != first.directory and build.build_plan().directory == elsewhere
    with open(edited / "cpu" / "tiles.h", "a") as header:  # a header counts too
        header.write("\n")
    assert build.build_plan().directory not in (first.directory, elsewhere)
    monkeypatch.undo()
    monkeypatch.setenv("EGNO_FAST_CUDA", "0")
    assert first.directory.parent == build.cache_root() and "-march=native" in first.cxx_flags
    monkeypatch.setenv("EGNO_FAST_CPU_ARCH", "x86-64-v2")
    assert build.build_plan().directory != first.directory
    monkeypatch.delenv("EGNO_FAST_CPU_ARCH")
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert build.build_plan().directory != first.directory
    monkeypatch.undo()
    monkeypatch.setenv("EGNO_FAST_CUDA", "0")
    monkeypatch.setattr(build, "_compiler_version", lambda name: "another compiler 1.0")
    assert build.build_plan().directory != first.directory


def test_cached_extension_loads_without_compiling():
    """A second process finds the build of the first: no build message, the module loads."""
    result = _python("import egno_fast.cpp as c; print(c.build_info())")
    assert result.returncode == 0, result.stderr
    assert "building the C++ extension" not in result.stderr and "openmp" in result.stdout


def _cuda_home() -> Path:
    from torch.utils.cpp_extension import CUDA_HOME

    for home in (os.environ.get("CUDA_HOME"), CUDA_HOME, "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return Path(home)
    if os.environ.get("EGNO_FAST_REQUIRE_EXTENSION") == "1":
        raise AssertionError("nvcc not found ($CUDA_HOME or /usr/local/cuda): CI compiles the CUDA sources")
    pytest.skip("nvcc is not installed")


@pytest.mark.parametrize("source", sorted(p.name for p in (CSRC / "cuda").glob("*.cu")))
def test_cuda_sources_compile_for_sm90(source, tmp_path):
    result = subprocess.run([str(_cuda_home() / "bin" / "nvcc"), "-c", "-std=c++17", "-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v",
                             "-I", str(CSRC), str(CSRC / "cuda" / source), "-o", str(tmp_path / "out.o")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "spill stores" in result.stderr  # ptxas reported every kernel's resources


def test_cuda_bindings_compile_against_torch_headers(tmp_path):
    """The torch-facing CUDA glue, syntax-checked with the host compiler (the CPU build of torch lacks one
    generated CUDA header, supplied here)."""
    cuda_home = _cuda_home()
    shim = tmp_path / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    from torch.utils.cpp_extension import include_paths

    includes = [tmp_path, CSRC, *include_paths(), cuda_home / "include", sysconfig.get_paths()["include"]]
    command = ["g++", "-fsyntax-only", "-std=c++20", *(f"-I{p}" for p in includes), str(CSRC / "cuda_bindings.cpp")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
