"""Replayable sources: where a pipeline's records come from, and how to read them again.

A source is a picklable *config* (STYLE lesson 5). The driver opens it at an *offset*
and reads record batches from the reader::

    reader = source.open(offset)        # offset=None: from the beginning
    (batch = reader.read(); reader.offset)*  reader.close()

``reader.offset`` is the position *after* the last batch returned: a small JSON value that
the coordinator stores in every epoch manifest. Opening the same source at that offset
later (after a failure, a driver restart or a rollback) yields exactly the batches that
followed it, with the same boundaries. That replay is what makes state exactly-once: the
source must be deterministic.

``read()`` returns a ``pyarrow.RecordBatch``; ``None`` at the end of bounded input; an
empty batch when an unbounded source has nothing right now (the driver then checks the
checkpoint clock and asks again); it raises :class:`StopSource` to pause the run.

Sources: :class:`TableSource` (an in-memory Arrow table, record batches, or a column
dict), :class:`ListSource` (a list of dicts), :class:`ParquetSource` (a Parquet file,
directory or glob, through ``pyarrow.dataset``), :class:`RayDataSource` (a Ray Data
``Dataset``), :class:`GeneratorSource` (``fn(offset) -> batch`` for synthetic streams).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

DEFAULT_BATCH_SIZE = 65_536

Offset = Any
"""A JSON-able position in a source (int, str, list or dict of those)."""


class StopSource(Exception):
    """Raised by ``SourceReader.read()`` to stop the run gracefully at this point.

    The driver commits the current epoch with the reader's offset (which must already
    point past whatever made it stop) and returns without calling ``finish()``: the
    stream is paused, not ended, and ``run(resume=True)`` goes on from there.
    """


class SourceReader(ABC):
    """An open position in a source; lives in the driver only (not picklable by contract)."""

    @abstractmethod
    def read(self) -> pa.RecordBatch | None:
        """Return the next batch; ``None`` at the end of input; an empty batch when idle."""

    @property
    @abstractmethod
    def offset(self) -> Offset:
        """The position after the last batch returned (JSON-able); reopen there to go on."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or iterators; idempotent."""


class Source(ABC):
    """A replayable source config: ``open(offset)`` returns a reader positioned there.

    Subclasses are frozen dataclasses; they hold paths and parameters, never open files.
    """

    @abstractmethod
    def open(self, offset: Offset | None = None) -> SourceReader:
        """Return a reader positioned at ``offset`` (``None``: the beginning).

        Raises:
            ValueError: ``offset`` is not one this source produced, or the data behind
                it changed (e.g. files of a ParquetSource were removed).
        """

    def describe(self) -> dict[str, Any]:
        """A JSON-able description stored in epoch manifests (type and main parameters)."""
        return {"type": type(self).__name__}


def _check_batch_size(batch_size: int) -> None:
    if type(batch_size) is not int or batch_size <= 0:
        msg = f"batch_size must be a positive int, got {batch_size!r}"
        raise ValueError(msg)


def _as_batch(table: pa.Table) -> pa.RecordBatch:
    """One RecordBatch holding all rows of ``table`` (zero-copy when it has one chunk)."""
    batches = table.to_batches()
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return table.combine_chunks().to_batches()[0]


def _int_offset(offset: Offset | None, what: str) -> int:
    if offset is None:
        return 0
    if type(offset) is not int or offset < 0:
        msg = f"{what} offset must be a non-negative int, got {offset!r}"
        raise ValueError(msg)
    return offset


# ---------------------------------------------------------------------------- in memory


