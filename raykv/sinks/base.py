"""The sink protocol (:class:`Sink`), the driver-side :class:`CollectSink` and part names.

The protocol and its exactly-once argument: the package docstring (``raykv.sinks``).
"""

from __future__ import annotations

import re
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

    def for_attempt(self, writer: str, committed: str | None) -> Sink:
        """This sink as the run attempt ``writer`` uses it: the fence against stale writers.

        The coordinator calls it at the start of every run attempt, with a new unique
        ``writer`` and ``committed``, the writer of the attempt that committed the epoch
        ``start`` is called with (``None``: none recorded, as in checkpoints of raykv
        before writers existed), and uses what it returns for ``start``, ``publish``,
        ``close`` and the shards' ``stage``. A sink that ``stages_on_shards`` must never
        publish output another writer staged: a shard of a failed attempt can still be
        writing after the recovery's ``start`` (a survivor completing the upload that was
        running when it was stopped, or a process Ray already reported dead), and its
        output of an epoch the new attempt replays can differ from the replay's (an
        epoch's batches depend on timing). Default: ``self``; a sink staged in the driver
        receives only the current attempt's output, with its acknowledgements.
        """
        return self

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
            if kept(e, epoch, abandoned):
                self._published.setdefault(e, {}).update(self._staged[e])
        self._staged.clear()
        for e in [e for e in self._published if not kept(e, epoch, abandoned)]:
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


def kept(e: int, epoch: int | None, abandoned: Sequence[Sequence[int]]) -> bool:
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


__all__ = ["LATE_PART", "CollectSink", "Sink", "as_table", "kept", "parse_part_file_name",
           "part_file_name", "part_name"]
