"""Files that keep arriving in a folder or object prefix, read in name order (unbounded).

The rule that keeps a file from being read while it is still being written: names that
start with ``.`` or ``_`` are never read. A writer creates ``_part-7.parquet`` (or
``.part-7.parquet``), writes and closes it, then renames it to ``part-7.parquet``; a
rename is atomic on a local file system, and an object store makes an object visible
only once its upload is complete, so a visible name is a complete file.

Files are read in name order, and new files must sort after every file already read
(timestamped or zero-padded sequence names do). The offset is small and does not grow
with the number of files: the last file done, how many files are done, and the position
in the current file. On every listing the source counts the files that sort at or before
the last one done; if that differs from the count in the offset, a file appeared with an
earlier name (it would be skipped) or a done file vanished, and the source stops with an
error that names the first such file, instead of skipping or re-reading anything.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raykv.sources.base import (
    DEFAULT_BATCH_SIZE,
    WHOLE,
    Offset,
    Source,
    SourceReader,
    Split,
    check_batch_size,
    int_offset,
    unknown_split,
)

FORMATS = ("parquet", "csv", "jsonl")


def visible(name: str) -> bool:
    """False for names a writer is still working on (leading ``.`` or ``_``)."""
    return not name.startswith((".", "_"))


@dataclass(frozen=True)
class DirectorySource(Source):
    """Every complete file in a folder or object prefix, in name order, as it arrives.

    Args:
        url: a folder or prefix on any fsspec URL (``/data/in``, ``s3://bucket/in``);
            files directly inside it are read, sub-folders are not.
        format: ``"parquet"``, ``"csv"`` (with a header row) or ``"jsonl"`` (one JSON
            object per line).
        batch_size: rows per batch at most (batches never span two files).
        schema: the columns and types (recommended for csv and jsonl, whose types are
            otherwise inferred per file and may differ between files).
        storage_options: fsspec options (e.g. ``endpoint_url`` for S3).
        watch: ``True`` (default): unbounded, new files are picked up as they appear and
            ``read()`` returns an empty batch while there is none; ``False``: the files
            present when a reader opens, then the end of input.
        poll_interval: seconds between listings while idle.

    Offset: ``{"done": last file done ("" for none), "count": files done, "file": the
    file being read ("" for none), "row": rows of it consumed}``. Splits: with
    ``watch=False``, one per file (id: its name; size: its bytes), a split's offset
    being rows consumed; with ``watch=True`` one split, ``"all"``: the folder read as
    one stream with the offset above (the files that will arrive are not known when
    splits are dealt to readers, so one reader follows the folder). Cost: one
    listing per ``poll_interval`` while idle and one per file done; CSV and JSON seek by
    reading and dropping the rows before the offset, Parquet by row groups.
    """

    url: str
    format: str = "parquet"
    batch_size: int = DEFAULT_BATCH_SIZE
    schema: pa.Schema | None = None
    storage_options: dict[str, Any] | None = None
    watch: bool = True
    poll_interval: float = 1.0

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size)
        if self.format not in FORMATS:
            msg = f"DirectorySource format must be one of {FORMATS}, got {self.format!r}"
            raise ValueError(msg)

    @property
    def bounded(self) -> bool:
        """False while ``watch`` is on."""
        return not self.watch

    def _fs(self) -> tuple[Any, str]:
        import fsspec

        fs, root = fsspec.core.url_to_fs(str(self.url), **(self.storage_options or {}))
        return fs, root.rstrip("/")

    def listing(self) -> list[tuple[str, int]]:
        """``(name, bytes)`` of every visible file, sorted by name (one listing).

        Raises:
            FileNotFoundError: the folder does not exist.
        """
        fs, root = self._fs()
        if not fs.isdir(root):
            msg = f"DirectorySource: {self.url!r} is not a folder (create it, or fix the URL)"
            raise FileNotFoundError(msg)
        fs.invalidate_cache(root)
        entries = fs.ls(root, detail=True)
        files = [(e["name"].rstrip("/").rsplit("/", 1)[-1], int(e.get("size") or 0))
                 for e in entries if e.get("type") == "file"]
        return sorted((n, s) for n, s in files if visible(n))

    def open(self, offset: Offset | None = None) -> SourceReader:
        """Return a reader at ``offset`` (see the class docstring for its shape)."""
        if offset is None:
            offset = {"done": "", "count": 0, "file": "", "row": 0}
        try:
            done, count = str(offset["done"]), int(offset["count"])
            current, row = str(offset["file"]), int(offset["row"])
        except (TypeError, KeyError, ValueError):
            msg = f"DirectorySource offset must be a dict with done/count/file/row, got {offset!r}"
            raise ValueError(msg) from None
        return _DirectoryReader(self, done, count, current, row)

    def splits(self) -> list[Split]:
        """``watch=False``: one split per visible file, in name order; else ``"all"``."""
        if self.watch:
            return [Split(WHOLE)]
        return [Split(name, size) for name, size in self.listing()]

    def open_split(self, split: Split | str, offset: Offset | None = None) -> SourceReader:
        """Return a reader over one file, ``offset`` rows into it."""
        name = split.id if isinstance(split, Split) else split
        if name == WHOLE:
            return self.open(offset)
        if not visible(name) or "/" in name:
            raise unknown_split(self, name)
        return _FileReader(self, name, int_offset(offset, f"DirectorySource file {name!r}"))

    def batches(self, name: str, skip: int) -> Iterator[pa.RecordBatch]:
        """The rows of file ``name`` after the first ``skip``, in batches.

        Raises:
            FileNotFoundError: the file vanished since it was listed.
            ValueError: it is not readable as ``format`` (truncated, corrupt, other type).
        """
        fs, root = self._fs()
        path = f"{root}/{name}"
        try:
            f = fs.open(path, "rb")
        except FileNotFoundError:
            msg = (f"DirectorySource: file {name!r} in {self.url!r} vanished after it was "
                   "listed; files must stay until the run is done with them")
            raise FileNotFoundError(msg) from None
        with f:
            try:
                yield from self._decode(f, skip)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
                msg = (f"DirectorySource: cannot read {name!r} in {self.url!r} as "
                       f"{self.format}: {err}")
                raise ValueError(msg) from err

    def _decode(self, f: Any, skip: int) -> Iterator[pa.RecordBatch]:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(f)
            groups = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            first = 0
            while first < len(groups) and skip >= groups[first]:
                skip -= groups[first]
                first += 1
            stream: Iterator[pa.RecordBatch] = pf.iter_batches(
                batch_size=self.batch_size, row_groups=list(range(first, len(groups))))
        elif self.format == "csv":
            import pyarrow.csv as pcsv

            types = {fl.name: fl.type for fl in self.schema} if self.schema is not None else None
            stream = iter(pcsv.open_csv(f, convert_options=pcsv.ConvertOptions(column_types=types)))
        else:
            import pyarrow.json as pjson

            stream = iter(pjson.open_json(
                f, parse_options=pjson.ParseOptions(explicit_schema=self.schema)))
        for batch in stream:
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            batch, skip = batch.slice(skip), 0
            for start in range(0, batch.num_rows, self.batch_size):
                yield batch.slice(start, self.batch_size)

    def describe(self) -> dict[str, Any]:
        """Type, URL, format and batch size."""
        return {"type": type(self).__name__, "url": str(self.url), "format": self.format,
                "batch_size": self.batch_size, "watch": self.watch}


class _FileReader(SourceReader):
    """One file from row ``skip``; offset: rows consumed."""

    def __init__(self, source: DirectorySource, name: str, skip: int) -> None:
        self._rows = skip
        self._it = source.batches(name, skip)

    def read(self) -> pa.RecordBatch | None:
        batch = next(self._it, None)
        if batch is not None:
            self._rows += batch.num_rows
        return batch

    @property
    def offset(self) -> int:
        return self._rows


class _DirectoryReader(SourceReader):
    def __init__(self, source: DirectorySource, done: str, count: int, current: str,
                 row: int) -> None:
        self._src = source
        self._done, self._count = done, count
        self._current, self._row = current, row
        self._it: Iterator[pa.RecordBatch] | None = None
        self._names: list[str] = []
        self._listed_at = float("-inf")
        self._list()
        if current and current not in self._names:
            msg = (f"DirectorySource: file {current!r} in {source.url!r}, read up to row {row} "
                   "at the checkpoint, is gone; restore it or start a new run")
            raise FileNotFoundError(msg)

    def _list(self) -> None:
        """List the folder and check that the files done are exactly those in the offset."""
        self._names = [n for n, _ in self._src.listing()]
        self._listed_at = time.monotonic()
        upto = bisect.bisect_right(self._names, self._done) if self._done else 0
        if upto != self._count:
            early = self._names[:upto]
            msg = (
                f"DirectorySource {self._src.url!r}: {self._count} files up to "
                f"{self._done!r} were read, but {upto} such names are there now "
                f"({', '.join(early[:3])}{', ...' if upto > 3 else ''}): a file appeared "
                "with a name sorting before files already read, or a read file was removed. "
                "New files must sort after every file already read (timestamp or "
                "zero-padded sequence names); move the file under a later name"
            )
            raise ValueError(msg)

    def _next_name(self) -> str | None:
        after = max(self._done, self._current)
        i = bisect.bisect_right(self._names, after) if after else 0
        return self._names[i] if i < len(self._names) else None

    def read(self) -> pa.RecordBatch | None:
        while True:
            if self._current:
                if self._it is None:
                    self._it = self._src.batches(self._current, self._row)
                batch = next(self._it, None)
                if batch is not None:
                    self._row += batch.num_rows
                    return batch
                self._done, self._count = self._current, self._count + 1
                self._current, self._row, self._it = "", 0, None
            name = self._next_name()
            if name is None and self._src.watch:
                if time.monotonic() - self._listed_at < self._src.poll_interval:
                    return _empty(self._src.schema)
                self._list()
                name = self._next_name()
            if name is None:
                return _empty(self._src.schema) if self._src.watch else None
            self._current, self._row = name, 0

    @property
    def offset(self) -> dict[str, Any]:
        return {"done": self._done, "count": self._count, "file": self._current,
                "row": self._row}

    def close(self) -> None:
        self._it = None


def _empty(schema: pa.Schema | None) -> pa.RecordBatch:
    """The idle answer of an unbounded reader: a batch of no rows."""
    return pa.RecordBatch.from_pylist([], schema=schema or pa.schema([]))
