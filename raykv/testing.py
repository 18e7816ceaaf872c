"""Helpers for testing pipelines, shipped with the package (like ``bytewax.testing``).

* :class:`TestingSource`: a list of records with :data:`ABORT` (crash the driver here,
  once) and :data:`EOF` (stop the run gracefully here) markers.
* :class:`FakeClock`: a clock the test advances by hand, for ``Pipeline(clock=...)``.
* :func:`memory_checkpoint_url`: a fresh ``memory://`` checkpoint URL. fsspec's memory
  filesystem lives in one process, so raykv moves all checkpoint I/O of such a pipeline
  into the driver (shards still seal; the driver uploads from their staging dirs). That
  requires every shard on the driver's node, which a local Ray is.
* :class:`Faults`: delays and crash points injected into shard actors, to widen the
  windows a test kills an actor in (mid-batch, mid-upload, mid-restore).
* :func:`zipf_events`: a deterministic synthetic event table with skewed keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raykv.sources import DEFAULT_BATCH_SIZE, Offset, Source, SourceReader, StopSource


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"raykv.testing.{self.name}"

    def __reduce__(self) -> str:
        return self.name


ABORT = _Marker("ABORT")
"""Marker: the first time the driver reads it, ``run()`` raises :class:`TestingAbort`."""

EOF = _Marker("EOF")
"""Marker: the run stops here gracefully (epoch committed, no ``finish()``); resume goes on."""


class TestingAbort(RuntimeError):
    """Raised by :class:`TestingSource` at an :data:`ABORT` marker: a simulated driver crash."""

    __test__ = False  # not a pytest test class


class TestingSource(Source):
    """Records (dicts) with :data:`ABORT`/:data:`EOF` markers, in batches of ``batch_size``.

    Batches never span a marker. Offset: index of the next item. Each ``ABORT`` fires once
    per ``TestingSource`` object (a resumed run in the same process reads past it).

    Args:
        items: dicts (one per row) and markers.
        batch_size: rows per batch at most.
        schema: optional schema (otherwise inferred per batch by ``pa.RecordBatch.from_pylist``;
            pass it when a batch could infer differently, e.g. all values null).

    Example:
        >>> src = TestingSource([{"k": 1}, EOF, {"k": 2}])
        >>> r = src.open()
        >>> r.read().to_pylist()
        [{'k': 1}]
    """

    __test__ = False

    def __init__(
        self,
        items: Sequence[Mapping[str, Any] | _Marker],
        batch_size: int = DEFAULT_BATCH_SIZE,
        schema: pa.Schema | None = None,
    ) -> None:
        if type(batch_size) is not int or batch_size <= 0:
            msg = f"batch_size must be a positive int, got {batch_size!r}"
            raise ValueError(msg)
        self.items = list(items)
        self.batch_size = batch_size
        self.schema = schema
        self._fired: set[int] = set()

    def open(self, offset: Offset | None = None) -> SourceReader:
        """Return a reader at item index ``offset``."""
        start = 0 if offset is None else offset
        if type(start) is not int or not 0 <= start <= len(self.items):
            msg = f"TestingSource offset must be an int in 0..{len(self.items)}, got {offset!r}"
            raise ValueError(msg)
        return _TestingReader(self, start)

    def describe(self) -> dict[str, Any]:
        """Type and item count."""
        return {"type": type(self).__name__, "items": len(self.items)}


class _TestingReader(SourceReader):
    def __init__(self, source: TestingSource, start: int) -> None:
        self._src = source
        self._pos = start

    def read(self) -> pa.RecordBatch | None:
        items = self._src.items
        if self._pos >= len(items):
            return None
        item = items[self._pos]
        if item is ABORT:
            if self._pos not in self._src._fired:
                self._src._fired.add(self._pos)
                msg = f"TestingSource: ABORT marker at item {self._pos}"
                raise TestingAbort(msg)
            self._pos += 1
            return self.read()
        if item is EOF:
            self._pos += 1
            msg = f"TestingSource: EOF marker at item {self._pos - 1}"
            raise StopSource(msg)
        rows: list[Mapping[str, Any]] = []
        while self._pos < len(items) and len(rows) < self._src.batch_size:
            row = items[self._pos]
            if isinstance(row, _Marker):
                break
            rows.append(row)
            self._pos += 1
        return pa.RecordBatch.from_pylist(rows, schema=self._src.schema)

    @property
    def offset(self) -> int:
        return self._pos


class FakeClock:
    """A monotonic clock advanced by hand: ``Pipeline(clock=FakeClock())``.

    Example:
        >>> c = FakeClock()
        >>> c(), c.advance(1.5), c()
        (0.0, None, 1.5)
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        """Return the current time in seconds."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (must be >= 0)."""
        if seconds < 0:
            msg = f"a monotonic clock cannot go back (advance({seconds}))"
            raise ValueError(msg)
        self.now += seconds


