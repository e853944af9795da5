"""Models built from the layers in :mod:`egno_fast.nn`."""
from .egno import EGNO, EGNOOutput

__all__ = ["EGNO", "EGNOOutput"]
