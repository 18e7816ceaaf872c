"""Watermarks from the sources: ``Watermark`` (the user's config) and each reader's clock.

A watermark ``w`` is the promise "no more rows with an event time below ``w``" (rows
that break it are *late*; the window operators count them, drop or emit them). The user
names the event-time column and the bound on out-of-orderness once, for the source::

    Pipeline(..., watermark=Watermark("ts", max_delay=timedelta(seconds=5), idle_timeout=30))

How it travels (docs/runtime.md, "Event time"):

* **Split.** Each split tracks the largest event time it has delivered (``max_s``); its
  watermark is ``max_s - max_delay``. The largest event time of every split is stored in
  each epoch with its offset, so the watermarks survive restore, rollback and rescale.
* **Reader** (:class:`ReaderClock`). Its watermark is the minimum over its *active*
  splits (a bounded source's reader reads its splits one after the other: the active
  one is the split it reads; an unbounded source's reader reads all of its splits in
  turn). A split that delivered no row for ``idle_timeout`` seconds stops holding it
  back; a split that ended too. It never goes back: the splits a reader finished set its
  floor. With every active split idle or ended the reader is *idle* and holds back no
  shard. Sent with every barrier.
* **Shard.** At an aligned barrier: the minimum over its non-idle inputs (all idle: the
  largest of them); the window operators close their windows by it
  (``advance_watermark``) and the shard sends it on with its own barrier, so it reaches
  every stage.

Units: the watermark is an int in the units of the column's int64 value (a timestamp's
unit, or the integer itself); ``max_delay`` is an int in those units or a ``timedelta``
(timestamp columns).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc

from raykv.operators.watermark import check_span, to_units


@dataclass(frozen=True)
class Watermark:
    """Where event time comes from and how late rows may be (see the module docstring).

    Attributes:
        column: the event-time column (a signed integer or a timestamp) of every split.
        max_delay: how far behind the largest event time seen a row may still arrive
            (out-of-orderness bound): an int in the column's units or a ``timedelta``.
        idle_timeout: seconds without a row after which a split stops holding the
            watermark back (``None``: never; a quiet split then stalls event time).
    """

    column: str
    max_delay: int | timedelta = 0
    idle_timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column:
            msg = f"Watermark.column must be a non-empty column name, got {self.column!r}"
            raise TypeError(msg)
        check_span("Watermark", "max_delay", self.max_delay, positive=False)
        t = self.idle_timeout
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or t <= 0):
            msg = f"Watermark.idle_timeout must be a number of seconds > 0 or None, got {t!r}"
            raise ValueError(msg)


def batch_max_time(batch: pa.RecordBatch, column: str, split: str | None) -> int | None:
    """The largest event time in ``batch`` as the column's int64 value (``None``: no rows).

    Raises:
        ValueError: the column is missing (names the split).
        TypeError: the column is neither a signed integer nor a timestamp.
    """
    where = f" in a batch of split {split!r}" if split is not None else ""
    if column not in batch.schema.names:
        msg = (f"the watermark column {column!r} is missing{where} (columns: "
               f"{batch.schema.names}); every split must carry the event-time column")
        raise ValueError(msg)
    col = batch.column(column)
    t = col.type
    if pa.types.is_timestamp(t):
        col = col.view(pa.int64())
    elif not pa.types.is_signed_integer(t):
        msg = (f"the watermark column {column!r} is {t}{where}; it must be a signed "
               "integer or a timestamp")
        raise TypeError(msg)
    m = pc.max(col).as_py()
    return None if m is None else int(m)


class ReaderClock:
    """The watermark of one reader over its splits (see the module docstring).

    Args:
        config: the pipeline's :class:`Watermark`.
        maxes: the largest event time of each split at the committed epoch.
        now: processing-time clock (seconds) for ``idle_timeout``.
    """

    def __init__(self, config: Watermark, maxes: Mapping[str, int] | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._maxes: dict[str, int] = dict(maxes or {})
        self._now = now
        self._last_rows: dict[str, float] = {}
        self._delay: int | None = None
        self._watermark: int | None = None

    def observe(self, split: str, batch: pa.RecordBatch) -> None:
        """Account for a batch delivered by ``split`` (a missing column raises)."""
        m = batch_max_time(batch, self.config.column, split)
        if self._delay is None:
            self._delay = to_units("Watermark", "max_delay", self.config.max_delay,
                                   batch.schema.field(self.config.column).type)
        self._last_rows[split] = self._now()
        if m is not None and (split not in self._maxes or m > self._maxes[split]):
            self._maxes[split] = m

    def maxes(self) -> dict[str, int]:
        """The largest event time of every split that delivered one (stored per epoch)."""
        return dict(self._maxes)

    def mark(self, active: Collection[str], done: Collection[str]) -> tuple[int | None, bool]:
        """``(watermark, idle)`` now, given the splits being read and those that ended.

        Cost: O(splits).
        """
        delay = self._delay
        if delay is None and isinstance(self.config.max_delay, int):
            delay = self.config.max_delay
        if delay is None:  # a timedelta before any row: the unit is not known yet
            return self._watermark, not active
        timeout, now = self.config.idle_timeout, self._now()
        holding = [s for s in active if timeout is None
                   or now - self._last_rows.setdefault(s, now) < timeout]
        if holding:
            known = [self._maxes.get(s) for s in holding]
            candidate = None if None in known else min(m for m in known if m is not None)
        else:  # idle or ended: the largest time it ever saw
            candidate = max(self._maxes.values(), default=None)
        floor = max((self._maxes[s] for s in done if s in self._maxes), default=None)
        for m in (candidate, floor):
            if m is not None and (self._watermark is None or m - delay > self._watermark):
                self._watermark = m - delay
        return self._watermark, not holding


def combine(marks: Collection[tuple[int | None, bool]]) -> tuple[int | None, bool]:
    """A shard's ``(watermark, idle)`` from its inputs' barrier marks.

    The minimum over the inputs that are not idle (``None`` if one of them has none yet);
    with every input idle, the largest watermark and idle.
    """
    active = [wm for wm, idle in marks if not idle]
    if active:
        return (None if None in active else min(w for w in active if w is not None)), False
    return max((wm for wm, _ in marks if wm is not None), default=None), True


__all__ = ["ReaderClock", "Watermark", "batch_max_time", "combine"]
