"""State that expires (issue 13 item 5): ``ttl=`` of ``Aggregate``, ``Reduce``, ``StatefulMap``.

Config: ``ttl=TTL(span)`` (or a plain number/``timedelta``: processing time) expires a
key's state ``span`` after its last update:

* ``TTL(seconds)`` / ``TTL(seconds, time="processing")``: ``span`` in seconds (int, float
  or ``timedelta``) of the shard's wall clock. A write stamps each key it writes with
  ``now + span``; at each barrier the horizon becomes ``now``.
* ``TTL(span, time="event", column="ts")``: ``span`` in the units of the signed-integer
  or timestamp column ``column`` (an int, or a ``timedelta`` for a timestamp column). A
  write stamps each key with ``max(its stamp, largest event time of its rows + span)``;
  the horizon is ``watermark + 1``, where the watermark is the last one passed to
  ``logic.advance_watermark(wm)`` before the barrier (the same seam the windows use).

**Expired** means ``stamp < horizon``: for event time, the watermark has passed the key's
latest event time plus ``span``. The horizon moves only in ``on_barrier``/``changelog``
(after the epoch's output is computed), never goes back, and is stored under
``TTL_KEY`` with the state, so a restored epoch resumes with its own horizon. With event
time a replay of the same epochs (same rows, same watermarks) expires the same keys; with
processing time a replay decides again with the new clock readings (documented, like
Flink's processing-time TTL).

Stamps: the first 8 bytes of every stored value (``raykv.engines.expiry``). The logic
checks the stamp on every read (an expired key reads as absent at once, before any
merge) and tells the engine the horizon (``KVStore.set_expiry``), whose own merges then
drop the expired records: store size follows live state.

Silent expiry: an expired key emits nothing (no ``-D``), like Flink's state TTL. When
rows for it arrive again, its state starts from empty and the changelog shows an insert
(``+I``), so a downstream stage that retracts still holds the expired value: give the
downstream stage a TTL too.

The runtime's part (not done by this module): call ``logic.advance_watermark(wm)`` with
the shard's watermark before ``on_barrier``/``changelog`` of every epoch, for stages
whose operator has an event-time TTL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.engines.expiry import STAMP, STAMP_LEN, STAMP_MAX
from raykv.operators.base import META_KEYS, TTL_KEY
from raykv.operators.watermark import int64_times, to_units

TIMES = ("processing", "event")
#: No horizon yet (nothing expires).
NO_HORIZON = -(1 << 63)
_STAMP_MIN = -(1 << 63)


@dataclass(frozen=True)
class TTL:
    """How long a key's state lives after its last update (see the module docstring).

    Attributes:
        span: ``> 0``; seconds (processing) or time-column units (event).
        time: ``"processing"`` (default) or ``"event"``.
        column: the event-time column (required for, and only for, event time).
    """

    span: int | float | timedelta
    time: str = "processing"
    column: str | None = None

    def __post_init__(self) -> None:
        if self.time not in TIMES:
            msg = f"TTL.time must be one of {TIMES}, got {self.time!r}"
            raise ValueError(msg)
        span = self.span
        ok_types: tuple[type, ...] = (int, float, timedelta) if self.time == "processing" \
            else (int, timedelta)
        if isinstance(span, bool) or not isinstance(span, ok_types):
            msg = (
                f"TTL.span must be {' or '.join(t.__name__ for t in ok_types)} for "
                f"{self.time} time, got {type(span).__name__}"
            )
            raise TypeError(msg)
        if (span <= timedelta(0)) if isinstance(span, timedelta) else not span > 0:
            msg = f"TTL.span must be > 0, got {span!r}"
            raise ValueError(msg)
        if self.time == "event" and not (isinstance(self.column, str) and self.column):
            msg = "an event-time TTL needs the time column: TTL(span, time='event', column=...)"
            raise ValueError(msg)
        if self.time == "processing" and self.column is not None:
            msg = "TTL.column is for event time; pass time='event' or drop the column"
            raise ValueError(msg)


def normalize_ttl(value: object, owner: str) -> TTL | None:
    """``ttl=`` as a :class:`TTL`: ``None``, a ``TTL``, or seconds of processing time."""
    if value is None or isinstance(value, TTL):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        msg = (
            f"{owner}.ttl must be a TTL, seconds (int/float/timedelta) or None, "
            f"got {type(value).__name__}"
        )
        raise TypeError(msg)
    try:
        return TTL(value)
    except ValueError as err:
        msg = f"{owner}.ttl: {err}"
        raise ValueError(msg) from None


class ExpiryState:
    """The TTL bookkeeping of one keyed logic on one shard: stamps, horizon, clock.

    ``clock`` (processing time) returns nanoseconds; tests replace it. Cost per read or
    write: one 8-byte slice and compare (or pack) per value.
    """

    def __init__(self, ttl: TTL, store: KVStore) -> None:
        self.ttl = ttl
        self.store = store
        self.clock: Callable[[], int] = time.time_ns
        self.horizon = NO_HORIZON
        self.watermark: int | None = None
        self.span = 0
        if ttl.time == "processing":
            s = ttl.span
            self.span = int((s.total_seconds() if isinstance(s, timedelta) else s) * 1e9)
        raw = store.get(TTL_KEY)
        if raw:
            (self.horizon,) = STAMP.unpack(raw)
            store.set_expiry(self.horizon, keep=META_KEYS)

    @property
    def event(self) -> bool:
        """Whether expiry follows event time."""
        return self.ttl.time == "event"

    def setup(self, schema: pa.Schema, owner: str) -> None:
        """Check the time column of an event-time TTL and convert its span."""
        if not self.event:
            return
        col = self.ttl.column
        if col not in schema.names:
            msg = f"{owner}: TTL time column {col!r} is missing; the columns are {schema.names}"
            raise ValueError(msg)
        t = schema.field(col).type
        if not (pa.types.is_signed_integer(t) or pa.types.is_timestamp(t)):
            msg = (f"{owner}: TTL time column {col!r} must be a signed integer or "
                   f"timestamp, it is {t}")
            raise TypeError(msg)
        span = self.ttl.span
        assert not isinstance(span, float)
        self.span = to_units(owner, "ttl.span", span, t)

    # ------------------------------------------------------------------ values

    def split(self, raw: Sequence[bytes]) -> tuple[list[bytes], list[int]]:
        """Stored values -> ``(values, stamps)``: stamp stripped; expired or absent: ``b""``.

        The stamp of an absent or expired value is ``_STAMP_MIN``.
        """
        h = self.horizon
        values: list[bytes] = []
        stamps: list[int] = []
        unpack = STAMP.unpack_from
        for v in raw:
            if len(v) > STAMP_LEN:
                (s,) = unpack(v)
                if s >= h:
                    values.append(v[STAMP_LEN:])
                    stamps.append(s)
                    continue
            values.append(b"")
            stamps.append(_STAMP_MIN)
        return values, stamps

    def stamp(self, values: Sequence[bytes], stamps: Sequence[int]) -> list[bytes]:
        """Values to store: each non-empty value behind its stamp (``b""`` stays a delete)."""
        pack = STAMP.pack
        return [pack(s) + v if v else b"" for v, s in zip(values, stamps, strict=True)]

    def fresh_stamps(self, n: int, times: np.ndarray | None = None) -> np.ndarray:
        """Stamps of ``n`` keys updated now: ``clock() + span`` (processing), else ``times + span``.

        ``times``: per key, the largest event time of its rows (event time only).
        """
        if not self.event:
            return np.full(n, min(self.clock() + self.span, STAMP_MAX), dtype=np.int64)
        assert times is not None
        top = STAMP_MAX - self.span
        out: np.ndarray = np.minimum(times, top) + self.span
        return out

    def times(self, batch: pa.RecordBatch, owner: str) -> np.ndarray:
        """The TTL time column of ``batch`` as int64 (``ValueError`` naming a null row)."""
        assert self.ttl.column is not None
        col = batch.column(self.ttl.column)
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            msg = f"{owner}: TTL time column {self.ttl.column!r} has a null at row {row}"
            raise ValueError(msg)
        return int64_times(col)

    # ------------------------------------------------------------------ horizon

    def advance_watermark(self, watermark: int | None) -> None:
        """Remember the watermark for the next barrier (event time; never goes back)."""
        if watermark is None:
            return
        if type(watermark) is not int and not isinstance(watermark, np.integer):
            msg = f"a watermark must be an int (time-column units), got {watermark!r}"
            raise TypeError(msg)
        if self.watermark is None or watermark > self.watermark:
            self.watermark = int(watermark)

    def end_epoch(self) -> None:
        """At a barrier: move the horizon, store it, hand it to the engine's merges."""
        if self.event:
            new = NO_HORIZON if self.watermark is None else min(self.watermark, STAMP_MAX - 1) + 1
        else:
            new = self.clock()
        if new <= self.horizon:
            return
        self.horizon = new
        self.store.set(TTL_KEY, STAMP.pack(new))
        self.store.set_expiry(new, keep=META_KEYS)
