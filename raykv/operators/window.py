"""``TumblingWindow``: per-key aggregations over fixed event-time windows, closed by watermark."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.operators.aggspec import normalize_aggs
from raykv.operators.aggstate import AggLayout
from raykv.operators.base import META_KEYS, WATERMARK_KEY, KeyedOperator
from raykv.operators.keyed_state import KeyedStateLogic

WINDOW_START = "window_start"
WINDOW_END = "window_end"
_WS = "\x00window_start"
_SIGN = np.uint64(1 << 63)
_WATERMARK = struct.Struct("<qq")  # max event time seen, late events dropped so far
_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@dataclass(frozen=True)
class TumblingWindow(KeyedOperator):
    """Aggregations per key and tumbling event-time window ``[start, start + size)``.

    Windows are aligned to time 0: ``start = floor(t / size) * size``. The watermark of a
    shard is the largest event time it has seen minus ``allowed_lateness``. An event is
    late, counted (``late_events``) and dropped, if its window's end is ``<=`` the watermark
    when it arrives (rows of a batch arrive in order); so once the watermark passes a
    window's end, the window receives nothing more. At each barrier, every window whose
    end is ``<=`` the watermark is emitted once and its state deleted; ``finish`` emits all
    open windows. The watermark is stored with the state and survives restore.

    Input: the ``key``, the ``time_column`` (signed integer or timestamp, no nulls) and the
    aggregated columns. Output: the key column, ``window_start`` and ``window_end`` (the
    time column's type), then ``{column}_{op}`` as for ``Aggregate``; rows ordered by
    window start, then encoded key.

    Cost per batch: as ``Aggregate`` (group by key and window start). Per barrier: one
    ``multi_get`` and one ``multi_set`` (deletes) of the closed windows. Building the
    logic on a store with state scans ``store.items()`` once to index the open windows.

    Example:
        >>> import pyarrow as pa, tempfile
        >>> from raykv.engines import MemOnly
        >>> op = TumblingWindow("k", "t", 10, {"v": "sum"})
        >>> with MemOnly(tempfile.mkdtemp()) as store:
        ...     logic = op.build(store)
        ...     logic.process(pa.record_batch({"k": [1, 1, 1], "t": [1, 5, 12], "v": [1, 2, 4]}))
        ...     logic.on_barrier(1).to_pydict()
        {'k': [1], 'window_start': [0], 'window_end': [10], 'v_sum': [3]}

    Attributes:
        time_column: event-time column (signed integer or timestamp).
        size: window length: an int in the time column's unit, or a ``timedelta`` for a
            timestamp column (it must be a whole number of the column's unit).
        aggs: ``{column: [ops]}`` as for ``Aggregate``.
        allowed_lateness: how far behind the largest event time seen an event may be and
            still count (same units as ``size``); default 0.
    """

    time_column: str
    size: int | timedelta
    aggs: Mapping[str, Sequence[str]]  # as for Aggregate
    allowed_lateness: int | timedelta = 0

    key_suffix_len: ClassVar[int] = 8
    #: Each shard closes windows by its own watermark, so moving a key to another shard
    #: could change which of its windows close when: never rebalanced.
    rebalance_safe: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        if not isinstance(self.time_column, str) or not self.time_column:
            msg = f"{owner}.time_column must be a non-empty column name, got {self.time_column!r}"
            raise TypeError(msg)
        if self.time_column == self.key:
            msg = f"{owner}.time_column must differ from the key column {self.key!r}"
            raise ValueError(msg)
        _check_span(owner, "size", self.size, positive=True)
        _check_span(owner, "allowed_lateness", self.allowed_lateness, positive=False)
        object.__setattr__(self, "aggs", normalize_aggs(self.aggs, owner))
        names = [self.key, WINDOW_START, WINDOW_END]
        names += [f"{c}_{op}" for c, ops in self.aggs.items() for op in ops]
        if len(set(names)) != len(names):
            msg = f"{owner}: output column names clash: {names}"
            raise ValueError(msg)

    def build(self, store: KVStore) -> TumblingWindowLogic:
        """Create the shard logic on ``store`` (resumes the windows and watermark it holds)."""
        return TumblingWindowLogic(self, store)

    def merge_metadata(self, key: bytes, values: Sequence[bytes]) -> bytes:
        """Merge old shards' watermarks: the largest event time, the sum of late events.

        Taking the largest watermark means no window closed by any old shard can re-open
        (which would emit it twice); windows of other shards that it passes close at the
        next barrier.
        """
        if key != WATERMARK_KEY:
            return super().merge_metadata(key, values)
        marks = [_WATERMARK.unpack(v) for v in values]
        return _WATERMARK.pack(max(m[0] for m in marks), sum(m[1] for m in marks))


def _check_span(owner: str, name: str, value: object, *, positive: bool) -> None:
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


def _to_units(owner: str, name: str, value: int | timedelta, t: pa.DataType) -> int:
    """Convert ``size``/``allowed_lateness`` to integer units of time column type ``t``."""
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


class TumblingWindowLogic(KeyedStateLogic):
    """Running logic of :class:`TumblingWindow` on one shard."""

    op: TumblingWindow

    def __init__(self, op: TumblingWindow, store: KVStore) -> None:
        self.layout: AggLayout | None = None
        self._size = 0
        self._lateness = 0
        self._time_type: pa.DataType | None = None
        self._max_time: int | None = None
        #: Events dropped because their window had already closed (survives restore).
        self.late_events = 0
        #: Open windows: start -> state keys.
        self._open: dict[int, set[bytes]] = {}
        super().__init__(op, store)
        raw = store.get(WATERMARK_KEY)
        if raw:
            self._max_time, self.late_events = _WATERMARK.unpack(raw)
        if self._schema is not None:
            for k, _ in store.items():
                if k not in META_KEYS:
                    self._open.setdefault(_window_start(k), set()).add(k)

    @property
    def watermark(self) -> int | None:
        """Largest event time seen minus ``allowed_lateness`` (``None`` before any event)."""
        return None if self._max_time is None else self._max_time - self._lateness

    def _setup(self, schema: pa.Schema) -> None:
        owner = self._name()
        op = self.op
        if op.time_column not in schema.names:
            msg = (
                f"{owner}: time column {op.time_column!r} is missing; "
                f"the columns are {schema.names}"
            )
            raise ValueError(msg)
        t = schema.field(op.time_column).type
        if not (pa.types.is_signed_integer(t) or pa.types.is_timestamp(t)):
            msg = (
                f"{owner}: time column {op.time_column!r} must be a signed integer or "
                f"timestamp, it is {t}"
            )
            raise TypeError(msg)
        self._time_type = t
        self._size = _to_units(owner, "size", op.size, t)
        self._lateness = _to_units(owner, "allowed_lateness", op.allowed_lateness, t)
        self.layout = AggLayout(op.aggs, schema, owner)
        self._out_schema = pa.schema(
            [
                pa.field(self.key, schema.field(self.key).type),
                pa.field(WINDOW_START, t),
                pa.field(WINDOW_END, t),
                *self.layout.output_fields(),
            ]
        )

    def _layout(self) -> str:
        assert self.layout is not None
        return f"window/1;size={self._size};" + self.layout.layout_id

    def _process(self, batch: pa.RecordBatch) -> None:
        layout = self.layout
        assert layout is not None
        tcol = batch.column(self.op.time_column)
        if tcol.null_count:
            row = int(np.flatnonzero(tcol.is_null().to_numpy(zero_copy_only=False))[0])
            msg = f"{self._name()}: time column {self.op.time_column!r} has a null at row {row}"
            raise ValueError(msg)
        t = _int64(tcol)
        starts = t - np.mod(t, self._size)
        seen = np.maximum.accumulate(t)
        if self._max_time is not None:
            seen = np.maximum(seen, self._max_time)
        late = starts + self._size <= seen - self._lateness
        n_late = int(late.sum())
        if n_late:
            keep = ~late
            batch = batch.filter(pa.array(keep))
            starts = starts[keep]
        keys: list[bytes] = []
        new: list[bytes] = []
        part_starts: list[int] = []
        if batch.num_rows:
            batch = self._canonical(batch).append_column(_WS, pa.array(starts, pa.int64()))
            part = layout.partials(batch, [self.key, _WS])
            key_col = part.column(self.key)
            ws = part.column(_WS).to_numpy()
            suffixes = (ws.view(np.uint64) ^ _SIGN).astype(">u8").view("V8").tolist()
            keys = self._state_keys(key_col, suffixes)
            old = self.store.multi_get(keys)

            def describe(i: int) -> str:
                return f"key {key_col[i].as_py()!r} window start {int(ws[i])}"

            new, _ = layout.combine(old, part, describe)
            part_starts = ws.tolist()
        max_time = int(seen[-1])
        late_total = self.late_events + n_late
        extra = []
        if max_time != self._max_time or n_late:
            extra.append((WATERMARK_KEY, _WATERMARK.pack(max_time, late_total)))
        self._write(keys, new, track=False, extra=extra)
        self._max_time = max_time
        self.late_events = late_total
        for start, k in zip(part_starts, keys, strict=True):
            self._open.setdefault(start, set()).add(k)

    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        """Emit and delete every window whose end is ``<=`` the watermark."""
        wm = self.watermark
        if wm is None:
            return None
        return self._close(sorted(s for s in self._open if s + self._size <= wm))

    def finish(self) -> pa.RecordBatch | None:
        """Emit and delete every open window (bounded input has ended)."""
        self._changed = set()
        return self._close(sorted(self._open))

    def _close(self, starts: list[int]) -> pa.RecordBatch | None:
        keys = [k for s in starts for k in sorted(self._open[s], key=_user_part)]
        if not keys:
            return None
        values = self.store.multi_get(keys)
        out = self._emit(keys, values)
        self._write(keys, [b""] * len(keys), track=False)
        for s in starts:
            del self._open[s]
        return out

    def _render(
        self, state_keys: Sequence[bytes], values: Sequence[bytes]
    ) -> list[tuple[str, pa.Array]]:
        assert self.layout is not None and self._time_type is not None
        words = np.frombuffer(b"".join(k[-8:] for k in state_keys), dtype=">u8")
        starts = (words.astype(np.uint64) ^ _SIGN).view(np.int64)
        cols = [
            (WINDOW_START, _time_array(starts, self._time_type)),
            (WINDOW_END, _time_array(starts + self._size, self._time_type)),
        ]
        return cols + self.layout.render(values)


def _int64(col: pa.Array) -> np.ndarray:
    if pa.types.is_timestamp(col.type):
        col = col.view(pa.int64())
    elif col.type != pa.int64():
        col = col.cast(pa.int64())
    return col.to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]


def _time_array(values: np.ndarray, t: pa.DataType) -> pa.Array:
    arr = pa.array(values, pa.int64())
    return arr.view(t) if pa.types.is_timestamp(t) else arr.cast(t)


def _user_part(state_key: bytes) -> bytes:
    """The encoded user key of a window state key (sort key within one window)."""
    return state_key[:-8]


def _window_start(state_key: bytes) -> int:
    """The window start in a state key's 8-byte suffix (int64, sign bit flipped)."""
    return int.from_bytes(state_key[-8:], "big") - (1 << 63)
