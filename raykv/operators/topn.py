"""``TopN``: the ``n`` rows with the largest (or smallest) ``by`` per key and event-time window.

Contract (see :class:`TopN`): windows are tumbling (``size``) or hopping (``size``,
``slide``) as for ``TumblingWindow``/``SlidingWindow``, closed by the watermark
(``raykv.operators.watermark``: derived from the rows, or set by the runtime with
``advance_watermark``); at each barrier every window whose end is ``<=`` the watermark is
emitted once, its ranked rows, and deleted. The engine holds, per (key, window), at most
``n`` candidate rows (one value: ``rowsort.RowCodec``), so checkpoints, restore and
rescaling carry them like any window state (state key = encoded key + 8-byte window
start, ``key_suffix_len = 8``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raykv.engines.base import KVStore
from raykv.keys import decode_keys, is_fixed_width
from raykv.operators.base import META_KEYS
from raykv.operators.eventtime import (
    LATE_MODES,
    TIME_LIMIT,
    WINDOW_END,
    WINDOW_START,
    EventTimeLogic,
    EventTimeWindow,
)
from raykv.operators.rowsort import RowCodec, rank_in_runs, row_order, stored_schema, to_stored
from raykv.operators.watermark import check_span, time_array, time_type, to_units

__all__ = ["RANK", "TopN", "TopNLogic"]

#: Output column: the row's rank in its window, 1 = first.
RANK = "rank"
_G = "\x00group"
_SK = "\x00state_key"
_WS = "\x00window_start"
_SIGN = np.uint64(1 << 63)


@dataclass(frozen=True)
class TopN(EventTimeWindow):
    """The ``n`` first rows by ``by`` per key and event-time window, emitted when it closes.

    Windows: ``[k * slide, k * slide + size)`` (``slide`` defaults to ``size``:
    tumbling); a row belongs to every window holding its time. A row is **late** when
    its first window has closed by the watermark in force when it arrives (rows of a
    batch arrive in order, as for ``SlidingWindow``): it then counts in none of its
    windows; late rows are counted in ``late_events`` and dropped, or kept for
    ``late_rows()`` with ``late="emit"``.

    Order: ``by`` descending (``descending=True``, the default: the largest first) or
    ascending; null ``by`` ranks after every value and NaN after every number, in both
    directions. **Ties** are broken by the other columns in schema order, each
    ascending, nulls last (``rowsort.row_order``), so which rows a window keeps never
    depends on arrival order (rows equal in every column are interchangeable); every
    column must therefore be orderable (not nested).

    Output (at each barrier, the windows the watermark closed; ``finish()``: all open
    windows): the key column, ``window_start``, ``window_end`` (the time column's type),
    ``rank`` (int64, 1..n, consecutive: a window with fewer than ``n`` rows has fewer
    ranks), then the row's columns except the key (dictionaries decoded), ordered by
    window start, encoded key, rank.

    State: per (key, window) at most ``n`` rows (one engine value: a fixed-size record
    per row plus string bytes, ``rowsort.RowCodec``). Cost per batch: the rows are
    expanded to their ``ceil(size / slide)`` windows and sorted once (by group, ``by``,
    the other columns), cut to ``n`` per group and buffered in memory, without an engine
    call. The buffer is merged into the engine at each barrier (before the windows
    close), at ``finish``/``export_state``, and whenever it holds more than
    ``max_buffered_rows`` candidate rows: one ``multi_get`` of the touched (key, window)
    pairs, one bulk decode of their stored candidates, one sort, one bulk encode and one
    ``multi_set`` of the pairs whose candidates changed. Per barrier also one
    ``multi_get`` and one ``multi_set`` (deletes) of the closed windows. Building the
    logic on a store with state scans ``store.items()`` once to index the open windows.
    Buffered candidates are not in the engine between barriers: restoring the last
    epoch and replaying its input gives the same result (the runtime's recovery).

    Example:
        >>> import pyarrow as pa, tempfile
        >>> from raykv.engines import MemOnly
        >>> op = TopN("k", "v", 2, "t", 10)
        >>> with MemOnly(tempfile.mkdtemp()) as store:
        ...     logic = op.build(store)
        ...     logic.process(pa.record_batch({"k": [1, 1, 1, 1], "t": [1, 5, 7, 12],
        ...                                    "v": [3, 9, 4, 1]}))
        ...     out = logic.on_barrier(1).to_pydict()
        >>> out["rank"], out["t"], out["v"], out["window_end"]
        ([1, 2], [5, 7], [9, 4], [10, 10])

    Attributes:
        by: the column rows are ranked by (any orderable type; not the key).
        n: how many rows per key and window (``>= 1``).
        time_column: the event-time column (signed integer or timestamp).
        size: window length (an int in the time column's unit, or a ``timedelta`` for a
            timestamp column).
        slide: distance between window starts (``None``: ``size``, tumbling);
            ``0 < slide <= size``.
        descending: ``True``: the largest ``by`` first; ``False``: the smallest.
        allowed_lateness: subtracted from the watermark (as for the windows); default 0.
        late: ``"drop"`` (default) or ``"emit"``.
        max_buffered_rows: candidate rows kept in memory between merges into the engine
            (keyword only; default 1,000,000; 0 merges after every batch).
    """

    by: str
    n: int
    time_column: str
    size: int | timedelta
    slide: int | timedelta | None = None
    descending: bool = True
    allowed_lateness: int | timedelta = 0
    late: str = "drop"
    max_buffered_rows: int = field(default=1_000_000, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        if type(self.max_buffered_rows) is not int or self.max_buffered_rows < 0:
            msg = f"{owner}.max_buffered_rows must be an int >= 0, got {self.max_buffered_rows!r}"
            raise ValueError(msg)
        for attr in ("by", "time_column"):
            value = getattr(self, attr)
            if not isinstance(value, str) or not value:
                msg = f"{owner}.{attr} must be a non-empty column name, got {value!r}"
                raise TypeError(msg)
        if self.by == self.key or self.time_column == self.key:
            msg = (f"{owner}: by ({self.by!r}) and time_column ({self.time_column!r}) must "
                   f"differ from the key column {self.key!r}")
            raise ValueError(msg)
        if type(self.n) is not int or self.n < 1:
            msg = f"{owner}.n must be an int >= 1, got {self.n!r}"
            raise ValueError(msg)
        if not isinstance(self.descending, bool):
            msg = f"{owner}.descending must be a bool, got {self.descending!r}"
            raise TypeError(msg)
        check_span(owner, "size", self.size, positive=True)
        if self.slide is not None:
            check_span(owner, "slide", self.slide, positive=True)
            if type(self.slide) is type(self.size) and self.slide > self.size:  # type: ignore[operator]
                msg = f"{owner}.slide must be <= size, got slide={self.slide!r} size={self.size!r}"
                raise ValueError(msg)
        check_span(owner, "allowed_lateness", self.allowed_lateness, positive=False)
        if self.late not in LATE_MODES:
            msg = f"{owner}.late must be one of {LATE_MODES}, got {self.late!r}"
            raise ValueError(msg)

    def build(self, store: KVStore) -> TopNLogic:
        """Create the shard logic on ``store`` (resumes the windows and watermark it holds)."""
        return TopNLogic(self, store)


class TopNLogic(EventTimeLogic):
    """Running logic of :class:`TopN` on one shard."""

    op: TopN

    def __init__(self, op: TopN, store: KVStore) -> None:
        self._size = self._slide = 0
        self._stored: pa.Schema | None = None
        self._codec: RowCodec | None = None
        self._order: list[tuple[str, str, str]] = []
        #: Open windows: start -> state keys (those in the engine).
        self._open: dict[int, set[bytes]] = {}
        #: Candidates not yet merged into the engine (``_candidates`` tables).
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        super().__init__(op, store)
        if self._schema is not None:
            for k, _ in store.items():
                if k not in META_KEYS:
                    self._open.setdefault(_window_start(k), set()).add(k)

    # ------------------------------------------------------------------ setup

    def _setup(self, schema: pa.Schema) -> None:
        op = self.op
        owner = self._name()
        for col in (op.time_column, op.by):
            if col not in schema.names:
                msg = f"{owner}: column {col!r} is missing; the columns are {schema.names}"
                raise ValueError(msg)
        t = time_type(owner, schema, op.time_column)
        stored = stored_schema(schema, self.key, owner)
        clash = [c for c in (WINDOW_START, WINDOW_END, RANK) if c in stored.names]
        if clash:
            msg = (f"{owner}: input columns {clash} clash with the output columns "
                   f"{[WINDOW_START, WINDOW_END, RANK]}; rename them first")
            raise ValueError(msg)
        self._time_type = t
        self._size = to_units(owner, "size", op.size, t)
        self._slide = self._size if op.slide is None else to_units(owner, "slide", op.slide, t)
        if self._slide > self._size:
            msg = f"{owner}.slide must be <= size ({self._slide} > {self._size} units)"
            raise ValueError(msg)
        if self._size > TIME_LIMIT:  # times and spans <= 2**62: sums stay in int64
            msg = f"{owner}.size must be <= 2**62 time units, got {self._size}"
            raise ValueError(msg)
        self.clock.set_lateness(to_units(owner, "allowed_lateness", op.allowed_lateness, t))
        self._stored = stored
        self._codec = RowCodec(stored)
        self._order = row_order(stored, [(op.by, "descending" if op.descending else "ascending")])
        self._out_schema = pa.schema([
            pa.field(self.key, schema.field(self.key).type),
            pa.field(WINDOW_START, t), pa.field(WINDOW_END, t), pa.field(RANK, pa.int64()),
            *stored,
        ])

    def _layout(self) -> str:
        op = self.op
        order = "desc" if op.descending else "asc"
        return f"topn/2;size={self._size};slide={self._slide};n={op.n};by={op.by};{order}"

    # ------------------------------------------------------------------ input

    def _process(self, batch: pa.RecordBatch) -> None:
        t = self._times(batch)
        size, slide = self._size, self._slide
        first = ((t - size) // slide + 1) * slide  # start of each row's first window
        late = first + size <= self.clock.running(t)
        original = batch
        batch, first, n_late = self._without_late(batch, first, late)
        pending = self._candidates(batch, first) if batch.num_rows else None
        self._write([], [], track=False, extra=self.clock.pending(t, n_late))
        self.clock.commit(t, n_late)
        self._keep_late(original, late)
        if pending is not None:
            self._buffer.append(pending)
            self._buffered += pending.num_rows
            if self._buffered > self.op.max_buffered_rows:
                self._flush()

    def _candidates(self, batch: pa.RecordBatch, first: np.ndarray) -> pa.Table:
        """``batch``'s rows in each of their windows, cut to ``n`` per (key, window).

        Columns: the stored row, the state key (``_SK``) and the window start (``_WS``).
        Raises (before anything is written) for a key the engine cannot hold.
        """
        assert self._stored is not None
        slide = self._slide
        t = self._times(batch, check_range=False)
        counts = (t // slide) - (first // slide) + 1  # windows per row, >= 1
        rows = np.repeat(np.arange(len(t)), counts)
        offset = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        starts = np.repeat(first, counts) + offset * slide
        encoded = pc.dictionary_encode(self._canonical(batch).column(self.key))
        key_idx = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)[rows]
        uniq_starts, ws_idx = np.unique(starts, return_inverse=True)
        combo, group = np.unique(key_idx * len(uniq_starts) + ws_idx.reshape(-1),
                                 return_inverse=True)
        g_key = combo // len(uniq_starts)
        g_start = uniq_starts[combo % len(uniq_starts)]
        suffixes = (g_start.view(np.uint64) ^ _SIGN).astype(">u8").view("V8").tolist()
        keys = self._state_keys(encoded.dictionary.take(pa.array(g_key)), suffixes)
        new = to_stored(batch, self._stored).take(pa.array(rows))
        new = self._top(new.append_column(_G, pa.array(group.reshape(-1))), self.op.n)
        g = new.column(_G)
        return new.drop_columns([_G]).append_column(
            _SK, pa.array(keys, pa.binary()).take(g)).append_column(
            _WS, pa.array(g_start, pa.int64()).take(g))

    def _flush(self) -> None:
        """Merge the buffered candidates into the engine: one ``multi_get``/``multi_set``."""
        parts, self._buffer, self._buffered = self._buffer, [], 0
        if not parts:
            return
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        enc = pc.dictionary_encode(table.column(_SK).combine_chunks())
        group = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        keys: list[bytes] = enc.dictionary.to_pylist()
        g_start = np.zeros(len(keys), dtype=np.int64)
        g_start[group] = table.column(_WS).to_numpy()
        new = table.drop_columns([_SK, _WS]).append_column(_G, pa.array(group))
        n = self.op.n
        if len(parts) > 1:
            new = self._top(new, n)
        old = self.store.multi_get(keys)
        had = [i for i, v in enumerate(old) if v]
        codec = self._codec
        assert codec is not None
        if had:
            prior, lens = codec.decode([old[i] for i in had])
            prior = prior.append_column(
                _G, pa.array(np.repeat(np.array(had, dtype=np.int64), lens)))
            new = self._top(pa.concat_tables([new, prior]), n)
        g = new.column(_G).to_numpy()  # each group's rows are contiguous, in rank order
        bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
        encoded_values = codec.encode(new.drop_columns([_G]), bounds.tolist())
        out_keys: list[bytes] = []
        out_values: list[bytes] = []
        for i, value in zip(g[bounds[:-1]].tolist(), encoded_values, strict=True):
            if value != old[i]:
                out_keys.append(keys[i])
                out_values.append(value)
                self._open.setdefault(int(g_start[i]), set()).add(keys[i])
        self._write(out_keys, out_values, track=False)

    def _top(self, table: pa.Table, n: int) -> pa.Table:
        """``table`` sorted by group then rank order, cut to ``n`` rows per group."""
        order = pc.sort_indices(table, sort_keys=[(_G, "ascending", "at_end"), *self._order])
        g = table.column(_G).to_numpy()[order.to_numpy()]
        keep = rank_in_runs(g) < n
        return table.take(order.filter(pa.array(keep)))

    # ------------------------------------------------------------------ output

    def _close(self, watermark: int | None) -> pa.RecordBatch | None:
        """Emit and delete every window whose end is ``<=`` ``watermark`` (``None``: all)."""
        self._flush()
        starts = sorted(s for s in self._open
                        if watermark is None or s + self._size <= watermark)
        if not starts:
            return None
        assert self._key_type is not None
        # within a window the suffix is equal: fixed-width keys sort as whole state keys
        by_user = None if is_fixed_width(self._key_type) else _user_part
        keys = [k for s in starts for k in sorted(self._open[s], key=by_user)]
        if not keys:
            return None
        out = self._windows(keys, self.store.multi_get(keys))
        self._write(keys, [b""] * len(keys), track=False)
        for s in starts:
            del self._open[s]
        return out

    def export_state(self) -> pa.RecordBatch | None:
        """The open windows' current candidates, as ``finish`` would emit them (no change)."""
        self._flush()
        pairs = sorted(self._items(), key=lambda p: (_window_start(p[0]), _user_part(p[0])))
        if not pairs:
            return None
        return self._windows([k for k, _ in pairs], [v for _, v in pairs])

    def _windows(self, keys: Sequence[bytes], values: Sequence[bytes]) -> pa.RecordBatch:
        """Output rows of the windows stored under ``keys`` (non-empty ``values``)."""
        assert self._stored is not None and self._time_type is not None
        assert self._key_type is not None and self._out_schema is not None
        assert self._codec is not None
        body, lens = self._codec.decode(values)
        owner = np.repeat(np.arange(len(keys)), lens)
        user = decode_keys(self._user_keys(keys), self._key_type).take(pa.array(owner))
        words = np.frombuffer(b"".join(k[-8:] for k in keys), dtype=">u8")
        starts = (words.astype(np.uint64) ^ _SIGN).view(np.int64)[owner]
        rank = np.arange(len(owner), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens) + 1
        cols = [user, time_array(starts, self._time_type),
                time_array(starts + self._size, self._time_type), pa.array(rank, pa.int64())]
        cols += [body.column(i).combine_chunks() for i in range(body.num_columns)]
        return pa.RecordBatch.from_arrays(cols, schema=self._out_schema)

    def _render(self, state_keys: Sequence[bytes], values: Sequence[bytes]
                ) -> list[tuple[str, pa.Array]]:
        msg = "TopN renders whole windows (_windows)"
        raise NotImplementedError(msg)


def _user_part(state_key: bytes) -> bytes:
    return state_key[:-8]


def _window_start(state_key: bytes) -> int:
    return int.from_bytes(state_key[-8:], "big") - (1 << 63)