def memory_checkpoint_url(name: str | None = None) -> str:
    """Return a fresh fsspec ``memory://`` checkpoint URL (unique unless ``name`` is given).

    See the module docstring for how raykv runs such a checkpoint (driver-side I/O).
    """
    return f"memory://raykv-{name or uuid.uuid4().hex[:12]}"


def zipf_events(
    n: int, num_keys: int, *, s: float = 0.99, seed: int = 0, countries: int = 20,
    key_type: str = "int64",
) -> pa.Table:
    """A synthetic event table: ``user`` drawn zipf(``s``) over ``num_keys`` keys.

    Columns: ``user`` (int64, or string ``"u<n>"`` with ``key_type="string"``),
    ``amount`` (float64), ``qty`` (int64 1..9), ``country`` (string, a function of the
    user), ``t`` (int64 event time, increasing). Deterministic per ``seed``.

    Example:
        >>> zipf_events(5, 3).column_names
        ['user', 'amount', 'qty', 'country', 't']
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    ranks = np.arange(1, num_keys + 1, dtype=np.float64)
    p = ranks**-s
    users = rng.choice(num_keys, size=n, p=p / p.sum()).astype(np.int64)
    user_col: pa.Array = pa.array(users)
    if key_type == "string":
        user_col = pa.array(np.char.add("u", users.astype(str)))
    country_names = np.array([f"c{i:02d}" for i in range(countries)])
    return pa.table({
        "user": user_col,
        "amount": rng.random(n).round(6),
        "qty": rng.integers(1, 10, n, dtype=np.int64),
        "country": pa.array(country_names[users % countries]),
        "t": np.arange(n, dtype=np.int64) * 10 + rng.integers(0, 10, n),
    })


#: Crash points of :class:`Faults`.
POINTS = ("process", "barrier", "upload", "rebalance", "read", "chunk")


@dataclass(frozen=True)
class Faults:
    """Faults injected into shard actors (tests and drills only).

    Attributes:
        process_delay: seconds every ``process`` call sleeps first (kill mid-batch).
        upload_delay: seconds every background upload sleeps before uploading (kill
            mid-upload).
        restore_delay: seconds every shard sleeps while restoring (kill during recovery).
        crash_at: ``(shard_name_prefix, point, n)``: the shard whose name starts with the
            prefix exits the process (``os._exit``) at its ``n``-th ``point`` (1-based),
            where point is ``"process"``, ``"barrier"``, ``"upload"``, ``"rebalance"``
            (after the shard copied the key groups it gains, before it drops those it
            loses) or ``"chunk"`` (before each chunk of the end-of-input output the shard
            sends on or writes to the sink, so the ``n``-th kills it mid-stream); or the
            source reader whose name starts with the prefix (``"reader"``) at its
            ``n``-th batch, point ``"read"``.
        crash_attempts: run attempts (0 = the first, 1 = after the first recovery, ...)
            in which ``crash_at`` fires; later attempts run clean.
    """

    process_delay: float = 0.0
    upload_delay: float = 0.0
    restore_delay: float = 0.0
    crash_at: tuple[str, str, int] | None = None
    crash_attempts: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        for name in ("process_delay", "upload_delay", "restore_delay"):
            if getattr(self, name) < 0:
                msg = f"Faults.{name} must be >= 0"
                raise ValueError(msg)
        if self.crash_at is not None:
            _prefix, point, n = self.crash_at
            if point not in POINTS or type(n) is not int or n < 1:
                msg = (
                    f"Faults.crash_at must be (shard prefix, one of {POINTS}, n>=1), "
                    f"got {self.crash_at!r}"
                )
                raise ValueError(msg)


__all__ = [
    "ABORT",
    "EOF",
    "FakeClock",
    "Faults",
    "TestingAbort",
    "TestingSource",
    "memory_checkpoint_url",
    "zipf_events",
]
