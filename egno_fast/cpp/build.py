"""Builds the C++/CUDA extension of the "cpp" backend on first use, for the torch this process runs with.

Why on first use (and not when pip installs the package): a build at install time runs in pip's isolated build
environment, which either has no torch (the extension is then left out) or downloads the newest torch into it (a
CUDA build of gigabytes, possibly with another ABI than the torch the user runs). Built here, the extension is
compiled against the very torch that imports it, with the machine's compiler, and cached: the first use on a machine
takes a few minutes (a progress line says so), every later process loads the cached module in milliseconds, and a
reinstall of the package does not rebuild it.

The cache folder is ``$EGNO_FAST_BUILD_DIR`` (default ``~/.cache/egno_fast/extensions``), one subfolder per key: a
hash of the sources (everything in ``csrc/``), the compiler flags, the compiler's version, torch's and Python's
versions, CUDA's, the source folder's path (each clone or worktree builds once, in its own folder), and (since the
default flags include ``-march=native``) the CPU model and feature flags, so a build is never loaded on a machine or
torch it was not made for. Concurrent processes (torchrun ranks, test workers) wait
for one build (torch's file lock in the build folder).

Switches (environment): ``EGNO_FAST_NO_EXTENSION=1`` never builds (the "cpp" backend reports itself unavailable);
``EGNO_FAST_CUDA=1`` / ``0`` forces the CUDA graph builders in / out (default: in where torch has CUDA and nvcc is
found); ``EGNO_FAST_CPU_ARCH`` sets ``-march`` (default ``native``; empty for none); ``CXX`` names the compiler;
``MAX_JOBS`` bounds the parallel compile jobs; ``EGNO_FAST_BUILD_VERBOSE=1`` shows the compiler's commands.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import List, Optional

MODULE_NAME = "egno_fast_C"  # the compiled module (TORCH_EXTENSION_NAME in csrc/ops.cpp)
_LOADED: Optional[ModuleType] = None  # this process's module, once loaded
_FAILED: Optional[ExtensionBuildError] = None  # why it cannot be built here (said once, not rebuilt per import)


class ExtensionBuildError(ImportError):
    """The extension cannot be built or loaded here; the message names the reason and the fix."""


@dataclass(frozen=True)
class BuildPlan:
    """What one build compiles and how: sources, flags, and the cache folder that their hash names.

    Attributes:
        sources: the translation units, absolute paths.
        include_dirs: extra header folders (csrc/).
        cxx_flags / cuda_flags / link_flags: compiler and linker flags.
        with_cuda: whether the CUDA graph builders are compiled in.
        directory: the cache folder of this build.
    """
    sources: List[str]
    cxx_flags: List[str]
    cuda_flags: List[str]
    link_flags: List[str]
    with_cuda: bool
    directory: Path
    include_dirs: List[str] = field(default_factory=list)


def source_root() -> Path:
    """The ``csrc`` folder: inside the installed package (a wheel), else beside it (a source checkout)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "csrc", package.parent / "csrc"):
        if (candidate / "ops.cpp").is_file():
            return candidate
    raise ExtensionBuildError(f"the C++ sources (csrc/ops.cpp) are not found beside {package}; reinstall egno_fast")


def compiler() -> str:
    """The C++ compiler that will be used ($CXX, else c++), after checking that it and Python's headers are there;
    an error naming the fix otherwise."""
    name = os.environ.get("CXX") or "c++"
    if shutil.which(name) is None:
        hint = ("xcode-select --install" if sys.platform == "darwin"
                else "e.g. apt-get install g++ or dnf install gcc-c++")
        raise ExtensionBuildError(f"no C++ compiler found ({name!r} is not on PATH; set $CXX to another): install one "
                                  f"({hint}) to build the 'cpp' backend, or set EGNO_FAST_NO_EXTENSION=1")
    headers = Path(sysconfig.get_paths()["include"])
    if not (headers / "Python.h").is_file():
        raise ExtensionBuildError(f"Python's C headers are missing ({headers / 'Python.h'}): install them (e.g. "
                                  f"apt-get install python{sys.version_info[0]}.{sys.version_info[1]}-dev) to build "
                                  "the 'cpp' backend, or set EGNO_FAST_NO_EXTENSION=1")
    return name


