"""Moving files: retries with backoff, a bounded parallel pool, and ``link_files``.

Transient errors (connection resets, timeouts, 5xx answers surfaced by s3fs as plain
``OSError``, botocore/aiohttp connection errors) are retried with exponential backoff and
full jitter, a bounded number of times; when the attempts run out the store raises
``StoreUnavailableError`` naming the URL, the operation and the key. Errors that retrying
cannot fix (missing file, permission denied, bad argument, corruption) propagate at once.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from raykv.errors import CorruptionError, StoreUnavailableError

T = TypeVar("T")
R = TypeVar("R")

# OSError errnos that describe the request, not the weather: never retried.
_PERMANENT_ERRNOS = frozenset(
    {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL, errno.EEXIST, errno.EISDIR,
     errno.ENOTDIR, errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG, errno.ENOTEMPTY}
)


@functools.cache
def _optional_transient_types() -> tuple[type[BaseException], ...]:
    """botocore/aiohttp error types, imported on first use (they cost ~0.2 s to import)."""
    types: list[type[BaseException]] = []
    try:
        from botocore import exceptions as bx

        types += [bx.ConnectionError, bx.HTTPClientError, bx.ConnectTimeoutError,
                  bx.ReadTimeoutError, bx.ResponseStreamingError, bx.IncompleteReadError]
    except ImportError:  # pragma: no cover - s3fs brings botocore
        pass
    try:
        import aiohttp

        types.append(aiohttp.ClientError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)



def is_transient(err: BaseException) -> bool:
    """Whether retrying the operation that raised ``err`` may succeed.

    Transient: ``ConnectionError``, ``TimeoutError``, botocore connection/timeout errors,
    aiohttp client errors, and ``OSError`` with an I/O-ish errno (s3fs raises
    ``OSError(EIO)`` for 5xx answers such as ``InternalError``/``ServiceUnavailable``).
    Permanent: ``FileNotFoundError``, ``PermissionError``, invalid arguments, corruption.
    """
    if isinstance(err, CorruptionError | StoreUnavailableError):
        return False
    if isinstance(err, ConnectionError | TimeoutError):
        return True
    extra = _optional_transient_types()
    if extra and isinstance(err, extra):
        return True
    if isinstance(err, OSError):
        return err.errno not in _PERMANENT_ERRNOS and not isinstance(
            err, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError
            | FileExistsError
        )
    return False


@dataclass
class TransferStats:
    """Counters of one store object (thread-safe increments via ``add``)."""

    uploaded_files: int = 0
    uploaded_bytes: int = 0
    downloaded_files: int = 0
    downloaded_bytes: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add ``counts`` to the named counters."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter: attempt ``i`` waits ``U(0, min(cap, base*2**i))``.

    Attributes:
        retries: retries after the first attempt (0 = no retry).
        base_delay: seconds, the first backoff ceiling.
        max_delay: seconds, the largest backoff ceiling.
    """

    retries: int = 5
    base_delay: float = 0.05
    max_delay: float = 2.0
    stats: TransferStats | None = None

    def __post_init__(self) -> None:
        if type(self.retries) is not int or self.retries < 0:
            msg = f"retries must be an int >= 0, got {self.retries!r}"
            raise ValueError(msg)

    def run(self, fn: Callable[[], T], describe: Callable[[], str], *,
            retries: int | None = None) -> T:
        """Call ``fn`` until it succeeds, a permanent error occurs, or the attempts run out.

        Raises:
            StoreUnavailableError: every attempt failed with a transient error; the message
                is ``describe()`` plus the last error, chained to it.
        """
        limit = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as err:
                if not is_transient(err):
                    raise
                if attempt >= limit:
                    msg = f"{describe()} failed after {attempt + 1} attempts: {_short(err)}"
                    raise StoreUnavailableError(msg) from err
                delay = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
                attempt += 1
                if self.stats is not None:
                    self.stats.add(retries=1)
                time.sleep(delay)


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text[:300]}"


def run_parallel(executor: Executor | None, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """Apply ``fn`` to every item on ``executor``; return results in order.

    Runs inline when there is at most one item or no executor. On the first failure the
    pending calls are cancelled, the running ones awaited, and that failure re-raised, so
    no call is still running when this returns.
    """
    if executor is None or len(items) <= 1:
        return [fn(item) for item in items]
    futures: list[Future[R]] = [executor.submit(fn, item) for item in items]
    _, pending = wait(futures, return_when=FIRST_EXCEPTION)
    first_error = next((f.exception() for f in futures if f.done() and f.exception()), None)
    if first_error is not None:
        for f in pending:
            f.cancel()
        wait(pending)
        raise first_error
    return [f.result() for f in futures]


def link_files(data_dir: str | os.PathLike[str], files: Iterable[str],
               staging_dir: str | os.PathLike[str]) -> Path:
    """Pin ``files`` of ``data_dir`` in ``staging_dir`` so a background upload can read them.

    Each file gets a hard link in ``staging_dir`` (created if missing); where a hard link
    is impossible (another filesystem, no permission) the file is copied under a temporary
    name and renamed. A file already in ``staging_dir`` under its name is kept (names
    identify content). The engine may then delete or merge its own copies while the upload
    runs from ``staging_dir``; the caller removes ``staging_dir`` when the upload is done.

    Cost: one ``link`` per file (a full copy only on fallback). Returns ``staging_dir``.

    Raises:
        FileNotFoundError: a file is missing from ``data_dir``.
    """
    src_dir = Path(data_dir)
    dst_dir = Path(staging_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in files:
        src = src_dir / name
        dst = dst_dir / name
        if dst.exists():
            continue
        try:
            os.link(src, dst)
        except FileNotFoundError:
            raise
        except OSError:
            tmp = dst.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)
    return dst_dir
