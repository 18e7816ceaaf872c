"""Give the process's free heap memory back to the operating system after an epoch.

Why: an epoch's fold allocates and frees many small objects (keys, values, encoded
records) and pyarrow buffers. glibc's malloc keeps freed pages in its arenas and returns
only the top of each heap on its own, so a shard's resident memory grew with every epoch
that touched new keys although the live objects did not (issue 15: an in-process
``Aggregate`` on ``LSMTree`` over 4,000,000 distinct keys held 226 MiB of anonymous
memory at its peak against about 60 MiB of live objects; 154 MiB with a trim per epoch).

:func:`release_free_memory` asks glibc (``malloc_trim(0)``: every arena, free pages
returned with ``madvise``) and pyarrow's memory pool (``release_unused``) to return what
is free. Cost: about 0.1-3 ms per call (measured with a 300 MiB fragmented heap); the
shard calls it at most once per :data:`MIN_INTERVAL` seconds when an epoch ends,
before its fold and seal (so it returns the garbage of the input and of the epoch before).
On a libc without ``malloc_trim`` (musl, macOS) only the pyarrow pool is asked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

import pyarrow as pa

MIN_INTERVAL = 1.0  # seconds between two releases by one HeapTrimmer


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


_malloc_trim = _load_malloc_trim()


def release_free_memory() -> None:
    """Return free heap pages (glibc arenas, pyarrow's pool) to the OS. Never raises."""
    if _malloc_trim is not None:
        _malloc_trim(0)
    pa.default_memory_pool().release_unused()


class HeapTrimmer:
    """Calls :func:`release_free_memory` at most once per ``interval`` seconds."""

    def __init__(self, interval: float = MIN_INTERVAL) -> None:
        self.interval = interval
        self._last = time.monotonic()

    def maybe_release(self) -> bool:
        """Release if ``interval`` has passed since the last release; True if it did."""
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        release_free_memory()
        self._last = time.monotonic()
        return True
