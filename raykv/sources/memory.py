"""In-memory sources: an Arrow table or a list of dicts, served in slices."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from raykv.sources.base import (
    DEFAULT_BATCH_SIZE,
    Offset,
    Source,
    SourceReader,
    Split,
    as_batch,
    check_batch_size,
    int_offset,
    unknown_split,
)

TABLE_SPLITS = 8
"""How many slices :meth:`TableSource.splits` cuts a table into, at most."""


@dataclass(frozen=True, eq=False)
class TableSource(Source):
    """An in-memory Arrow table served in slices of ``batch_size`` rows.

    Args:
        data: a ``pyarrow.Table``, a ``RecordBatch``, a list of ``RecordBatch`` or a
            mapping of column name to values (anything ``pa.table`` accepts).
        batch_size: rows per batch (the last one may be shorter).

    Offset: rows consumed (an int). Cost: batches are zero-copy slices of one
    contiguous table (the data is combined into one chunk once, at construction).

    Splits: up to :data:`TABLE_SPLITS` contiguous slices whose bounds are multiples of
    ``batch_size`` (so a split reads the same batches the whole-table reader does), ids
    ``"rows <start>-<end>"`` (end exclusive), size in rows; a split's offset is the rows
    of it consumed.

    Example:
        >>> src = TableSource({"k": [1, 2, 3]}, batch_size=2)
        >>> r = src.open()
        >>> r.read().num_rows, r.offset, r.read().num_rows, r.read()
        (2, 2, 1, None)
    """

    data: Any
    batch_size: int = DEFAULT_BATCH_SIZE
    _table: pa.Table = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size)
        data = self.data
        if isinstance(data, pa.RecordBatch):
            table = pa.Table.from_batches([data])
        elif isinstance(data, pa.Table):
            table = data
        elif isinstance(data, Sequence) and data and all(
            isinstance(b, pa.RecordBatch) for b in data
        ):
            table = pa.Table.from_batches(list(data))
        elif isinstance(data, Mapping):
            table = pa.table(dict(data))
        else:
            msg = (
                "TableSource data must be a pyarrow Table, RecordBatch, list of RecordBatch or "
                f"a dict of columns, got {type(data).__name__}; use ListSource for a list of dicts"
            )
            raise TypeError(msg)
        object.__setattr__(self, "_table", table.combine_chunks())

    @property
    def table(self) -> pa.Table:
        """The whole input as one table."""
        return self._table

    def input_schema(self) -> pa.Schema:
        """The table's schema."""
        return self._table.schema

    def open(self, offset: Offset | None = None) -> SourceReader:
        """Return a reader at row ``offset``."""
        start = int_offset(offset, "TableSource")
        if start > self._table.num_rows:
            msg = f"TableSource offset {start} is past the end ({self._table.num_rows} rows)"
            raise ValueError(msg)
        return _SliceReader(self._table, self.batch_size, start)

    def splits(self) -> list[Split]:
        """Up to ``TABLE_SPLITS`` slices of whole batches (one split for an empty table)."""
        rows = self._table.num_rows
        batches = max(1, -(-rows // self.batch_size))
        per = -(-batches // min(TABLE_SPLITS, batches)) * self.batch_size
        bounds = [*range(0, rows, per), rows] if rows else [0, 0]
        return [Split(f"rows {a}-{b}", b - a) for a, b in itertools.pairwise(bounds)]

    def open_split(self, split: Split | str, offset: Offset | None = None) -> SourceReader:
        """Return a reader over one slice, ``offset`` rows into it."""
        split_id = split.id if isinstance(split, Split) else split
        if split_id not in {s.id for s in self.splits()}:
            raise unknown_split(self, split_id)
        start, end = (int(x) for x in split_id.removeprefix("rows ").split("-"))
        skip = int_offset(offset, f"TableSource split {split_id!r}")
        if skip > end - start:
            msg = f"TableSource split {split_id!r} has {end - start} rows, offset is {skip}"
            raise ValueError(msg)
        return _SliceReader(self._table.slice(start, end - start), self.batch_size, skip)

    def describe(self) -> dict[str, Any]:
        """Type, row count and batch size."""
        return {"type": type(self).__name__, "rows": self._table.num_rows,
                "batch_size": self.batch_size}

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._table, self.batch_size))


class _SliceReader(SourceReader):
    def __init__(self, table: pa.Table, batch_size: int, start: int) -> None:
        self._table = table
        self._batch_size = batch_size
        self._pos = start

    def read(self) -> pa.RecordBatch | None:
        if self._pos >= self._table.num_rows:
            return None
        part = self._table.slice(self._pos, self._batch_size)
        self._pos += part.num_rows
        return as_batch(part)

    @property
    def offset(self) -> int:
        return self._pos


class ListSource(TableSource):
    """A list of dicts (one per row) served like :class:`TableSource`.

    Args:
        rows: the records; converted once with ``pa.Table.from_pylist``.
        batch_size: rows per batch.
        schema: optional ``pyarrow.Schema`` (otherwise inferred from the rows).

    Example:
        >>> r = ListSource([{"k": "a", "v": 1}, {"k": "b", "v": 2}]).open()
        >>> r.read().to_pylist()
        [{'k': 'a', 'v': 1}, {'k': 'b', 'v': 2}]
    """

    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]],
        batch_size: int = DEFAULT_BATCH_SIZE,
        schema: pa.Schema | None = None,
    ) -> None:
        if isinstance(rows, pa.Table):
            table = rows
        else:
            if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
                msg = f"ListSource rows must be a list of dicts, got {type(rows).__name__}"
                raise TypeError(msg)
            if not rows and schema is None:
                msg = "ListSource of no rows needs schema= (nothing to infer the columns from)"
                raise ValueError(msg)
            table = pa.Table.from_pylist(list(rows), schema=schema)
        super().__init__(table, batch_size)
