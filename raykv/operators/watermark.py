"""The event clock of window operators: watermark, lateness, late count, their persistence.

Contract: one :class:`EventClock` per window logic owns the shard's event-time bookkeeping
that ``TumblingWindow``, ``SlidingWindow`` and ``SessionWindow`` share:

* the **watermark** (``None`` before any event) in the time column's integer units;
* in *derived* mode (the default): the largest event time seen minus ``allowed_lateness``,
  advanced row by row (:meth:`EventClock.running`: the watermark in force when each row of
  a batch arrives, that row included);
* in *external* mode: the watermark set from outside by :meth:`EventClock.advance` (the
  runtime, from the sources' watermarks, issue 13 item 1) minus ``allowed_lateness``,
  constant between two calls; the first call switches the clock to this mode for good;
* the count of late events (``late_events``);
* its persistence under ``WATERMARK_KEY``: ``<qq`` (largest event time seen, late events)
  in derived mode, the format ``TumblingWindow`` always wrote, plus a third ``q`` (the
  external watermark) once external. :meth:`EventClock.pending` returns the record to
  write with a batch's ``multi_set`` and :meth:`EventClock.commit` applies it after the
  write succeeded, so a failed batch changes neither state nor clock.

A rescale merges the records of several old shards (:func:`merge_records`): the largest
event time and external watermark, the sum of the late counts.

Also here: the checks and unit conversions of the window spans (``size``, ``slide``,
``gap``, ``allowed_lateness``: an int in the time column's unit, or a ``timedelta`` for a
timestamp column) and the int64 view of a time column.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.operators.base import WATERMARK_KEY

_DERIVED = struct.Struct("<qq")  # largest event time seen, late events
_EXTERNAL = struct.Struct("<qqq")  # ... plus the watermark set from outside
#: "none" in a stored int64 field (no event seen / no external watermark yet).
NONE = -(1 << 63)
_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


class EventClock:
    """Watermark bookkeeping of one window logic on one shard (see the module docstring).

    Args:
        store: the shard's engine; the clock resumes from its ``WATERMARK_KEY`` record.

    ``lateness`` (time-column units) is set by the logic once the time column's type is
    known (:meth:`set_lateness`).
    """

    def __init__(self, store: KVStore) -> None:
        self.lateness = 0
        #: Largest event time seen (``None`` before any event).
        self.max_time: int | None = None
        #: Events found late (dropped or emitted on the late output); survives restore.
        self.late_events = 0
        #: Whether the watermark comes from outside (:meth:`advance`).
        self.external = False
        self._external_wm: int | None = None
        raw = store.get(WATERMARK_KEY)
        if raw:
            self._load(raw)

    def _load(self, raw: bytes) -> None:
        if len(raw) == _EXTERNAL.size:
            max_time, self.late_events, ext = _EXTERNAL.unpack(raw)
            self.external = True
            self._external_wm = None if ext == NONE else ext
        else:
            max_time, self.late_events = _DERIVED.unpack(raw)
        self.max_time = None if max_time == NONE else max_time

    def set_lateness(self, lateness: int) -> None:
        """Set ``allowed_lateness`` in the time column's integer units."""
        self.lateness = lateness

    @property
    def watermark(self) -> int | None:
        """The watermark now: rows whose window ends at or before it are late."""
        if self.external:
            return None if self._external_wm is None else self._external_wm - self.lateness
        return None if self.max_time is None else self.max_time - self.lateness

    def running(self, times: np.ndarray) -> np.ndarray:
        """The watermark in force at each row of a batch (int64; ``NONE``: no watermark).

        Derived mode: the running maximum of the event times (each row's own included)
        and the largest time seen before, minus the lateness. External mode: the current
        watermark for every row. Cost: O(rows) numpy.
        """
        if self.external:
            wm = self.watermark
            return np.full(len(times), NONE if wm is None else wm, dtype=np.int64)
        seen = np.maximum.accumulate(times)
        if self.max_time is not None:
            seen = np.maximum(seen, self.max_time)
        return seen - self.lateness

    def pending(self, times: np.ndarray, n_late: int) -> list[tuple[bytes, bytes]]:
        """The record to write with a batch of ``times`` that had ``n_late`` late rows.

        Empty when nothing changes. Call :meth:`commit` with the same arguments once the
        write succeeded.
        """
        max_time = self._new_max(times)
        if max_time == self.max_time and not n_late:
            return []
        return [(WATERMARK_KEY, self._record(max_time, self.late_events + n_late))]

    def commit(self, times: np.ndarray, n_late: int) -> None:
        """Apply a batch whose :meth:`pending` record was written."""
        self.max_time = self._new_max(times)
        self.late_events += n_late

    def advance(self, watermark: int | None, store: KVStore) -> None:
        """Set the watermark from outside (external mode from now on) and persist it.

        ``watermark`` is in the time column's integer units (a timestamp column's int64
        value); ``None`` switches to external mode before any watermark is known. A
        watermark behind the current one is ignored (watermarks never go back). The
        operator's ``allowed_lateness`` is subtracted (:attr:`watermark`). Cost: one
        ``set`` of a 24-byte record.
        """
        if watermark is not None and (type(watermark) is not int and not isinstance(
                watermark, np.integer)):
            msg = f"a watermark must be an int (time-column units), got {watermark!r}"
            raise TypeError(msg)
        if watermark is not None and (self._external_wm is None or watermark > self._external_wm):
            self._external_wm = int(watermark)
        self.external = True
        store.set(WATERMARK_KEY, self._record(self.max_time, self.late_events))

    def _new_max(self, times: np.ndarray) -> int | None:
        if not len(times):
            return self.max_time
        top = int(times.max())
        return top if self.max_time is None else max(top, self.max_time)

    def _record(self, max_time: int | None, late: int) -> bytes:
        mt = NONE if max_time is None else max_time
        if not self.external:
            return _DERIVED.pack(mt, late)
        ext = NONE if self._external_wm is None else self._external_wm
        return _EXTERNAL.pack(mt, late, ext)


