"""Sinks: where committed output goes, exactly once.

Output of the last stage arrives at the driver per epoch and per shard (the changelog
the operators emit at each barrier, and their final values at the end of bounded input).
A sink sees it in two phases, driven by the coordinator::

    start(epoch, new_run, abandoned)  (stage(e, part, table)*  publish(e))*  close()

* ``stage`` keeps the output of an epoch that is not committed yet (on disk for
  :class:`ParquetSink`, in memory for :class:`CollectSink`).
* ``publish(e)`` makes it visible; the coordinator calls it only after the epoch
  manifest of ``e`` is written (the commit), in epoch order.
* ``start(e, abandoned=ranges)`` reconciles with the committed lineage ending at epoch
  ``e``, at the start of a run and after every recovery: staged output of epochs ``<= e``
  is published (the driver may have died between commit and publish), staged output of
  epochs ``> e`` is discarded (never committed), and published output of epochs ``> e``
  or inside an ``abandoned`` range ``[lo, hi]`` is removed (epochs a rollback with
  ``restore_epoch`` left behind; the ranges are stored in every later epoch manifest).
  Names are deterministic per (epoch, stage, shard), so publishing twice is harmless.
  After any sequence of failures, published output holds every committed epoch's output
  of the lineage exactly once and nothing else.

Where ``stage`` runs: a sink with ``stages_on_shards = True`` (:class:`ParquetSink`) is
sent to the last stage's shard actors, and each shard stages its own output of an epoch
(in its upload thread, before it acknowledges the epoch), so no output row passes
through the driver; the driver only calls ``start``, ``publish`` and ``close``. Other
sinks (:class:`CollectSink`, a user's own) stay in the driver and receive each shard's
output with its acknowledgement.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

_PART_RE = re.compile(r"^part-e(\d{10})-(.+)\.parquet$")


def part_file_name(epoch: int, part: str) -> str:
    """Deterministic file name of one (epoch, stage-shard) output: ``part-e<epoch>-<part>.parquet``.

    Names sort in epoch order.
    """
    return f"part-e{epoch:010d}-{part}.parquet"


LATE_PART = "late."
"""Prefix of the ``part`` of a window stage's late rows (``late="emit"``) in ``stage``."""


def part_name(stage: str, index: int) -> str:
    """The ``part`` of shard ``index`` of ``stage`` in :meth:`Sink.stage` (``<stage>-<0001>``)."""
    return f"{stage}-{index:04d}"


def parse_part_file_name(name: str) -> tuple[int, str] | None:
    """Inverse of :func:`part_file_name`; ``None`` for any other name."""
    m = _PART_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


