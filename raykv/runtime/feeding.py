"""Feeding the first stage: read the source, check, split, send with backpressure, barriers.

Contract: :meth:`Feeder.feed` runs one attempt's input loop in the driver: it reads
batches from the source reader, splits each by the first stage's partitioning (key
checks first, then the schema must equal the first batch's), sends the pieces to the
first-stage shards with at most ``max_inflight`` calls in flight per shard (backpressure,
and where a dead actor surfaces), and ends an epoch every ``epoch_every_batches``
batches or ``checkpoint_interval`` seconds with :meth:`Feeder.barrier`: ``barrier(e)``
(``finish(e)`` for the last) to every first-stage shard, then the epoch is submitted to
the committer with every shard's ``wait_uploaded(e)``. Right after a barrier, planned
rebalances are carried out (in-flight calls drained first).

The feeder is a part of the :class:`~raykv.runtime.coordinator.Coordinator` and holds a
reference to it. It reads ``p`` (the pipeline), ``clock``, ``_stages[0]``, ``_actors[0]``,
``_handles``, ``_committer``, ``_metrics``, ``rebalancer`` and ``_user_code``; it writes
``_next_epoch`` (one up per barrier) and emits ``"barrier"`` events. It owns the schema
of the first batch (kept across attempts) and the current epoch's row and batch counts.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from raykv.operators.schemas import describe_schema_change
from raykv.partitioning import split_batch
from raykv.runtime.committer import Committer, PendingEpoch
from raykv.runtime.failures import shard_get
from raykv.sources import StopSource

if TYPE_CHECKING:
    from raykv.runtime.coordinator import Coordinator

IDLE_SLEEP = 0.005


class Feeder:
    """The driver's input loop and barriers (see the module docstring)."""

    def __init__(self, coord: Coordinator) -> None:
        self._coord = coord
        self._schema: pa.Schema | None = None
        self.rows_epoch = 0
        self.batches_epoch = 0

    def feed(self, reader: Any, committer: Committer) -> bool:
        """Send the input until it ends (``False``) or the run is stopped (``True``)."""
        c = self._coord
        p = c.p
        actors = c._actors[0]
        inflight: list[deque[Any]] = [deque() for _ in actors]
        every = p.epoch_every_batches
        interval = p.checkpoint_interval if every is None else None
        self.batches_epoch = 0
        last = c.clock()
        while True:
            committer.check()
            if p.stop_requested:
                return True
            if c.rebalancer.planned and not self.batches_epoch:  # right after a barrier
                for q in inflight:
                    shard_get(list(q))
                    q.clear()
                c.rebalancer.apply(committer)
            try:
                with c._user_code(f"source {type(p.source).__name__}.read", c._next_epoch):
                    batch = reader.read()
            except StopSource:
                return True
            if batch is None:
                return False
            first = c._stages[0]
            if batch.num_rows:
                parts = split_batch(batch, first.key, first.partitioning)  # key checks first
                self.check_schema(batch)
                for i, sub in parts.items():
                    q = inflight[i]
                    q.append(actors[i].process.remote(sub))
                    if len(q) > p.max_inflight:
                        shard_get(q.popleft())
                c._metrics.inflight(first, inflight)
                self.rows_epoch += batch.num_rows
                self.batches_epoch += 1
            else:
                time.sleep(IDLE_SLEEP)
            if every is not None and self.batches_epoch >= every:
                committer.wait_below(p.max_pending_epochs)
                self.barrier(reader.offset, final=False)
            elif (
                interval is not None
                and self.batches_epoch
                and c.clock() - last >= interval
                and committer.pending < p.max_pending_epochs
            ):
                self.barrier(reader.offset, final=False)
                last = c.clock()

    def check_schema(self, batch: pa.RecordBatch) -> None:
        """Raise ``ValueError`` if ``batch``'s schema differs from the first batch's."""
        if self._schema is None:
            self._schema = batch.schema
            return
        if batch.schema.equals(self._schema):
            return
        msg = f"a source batch changed schema: {_schema_diff(self._schema, batch.schema)}"
        raise ValueError(msg)

    def barrier(self, offset: Any, *, final: bool) -> None:
        """End the current epoch at source ``offset`` (``finish`` when ``final``)."""
        c = self._coord
        epoch = c._next_epoch
        c._next_epoch += 1
        for a in c._actors[0]:
            (a.finish if final else a.barrier).remote(epoch)
        refs = {name: h.wait_uploaded.remote(epoch) for name, h in c._handles.items()}
        assert c._committer is not None
        c._committer.submit(PendingEpoch(epoch, refs, _copy_json(offset), self.rows_epoch, final))
        self.rows_epoch = 0
        self.batches_epoch = 0
        c._emit("barrier", epoch, final=final)


def _copy_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy_json(v) for v in value]
    return value


def _schema_diff(expected: pa.Schema, got: pa.Schema) -> str:
    return (
        describe_schema_change(expected, got)
        + f" (expected {expected.names} as in the first batch); every batch must have one schema"
    )


__all__ = ["IDLE_SLEEP", "Feeder"]
