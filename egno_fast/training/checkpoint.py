"""The two files a run writes, both atomically (a crash leaves the previous file intact) and loaded with clear errors.

- A **training checkpoint** (``last.pt``, ``best.pt``): everything needed to resume (model, optimizer, scheduler,
  loop state, random state, config). Large, and never committed to the repository.
- A **model file** (``model.pt``): the trained weights and what rebuilds the model, nothing else. It holds only
  tensors and plain values (str, int, float, bool, None, lists and dicts of them), so ``torch.load(...,
  weights_only=True)`` reads it without running pickled code. Its fields (format ``egno_fast.model/1``):

  ``format`` (str), ``model_config`` (the keyword arguments of :class:`~egno_fast.EGNO` without ``backend``),
  ``model`` (the state_dict, CPU tensors), ``config`` (the experiment config as a dict: data protocol and training
  settings, what ``egno-fast eval`` needs to rebuild the data), ``epoch`` (the epoch the weights are from),
  ``metrics`` (a dict of the run's numbers at that epoch, may be empty).

Both are read with ``weights_only=True``: a file from elsewhere cannot run code when it is loaded. Both carry
``checksum``, a SHA-256 of every tensor they hold (key path, dtype, shape and bytes), verified on load: a damaged
file (a flipped bit in a weight) is refused with one line instead of producing NaN metrics. A file written before
checksums loads with a one-line warning.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from ..data.io import atomic_path

MODEL_FILE_FORMAT = "egno_fast.model/1"
CHECKSUM_KEY = "checksum"
logger = logging.getLogger("egno_fast")


def _tensors(value: Any, key: str = "") -> Iterator[Tuple[str, torch.Tensor]]:
    """(key path, tensor) of every tensor inside nested dicts, lists and tuples, in a fixed order."""
    if isinstance(value, torch.Tensor):
        yield key, value
    elif isinstance(value, dict):
        for name in sorted(value, key=str):
            if not (key == "" and name == CHECKSUM_KEY):
                yield from _tensors(value[name], f"{key}/{name}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{key}/{index}")


def tensor_checksum(state: Dict[str, Any]) -> str:
    """SHA-256 (hex) of every tensor in ``state`` (its key path, dtype, shape and bytes; the top-level
    ``checksum`` entry excluded)."""
    digest = hashlib.sha256()
    for key, tensor in _tensors(state):
        data = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{key}:{data.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state: Dict[str, Any]) -> None:
    """torch.save ``state`` with its :func:`tensor_checksum` to ``path``, through a temporary file and an atomic
    rename."""
    with atomic_path(path) as tmp:
        torch.save({**state, CHECKSUM_KEY: tensor_checksum(state)}, tmp)


def _read(path: str | Path, kind: str, map_location: str | torch.device) -> Any:
    """``torch.load(path, weights_only=True)`` (tensors and plain values only: no pickled code runs), with one
    clear error for a missing, truncated or foreign file; ``kind`` names the file in the messages."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{kind} not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path} is not a readable egno_fast {kind}: {error}") from error
    if isinstance(state, dict) and CHECKSUM_KEY in state:
        if state.pop(CHECKSUM_KEY) != tensor_checksum(state):
            raise ValueError(f"{path} is damaged: its tensors do not match the checksum written with them; use "
                             f"another copy of this {kind}")
    elif isinstance(state, dict) and "model" in state:
        logger.warning("%s has no checksum (written before checksums were added): loaded unverified", path)
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load a training checkpoint written by :func:`save_checkpoint`."""
    state = _read(path, "checkpoint", map_location)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not an egno_fast checkpoint (no 'model' and 'config' entries)")
    return state


def model_file_record(model_config: Dict[str, Any], model_state: Dict[str, torch.Tensor], config: Dict[str, Any],
                      epoch: Optional[int], metrics: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """The contents of a model file (see the module docstring); ``model_config``'s ``backend`` is dropped (a choice
    of the machine that loads it, not of the model)."""
    rebuild = {k: v for k, v in model_config.items() if k != "backend"}
    return {"format": MODEL_FILE_FORMAT, "model_config": rebuild,
            "model": {name: tensor.detach().cpu() for name, tensor in model_state.items()},
            "config": config, "epoch": epoch, "metrics": dict(metrics or {})}


def save_model_file(path: str | Path, record: Dict[str, Any]) -> None:
    """Write a model file (a record from :func:`model_file_record`) atomically."""
    if record.get("format") != MODEL_FILE_FORMAT:
        raise ValueError(f"not a model file record (format {record.get('format')!r})")
    save_checkpoint(path, record)


def model_file_from_checkpoint(state: Dict[str, Any]) -> Dict[str, Any]:
    """The model file of a training checkpoint (its weights, config and epoch; the metrics at its best epoch)."""
    loop = state.get("state", {})
    metrics = {"val_f_mse": loop.get("best_val"), "test_f_mse": loop.get("test_f_at_best"),
               "test_a_mse": loop.get("test_a_at_best")} if "best_val" in loop else {}
    return model_file_record(state["model_config"], state["model"], state["config"], loop.get("best_epoch"),
                             metrics)


def load_model_file(path: str | Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Read a model file, or the model part of a training checkpoint, as a model file record (both with
    ``weights_only=True``: tensors and plain values only)."""
    record = _read(path, "model file", map_location)
    if isinstance(record, dict) and record.get("format") == MODEL_FILE_FORMAT:
        missing = [k for k in ("model_config", "model", "config", "epoch") if k not in record]
        if missing:
            raise ValueError(f"{path} is a damaged model file (no {', '.join(missing)})")
        return record
    if isinstance(record, dict) and {"model", "config", "model_config"} <= set(record):
        return model_file_from_checkpoint(record)
    raise ValueError(f"{path} is neither an egno_fast model file nor a training checkpoint")
