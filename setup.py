"""Build script: package metadata lives in pyproject.toml; this file declares the C++/CUDA extension egno_fast._C.

The CPU extension (csrc/ops.cpp, csrc/cpu/*.cpp) is built with the host compiler, OpenMP and -O3. The CUDA sources
(csrc/cuda/*.cu and csrc/cuda_bindings.cpp) are added when torch has CUDA and nvcc is found, or when forced:
EGNO_FAST_CUDA=1 (build them, fail if impossible) / 0 (never). EGNO_FAST_NO_EXTENSION=1 skips the extension
entirely (the package then reports the "cpp" backend as unavailable). EGNO_FAST_CPU_ARCH sets -march (default
"native": the extension is built on the machine that runs it; set e.g. "x86-64-v2" for a portable build).
The extension is optional: if it fails to compile, pip still installs the package and `egno-fast info` says why.
Build with `pip install --no-build-isolation -e .` so that the installed torch is the one compiled against.
"""
import glob
import platform
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, pattern)))


def _want_cuda(torch, cuda_home) -> bool:
    setting = os.environ.get("EGNO_FAST_CUDA", "auto")
    if setting == "0":
        return False
    available = torch.version.cuda is not None and cuda_home is not None
    if setting == "1" and not available:
        raise RuntimeError("EGNO_FAST_CUDA=1 but torch has no CUDA or nvcc was not found (CUDA_HOME)")
    return available


def extension_build():
    """(ext_modules, cmdclass) for setup(); empty if the extension is switched off or torch is missing."""
    if os.environ.get("EGNO_FAST_NO_EXTENSION") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("egno_fast: torch is not importable at build time; building without the C++ extension "
              "(use pip install --no-build-isolation)")
        return [], {}
    arch = os.environ.get("EGNO_FAST_CPU_ARCH", "native")
    # -fassociative-math (with its two prerequisites) lets the compiler vectorise the kernels' row reductions;
    # results stay deterministic for a given build. No -ffinite-math-only: NaN and inf behave as IEEE says.
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math"]
    if arch:
        cxx.append(f"-march={arch}")
        if platform.machine().lower() in ("x86_64", "amd64"):
            # 256-bit vectors, loaded and stored whole, where the CPU has them (gcc's znver1 tuning defaults to
            # 128-bit vectors and splits unaligned 256-bit accesses: measurably slower on the development machine)
            cxx += ["-mprefer-vector-width=256", "-mno-avx256-split-unaligned-load",
                    "-mno-avx256-split-unaligned-store"]
    sources = _sources("csrc/ops.cpp") + _sources("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc")]
    if _want_cuda(torch, CUDA_HOME):
        sources += _sources("csrc/cuda_bindings.cpp") + _sources("csrc/cuda/*.cu")
        extension = CUDAExtension(
            "egno_fast._C", sources, include_dirs=include_dirs, define_macros=[("EGNO_FAST_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]}, extra_link_args=["-fopenmp"],
            optional=os.environ.get("EGNO_FAST_CUDA") != "1")
    else:
        extension = CppExtension("egno_fast._C", sources, include_dirs=include_dirs, extra_compile_args=cxx,
                                 extra_link_args=["-fopenmp"], optional=True)
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_build()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
