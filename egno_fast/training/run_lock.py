"""One training process per run folder: an advisory lock on ``RUN/.lock`` that the operating system releases when
the process ends, however it ends (a killed process leaves no stale lock behind)."""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the folder is then not protected
    fcntl = None

LOCK_NAME = ".lock"


class RunFolderInUse(FileExistsError):
    """Another process is training in this run folder; the message names it."""


@contextmanager
def run_folder_lock(run_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of ``run_dir`` (created if needed) while the body runs; ``enabled=False`` (the other ranks of a
    distributed run, whose rank 0 holds it) does nothing. A folder this call created is removed again if the body
    fails before writing anything into it (a mistake found before training leaves no run folder).

    Raises:
        RunFolderInUse: another live process holds it (its PID and host are named).
    """
    if not enabled or fcntl is None:
        yield
        return
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise RunFolderInUse(f"{run_dir} is in use by {owner}: wait for it to finish (or stop it), or choose "
                                 "another --run-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        except BaseException:
            if created and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
                (run_dir / LOCK_NAME).unlink()  # while still locked: no other process can have started in it
                run_dir.rmdir()
            raise
        finally:
            if run_dir.exists():
                handle.seek(0)
                handle.truncate()  # unlocked when the file closes