@dataclass(frozen=True, eq=False)
class TableSource(Source):
    """An in-memory Arrow table served in slices of ``batch_size`` rows.

    Args:
        data: a ``pyarrow.Table``, a ``RecordBatch``, a list of ``RecordBatch`` or a
            mapping of column name to values (anything ``pa.table`` accepts).
        batch_size: rows per batch (the last one may be shorter).

    Offset: rows consumed (an int). Cost: batches are zero-copy slices of one
    contiguous table (the data is combined into one chunk once, at construction).

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
        _check_batch_size(self.batch_size)
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

    def open(self, offset: Offset | None = None) -> SourceReader:
        """Return a reader at row ``offset``."""
        start = _int_offset(offset, "TableSource")
        if start > self._table.num_rows:
            msg = f"TableSource offset {start} is past the end ({self._table.num_rows} rows)"
            raise ValueError(msg)
        return _SliceReader(self._table, self.batch_size, start)

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
        return _as_batch(part)

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


# ---------------------------------------------------------------------------- parquet


@dataclass(frozen=True)
class ParquetSource(Source):
    """Parquet files read in a fixed order through ``pyarrow.dataset``.

    Args:
        path: a file, a directory (read recursively; hive partition columns such as
            ``day=2024-01-01/`` become columns) or a glob pattern (``"events/*.parquet"``).
            Any fsspec URL works with ``storage_options``.
        batch_size: rows per batch at most (batches never span two files).
        columns: optional subset of columns to read.
        storage_options: fsspec options for remote paths (e.g. ``endpoint_url``).

    Files are read in sorted path order. Offset: ``{"file": i, "name": path, "row": r,
    "rows": total}`` (``r`` rows of file ``i`` consumed). Seeking skips whole row groups
    with the Parquet footer, then slices one batch. The file list is rediscovered at
    each ``open``; files before the offset must be unchanged (checked by name), new
    files sorting after it are read when the pipeline resumes.
    """

    path: str | os.PathLike[str]
    batch_size: int = DEFAULT_BATCH_SIZE
    columns: tuple[str, ...] | None = None
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_batch_size(self.batch_size)
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(self.columns))

    def _dataset(self) -> Any:
        import fsspec
        import pyarrow.dataset as ds
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        path = os.fspath(self.path)
        fs, root = fsspec.core.url_to_fs(path, **(self.storage_options or {}))
        local = type(fs).__name__ == "LocalFileSystem"
        if any(ch in root for ch in "*?["):
            files = sorted(fs.glob(root))
            files = [f for f in files if fs.isfile(f)]
            if not files:
                msg = f"ParquetSource: no files match {path!r}"
                raise FileNotFoundError(msg)
            source: Any = files
            partitioning = None
        elif fs.isdir(root):
            source = root
            partitioning = "hive"
        elif fs.isfile(root):
            source = [root]
            partitioning = None
        else:
            msg = f"ParquetSource: {path!r} does not exist"
            raise FileNotFoundError(msg)
        filesystem = None if local else PyFileSystem(FSSpecHandler(fs))
        if local and isinstance(source, str):
            source = os.path.abspath(source)
        elif local:
            source = [os.path.abspath(f) for f in source]
        return ds.dataset(source, format="parquet", filesystem=filesystem,
                          partitioning=partitioning, exclude_invalid_files=False)

    def open(self, offset: Offset | None = None) -> SourceReader:
        """Return a reader at ``offset`` (see the class docstring for its shape)."""
        dataset = self._dataset()
        fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
        file_index, row, rows = 0, 0, 0
        if offset is not None:
            try:
                file_index, row, rows = int(offset["file"]), int(offset["row"]), int(offset["rows"])
                name = offset["name"]
            except (TypeError, KeyError, ValueError):
                msg = f"ParquetSource offset must be a dict with file/name/row/rows, got {offset!r}"
                raise ValueError(msg) from None
            if file_index < len(fragments):
                if fragments[file_index].path != name:
                    msg = (
                        f"ParquetSource {os.fspath(self.path)!r} changed since the checkpoint: "
                        f"file #{file_index} is {fragments[file_index].path!r}, the checkpoint "
                        f"was taken in {name!r}; restore the input files or start a new run"
                    )
                    raise ValueError(msg)
            elif not (file_index == len(fragments) and row == 0):
                msg = (
                    f"ParquetSource {os.fspath(self.path)!r} has {len(fragments)} files, the "
                    f"checkpoint offset points at file #{file_index} ({name!r}); restore the files"
                )
                raise ValueError(msg)
        return _ParquetReader(dataset, fragments, self.batch_size, self.columns,
                              file_index, row, rows)

    def describe(self) -> dict[str, Any]:
        """Type, path and batch size."""
        return {"type": type(self).__name__, "path": os.fspath(self.path),
                "batch_size": self.batch_size}


class _ParquetReader(SourceReader):
    def __init__(
        self, dataset: Any, fragments: list[Any], batch_size: int,
        columns: tuple[str, ...] | None, file_index: int, row: int, rows: int,
    ) -> None:
        self._dataset = dataset
        self._fragments = fragments
        self._batch_size = batch_size
        self._columns = list(columns) if columns is not None else None
        self._file = file_index
        self._row = row
        self._rows = rows
        self._iter: Iterator[pa.RecordBatch] | None = None

    def _open_file(self) -> Iterator[pa.RecordBatch]:
        import pyarrow.dataset as ds

        fragment = self._fragments[self._file]
        skip = self._row
        if skip:
            # skip whole row groups using the footer, then slice inside the group
            groups = fragment.split_by_row_group()
            start = 0
            for g in groups:
                n = g.row_groups[0].num_rows
                if skip < n:
                    break
                skip -= n
                start += 1
            groups = groups[start:]
        else:
            groups = [fragment]

        def batches() -> Iterator[pa.RecordBatch]:
            nonlocal skip
            for g in groups:
                scanner = ds.Scanner.from_fragment(
                    g, schema=self._dataset.schema, columns=self._columns,
                    batch_size=self._batch_size, use_threads=True,
                )
                for b in scanner.to_batches():
                    if skip:
                        if skip >= b.num_rows:
                            skip -= b.num_rows
                            continue
                        b = b.slice(skip)
                        skip = 0
                    if b.num_rows:
                        yield b

        return batches()

    def read(self) -> pa.RecordBatch | None:
        while self._file < len(self._fragments):
            if self._iter is None:
                self._iter = self._open_file()
            batch = next(self._iter, None)
            if batch is not None:
                self._row += batch.num_rows
                self._rows += batch.num_rows
                return batch
            self._iter = None
            self._file += 1
            self._row = 0
        return None

    @property
    def offset(self) -> dict[str, Any]:
        name = self._fragments[self._file].path if self._file < len(self._fragments) else ""
        return {"file": self._file, "name": name, "row": self._row, "rows": self._rows}

    def close(self) -> None:
        self._iter = None


# ---------------------------------------------------------------------------- ray data


class RayDataSource(Source):
    """A Ray Data ``Dataset`` iterated in a deterministic order.

    Args:
        dataset: a ``ray.data.Dataset``. Its order must be deterministic: raykv turns on
            ``preserve_order`` for it; the transformations themselves must be too.
        batch_size: rows per batch.

    Offset: rows consumed. Seeking re-executes the dataset and skips that many rows
    (cost O(offset) reading; fine for replay after a failure, slow for huge offsets).
    The reader runs in the driver; only the driver needs the dataset object.
    """

    def __init__(self, dataset: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        _check_batch_size(batch_size)
        if not hasattr(dataset, "iter_batches"):
            msg = f"RayDataSource needs a ray.data.Dataset, got {type(dataset).__name__}"
            raise TypeError(msg)
        self.dataset = dataset
        self.batch_size = batch_size

    def open(self, offset: Offset | None = None) -> SourceReader:
        """Return a reader that skips the first ``offset`` rows."""
        start = _int_offset(offset, "RayDataSource")
        ctx = getattr(self.dataset, "context", None)
        if ctx is not None:
            ctx.execution_options.preserve_order = True
        return _IterReader(self._batches(), start)

    def _batches(self) -> Iterator[pa.RecordBatch]:
        for table in self.dataset.iter_batches(batch_size=self.batch_size, batch_format="pyarrow"):
            if isinstance(table, pa.Table):
                if table.num_rows:
                    yield _as_batch(table)
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


# ---------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class GeneratorSource(Source):
    """A deterministic synthetic stream: batch number ``i`` is ``fn(i)``.

    Args:
        fn: ``fn(offset: int) -> RecordBatch | Table | None``; must return the same rows
            for the same offset every time (seed any randomness with the offset). ``None``
            ends the stream; raising :class:`StopSource` pauses the run and consumes that
            offset (a resume calls ``fn(offset + 1)`` next).
        limit: stop after this many batches (``None``: unbounded; stop the run with
            ``Pipeline.stop()``).

    Offset: the number of the next batch (an int).

    Example:
        >>> import pyarrow as pa
        >>> src = GeneratorSource(lambda i: pa.record_batch({"n": [i, i]}), limit=3)
        >>> r = src.open(1)
        >>> r.read().to_pydict(), r.offset
        ({'n': [1, 1]}, 2)
    """

    fn: Callable[[int], pa.RecordBatch | pa.Table | None]
    limit: int | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            msg = f"GeneratorSource fn must be callable, got {type(self.fn).__name__}"
            raise TypeError(msg)
        if self.limit is not None and (type(self.limit) is not int or self.limit < 0):
            msg = f"GeneratorSource limit must be a non-negative int or None, got {self.limit!r}"
            raise ValueError(msg)

    def open(self, offset: Offset | None = None) -> SourceReader:
        """Return a reader whose next batch is ``fn(offset)``."""
        return _GeneratorReader(self.fn, _int_offset(offset, "GeneratorSource"), self.limit)

    def describe(self) -> dict[str, Any]:
        """Type, function name and limit."""
        return {"type": type(self).__name__, "fn": getattr(self.fn, "__qualname__", "?"),
                "limit": self.limit}


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
            out = _as_batch(out)
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


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "GeneratorSource",
    "ListSource",
    "Offset",
    "ParquetSource",
    "RayDataSource",
    "Source",
    "SourceReader",
    "StopSource",
    "TableSource",
]
