"""egno_fast: the Equivariant Graph Neural Operator (EGNO) for 3D dynamics, with fused kernels.

Main entry points: :class:`EGNO` (the model), :func:`build_graph` (a batch of graphs as a receiver-sorted CSR),
:mod:`egno_fast.nn` (drop-in layers), :mod:`egno_fast.reference` (pure-PyTorch ground truth),
:mod:`egno_fast.backends` (explicit backend choice), :func:`patch` / :func:`unpatch` (swap an existing model's
layers to fused kernels in place).
"""
from .backends import BackendUnavailableError, backend_status
from .graph import Graph, GraphInputError, build_graph
from .models import EGNO, EGNOOutput
from .patch import patch, unpatch

__version__ = "0.1.0"

__all__ = ["EGNO", "EGNOOutput", "Graph", "GraphInputError", "build_graph", "BackendUnavailableError",
           "backend_status", "patch", "unpatch", "__version__"]