def _compiler_version(name: str) -> str:
    try:
        return subprocess.run([name, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError) as error:
        raise ExtensionBuildError(f"the C++ compiler {name!r} does not run ({error})") from error


def cpu_fingerprint() -> str:
    """The CPU model and feature flags (what ``-march=native`` compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() in wanted}))


def cpu_flags(arch: str) -> List[str]:
    """The host compiler's flags for the kernels; ``arch`` is the ``-march`` value ("" for none)."""
    # -fassociative-math (with its two prerequisites) lets the compiler vectorise the kernels' row reductions;
    # results stay deterministic for a given build. No -ffinite-math-only: NaN and inf behave as IEEE says.
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math"]
    if sys.platform != "darwin":  # Apple's clang has no -fopenmp (the kernels then run on one thread)
        flags.append("-fopenmp")
    if arch:
        flags.append(f"-march={arch}")
        if platform.machine().lower() in ("x86_64", "amd64"):
            # 256-bit vectors, loaded and stored whole, where the CPU has them (gcc's znver1 tuning defaults to
            # 128-bit vectors and splits unaligned 256-bit accesses: measurably slower)
            flags += ["-mprefer-vector-width=256", "-mno-avx256-split-unaligned-load",
                      "-mno-avx256-split-unaligned-store"]
    return flags


def _want_cuda(torch) -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    setting = os.environ.get("EGNO_FAST_CUDA", "auto")
    if setting == "0":
        return False
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if setting == "1" and not available:
        raise ExtensionBuildError("EGNO_FAST_CUDA=1 but torch has no CUDA or nvcc was not found (set CUDA_HOME)")
    return available


def cache_root() -> Path:
    """``$EGNO_FAST_BUILD_DIR``, else ``~/.cache/egno_fast/extensions`` (``$XDG_CACHE_HOME`` respected)."""
    if os.environ.get("EGNO_FAST_BUILD_DIR"):
        return Path(os.environ["EGNO_FAST_BUILD_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "egno_fast" / "extensions"


def build_plan() -> BuildPlan:
    """The sources, flags and cache folder of the extension for this machine and this torch."""
    import torch

    root = source_root()
    cxx = compiler()
    arch = os.environ.get("EGNO_FAST_CPU_ARCH", "native")
    with_cuda = _want_cuda(torch)
    sources = [root / "ops.cpp", *sorted((root / "cpu").glob("*.cpp"))]
    cxx_flags = cpu_flags(arch)
    cuda_flags = ["-O3", "--fmad=false"]  # the CUDA sources are the graph builders: distances rounded as the reference
    if with_cuda:
        sources += [root / "cuda_bindings.cpp", *sorted((root / "cuda").glob("*.cu"))]
        cxx_flags.append("-DEGNO_FAST_WITH_CUDA")
        cuda_flags.append("-DEGNO_FAST_WITH_CUDA")
    link_flags = ["-fopenmp"] if "-fopenmp" in cxx_flags else []
    key = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".cpp", ".h", ".cu", ".cuh")):
        key.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    # the source folder too: torch writes its paths into the folder's build.ninja, so two trees of the same sources
    # (a clone and a git worktree) sharing one folder would rebuild each other's objects on every first use
    facts = [str(root.resolve()), torch.__version__, str(torch.version.cuda), sys.version, platform.platform(), _compiler_version(cxx),
             repr(cxx_flags), repr(cuda_flags), repr(link_flags), os.environ.get("TORCH_CUDA_ARCH_LIST", "")]
    if arch == "native":
        facts.append(cpu_fingerprint())
    key.update("\0".join(facts).encode())
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info[0]}{sys.version_info[1]}"
    return BuildPlan([str(s) for s in sources], cxx_flags, cuda_flags, link_flags, with_cuda,
                     cache_root() / f"{tag}-{key.hexdigest()[:16]}", [str(root)])


def _built_module(plan: BuildPlan) -> Optional[Path]:
    found = sorted(plan.directory.glob(f"{MODULE_NAME}*.so")) + sorted(plan.directory.glob(f"{MODULE_NAME}*.pyd"))
    return found[0] if found else None


