"""The source contract: replayable readers, offsets, and splits.

A source is a picklable *config* (STYLE lesson 5). It can be read two ways:

* as one stream: ``source.open(offset)`` returns a :class:`SourceReader` over the whole
  input, positioned at ``offset`` (``None``: the beginning);
* split by split: ``source.splits()`` lists the independently readable parts of the input
  (files, row-group ranges, table slices, generator partitions), in a deterministic order,
  and ``source.open_split(split, offset)`` returns a reader over one split positioned at
  that split's own offset. Split readers are what reader actors use: every split has its
  own JSON offset, so an epoch records ``{split id: offset}`` and a restore seeks every
  split again, whichever reader it lands on.

``reader.offset`` is the position *after* the last batch returned: a small JSON value.
Opening the same source (or split) at that offset later yields exactly the rows that
followed it. Batch boundaries after a reopen may differ from the first read (the first
batch may be the rest of one); the rows never do. That replay is what makes state
exactly-once: the source must be deterministic.

``read()`` returns a ``pyarrow.RecordBatch``; ``None`` at the end of bounded input; an
empty batch when an unbounded source has nothing right now (the caller then checks its
clock and asks again); it raises :class:`StopSource` to pause the run.

A source that defines only ``open`` (a user's own) is one split, ``"all"``, whose offset is
the stream's offset: every source is split-based, some have one split.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

DEFAULT_BATCH_SIZE = 65_536

Offset = Any
"""A JSON-able position in a source or a split (int, str, list or dict of those)."""

WHOLE = "all"
"""The id of the one split of a source that does not define its own splits."""


class StopSource(Exception):
    """Raised by ``SourceReader.read()`` to stop the run gracefully at this point.

    The driver commits the current epoch with the reader's offset (which must already
    point past whatever made it stop) and returns without calling ``finish()``: the
    stream is paused, not ended, and ``run(resume=True)`` goes on from there.
    """


class SourceReader(ABC):
    """An open position in a source or a split (not picklable by contract)."""

    @abstractmethod
    def read(self) -> pa.RecordBatch | None:
        """Return the next batch; ``None`` at the end of input; an empty batch when idle."""

    @property
    @abstractmethod
    def offset(self) -> Offset:
        """The position after the last batch returned (JSON-able); reopen there to go on."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or iterators; idempotent."""


@dataclass(frozen=True)
class Split:
    """One independently readable part of a source.

    Attributes:
        id: unique within its source and stable across runs and processes (a file name,
            ``"rows 0-9999"``, ``"partition 3"``): it keys the split's offset in every
            epoch, so it must name the same data whenever the source is listed again.
        size: the work it holds when known (bytes of a file, rows of a slice), used to
            balance splits over readers; ``None`` when unknown.
    """

    id: str
    size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"id": ..., "size": ...}``."""
        return {"id": self.id, "size": self.size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        """Inverse of :meth:`to_dict`."""
        return cls(str(d["id"]), None if d.get("size") is None else int(d["size"]))


class Source(ABC):
    """A replayable source config; see the module docstring for the two ways to read it.

    Subclasses are frozen dataclasses; they hold paths and parameters, never open files.
    A subclass defines ``open``; a split-based one also defines ``splits`` and
    ``open_split``, and ``bounded = False`` when its input never ends.
    """

    @property
    def bounded(self) -> bool:
        """False for a source whose splits never end or whose list of splits grows."""
        return True

    @abstractmethod
    def open(self, offset: Offset | None = None) -> SourceReader:
        """Return a reader over the whole input positioned at ``offset`` (``None``: start).

        Raises:
            ValueError: ``offset`` is not one this source produced, or the data behind
                it changed (e.g. files of a ParquetSource were removed).
        """

    def splits(self) -> list[Split]:
        """The splits of the input now, in a deterministic order (ids unique).

        A bounded source returns the same list every time; an unbounded one may return
        more splits on a later call (new files), never fewer of those not yet done.
        Default: one split, :data:`WHOLE`. Cost: at most a listing of the input (and
        Parquet footers where a source says so), done by whoever assigns splits.
        """
        return [Split(WHOLE)]

    def open_split(self, split: Split | str, offset: Offset | None = None) -> SourceReader:
        """Return a reader over one split positioned at its ``offset`` (``None``: start).

        Raises:
            ValueError: no such split, or ``offset`` is not one this split produced.
            FileNotFoundError: the split's file vanished since it was listed.
        """
        split_id = split.id if isinstance(split, Split) else split
        if split_id != WHOLE:
            raise unknown_split(self, split_id)
        return self.open(offset)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description stored in epoch manifests (type and main parameters)."""
        return {"type": type(self).__name__}

    def input_schema(self) -> pa.Schema | None:
        """The schema of its batches when known without reading data, else ``None``.

        The pipeline checks its wiring against it before anything runs (a missing key
        or time column, join keys of two types). Default: unknown.
        """
        return None


def unknown_split(source: Source, split_id: str) -> ValueError:
    """The error for a split id the source does not have (e.g. a checkpoint of other data)."""
    msg = (
        f"{type(source).__name__} has no split {split_id!r}; the checkpoint was taken over "
        "other input (restore the input it read, or start a new run)"
    )
    return ValueError(msg)


def check_batch_size(batch_size: int) -> None:
    """Raise ``ValueError`` unless ``batch_size`` is a positive int."""
    if type(batch_size) is not int or batch_size <= 0:
        msg = f"batch_size must be a positive int, got {batch_size!r}"
        raise ValueError(msg)


def as_batch(table: pa.Table) -> pa.RecordBatch:
    """One RecordBatch holding all rows of ``table`` (zero-copy when it has one chunk)."""
    batches = table.to_batches()
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return table.combine_chunks().to_batches()[0]


def int_offset(offset: Offset | None, what: str) -> int:
    """``offset`` as a non-negative int (``None``: 0), or a ``ValueError`` naming ``what``."""
    if offset is None:
        return 0
    if type(offset) is not int or offset < 0:
        msg = f"{what} offset must be a non-negative int, got {offset!r}"
        raise ValueError(msg)
    return offset
