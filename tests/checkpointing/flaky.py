"""A fault-injecting fsspec filesystem that wraps a real one (memory or S3).

Registered as ``flakymemory://`` and ``flakys3://``. Storage options:

* ``target_options``: options of the wrapped filesystem (e.g. the moto endpoint);
* ``fail_first``: the first N calls of each method in ``fail_methods`` raise ``error``
  (a transient error the store must retry);
* ``partial``: a failing ``put_file``/``pipe_file``/``get_file`` first writes half of the
  data (a torn transfer), then raises;
* ``die_after_writes``: after N successful writes (put/pipe/rm), every write raises
  ``Crash``, a non-transient error that models the process dying at that point.

Pass ``skip_instance_cache=True`` so each store gets fresh counters.
"""

from __future__ import annotations

import errno
import threading
from collections import Counter
from typing import Any, ClassVar

import fsspec
from fsspec.spec import AbstractFileSystem

WRITE_METHODS = ("put_file", "pipe_file", "rm", "rm_file")
DEFAULT_FAIL = ("put_file", "get_file", "pipe_file", "cat_file", "open")


class Crash(RuntimeError):
    """The simulated process death: not transient, never retried."""


def make_error(kind: str) -> Exception:
    if kind == "reset":
        return ConnectionResetError(errno.ECONNRESET, "connection reset by peer (injected)")
    if kind == "eio":
        return OSError(errno.EIO, "503 SlowDown: please reduce your request rate (injected)")
    if kind == "timeout":
        return TimeoutError("read timed out (injected)")
    if kind == "denied":
        return PermissionError(errno.EACCES, "access denied (injected)")
    raise ValueError(kind)


class FlakyFileSystem(AbstractFileSystem):
    target_protocol: ClassVar[str] = "memory"
    root_marker = ""

    def __init__(self, target_options: dict[str, Any] | None = None, fail_first: int = 0,
                 fail_methods: tuple[str, ...] = DEFAULT_FAIL, error: str = "reset",
                 partial: bool = False, die_after_writes: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target = fsspec.filesystem(self.target_protocol, **(target_options or {}))
        self.fail_first = fail_first
        self.fail_methods = tuple(fail_methods)
        self.error = error
        self.partial = partial
        self.die_after_writes = die_after_writes
        self.calls: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.writes = 0
        self._lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path: str) -> str:  # type: ignore[override]
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        if "://" in path:
            path = path.split("://", 1)[1]
        return fsspec.get_filesystem_class(cls.target_protocol)._strip_protocol(path)

    def _gate(self, method: str) -> bool:
        """Count the call; return True if it must fail."""
        with self._lock:
            self.calls[method] += 1
            if method in WRITE_METHODS and self.die_after_writes is not None:
                if self.writes >= self.die_after_writes:
                    raise Crash(f"injected crash before write #{self.writes + 1} ({method})")
                self.writes += 1
            if method in self.fail_methods and self.calls[method] <= self.fail_first:
                self.injected[method] += 1
                return True
        return False

    # ---------------------------------------------------------------- writes
    def put_file(self, lpath: str, rpath: str, **kw: Any) -> None:  # type: ignore[override]
        if self._gate("put_file"):
            if self.partial:
                with open(lpath, "rb") as f:
                    data = f.read()
                self.target.pipe_file(rpath, data[: len(data) // 2])
            raise make_error(self.error)
        self.target.put_file(lpath, rpath, **kw)

    def pipe_file(self, path: str, value: bytes, **kw: Any) -> None:  # type: ignore[override]
        if self._gate("pipe_file"):
            if self.partial:
                self.target.pipe_file(path, value[: len(value) // 2])
            raise make_error(self.error)
        self.target.pipe_file(path, value, **kw)

    def rm(self, path: Any, recursive: bool = False, maxdepth: Any = None) -> None:  # type: ignore[override]
        if self._gate("rm"):
            raise make_error(self.error)
        self.target.rm(path, recursive=recursive, maxdepth=maxdepth)

    def rm_file(self, path: str) -> None:  # type: ignore[override]
        if self._gate("rm_file"):
            raise make_error(self.error)
        self.target.rm_file(path)

    # ---------------------------------------------------------------- reads
    def get_file(self, rpath: str, lpath: str, **kw: Any) -> None:  # type: ignore[override]
        if self._gate("get_file"):
            if self.partial:
                data = self.target.cat_file(rpath)
                with open(lpath, "wb") as f:
                    f.write(data[: len(data) // 2])
            raise make_error(self.error)
        self.target.get_file(rpath, lpath, **kw)

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kw: Any) -> bytes:  # type: ignore[override]
        if self._gate("cat_file"):
            raise make_error(self.error)
        return bytes(self.target.cat_file(path, start=start, end=end, **kw))

    def open(self, path: str, mode: str = "rb", **kw: Any) -> Any:  # type: ignore[override]
        if self._gate("open"):
            raise make_error(self.error)
        return self.target.open(path, mode, **kw)

    def ls(self, path: str, detail: bool = True, **kw: Any) -> Any:  # type: ignore[override]
        self._gate("ls")
        return self.target.ls(path, detail=detail, **kw)

    def find(self, path: str, **kw: Any) -> Any:  # type: ignore[override]
        self._gate("find")
        return self.target.find(path, **kw)

    def info(self, path: str, **kw: Any) -> Any:  # type: ignore[override]
        return self.target.info(path, **kw)

    def exists(self, path: str, **kw: Any) -> bool:  # type: ignore[override]
        self._gate("exists")
        return bool(self.target.exists(path, **kw))

    def isfile(self, path: str) -> bool:  # type: ignore[override]
        return bool(self.target.isfile(path))


class FlakyMemory(FlakyFileSystem):
    protocol = "flakymemory"
    target_protocol = "memory"


class FlakyS3(FlakyFileSystem):
    protocol = "flakys3"
    target_protocol = "s3"


fsspec.register_implementation("flakymemory", FlakyMemory, clobber=True)
fsspec.register_implementation("flakys3", FlakyS3, clobber=True)
