"""Local engine directories: wait until a killed actor released one, wipe one.

Contract: ``wait_dir_free(path)`` returns once no process holds the engine lock
(``path/LOCK``, an ``fcntl`` lock) or raises ``TimeoutError``; ``wipe_dir(path)`` leaves
``path`` existing and empty; ``cleanup_siblings(stage_dir, current)`` deletes the dirs
of shards no longer in the layout. Used by the shard actor before it opens its engine and
by the driver when it restores shards itself (driver I/O).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

DIR_FREE_TIMEOUT = 60.0


def wait_dir_free(path: Path, timeout: float = DIR_FREE_TIMEOUT) -> None:
    """Wait until no process holds the engine lock of ``path`` (a killed actor's exit).

    Raises:
        TimeoutError: still locked after ``timeout`` seconds.
    """
    lock = path / "LOCK"
    if not lock.exists():
        return
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        finally:
            os.close(fd)
        if time.monotonic() > deadline:
            msg = (
                f"data directory {path} is still locked by another process after {timeout:.0f}s; "
                "is an old shard actor still running? kill it or use another local_dir"
            )
            raise TimeoutError(msg)
        time.sleep(0.05)


def wipe_dir(path: Path) -> None:
    """Remove ``path`` and everything in it, then recreate it empty."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)




def cleanup_siblings(stage_dir: Path, current: set[str]) -> None:
    """Delete the dirs (and ``.staging-`` dirs) in ``stage_dir`` of shards not in ``current``.

    A rescale or a rollback renames every shard of a stage (a new generation); the old
    names' local files are never needed again. Hidden dirs of live shards stay.
    """
    try:
        entries = list(stage_dir.iterdir())
    except FileNotFoundError:
        return
    for d in entries:
        if not d.is_dir():
            continue
        name = d.name.removeprefix(".staging-") if d.name.startswith(".staging-") else d.name
        if not name.startswith(".") and name not in current:
            shutil.rmtree(d, ignore_errors=True)


__all__ = ["DIR_FREE_TIMEOUT", "cleanup_siblings", "wait_dir_free", "wipe_dir"]