def merge_records(values: Sequence[bytes]) -> bytes:
    """Merge old shards' clock records (rescale): largest times, summed late counts.

    Taking the largest watermark means no window closed by any old shard can re-open
    (which would emit it twice); windows of other shards that it passes close at the
    next barrier. The result is external if any record is.
    """
    marks = []
    external = False
    for v in values:
        if len(v) == _EXTERNAL.size:
            marks.append(_EXTERNAL.unpack(v))
            external = True
        else:
            marks.append((*_DERIVED.unpack(v), NONE))
    max_time = max(m[0] for m in marks)
    late = sum(m[1] for m in marks)
    if external:
        return _EXTERNAL.pack(max_time, late, max(m[2] for m in marks))
    return _DERIVED.pack(max_time, late)


# ---------------------------------------------------------------------------- spans


def check_time_column(owner: str, column: object, key: str) -> None:
    """A config's event-time column: a non-empty name other than the key column.

    Raises:
        TypeError: not a non-empty string.
        ValueError: it is the key column.
    """
    if not isinstance(column, str) or not column:
        msg = f"{owner}.time_column must be a non-empty column name, got {column!r}"
        raise TypeError(msg)
    if column == key:
        msg = f"{owner}.time_column must differ from the key column {key!r}"
        raise ValueError(msg)


def time_type(owner: str, schema: pa.Schema, column: str) -> pa.DataType:
    """The type of event-time ``column`` of ``schema`` (a signed integer or a timestamp).

    Raises:
        ValueError: the column is missing (the columns are listed).
        TypeError: it has another type.
    """
    if column not in schema.names:
        msg = f"{owner}: time column {column!r} is missing; the columns are {schema.names}"
        raise ValueError(msg)
    t = schema.field(column).type
    if not (pa.types.is_signed_integer(t) or pa.types.is_timestamp(t)):
        msg = f"{owner}: time column {column!r} must be a signed integer or timestamp, it is {t}"
        raise TypeError(msg)
    return t


def check_span(owner: str, name: str, value: object, *, positive: bool) -> None:
    """Check a span config value: an int or ``timedelta``, ``> 0`` or ``>= 0``.

    Raises:
        TypeError: neither an int nor a ``timedelta``.
        ValueError: not positive (``positive``) or negative.
    """
    if isinstance(value, timedelta):
        ok = value > timedelta(0) if positive else value >= timedelta(0)
    elif type(value) is int:
        ok = value > 0 if positive else value >= 0
    else:
        msg = f"{owner}.{name} must be an int or a datetime.timedelta, got {type(value).__name__}"
        raise TypeError(msg)
    if not ok:
        msg = f"{owner}.{name} must be {'> 0' if positive else '>= 0'}, got {value!r}"
        raise ValueError(msg)


def span_micros(value: int | timedelta) -> int | None:
    """A ``timedelta`` in whole microseconds (``None`` for an int span)."""
    return value // timedelta(microseconds=1) if isinstance(value, timedelta) else None


def to_units(owner: str, name: str, value: int | timedelta, t: pa.DataType) -> int:
    """Convert a span to integer units of time column type ``t``.

    Raises:
        TypeError: a ``timedelta`` for a non-timestamp column.
        ValueError: not a whole number of the column's unit.
    """
    if isinstance(value, int):
        return value
    if not pa.types.is_timestamp(t):
        msg = f"{owner}.{name} is a timedelta but the time column is {t}; give an int"
        raise TypeError(msg)
    micros = value // timedelta(microseconds=1)
    units, rest = divmod(micros * _UNITS_PER_SECOND[t.unit], 1_000_000)
    if rest:
        msg = f"{owner}.{name}={value} is not a whole number of {t.unit} (the time column's unit)"
        raise ValueError(msg)
    return int(units)


def int64_times(col: pa.Array) -> np.ndarray:
    """A signed-integer or timestamp column as int64 numpy values (no nulls)."""
    if pa.types.is_timestamp(col.type):
        col = col.view(pa.int64())
    elif col.type != pa.int64():
        col = col.cast(pa.int64())
    return col.to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]


def time_array(values: np.ndarray, t: pa.DataType) -> pa.Array:
    """int64 ``values`` as an Arrow array of time column type ``t``."""
    arr = pa.array(values, pa.int64())
    return arr.view(t) if pa.types.is_timestamp(t) else arr.cast(t)