class _Progress:
    """Prints how far the compile is (object files written of the total) while a build runs."""

    def __init__(self, plan: BuildPlan, stream=None):
        self.plan, self.stream, self.start = plan, stream or sys.stderr, time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _count(self) -> int:
        return len(list(self.plan.directory.glob("*.o")))

    def _run(self) -> None:
        interval = 2.0 if self.stream.isatty() else 30.0
        while not self.done.wait(interval):
            line = (f"egno_fast: compiling the C++ extension: {self._count()} of {len(self.plan.sources)} files, "
                    f"{time.monotonic() - self.start:.0f} s")
            print(("\r" + line) if self.stream.isatty() else line, end="" if self.stream.isatty() else "\n",
                  file=self.stream, flush=True)

    def __enter__(self):
        print(f"egno_fast: building the C++ extension for torch {_torch_version()} ({len(self.plan.sources)} files; "
              f"first use on this machine: about a minute per file and core) in {self.plan.directory}",
              file=self.stream, flush=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        if self.stream.isatty():
            print(file=self.stream)
        if exc[0] is None:
            print(f"egno_fast: C++ extension built in {time.monotonic() - self.start:.0f} s (cached for later "
                  "processes)", file=self.stream, flush=True)


def _torch_version() -> str:
    import torch

    return torch.__version__


def load_extension() -> ModuleType:
    """The compiled extension module (``torch.ops.egno_fast`` registered once it is loaded); built first if needed.
    A build that failed is not tried again in the same process: the same error is raised.

    Raises:
        ExtensionBuildError: switched off, no compiler, no Python headers, no ninja, an unwritable cache folder, or
            the build failed (the compiler's output is kept in ``build_error.log`` in the build folder and the
            message names that file).
    """
    if os.environ.get("EGNO_FAST_NO_EXTENSION") == "1":
        raise ExtensionBuildError("the C++ extension is switched off (EGNO_FAST_NO_EXTENSION=1)")
    global _LOADED, _FAILED
    if _FAILED is not None:
        raise _FAILED
    if _LOADED is None:
        try:
            _LOADED = _build_and_load()
        except ExtensionBuildError as error:
            _FAILED = error
            raise
    return _LOADED


def _find_ninja() -> None:
    """Make the ninja that pip installed beside this Python findable when its folder is not on PATH (a virtual
    environment used without activating it); an error naming the fix if there is none."""
    from torch.utils import cpp_extension

    beside = os.path.dirname(sys.executable)
    if not cpp_extension.is_ninja_available() and shutil.which("ninja", path=beside):
        os.environ["PATH"] = beside + os.pathsep + os.environ.get("PATH", "")
    if not cpp_extension.is_ninja_available():
        raise ExtensionBuildError("ninja is not installed (it drives the C++ build): pip install ninja")


def _build_and_load() -> ModuleType:
    from torch.utils import cpp_extension

    plan = build_plan()
    try:
        plan.directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExtensionBuildError(f"cannot create the build folder {plan.directory} ({error.strerror}); set "
                                  "EGNO_FAST_BUILD_DIR to a writable folder") from error
    _find_ninja()
    arguments = dict(name=MODULE_NAME, sources=plan.sources, extra_cflags=plan.cxx_flags,
                     extra_cuda_cflags=plan.cuda_flags, extra_ldflags=plan.link_flags,
                     extra_include_paths=plan.include_dirs, build_directory=str(plan.directory),
                     with_cuda=plan.with_cuda, verbose=os.environ.get("EGNO_FAST_BUILD_VERBOSE") == "1")
    try:
        if _built_module(plan) is not None:  # cached: torch checks the sources and loads without compiling
            return cpp_extension.load(**arguments)
        with _Progress(plan):
            return cpp_extension.load(**arguments)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        log = plan.directory / "build_error.log"
        log.write_text(str(error))
        last = [line for line in str(error).splitlines() if "error" in line.lower()][:1]
        raise ExtensionBuildError(f"building the C++ extension failed ({last[0].strip() if last else error}); "
                                  f"the compiler's output is in {log}") from error


def main() -> int:
    """``python -m egno_fast.cpp.build``: build (or find) the extension now and say where it is."""
    try:
        module = load_extension()
    except ExtensionBuildError as error:
        print(f"egno_fast: {error}", file=sys.stderr)
        return 1
    print(f"egno_fast: C++ extension ready: {module.__file__} ({dict(module.build_info())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
