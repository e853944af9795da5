"""Files that are never half-written: atomic writes, and loads that name what is wrong."""
from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional

import numpy as np


logger = logging.getLogger("egno_fast")

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent generations then write the same file atomically
    fcntl = None


@contextmanager
def generation_lock(path: str | Path, say: Callable[[str], None] = logger.warning) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``path`` while the body generates ``path``: a second process
    generating the same cache waits (``say`` tells it once) and then finds the file written. The operating system
    releases the lock when a process ends, however it ends. Check ``path.exists()`` again inside the body."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(path.parent / f".{path.name}.lock", "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process that is generating {path}")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def default_data_dir() -> Path:
    """Where data sets are cached unless a config says: $EGNO_FAST_DATA, else ~/.cache/egno_fast."""
    return Path(os.environ.get("EGNO_FAST_DATA", Path.home() / ".cache" / "egno_fast")).expanduser()


class MissingExtraError(ImportError):
    """A data set needs an optional dependency that is not installed; the message names the extra to install."""


class AtomicWriteError(OSError):
    """A file could not be written (a full disk, a read-only folder); the previous version of it is intact."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on error it is removed.

    Raises:
        AtomicWriteError: writing failed with an OSError (e.g. no space left on device), naming the file and saying
            that its previous version, if any, is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the result is an ordinary file
        os.replace(tmp, path)
    except OSError as error:
        if isinstance(error, AtomicWriteError):
            raise
        previous = "the previous version is intact" if path.exists() else "nothing was written"
        failure = AtomicWriteError(f"could not write {path} ({error.strerror or error}); {previous}")
        failure.errno = error.errno
        raise failure from error
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def atomic_savez(path: str | Path, **arrays: np.ndarray) -> None:
    """np.savez to ``path`` atomically (no pickled objects)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def load_npz(path: str | Path, required: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
    """Load every array of an .npz file, with a clear error if it is missing, truncated or lacks ``required``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable .npz file (truncated or corrupt?): {error}") from error
    missing = [name for name in (required or ()) if name not in arrays]
    if missing:
        raise ValueError(f"{path} lacks the arrays {missing}")
    return arrays
