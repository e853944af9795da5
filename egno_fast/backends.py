"""Backend dispatch: one explicit, reported choice among "reference", "triton" and "cpp" ("auto" picks one).

Each op has one entry point per backend, registered here. A backend that is requested but not available raises
:class:`BackendUnavailableError` naming the reason; nothing falls back silently.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict

import torch

from .reference import egnn_layer_reference, temporal_residual_reference

logger = logging.getLogger("egno_fast")

BACKENDS = ("reference", "triton", "cpp")
OPS = ("temporal_residual", "egnn_layer")
# The order in which "auto" tries the backends, per device type.
AUTO_PRIORITY = {"cuda": ("triton", "cpp", "reference"), "cpu": ("cpp", "reference")}
# Why a backend has no implementation in this build (removed as the backends land).
_NOT_BUILT = {
    "triton": "the fused Triton kernels are not implemented yet",
    "cpp": "the C++/CUDA extension is not implemented yet",
}

_REGISTRY: Dict[str, Dict[str, Callable]] = {op: {} for op in OPS}


class BackendUnavailableError(RuntimeError):
    """Raised when a requested backend cannot run here (not built, or wrong device)."""


def register(op: str, backend: str, fn: Callable) -> None:
    """Register ``fn`` as the implementation of ``op`` for ``backend``."""
    if op not in OPS or backend not in BACKENDS:
        raise ValueError(f"unknown op {op!r} or backend {backend!r}")
    _REGISTRY[op][backend] = fn


register("temporal_residual", "reference", temporal_residual_reference)
register("egnn_layer", "reference", egnn_layer_reference)


def unavailable_reason(backend: str) -> str | None:
    """None if every op of ``backend`` is registered, else why it is not usable."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS + ('auto',)}")
    missing = [op for op in OPS if backend not in _REGISTRY[op]]
    if missing:
        return _NOT_BUILT.get(backend, f"ops {missing} are not registered")
    return None


def backend_status() -> Dict[str, str]:
    """Every backend -> "available" or the reason it is not (what ``egno-fast info`` prints)."""
    return {name: unavailable_reason(name) or "available" for name in BACKENDS}


def resolve_backend(requested: str, device: torch.device | str) -> str:
    """The concrete backend for ``requested`` on ``device``; "auto" picks the first available by priority.

    Raises BackendUnavailableError if a named backend cannot run.
    """
    device_type = torch.device(device).type
    if requested == "auto":
        for name in AUTO_PRIORITY.get(device_type, ("reference",)):
            if unavailable_reason(name) is None:
                return name
        raise BackendUnavailableError(f"no backend available for device {device_type!r}")
    reason = unavailable_reason(requested)
    if reason is not None:
        raise BackendUnavailableError(f"backend {requested!r} is not available: {reason}. "
                                      f"Available: {[n for n, s in backend_status().items() if s == 'available']}")
    return requested


def get_op(op: str, backend: str) -> Callable:
    """The implementation of ``op`` for a concrete (already resolved) ``backend``."""
    try:
        return _REGISTRY[op][backend]
    except KeyError:
        raise BackendUnavailableError(f"op {op!r} has no {backend!r} implementation") from None


def check_backend_name(name: str) -> str:
    """Validate a user-facing backend name ("reference", "triton", "cpp" or "auto") and return it."""
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS + ('auto',)}")
    return name
