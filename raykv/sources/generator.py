"""A deterministic synthetic stream, optionally in independent partitions."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raykv.sources.base import (
    Offset,
    Source,
    SourceReader,
    Split,
    StopSource,
    as_batch,
    int_offset,
    unknown_split,
)


@dataclass(frozen=True)
class GeneratorSource(Source):
    """A deterministic synthetic stream: batch number ``i`` is ``fn(i)``.

    Args:
        fn: ``fn(offset: int) -> RecordBatch | Table | None``, or with ``partitions``
            ``fn(partition: int, offset: int)``; must return the same rows for the same
            arguments every time (seed any randomness with them). ``None`` ends the
            stream (the partition); raising :class:`StopSource` pauses the run and
            consumes that offset (a resume calls ``fn(offset + 1)`` next).
        limit: stop after this many batches (per partition; ``None``: unbounded, stop the
            run with ``Pipeline.stop()``).
        partitions: ``None`` for one stream; ``N`` for ``N`` independent partitions, the
            splits ``"partition 0"`` .. ``"partition N-1"``, read in parallel by readers.

    Offset: the number of the next batch (an int); with partitions, the whole-stream
    reader interleaves them round-robin and its offset is ``{"next": partition to read
    next, "partitions": [next batch of each]}``, while a split's offset is its
    partition's next batch number.

    Example:
        >>> import pyarrow as pa
        >>> src = GeneratorSource(lambda i: pa.record_batch({"n": [i, i]}), limit=3)
        >>> r = src.open(1)
        >>> r.read().to_pydict(), r.offset
        ({'n': [1, 1]}, 2)
    """

    fn: Callable[..., pa.RecordBatch | pa.Table | None]
    limit: int | None = None
    partitions: int | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            msg = f"GeneratorSource fn must be callable, got {type(self.fn).__name__}"
            raise TypeError(msg)
        if self.limit is not None and (type(self.limit) is not int or self.limit < 0):
            msg = f"GeneratorSource limit must be a non-negative int or None, got {self.limit!r}"
            raise ValueError(msg)
        p = self.partitions
        if p is not None and (type(p) is not int or p <= 0):
            msg = f"GeneratorSource partitions must be a positive int or None, got {p!r}"
            raise ValueError(msg)

    @property
    def bounded(self) -> bool:
        """True when ``limit`` is set."""
        return self.limit is not None

    def open(self, offset: Offset | None = None) -> SourceReader:
        """Return a reader whose next batch is ``fn(offset)`` (see the class docstring)."""
        if self.partitions is None:
            return _GeneratorReader(self.fn, int_offset(offset, "GeneratorSource"), self.limit)
        n = self.partitions
        if offset is None:
            offset = {"next": 0, "partitions": [0] * n}
        try:
            nxt, offsets = int(offset["next"]), list(offset["partitions"])
        except (TypeError, KeyError, ValueError):
            nxt, offsets = -1, []
        if len(offsets) != n or not 0 <= nxt < n:
            msg = (f"GeneratorSource with {n} partitions needs an offset "
                   f"{{'next': i, 'partitions': [{n} ints]}}, got {offset!r}")
            raise ValueError(msg)
        readers = [self.open_split(f"partition {i}", o) for i, o in enumerate(offsets)]
        return _RoundRobinReader(readers, nxt)

    def splits(self) -> list[Split]:
        """One split per partition (``"all"`` without partitions); sizes unknown."""
        if self.partitions is None:
            return super().splits()
        return [Split(f"partition {i}") for i in range(self.partitions)]

    def open_split(self, split: Split | str, offset: Offset | None = None) -> SourceReader:
        """Return a reader whose next batch is ``fn(partition, offset)``."""
        split_id = split.id if isinstance(split, Split) else split
        if self.partitions is None:
            return super().open_split(split_id, offset)
        ids = [s.id for s in self.splits()]
        if split_id not in ids:
            raise unknown_split(self, split_id)
        fn = functools.partial(self.fn, ids.index(split_id))
        return _GeneratorReader(fn, int_offset(offset, f"GeneratorSource {split_id}"),
                                self.limit)

    def describe(self) -> dict[str, Any]:
        """Type, function name and limit."""
        return {"type": type(self).__name__, "fn": getattr(self.fn, "__qualname__", "?"),
                "limit": self.limit, "partitions": self.partitions}


class _GeneratorReader(SourceReader):
    def __init__(self, fn: Callable[[int], Any], start: int, limit: int | None) -> None:
        self._fn = fn
        self._next = start
        self._limit = limit

    def read(self) -> pa.RecordBatch | None:
        if self._limit is not None and self._next >= self._limit:
            return None
        try:
            out = self._fn(self._next)
        except StopSource:
            self._next += 1  # the stop consumes its offset: a resume continues after it
            raise
        if out is None:
            return None
        if isinstance(out, pa.Table):
            out = as_batch(out)
        elif not isinstance(out, pa.RecordBatch):
            msg = (
                f"GeneratorSource fn({self._next}) returned {type(out).__name__}; "
                "return a pyarrow RecordBatch, a Table or None"
            )
            raise TypeError(msg)
        self._next += 1
        return out

    @property
    def offset(self) -> int:
        return self._next


class _RoundRobinReader(SourceReader):
    """Interleaves split readers one batch each, starting at reader ``next``."""

    def __init__(self, readers: list[SourceReader], next: int) -> None:
        self._readers = readers
        self._done = [False] * len(readers)
        self._next = next

    def read(self) -> pa.RecordBatch | None:
        for _ in range(len(self._readers)):
            i = self._next
            self._next = (i + 1) % len(self._readers)
            if self._done[i]:
                continue
            batch = self._readers[i].read()
            if batch is None:
                self._done[i] = True
                continue
            return batch
        return None

    @property
    def offset(self) -> dict[str, Any]:
        return {"next": self._next, "partitions": [r.offset for r in self._readers]}

    def close(self) -> None:
        for r in self._readers:
            r.close()
