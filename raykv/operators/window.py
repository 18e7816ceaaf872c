"""``TumblingWindow``: per-key aggregations over fixed event-time windows, closed by watermark."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.operators.base import META_KEYS
from raykv.operators.eventtime import WINDOW_END, WINDOW_START, EventTimeLogic, EventTimeWindow
from raykv.operators.watermark import time_array, to_units

__all__ = ["WINDOW_END", "WINDOW_START", "TumblingWindow", "TumblingWindowLogic"]

_WS = "\x00window_start"
_SIGN = np.uint64(1 << 63)


@dataclass(frozen=True)
class TumblingWindow(EventTimeWindow):
    """Aggregations per key and tumbling event-time window ``[start, start + size)``.

    Windows are aligned to time 0: ``start = floor(t / size) * size``. The watermark of a
    shard is the largest event time it has seen minus ``allowed_lateness`` (or, once the
    runtime sets it with ``advance_watermark``, that watermark minus ``allowed_lateness``;
    see ``raykv.operators.watermark``). An event is late, counted (``late_events``) and
    dropped (or kept for ``late_rows()`` with ``late="emit"``), if its window's end is
    ``<=`` the watermark when it arrives (rows of a batch arrive in order); so once the
    watermark passes a window's end, the window receives nothing more. At each barrier,
    every window whose end is ``<=`` the watermark is emitted once and its state deleted;
    ``finish`` emits all open windows. The watermark is stored with the state and survives
    restore.

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
        late: ``"drop"`` (default) or ``"emit"`` (late rows on ``late_rows()``, see
            ``raykv.operators.eventtime``).
    """

    time_column: str
    size: int | timedelta
    aggs: Mapping[str, Sequence[str]]  # as for Aggregate
    allowed_lateness: int | timedelta = 0
    late: str = "drop"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_window([("size", self.size)])

    def build(self, store: KVStore) -> TumblingWindowLogic:
        """Create the shard logic on ``store`` (resumes the windows and watermark it holds)."""
        return TumblingWindowLogic(self, store)


class TumblingWindowLogic(EventTimeLogic):
    """Running logic of :class:`TumblingWindow` on one shard."""

    op: TumblingWindow

    def __init__(self, op: TumblingWindow, store: KVStore) -> None:
        self._size = 0
        #: Open windows: start -> state keys.
        self._open: dict[int, set[bytes]] = {}
        super().__init__(op, store)
        if self._schema is not None:
            for k, _ in store.items():
                if k not in META_KEYS:
                    self._open.setdefault(_window_start(k), set()).add(k)

    def _setup_spans(self, t: pa.DataType) -> None:
        self._size = to_units(self._name(), "size", self.op.size, t)

    def _layout(self) -> str:
        assert self.layout is not None
        return f"window/1;size={self._size};" + self.layout.layout_id

    def _process(self, batch: pa.RecordBatch) -> None:
        layout = self.layout
        assert layout is not None
        t = self._times(batch, check_range=False)
        starts = t - np.mod(t, self._size)
        late = starts + self._size <= self.clock.running(t)
        original = batch
        batch, starts, n_late = self._without_late(batch, starts, late)
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
        extra = self.clock.pending(t, n_late)
        self._write(keys, new, track=False, extra=extra)
        self.clock.commit(t, n_late)
        self._keep_late(original, late)
        for start, k in zip(part_starts, keys, strict=True):
            self._open.setdefault(start, set()).add(k)

    def _close(self, watermark: int | None) -> pa.RecordBatch | None:
        """Emit and delete every window whose end is ``<=`` ``watermark`` (``None``: all)."""
        starts = sorted(s for s in self._open
                        if watermark is None or s + self._size <= watermark)
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
            (WINDOW_START, time_array(starts, self._time_type)),
            (WINDOW_END, time_array(starts + self._size, self._time_type)),
        ]
        return cols + self.layout.render(values)


def _user_part(state_key: bytes) -> bytes:
    """The encoded user key of a window state key (sort key within one window)."""
    return state_key[:-8]


def _window_start(state_key: bytes) -> int:
    """The window start in a state key's 8-byte suffix (int64, sign bit flipped)."""
    return int.from_bytes(state_key[-8:], "big") - (1 << 63)
