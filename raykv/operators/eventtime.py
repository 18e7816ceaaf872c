"""The layer all event-time windows share: config checks, time column, late rows, clock.

Contract: :class:`EventTimeWindow` is the config base of ``TumblingWindow``,
``SlidingWindow`` and ``SessionWindow`` (each declares its own dataclass fields:
``time_column``, its spans, ``aggs``, ``allowed_lateness``, ``late``); its
:meth:`~EventTimeWindow._check_window` validates them before anything runs.
:class:`EventTimeLogic` is their logic base over ``KeyedStateLogic``: it checks the time
column (present, signed integer or timestamp, no nulls, within +-2**62), holds the
:class:`~raykv.operators.watermark.EventClock`, and handles late rows.

Late rows (issue 13 item 4). A row is *late* when the window it would count in has
already closed by the watermark in force when it arrives (each operator states its exact
rule). Late rows never change state. They are counted in ``late_events`` (stored with the
state, so it survives restore) whatever ``late`` says; with ``late="emit"`` they are also
kept, unchanged (the input rows, input schema), and after ``on_barrier(e)`` or
``finish()`` :meth:`EventTimeLogic.late_rows` returns the late rows of that epoch, once.

What the runtime does with them (``raykv/runtime/shard.py``): right after
``on_barrier(e)``/``finish()`` of a stage whose operator has ``late == "emit"`` it calls
``logic.late_rows()`` and treats a non-``None`` result as a second output of epoch ``e``:
staged under ``sinks.LATE_PART + part`` in the sink's ``late_sink()`` (``ParquetSink``:
``<path>/_late/``; ``CollectSink``: ``RunSummary.late_output``) and published at the
commit of ``e`` like the main output. Replay after a failure recomputes the same rows,
because they are only kept in memory until the barrier that ends their epoch. A
``late_rows()`` result not fetched before the next barrier is replaced (memory stays
bounded by one epoch's late rows).

Watermark from outside (issue 13 item 1): the runtime calls
:meth:`EventTimeLogic.advance_watermark` (``(advance_watermark process*)* ... on_barrier``)
once the shard knows the sources' watermark, at least before each ``on_barrier``; from the
first call the operator stops deriving its watermark from its rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import ClassVar

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.operators.aggspec import normalize_aggs
from raykv.operators.aggstate import AggLayout
from raykv.operators.base import WATERMARK_KEY, KeyedOperator
from raykv.operators.keyed_state import KeyedStateLogic
from raykv.operators.watermark import (
    EventClock,
    check_span,
    check_time_column,
    int64_times,
    merge_records,
    time_type,
    to_units,
)

WINDOW_START = "window_start"
WINDOW_END = "window_end"
LATE_MODES = ("drop", "emit")
#: Event times must lie strictly within +-TIME_LIMIT (room for window arithmetic).
TIME_LIMIT = 1 << 62


class EventTimeWindow(KeyedOperator):
    """Config base of the event-time windows (the subclasses declare the fields)."""

    time_column: str
    aggs: Mapping[str, Sequence[str]]
    allowed_lateness: int | timedelta
    late: str

    key_suffix_len: ClassVar[int] = 8
    #: Each shard closes windows by its own watermark, so moving a key to another shard
    #: could change which of its windows close when: never rebalanced.
    rebalance_safe: ClassVar[bool] = False

    def _check_window(self, spans: Sequence[tuple[str, object]]) -> None:
        """Validate the common fields and the ``(name, value)`` spans (all ``> 0``)."""
        owner = type(self).__name__
        check_time_column(owner, self.time_column, self.key)
        for name, value in spans:
            check_span(owner, name, value, positive=True)
        check_span(owner, "allowed_lateness", self.allowed_lateness, positive=False)
        if self.late not in LATE_MODES:
            msg = f"{owner}.late must be one of {LATE_MODES}, got {self.late!r}"
            raise ValueError(msg)
        object.__setattr__(self, "aggs", normalize_aggs(self.aggs, owner))
        names = [self.key, WINDOW_START, WINDOW_END]
        names += [f"{c}_{op}" for c, ops in self.aggs.items() for op in ops]
        if len(set(names)) != len(names):
            msg = f"{owner}: output column names clash: {names}"
            raise ValueError(msg)

    def merge_metadata(self, key: bytes, values: Sequence[bytes]) -> bytes:
        """Merge old shards' watermarks: the largest event time, the sum of late events.

        Taking the largest watermark means no window closed by any old shard can re-open
        (which would emit it twice); windows of other shards that it passes close at the
        next barrier.
        """
        if key != WATERMARK_KEY:
            return super().merge_metadata(key, values)
        return merge_records(values)


class EventTimeLogic(KeyedStateLogic):
    """Logic base of the event-time windows (see the module docstring)."""

    op: EventTimeWindow

    def __init__(self, op: EventTimeWindow, store: KVStore) -> None:
        self.layout: AggLayout | None = None
        self._time_type: pa.DataType | None = None
        self.clock = EventClock(store)
        self._late_pending: list[pa.RecordBatch] = []
        self._late_epoch: list[pa.RecordBatch] = []
        super().__init__(op, store)

    # ------------------------------------------------------------------ hooks

    def _setup_spans(self, t: pa.DataType) -> None:
        """Convert the operator's spans to units of time column type ``t``."""

    # ------------------------------------------------------------------ clock

    @property
    def watermark(self) -> int | None:
        """The watermark (time-column units; ``None`` before any event)."""
        return self.clock.watermark

    @property
    def late_events(self) -> int:
        """Events found late so far (dropped or emitted; survives restore)."""
        return self.clock.late_events

    def advance_watermark(self, watermark: int | None) -> None:
        """Set the watermark from outside (the runtime; see the module docstring).

        From the first call on, rows no longer move the watermark: it is ``watermark``
        minus ``allowed_lateness``, and it never goes back. The next ``on_barrier`` closes
        the windows it passes. Cost: one small ``set``.
        """
        self.clock.advance(watermark, self.store)

    # ------------------------------------------------------------------ late rows

    def late_rows(self) -> pa.RecordBatch | None:
        """The late rows of the epoch the last ``on_barrier``/``finish`` ended, once.

        The input rows unchanged (input schema, arrival order); ``None`` if there were
        none or ``late="drop"``. A second call returns ``None``.
        """
        rows, self._late_epoch = self._late_epoch, []
        if not rows:
            return None
        if len(rows) == 1:
            return rows[0]
        return pa.concat_batches(rows)

    # ------------------------------------------------------------------ closing

    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        """Emit (and delete) what the watermark closed: :meth:`_close` of it."""
        self._end_epoch()
        wm = self.watermark
        return None if wm is None else self._close(wm)

    def finish(self) -> pa.RecordBatch | None:
        """Emit and delete everything still open (bounded input has ended)."""
        self._end_epoch()
        self._changed = set()
        return self._close(None)

    def _close(self, watermark: int | None) -> pa.RecordBatch | None:
        """Emit and delete the windows ``watermark`` closes (``None``: all); each kind's."""
        raise NotImplementedError

    def _end_epoch(self) -> None:
        """Move the late rows received since the last barrier to :meth:`late_rows`."""
        self._late_epoch, self._late_pending = self._late_pending, []

    @staticmethod
    def _without_late(batch: pa.RecordBatch, buckets: np.ndarray, late: np.ndarray
                      ) -> tuple[pa.RecordBatch, np.ndarray, int]:
        """``batch`` and its rows' window/pane starts without the late rows; their count."""
        n_late = int(late.sum())
        if not n_late:
            return batch, buckets, 0
        keep = ~late
        return batch.filter(pa.array(keep)), buckets[keep], n_late

    def _keep_late(self, batch: pa.RecordBatch, late: np.ndarray) -> None:
        """Keep ``batch``'s late rows for :meth:`late_rows` (after the batch applied)."""
        if self.op.late == "emit" and late.any():
            self._late_pending.append(batch.filter(pa.array(late)))

    # ------------------------------------------------------------------ schema

    def _setup(self, schema: pa.Schema) -> None:
        owner = self._name()
        op = self.op
        t = time_type(owner, schema, op.time_column)
        self._time_type = t
        self._setup_spans(t)
        self.clock.set_lateness(to_units(owner, "allowed_lateness", op.allowed_lateness, t))
        self.layout = AggLayout(op.aggs, schema, owner)
        self._out_schema = pa.schema(
            [
                pa.field(self.key, schema.field(self.key).type),
                pa.field(WINDOW_START, t),
                pa.field(WINDOW_END, t),
                *self.layout.output_fields(),
            ]
        )

    def _times(self, batch: pa.RecordBatch, *, check_range: bool = True) -> np.ndarray:
        """The time column as int64 (``ValueError`` naming the row for a null/out of range)."""
        tcol = batch.column(self.op.time_column)
        if tcol.null_count:
            row = int(np.flatnonzero(tcol.is_null().to_numpy(zero_copy_only=False))[0])
            msg = f"{self._name()}: time column {self.op.time_column!r} has a null at row {row}"
            raise ValueError(msg)
        t = int64_times(tcol)
        if check_range and len(t) and (t.min() <= -TIME_LIMIT or t.max() >= TIME_LIMIT):
            row = int(np.flatnonzero((t <= -TIME_LIMIT) | (t >= TIME_LIMIT))[0])
            msg = (
                f"{self._name()}: time column {self.op.time_column!r} holds {int(t[row])} at "
                f"row {row}, outside the supported range (-2**62, 2**62)"
            )
            raise ValueError(msg)
        return t