class Sink(ABC):
    """Two-phase output: stage per epoch, publish on commit (see the module docstring)."""

    stages_on_shards: bool = False
    """True: the last stage's shards call :meth:`stage` themselves (the sink is pickled to
    them, and ``stage`` must work in any process of the cluster)."""

    changelog: bool = False
    """What a last stage that emits a changelog (``Aggregate``) sends: ``False`` (default)
    the upsert view keyed by the stage's key, one row per key that changed in the epoch
    with its new value (a key deleted by retractions: a tombstone row, count and sum 0,
    other aggregates null) and the complete final values at the end of bounded input (a
    key absent from them is gone); ``True`` every change with its row kind in the
    ``_change`` column (``raykv.operators.changelog``: -U/+U pairs, +I, -D), the last
    epoch's changes at the end. Other operators' output is the same either way."""

    @abstractmethod
    def start(
        self, epoch: int | None, *, new_run: bool, abandoned: Sequence[Sequence[int]] = ()
    ) -> None:
        """Reconcile with the lineage ending at committed ``epoch`` (``None``: nothing).

        ``new_run`` is true for a run that starts from empty state: previous output is
        not part of this run's result. ``abandoned`` lists inclusive ``[lo, hi]`` epoch
        ranges that are not part of the lineage.
        """

    @abstractmethod
    def stage(self, epoch: int, part: str, table: pa.Table) -> None:
        """Keep ``table``, the output of shard ``part`` in ``epoch``, until it commits."""

    def stage_chunks(self, epoch: int, part: str,
                     chunks: Iterable[pa.RecordBatch | pa.Table]) -> int:
        """Stage the output of shard ``part`` in ``epoch`` given as a stream of chunks.

        Returns the rows staged (nothing is staged for 0 rows). The runtime calls it for
        the end of bounded input, whose output (every key's final value) it streams from
        the engine chunk by chunk. This default concatenates the chunks and calls
        :meth:`stage` once, so it holds the whole output in memory; :class:`ParquetSink`
        writes each chunk to its staged file as it comes (memory: one chunk).
        """
        tables = [as_table(c) for c in chunks]
        table = _concat([t for t in tables if t.num_rows])
        if table is None:
            return 0
        self.stage(epoch, part, table)
        return int(table.num_rows)

    @abstractmethod
    def publish(self, epoch: int) -> None:
        """Make the staged output of committed ``epoch`` visible; idempotent."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources at the end of a run."""

    def result(self) -> pa.Table | None:
        """The published output, for sinks that collect it (``None`` otherwise)."""
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-able description stored in epoch manifests."""
        return {"type": type(self).__name__}

    def late_sink(self) -> Sink | None:
        """Where late rows of ``late="emit"`` windows go (``None``: this sink has no place).

        A sink of the same kind beside this one; staged and published with the same
        epochs, so late rows are exactly-once too.
        """
        return None


class CollectSink(Sink):
    """Gather committed output in the driver; ``RunSummary.output`` returns it as a table.

    Holds every published row in driver memory, so it suits tests and small results:
    it is the one built-in sink whose rows travel through the driver (each shard's
    output rides its acknowledgement); use :class:`ParquetSink` for large output. It
    holds the output of the lineage this sink object has seen: a ``run(resume=True)`` of
    the same pipeline object adds to it (a rollback drops the abandoned epochs), a new run
    clears it. In a new process (after a driver crash) it starts with what that run
    publishes; earlier output was in the dead driver's memory.

    Example:
        >>> import pyarrow as pa
        >>> s = CollectSink()
        >>> s.start(None, new_run=True)
        >>> s.stage(1, "agg-0000", pa.table({"k": [1]}))
        >>> s.result() is None
        True
        >>> s.publish(1)
        >>> s.result().to_pydict()
        {'k': [1]}
    """

    def __init__(self, *, changelog: bool = False) -> None:
        self.changelog = changelog
        self._staged: dict[int, dict[str, pa.Table]] = {}
        self._published: dict[int, dict[str, pa.Table]] = {}

    def start(
        self, epoch: int | None, *, new_run: bool, abandoned: Sequence[Sequence[int]] = ()
    ) -> None:
        """Publish staged epochs ``<= epoch``, drop later and abandoned ones."""
        if new_run:
            self._published.clear()
        for e in sorted(self._staged):
            if _kept(e, epoch, abandoned):
                self._published.setdefault(e, {}).update(self._staged[e])
        self._staged.clear()
        for e in [e for e in self._published if not _kept(e, epoch, abandoned)]:
            del self._published[e]

    def stage(self, epoch: int, part: str, table: pa.Table) -> None:
        """Keep ``table`` in memory until ``publish(epoch)``.

        Every row a shard emits reaches the driver (with the shard's acknowledgement),
        the end of bounded input too: a shard streams its final values in chunks, which
        are concatenated into one table for this sink, so the output must fit in the
        shard's and the driver's memory. Not for big output: use :class:`ParquetSink`.
        """
        self._staged.setdefault(epoch, {})[part] = table

    def publish(self, epoch: int) -> None:
        """Move the staged tables of ``epoch`` to the result."""
        parts = self._staged.pop(epoch, None)
        if parts:
            self._published.setdefault(epoch, {}).update(parts)

    def epochs(self) -> dict[int, pa.Table]:
        """Published output per epoch (parts in shard order)."""
        return {
            e: _concat([parts[p] for p in sorted(parts)])
            for e, parts in sorted(self._published.items())
        }

    def result(self) -> pa.Table | None:
        """All published output in epoch order (``None`` before any output)."""
        tables = [t for t in self.epochs().values() if t is not None]
        return _concat(tables)

    def late_sink(self) -> Sink:
        """A second ``CollectSink``: ``RunSummary.late_output`` is its result."""
        return CollectSink()


def as_table(chunk: pa.RecordBatch | pa.Table) -> pa.Table:
    """``chunk`` as a ``pa.Table`` (a ``RecordBatch`` is wrapped, zero copy)."""
    return pa.Table.from_batches([chunk]) if isinstance(chunk, pa.RecordBatch) else chunk


def _kept(e: int, epoch: int | None, abandoned: Sequence[Sequence[int]]) -> bool:
    """True if epoch ``e`` is in the lineage ending at ``epoch``."""
    if epoch is None or e > epoch:
        return False
    return not any(lo <= e <= hi for lo, hi in abandoned)


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    tables = [t for t in tables if t is not None]
    if not tables:
        return None
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


class ParquetSink(Sink):
    """Write each epoch's output as Parquet files, published only when the epoch commits.

    Args:
        path: output directory (local path or fsspec URL). Published files are
            ``<path>/part-e<epoch>-<stage>-<shard>.parquet``; staged ones live in
            ``<path>/_staging/`` (ignored by ``pyarrow.dataset``/``pq.read_table(path)``
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

    def _list(self, staging: bool) -> dict[str, tuple[int, str]]:
        """Map full path -> (epoch, part) of raykv part files in the (staging) dir."""
        d = self._dir(staging)
        fs = self.fs
        if not fs.exists(d):
            return {}
        out: dict[str, tuple[int, str]] = {}
        for p in fs.ls(d, detail=False):
            parsed = parse_part_file_name(p.rstrip("/").rsplit("/", 1)[-1])
            if parsed is not None:
                out[p] = parsed
        return out

    def start(
        self, epoch: int | None, *, new_run: bool, abandoned: Sequence[Sequence[int]] = ()
    ) -> None:
        """Reconcile the directory with committed ``epoch`` (see the module docstring).

        Raises:
            FileExistsError: a new run found part files of an earlier run and
                ``overwrite`` is false.
        """
        fs = self.fs
        fs.makedirs(self._dir(), exist_ok=True)
        published = self._list(staging=False)
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
        for p, (e, part) in self._list(staging=True).items():
            if _kept(e, epoch, abandoned):
                self._move(p, f"{self._dir()}/{part_file_name(e, part)}")
            else:
                fs.rm(p)
        self._remove_partial_writes()
        for p, (e, _part) in published.items():
            if not _kept(e, epoch, abandoned):
                fs.rm(p)

    def _remove_partial_writes(self) -> None:
        """Delete ``_staging/.<id>.tmp`` files: writes of a shard that died mid-``stage``.

        Called by ``start``, when no shard of the run is alive (at the start of a run and
        after every recovery), so no such file is still being written.
        """
        d = self._dir(staging=True)
        if not self.fs.exists(d):
            return
        for p in self.fs.ls(d, detail=False):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(".") and name.endswith(".tmp"):
                self.fs.rm(p)

    def stage(self, epoch: int, part: str, table: pa.Table) -> None:
        """Write ``table`` to ``_staging/<name>`` (via a temporary name)."""
        import pyarrow.parquet as pq

        fs = self.fs
        d = self._dir(staging=True)
        fs.makedirs(d, exist_ok=True)
        final = f"{d}/{part_file_name(epoch, part)}"
        tmp = f"{d}/.{uuid.uuid4().hex}.tmp"
        with fs.open(tmp, "wb") as f:
            pq.write_table(table, f)
        self._move(tmp, final)

    def stage_chunks(self, epoch: int, part: str,
                     chunks: Iterable[pa.RecordBatch | pa.Table]) -> int:
        """Write the chunks as row groups of one staged file, as they come.

        One ``pq.ParquetWriter`` over ``_staging/.<id>.tmp`` (the file of :meth:`stage`,
        the same name once complete): each chunk is appended (one or more row groups),
        and only when the last one is written is the file closed and renamed to its
        staged name. A shard that dies mid-stream leaves the ``.tmp`` file, which
        ``start`` removes; so staged files are always complete, and exactly-once holds
        as with :meth:`stage`. A chunk of another schema than the first is cast to it
        (``TypeError`` if it cannot be). Memory: one chunk plus the writer's buffers.
        """
        import pyarrow.parquet as pq

        fs = self.fs
        d = self._dir(staging=True)
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
        """Move the staged files of ``epoch`` next to the published ones."""
        for p, (e, part) in self._list(staging=True).items():
            if e == epoch:
                self._move(p, f"{self._dir()}/{part_file_name(e, part)}")

    def _move(self, src: str, dst: str) -> None:
        fs = self.fs
        if type(fs).__name__ == "LocalFileSystem":
            os.replace(src, dst)
        else:
            fs.mv(src, dst)

    def read(self) -> pa.Table:
        """Read all published output, in epoch order."""
        import pyarrow.parquet as pq

        files = sorted(self._list(staging=False))
        if not files:
            msg = f"ParquetSink {self.path!r} has no published output"
            raise FileNotFoundError(msg)
        return pa.concat_tables(
            [pq.read_table(p, filesystem=self.fs) for p in files], promote_options="permissive"
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


__all__ = ["LATE_PART", "CollectSink", "ParquetSink", "Sink",
           "parse_part_file_name", "part_file_name", "part_name"]
