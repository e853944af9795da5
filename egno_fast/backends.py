"""Backend dispatch: one explicit, reported choice among "reference", "triton" and "cpp" per op ("auto" picks).

Ops: the model's layers (:data:`OPS`), the two halves of the fused EGNN layer (:data:`PART_OPS`) and the graph
builders (:data:`GRAPH_OPS`). Each op's module in :mod:`egno_fast.ops` registers its entry point per backend here
when it is imported; this module imports none of them (no import cycle).

A backend that is requested for an op it cannot run (not built, no kernel for that op or layer variant, wrong
device) raises :class:`BackendUnavailableError` naming the reason; nothing falls back silently. "auto" takes, per
op and device, the first backend of :data:`AUTO_PRIORITY` that can run it, and the model logs and records what it
chose.
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Callable, Dict, Optional, Tuple, Union

import torch

BACKENDS = ("reference", "triton", "cpp")
OPS = ("temporal_residual", "egnn_layer")  # the model's layers (what patch() and the model's backend choose)
PART_OPS = ("egnn_edge", "egnn_node")  # the edge aggregation and node update of the fused EGNN layer
GRAPH_OPS = ("receiver_csr", "radius_graph", "knn_graph", "periodic_radius_graph")  # graph construction
ALL_OPS = OPS + PART_OPS + GRAPH_OPS
# The order in which "auto" tries the backends, per device type.
AUTO_PRIORITY = {"cuda": ("triton", "cpp", "reference"), "cpu": ("cpp", "reference")}
# The modules a backend needs: importing them (on first use: Triton is slow to import, the extension may have to be
# built) tells whether the backend can run here.
_PROVIDERS = {"triton": ("egno_fast.kernels.temporal_conv", "egno_fast.kernels.egnn_edge"), "cpp": ("egno_fast.cpp",)}
_OPS_PACKAGE = "egno_fast.ops"  # whose modules register the entry points

DeviceTypes = Union[Tuple[str, ...], Callable[[], Tuple[str, ...]]]
_REGISTRY: Dict[str, Dict[str, Callable]] = {op: {} for op in ALL_OPS}
_DEVICES: Dict[tuple, DeviceTypes] = {}  # (op, backend) -> device types it runs on (absent: any)
_UNSUPPORTED: Dict[tuple, Callable[..., Optional[str]]] = {}  # (op, backend) -> why a call's variant is not run
_NO_AUTOCAST = set()  # (op, backend) whose kernels take float32 / float64 operands only: not run under autocast
_LOAD_ERRORS: Dict[str, str] = {}
_LOADED = {"reference"}
_REPORTED_SKIPS = set()  # (op, backend, reason) that "auto" passed over for a call's variant, logged once
logger = logging.getLogger("egno_fast")


class BackendUnavailableError(RuntimeError):
    """Raised when a requested backend cannot run an op here (not built, not implemented, wrong device)."""


def register(op: str, backend: str, fn: Callable, devices: Optional[DeviceTypes] = None,
             unsupported: Optional[Callable[..., Optional[str]]] = None, autocast: bool = True) -> None:
    """Register ``fn`` as the implementation of ``op`` for ``backend``.

    Args:
        devices:     the device types it runs on (None: any), or a function returning them (asked once the
                     backend is loaded).
        unsupported: ``unsupported(**features) -> None or reason``: whether a call's variant (the features the op's
                     entry point passes to :func:`resolve_backend`) is beyond this implementation.
        autocast:    whether it runs under ``torch.autocast`` (bf16 training): False for kernels that take float32
                     or float64 operands only; "auto" then passes over them and naming them raises.
    """
    if op not in ALL_OPS or backend not in BACKENDS:
        raise ValueError(f"unknown op {op!r} or backend {backend!r}")
    _REGISTRY[op][backend] = fn
    if not autocast:
        _NO_AUTOCAST.add((op, backend))
    if devices is not None:
        _DEVICES[(op, backend)] = devices
    if unsupported is not None:
        _UNSUPPORTED[(op, backend)] = unsupported


def _import_ops() -> None:
    """Import the op modules (they register their entry points) if no entry point is registered yet: outside the hot
    path (and out of torch.compile's way) once they are."""
    if not _REGISTRY["egnn_layer"]:
        importlib.import_module(_OPS_PACKAGE)


def _load(backend: str) -> None:
    """Import the ops and the modules ``backend`` needs, once; remember why if that fails."""
    _import_ops()
    if backend in _LOADED:
        return
    for module in _PROVIDERS[backend]:
        try:
            importlib.import_module(module)
        except ImportError as error:
            _LOAD_ERRORS[backend] = f"{module} cannot be imported ({error})"
            # said once, where anyone sees it: "auto" then runs another backend, never silently
            logger.warning("backend %r is unavailable: %s", backend, _LOAD_ERRORS[backend])
            break
    _LOADED.add(backend)  # loaded, or its reason recorded (an interrupted import is tried again)


def check_backend_name(name: str) -> str:
    """Validate a user-facing backend name ("reference", "triton", "cpp" or "auto") and return it."""
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS + ('auto',)}")
    return name


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype of the ``torch.autocast`` region active on ``device_type`` ("cpu", "cuda"), or None."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def unavailable_reason(backend: str, op: str, device: torch.device | str | None = None,
                       autocast: Optional[torch.dtype] = None, **features) -> Optional[str]:
    """None if ``backend`` can run ``op`` on ``device`` (None: on some device) for a call with ``features`` (the
    layer variant; see the op's entry point), else why not. ``autocast``: the autocast dtype the call will run
    under (None: the region active on ``device`` now, if any)."""
    check_backend_name(backend)
    _load(backend)
    if backend in _LOAD_ERRORS:
        return _LOAD_ERRORS[backend]
    if backend not in _REGISTRY[op]:
        return f"{backend!r} has no implementation of {op!r}"
    supported = _DEVICES.get((op, backend))
    if callable(supported):
        supported = supported()
    if device is not None and supported is not None and torch.device(device).type not in supported:
        return f"{backend!r} runs {op!r} on {' and '.join(supported)} tensors only in this build"
    if backend == "triton" and device is not None and torch.device(device).type != "cuda" \
            and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton kernels run on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1 set before import)"
    if autocast is None and device is not None:
        autocast = autocast_dtype(torch.device(device).type)
    if autocast is not None and (op, backend) in _NO_AUTOCAST:
        return (f"{backend!r} does not run {op!r} under autocast ({str(autocast).replace('torch.', '')} "
                f"operands): its kernels take float32 or float64")
    if features and (op, backend) in _UNSUPPORTED:
        return _UNSUPPORTED[(op, backend)](**features)
    return None


