"""A Ray Data ``Dataset`` as a source."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from raykv.sources.base import (
    DEFAULT_BATCH_SIZE,
    Offset,
    Source,
    SourceReader,
    as_batch,
    check_batch_size,
    int_offset,
)


class RayDataSource(Source):
    """A Ray Data ``Dataset`` iterated in a deterministic order.

    Args:
        dataset: a ``ray.data.Dataset``. Its order must be deterministic: raykv turns on
            ``preserve_order`` for it; the transformations themselves must be too.
        batch_size: rows per batch.

    Offset: rows consumed. Seeking re-executes the dataset and skips that many rows
    (cost O(offset) reading; fine for replay after a failure, slow for huge offsets).
    One split (``"all"``): a source reader actor iterates the Dataset and pulls its
    blocks from the object store itself; the driver never touches a row (the Dataset
    plan is pickled to the reader).

    Replay: exactly-once state needs the same rows in the same order after a restart.
    That holds when the Dataset is deterministic: the same input files or items and
    deterministic transformations (``preserve_order`` is turned on here). A Dataset over
    changing input, with random sampling or shuffles without a seed, replays other rows,
    and the state after a recovery is then not the state of one run.
    """

    def __init__(self, dataset: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        check_batch_size(batch_size)
        if not hasattr(dataset, "iter_batches"):
            msg = f"RayDataSource needs a ray.data.Dataset, got {type(dataset).__name__}"
            raise TypeError(msg)
        self.dataset = dataset
        self.batch_size = batch_size

    def open(self, offset: Offset | None = None) -> SourceReader:
        """Return a reader that skips the first ``offset`` rows."""
        start = int_offset(offset, "RayDataSource")
        ctx = getattr(self.dataset, "context", None)
        if ctx is not None:
            ctx.execution_options.preserve_order = True
        return _IterReader(self._batches(), start)

    def _batches(self) -> Iterator[pa.RecordBatch]:
        for table in self.dataset.iter_batches(batch_size=self.batch_size, batch_format="pyarrow"):
            if isinstance(table, pa.Table):
                if table.num_rows:
                    yield as_batch(table)
            elif table.num_rows:
                yield table

    def describe(self) -> dict[str, Any]:
        """Type and batch size."""
        return {"type": type(self).__name__, "batch_size": self.batch_size}


class _IterReader(SourceReader):
    """Rows-consumed offsets over an iterator of batches; skips ``start`` rows first."""

    def __init__(self, batches: Iterator[pa.RecordBatch], start: int) -> None:
        self._it = batches
        self._pos = 0
        skip = start
        while skip:
            b = next(self._it, None)
            if b is None:
                msg = f"offset {start} is past the end of the source ({self._pos} rows)"
                raise ValueError(msg)
            if b.num_rows > skip:
                self._pending: pa.RecordBatch | None = b.slice(skip)
                self._pos += skip
                return
            self._pos += b.num_rows
            skip -= b.num_rows
        self._pending = None

    def read(self) -> pa.RecordBatch | None:
        if self._pending is not None:
            b, self._pending = self._pending, None
        else:
            b = next(self._it, None)
            if b is None:
                return None
        self._pos += b.num_rows
        return b

    @property
    def offset(self) -> int:
        return self._pos
