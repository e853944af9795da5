"""Swap the layers of an existing model to fused kernels in place, and back.

``patch(model)`` points every EGNN layer and temporal convolution inside ``model`` (an :class:`egno_fast.EGNO` or
any module holding :mod:`egno_fast.nn` layers) at a fused backend; parameters, buffers and state_dict keys are not
touched, so the outputs stay those of the reference (to rounding) and checkpoints load either way. ``unpatch(model)``
restores the backends the layers had before.
"""
from __future__ import annotations

from typing import Dict, Iterable, Union

from torch import nn

from .backends import OPS, check_backend_name, resolve_backend
from .models.egno import EGNO
from .nn import EGNNLayer, TemporalConv, VectorTemporalConv

_LAYER_OP = {EGNNLayer: "egnn_layer", TemporalConv: "temporal_residual", VectorTemporalConv: "temporal_residual"}
_SAVED = "_egno_fast_unpatched"


def _device(model: nn.Module):
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else "cpu"


def patch(model: nn.Module, backend: str = "triton", ops: Iterable[str] = OPS) -> nn.Module:
    """Run ``ops`` ("egnn_layer", "temporal_residual") of every layer in ``model`` on ``backend``, in place.

    Raises BackendUnavailableError (before changing anything) if ``backend`` cannot run an op on the model's
    device; patching twice keeps the first saved state, so ``unpatch`` always returns to the original.
    Returns the model.
    """
    check_backend_name(backend)
    ops = tuple(ops)
    unknown = set(ops) - set(OPS)
    if unknown:
        raise ValueError(f"unknown ops {sorted(unknown)}; choose among {OPS}")
    if backend != "auto":
        for op in ops:
            resolve_backend(backend, _device(model), op)  # raises, naming the reason
    # EGNN layers with per-frame edge features (EGHNO's cluster level) run on the reference only: not targets
    targets = {name: module for name, module in model.named_modules()
               if isinstance(module, EGNO) or (type(module) in _LAYER_OP and _LAYER_OP[type(module)] in ops
                                               and not getattr(module, "frame_edge_dim", 0))}
    if not targets:
        raise ValueError("the model holds no egno_fast EGNN layers or temporal convolutions to patch")
    saved: Dict[str, Union[str, Dict[str, str]]] = {name: module.backend for name, module in targets.items()}
    for module in targets.values():
        if isinstance(module, EGNO):  # its setter also sets its layers
            current = module.backend if isinstance(module.backend, dict) else dict.fromkeys(OPS, module.backend)
            module.backend = {op: (backend if op in ops else current.get(op, "auto")) for op in OPS}
        else:
            module.backend = backend
    if not hasattr(model, _SAVED):
        setattr(model, _SAVED, saved)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Restore the backends ``model``'s layers had before :func:`patch`; returns the model."""
    saved = getattr(model, _SAVED, None)
    if saved is None:
        raise ValueError("the model was not patched")
    modules = dict(model.named_modules())
    for name in sorted(saved, key=len):  # the model before its layers: its setter would overwrite theirs
        modules[name].backend = saved[name]
    delattr(model, _SAVED)
    return model