def backend_status(device: torch.device | str | None = None) -> Dict[str, Dict[str, str]]:
    """backend -> op -> "available" or the reason it is not (what ``egno-fast info`` prints)."""
    return {b: {op: unavailable_reason(b, op, device) or "available" for op in ALL_OPS} for b in BACKENDS}


def resolve_backend(requested: str, device: torch.device | str, op: str, **features) -> str:
    """The concrete backend that runs ``op`` on ``device`` for ``requested``; "auto" picks by priority.

    Args:
        features: the call's variant, as the op's entry point describes it (e.g. the EGNN layer's options).
    Raises BackendUnavailableError if a named backend cannot run the op there.
    """
    device_type = torch.device(device).type
    if requested == "auto":
        for name in AUTO_PRIORITY.get(device_type, ("reference",)):
            if unavailable_reason(name, op, device) is not None:
                continue
            variant = _UNSUPPORTED[(op, name)](**features) if features and (op, name) in _UNSUPPORTED else None
            if variant is None:
                return name
            if (op, name, variant) not in _REPORTED_SKIPS:  # said once: "auto" then runs another backend
                _REPORTED_SKIPS.add((op, name, variant))
                logger.info("%s: backend 'auto' passes over %r for this call: %s", op, name, variant)
        raise BackendUnavailableError(f"no backend can run {op!r} on {device_type!r}")
    reason = unavailable_reason(requested, op, device, **features)
    if reason is not None:
        raise BackendUnavailableError(f"backend {requested!r} cannot run {op!r} on {device_type}: {reason}. "
                                      f"Use backend='auto' (reported per op) or name another backend.")
    return requested


def get_op(op: str, backend: str) -> Callable:
    """The implementation of ``op`` for a concrete (already resolved) ``backend``."""
    _import_ops()
    try:
        return _REGISTRY[op][backend]
    except KeyError:
        raise BackendUnavailableError(f"op {op!r} has no {backend!r} implementation") from None
