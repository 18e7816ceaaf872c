"""The raykv exception hierarchy.

Built-in exceptions are used where they fit: ``TypeError``/``ValueError`` for bad
arguments and configuration, ``KeyError`` for a missing key in mapping-style calls,
``OSError`` for I/O failures that are not ours to interpret. The classes below exist for
the conditions a caller may want to catch on purpose.
"""

from __future__ import annotations

import os


class RaykvError(Exception):
    """Base class of every error raised on purpose by raykv."""


class CorruptionError(RaykvError):
    """A file failed an integrity check (checksum, magic number, length).

    Raised instead of ever returning wrong data. The message names the file, the offset
    when known, and the check that failed, so an operator can find and remove the file
    or restore an older epoch.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        check: str,
        *,
        offset: int | None = None,
        detail: str = "",
    ) -> None:
        self.path = os.fspath(path)
        self.check = check
        self.offset = offset
        where = f" at offset {offset}" if offset is not None else ""
        extra = f": {detail}" if detail else ""
        msg = f"corrupt file {self.path}{where}: {check} check failed{extra}"
        super().__init__(msg)


class FormatVersionError(CorruptionError):
    """A file was written in a format version this raykv cannot read."""

    def __init__(self, path: str | os.PathLike[str], found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        detail = (
            f"format version {found}, this raykv reads up to {supported}; "
            "upgrade raykv to read it"
        )
        super().__init__(path, "format version", detail=detail)


class CheckpointNotFoundError(RaykvError, LookupError):
    """The requested epoch, shard or checkpoint does not exist in the store."""


class StoreUnavailableError(RaykvError, ConnectionError):
    """The checkpoint store cannot be reached (endpoint down, bucket missing, bad credentials)."""


class StoreClosedError(RaykvError):
    """An operation was attempted on an engine or store after ``close()``."""
