"""ParquetSink: each epoch's output as Parquet files, staged by the shards, fenced by writer.

Layout under ``path`` (FORMAT: docs/runtime.md, "Sinks")::

    part-e<epoch:010d>-<stage>-<shard:04d>.parquet        published output
    _staging/<writer>/part-e<epoch:010d>-<...>.parquet    staged by run attempt <writer>
    _staging/<writer>/.<id>.tmp                           a write in progress (or cut short)

A sink bound to a run attempt (:meth:`ParquetSink.for_attempt`) stages under its own
writer directory and publishes only from there; ``start`` publishes the committed
writer's staged epochs of the lineage and deletes every other writer's directory, so
output staged by a shard of a failed attempt (a survivor completing its upload, a
process Ray reported dead but still running) is never published, whenever it lands. An
unbound sink (``writer`` ``None``, as in direct use or raykv before writers) stages
directly under ``_staging/``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from raykv.sinks.base import Sink, as_table, kept, parse_part_file_name, part_file_name


class ParquetSink(Sink):
    """Write each epoch's output as Parquet files, published only when the epoch commits.

    Args:
        path: output directory (local path or fsspec URL). Published files are
            ``<path>/part-e<epoch>-<stage>-<shard>.parquet``; staged ones live in
            ``<path>/_staging/<writer>/`` (ignored by ``pyarrow.dataset``/``pq.read_table(path)``
            because of the leading underscore).
        storage_options: fsspec options for remote paths.
        overwrite: on a new run, delete earlier ``part-*.parquet`` files instead of
            refusing to start. Only files with raykv's part names are touched.
        changelog: write every change with its row kind (``_change``) instead of the
            new values per epoch (:attr:`Sink.changelog`).

    The last stage's shards write their own staged files (``stages_on_shards``), so
    ``path`` must be reachable from every node: shared storage or an object store
    (``s3://``) on a cluster; the driver renames staged files at commit.

    Cost: one Parquet write per (epoch, last-stage shard) with output, in that shard's
    upload thread (the end of bounded input: in its data thread, one row group per chunk
    of :meth:`stage_chunks`, so a shard never holds its whole final output), then one
    rename (local: atomic ``os.replace``; object stores: copy + delete) per file at
    commit, in the driver.
    """

    STAGING = "_staging"
    stages_on_shards = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        storage_options: dict[str, Any] | None = None,
        overwrite: bool = False,
        changelog: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.changelog = changelog
        self.storage_options = dict(storage_options or {})
        self.overwrite = overwrite
        self._fs: Any = None
        self._root = ""
        self._writer: str | None = None  # the run attempt staging through this object
        self._committed: str | None = None  # the writer whose staged epochs start publishes

    def for_attempt(self, writer: str, committed: str | None) -> ParquetSink:
        """A copy that stages under ``_staging/<writer>/`` (see :meth:`Sink.for_attempt`)."""
        if not writer or "/" in writer or writer.startswith("."):
            msg = f"a writer is a non-empty name without '/' or leading '.', got {writer!r}"
            raise ValueError(msg)
        bound = copy.copy(self)
        bound._writer, bound._committed = writer, committed
        return bound

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fs"] = None
        return state

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of ``path``."""
        if self._fs is None:
            import fsspec

            self._fs, root = fsspec.core.url_to_fs(self.path, **self.storage_options)
            self._root = root.rstrip("/")
        return self._fs

    def _dir(self, staging: bool = False) -> str:
        _ = self.fs
        return f"{self._root}/{self.STAGING}" if staging else self._root

    def _writer_dir(self, writer: str | None) -> str:
        """Where ``writer`` stages (``_staging`` itself for ``None``)."""
        d = self._dir(staging=True)
        return d if writer is None else f"{d}/{writer}"

    def _entries(self, d: str) -> list[tuple[str, str, bool]]:
        """``(path, name, is_dir)`` of everything directly in ``d`` (none if it is absent)."""
        fs = self.fs
        if not fs.exists(d):
            return []
        out = []
        for info in fs.ls(d, detail=True):
            path = info["name"].rstrip("/")
            out.append((path, path.rsplit("/", 1)[-1], info["type"] == "directory"))
        return out

    def _list(self, d: str) -> dict[str, tuple[int, str]]:
        """Map full path -> (epoch, part) of the raykv part files directly in ``d``."""
        out: dict[str, tuple[int, str]] = {}
        for path, name, is_dir in self._entries(d):
            parsed = None if is_dir else parse_part_file_name(name)
            if parsed is not None:
                out[path] = parsed
        return out

    def start(
        self, epoch: int | None, *, new_run: bool, abandoned: Sequence[Sequence[int]] = ()
    ) -> None:
        """Reconcile the directory with committed ``epoch`` (see ``raykv.sinks``).

        Staged files in the lineage of the committed writer and of this sink's own are
        published; the own writer's directory keeps the rest (its attempt is running: a
        commit that ends a rollback calls ``start``; after a recovery, the directory of
        a new writer is empty); everything else staged is deleted, whole writer
        directories and partial writes included. Published files outside the
        lineage are deleted. Cost: listings of the directory and of each writer's
        directory, a rename per file to publish, a delete per file to drop.

        Raises:
            FileExistsError: a new run found part files of an earlier run and
                ``overwrite`` is false.
        """
        fs = self.fs
        fs.makedirs(self._dir(), exist_ok=True)
        published = self._list(self._dir())
        if new_run and published:
            if not self.overwrite:
                msg = (
                    f"ParquetSink {self.path!r} already holds {len(published)} part files of an "
                    "earlier run; resume that run (run(resume=True)), choose an empty directory, "
                    "or pass ParquetSink(..., overwrite=True) to delete them"
                )
                raise FileExistsError(msg)
            for p in published:
                fs.rm(p)
            published = {}
        for d in dict.fromkeys([self._writer_dir(self._committed),
                                self._writer_dir(self._writer)]):
            for p, (e, part) in self._list(d).items():
                if kept(e, epoch, abandoned):
                    self._move(p, f"{self._dir()}/{part_file_name(e, part)}")
        self._drop_stale(live=self._writer is not None)
        for p, (e, _part) in published.items():
            if not kept(e, epoch, abandoned):
                fs.rm(p)

    def _drop_stale(self, *, live: bool) -> None:
        """Delete everything staged, except this writer's own directory when ``live``.

        ``live``: a bound sink, whose attempt is running (its staged epochs after the
        committed one are still to be published). Best effort per entry: a stale writer
        may still be writing into its directory (which can make its removal fail, or
        bring it back); nothing it stages is ever published, and the next ``start`` or
        ``close`` tries again.
        """
        own = self._writer_dir(self._writer)
        for path, _name, is_dir in self._entries(self._dir(staging=True)):
            if not (live and path == own):
                with contextlib.suppress(OSError):
                    self.fs.rm(path, recursive=is_dir)

    def stage(self, epoch: int, part: str, table: pa.Table) -> None:
        """Write ``table`` to ``_staging/<writer>/<name>`` (via a temporary name)."""
        import pyarrow.parquet as pq

        fs = self.fs
        d = self._writer_dir(self._writer)
        fs.makedirs(d, exist_ok=True)
        final = f"{d}/{part_file_name(epoch, part)}"
        tmp = f"{d}/.{uuid.uuid4().hex}.tmp"
        with fs.open(tmp, "wb") as f:
            pq.write_table(table, f)
        self._move(tmp, final)

    def stage_chunks(self, epoch: int, part: str,
                     chunks: Iterable[pa.RecordBatch | pa.Table]) -> int:
        """Write the chunks as row groups of one staged file, as they come.

        One ``pq.ParquetWriter`` over ``_staging/<writer>/.<id>.tmp`` (the file of :meth:`stage`,
        the same name once complete): each chunk is appended (one or more row groups),
        and only when the last one is written is the file closed and renamed to its
        staged name. A shard that dies mid-stream leaves the ``.tmp`` file, which
        ``start`` removes; so staged files are always complete, and exactly-once holds
        as with :meth:`stage`. A chunk of another schema than the first is cast to it
        (``TypeError`` if it cannot be). Memory: one chunk plus the writer's buffers.
        """
        import pyarrow.parquet as pq

        fs = self.fs
        d = self._writer_dir(self._writer)
        fs.makedirs(d, exist_ok=True)
        tmp = f"{d}/.{uuid.uuid4().hex}.tmp"
        rows = 0
        try:
            with fs.open(tmp, "wb") as f:
                writer: pq.ParquetWriter | None = None
                try:
                    for chunk in chunks:
                        table = as_table(chunk)
                        if not table.num_rows:
                            continue
                        if writer is None:
                            writer = pq.ParquetWriter(f, table.schema)
                        elif not table.schema.equals(writer.schema):
                            table = _cast_to(table, writer.schema, part)
                        writer.write_table(table)
                        rows += table.num_rows
                finally:
                    if writer is not None:
                        writer.close()
        except BaseException:
            with contextlib.suppress(OSError):
                fs.rm(tmp)
            raise
        if not rows:
            fs.rm(tmp)
            return 0
        self._move(tmp, f"{d}/{part_file_name(epoch, part)}")
        return rows

    def publish(self, epoch: int) -> None:
        """Move this writer's staged files of ``epoch`` next to the published ones."""
        for p, (e, part) in self._list(self._writer_dir(self._writer)).items():
            if e == epoch:
                self._move(p, f"{self._dir()}/{part_file_name(e, part)}")

    def close(self) -> None:
        """Delete what other writers staged (stale writes that landed after ``start``).

        This writer's own staged files stay: after a failed run, ``start`` of the next
        one publishes those of its committed epoch. Best effort: an ``OSError`` is
        ignored (the next ``start`` deletes the same files).
        """
        if self._writer is None:
            return
        with contextlib.suppress(OSError):
            self._drop_stale(live=True)
            own = self._writer_dir(self._writer)
            if not self._entries(own) and self.fs.exists(own):
                self.fs.rm(own, recursive=True)

    def _move(self, src: str, dst: str) -> None:
        fs = self.fs
        if type(fs).__name__ == "LocalFileSystem":
            os.replace(src, dst)
        else:
            fs.mv(src, dst)

    def read(self) -> pa.Table:
        """Read all published output, in epoch order."""
        import pyarrow.parquet as pq

        files = sorted(self._list(self._dir()))
        if not files:
            msg = f"ParquetSink {self.path!r} has no published output"
            raise FileNotFoundError(msg)
        return pa.concat_tables(
            # use_threads=False: pyarrow's thread pool, after a read through a Python
            # file (an fsspec filesystem), can abort the interpreter at exit (SIGABRT,
            # "terminate called without an active exception"; apache/arrow#33975,
            # #50482): 4 of 30 processes on the 2-core machine
            [pq.read_table(p, filesystem=self.fs, use_threads=False) for p in files],
            promote_options="permissive",
        )

    def describe(self) -> dict[str, Any]:
        """Type and path."""
        return {"type": type(self).__name__, "path": self.path}

    def late_sink(self) -> Sink:
        """A ``ParquetSink`` at ``<path>/_late`` (same options): late rows, in part files."""
        return ParquetSink(f"{self.path.rstrip('/')}/_late",
                           storage_options=self.storage_options, overwrite=self.overwrite)


def _cast_to(table: pa.Table, schema: pa.Schema, part: str) -> pa.Table:
    """``table`` cast to ``schema`` (a later chunk of a streamed part), or ``TypeError``."""
    try:
        return table.select(schema.names).cast(schema)
    except (KeyError, ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        msg = (f"output chunk of {part} has schema {table.schema}, which does not fit the "
               f"schema of its first chunk {schema} ({err})")
        raise TypeError(msg) from err

