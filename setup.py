"""Build script of egno_fast. The package metadata lives in pyproject.toml; nothing is compiled at install time.

The C++/CUDA extension of the "cpp" backend (csrc/, shipped with the package as egno_fast/csrc in a wheel) is built
on first use, against the torch that imports it, and cached: see egno_fast/cpp/build.py for why and for the
switches (EGNO_FAST_NO_EXTENSION, EGNO_FAST_CUDA, EGNO_FAST_CPU_ARCH, EGNO_FAST_BUILD_DIR, CXX, MAX_JOBS).
"""
from setuptools import setup

setup()
