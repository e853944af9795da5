"""egno_fast: the Equivariant Graph Neural Operator (EGNO) for 3D dynamics, with fused kernels.

Main entry points: :class:`EGNO` (the model), :func:`build_graph` (a batch of graphs as a receiver-sorted CSR),
:mod:`egno_fast.nn` (drop-in layers), :mod:`egno_fast.ops` (the ops: reference and fused, functional),
:mod:`egno_fast.backends` (explicit backend choice), :func:`patch` / :func:`unpatch` (swap an existing model's
layers to fused kernels in place), :func:`export_for_inference` (torch.export on a prebuilt graph), :func:`rollout`
(windows chained into a long trajectory).

The names above are imported on first access (PEP 562): ``import egno_fast`` alone does not import torch, so the
command line (``egno-fast --help``) answers at once.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, List

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {
    "EGNO": ".models", "EGNOOutput": ".models",
    "Graph": ".graph", "GraphInputError": ".graph", "build_graph": ".ops", "periodic_radius_graph": ".ops",
    "BackendUnavailableError": ".backends", "backend_status": ".backends",
    "patch": ".patching", "unpatch": ".patching",
    "export_for_inference": ".export", "load_exported_program": ".export",
    "rollout": ".rollouts",
}

__all__ = ["EGNO", "EGNOOutput", "Graph", "GraphInputError", "build_graph", "periodic_radius_graph",
           "BackendUnavailableError",
           "backend_status", "export_for_inference", "load_exported_program", "patch", "rollout", "unpatch",
           "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from .backends import BackendUnavailableError, backend_status
    from .export import export_for_inference, load_exported_program
    from .graph import Graph, GraphInputError
    from .ops import build_graph, periodic_radius_graph
    from .models import EGNO, EGNOOutput
    from .patching import patch, unpatch
    from .rollouts import rollout


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))

