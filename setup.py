"""Build script. The package metadata lives in pyproject.toml; the C++/CUDA extension will be declared here."""
from setuptools import setup

setup()
