"""Parquet files on any fsspec URL, read through ``pyarrow.dataset``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raykv.sources.base import (
    DEFAULT_BATCH_SIZE,
    Offset,
    Source,
    SourceReader,
    Split,
    check_batch_size,
    int_offset,
)


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
        split_rows: ``None``: one split per file. A number: files with more rows are cut
            into splits of whole row groups holding at least that many rows each (ids
            ``"<path>#row groups <a>-<b>"``, ``b`` exclusive), so one large file can be
            read by several readers; listing the splits then reads every footer.

    Splits: one per file (id: its path as listed; size: its bytes) unless ``split_rows``;
    a split's offset is the rows of it consumed (an int).

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
    split_rows: int | None = None

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size)
        if self.split_rows is not None:
            check_batch_size(self.split_rows)
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

    def input_schema(self) -> pa.Schema | None:
        """The dataset's schema (``columns`` only, when set); ``None`` while no file exists.

        Cost: a listing and one Parquet footer.
        """
        try:
            schema = self._dataset().schema
        except FileNotFoundError:
            return None
        if self.columns is not None:
            schema = pa.schema([schema.field(c) for c in self.columns if c in schema.names])
        return schema

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

    def splits(self) -> list[Split]:
        """One split per file in path order, or row-group ranges with ``split_rows``.

        Cost: one listing (and one footer per file with ``split_rows``).
        """
        dataset = self._dataset()
        fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
        infos = dataset.filesystem.get_file_info([f.path for f in fragments])
        out: list[Split] = []
        for frag, info in zip(fragments, infos, strict=True):
            if self.split_rows is None:
                out.append(Split(frag.path, info.size))
                continue
            meta = frag.metadata
            groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            start, rows = 0, 0
            for i, n in enumerate(groups):
                rows += n
                if rows >= self.split_rows or i == len(groups) - 1:
                    out.append(Split(f"{frag.path}#row groups {start}-{i + 1}", rows))
                    start, rows = i + 1, 0
            if not groups:
                out.append(Split(f"{frag.path}#row groups 0-0", 0))
        return out

    def open_split(self, split: Split | str, offset: Offset | None = None) -> SourceReader:
        """Return a reader over one file (or row-group range), ``offset`` rows into it."""
        split_id = split.id if isinstance(split, Split) else split
        skip = int_offset(offset, f"ParquetSource split {split_id!r}")
        path, _, groups = split_id.partition("#row groups ")
        dataset = self._dataset()
        fragment = next((f for f in dataset.get_fragments() if f.path == path), None)
        if fragment is None:
            msg = (f"ParquetSource split {split_id!r}: the file is gone from "
                   f"{os.fspath(self.path)!r}; restore it or start a new run")
            raise FileNotFoundError(msg)
        if groups:
            a, b = (int(x) for x in groups.split("-"))
            fragment = fragment.subset(row_group_ids=list(range(a, b)))
        return _SplitReader(dataset, [fragment], self.batch_size, self.columns, 0, skip, skip)

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


class _SplitReader(_ParquetReader):
    """One fragment; its offset is the rows of it consumed."""

    @property
    def offset(self) -> int:  # type: ignore[override]  # a split's offset is an int
        return self._rows
