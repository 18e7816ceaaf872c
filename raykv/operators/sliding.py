"""``SlidingWindow``: per-key aggregations over hopping event-time windows, from panes."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from itertools import repeat

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.keys import decode_keys
from raykv.operators.base import META_KEYS
from raykv.operators.eventtime import WINDOW_END, WINDOW_START, EventTimeLogic, EventTimeWindow
from raykv.operators.pane_table import PaneTable, objects
from raykv.operators.panes import combine_fixed
from raykv.operators.watermark import NONE, time_array, to_units

_PS = "\x00pane_start"
_SIGN = np.uint64(1 << 63)
#: State-key suffix of a key's cursor record (pane start -2**63, never a real pane).
CURSOR = bytes(8)
#: Default byte budget of the closed-pane cache per shard (``SlidingWindowLogic.cache_bytes``).
CACHE_BYTES = 64 << 20
#: Bytes counted per entry of the open-pane values (``SlidingWindowLogic._fresh``).
_FRESH_ENTRY = 160


@dataclass(frozen=True)
class SlidingWindow(EventTimeWindow):
    """Aggregations per key and hopping event-time window ``[start, start + size)``.

    Window starts are the multiples of ``slide`` (aligned to time 0), so each event is in
    ``size / slide`` windows (rounded up or down when ``slide`` does not divide
    ``size``). State is one partial aggregate per key and *pane* of ``gcd(size, slide)``
    (``floor(t / pane) * pane``); a window's result combines its panes when it closes, so
    the cost per event does not grow with ``size / slide``.

    Watermark as for ``TumblingWindow`` (largest event time seen minus
    ``allowed_lateness``, or the runtime's through ``advance_watermark``). An event is
    late if the *first* window it belongs to has closed (its end ``<=`` the watermark when
    the event arrives): it is then counted in ``late_events`` and in no window at all
    (kept for ``late_rows()`` with ``late="emit"``), never in some of its windows only;
    every emitted window therefore holds exactly the non-late events in it. At each
    barrier every window whose end is ``<=`` the watermark and that holds an event is
    emitted once; a pane is deleted once the last window that contains it has been
    emitted. ``finish`` emits all remaining windows. A per-key cursor (the watermark at
    the last barrier that emitted a window of the key) is stored with the key's panes, so
    no window is emitted twice after a restore or a rescale.

    ``first``/``last`` follow arrival order within a pane and pane (event-time) order
    across the panes of a window.

    Input: the ``key``, the ``time_column`` (signed integer or timestamp, no nulls,
    within +-2**62) and the aggregated columns. Output: the key column, ``window_start``
    and ``window_end`` (the time column's type), then ``{column}_{op}`` as for
    ``Aggregate``; rows ordered by window start, then encoded key.

    Cost per batch: as ``TumblingWindow(size=pane)`` (one group by key and pane, one
    ``multi_get`` + one ``multi_set``). Per barrier: one ``multi_get`` of the panes this
    barrier closes (a closed pane can no longer change, so it is read once and then kept
    in memory until deleted: ``SlidingWindowLogic.cache_bytes``, 64 MiB per shard by
    default, the oldest panes re-read when over), O(p log(size/pane) + w) numpy work for
    ``p`` closed panes and ``w`` emitted windows (a sliding aggregation: prefix sums and
    sparse tables, ``panes.py``), and one ``multi_set`` (deleted panes, cursors). Building
    the logic scans ``store.items()`` once; the first barrier after it reads every closed
    pane.

    Example:
        >>> import pyarrow as pa, tempfile
        >>> from raykv.engines import MemOnly
        >>> op = SlidingWindow("k", "t", size=10, slide=5, aggs={"v": "sum"})
        >>> with MemOnly(tempfile.mkdtemp()) as store:
        ...     logic = op.build(store)
        ...     logic.process(pa.record_batch({"k": [1, 1, 1], "t": [1, 7, 16], "v": [1, 2, 4]}))
        ...     logic.on_barrier(1).to_pydict()
        {'k': [1, 1, 1], 'window_start': [-5, 0, 5], 'window_end': [5, 10, 15], 'v_sum': [1, 3, 2]}

    Attributes:
        time_column: event-time column (signed integer or timestamp).
        size: window length (an int in the time column's unit, or a ``timedelta`` for a
            timestamp column).
        slide: distance between window starts, ``0 < slide <= size`` (same kind as
            ``size``); it need not divide ``size``.
        aggs: ``{column: [ops]}`` as for ``Aggregate``.
        allowed_lateness: how far behind the largest event time seen an event may be and
            still count (same units as ``size``); default 0.
        late: ``"drop"`` (default) or ``"emit"`` (late rows on ``late_rows()``, see
            ``raykv.operators.eventtime``).
    """

    time_column: str
    size: int | timedelta
    slide: int | timedelta
    aggs: Mapping[str, Sequence[str]]
    allowed_lateness: int | timedelta = 0
    late: str = "drop"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_window([("size", self.size), ("slide", self.slide)])
        owner = type(self).__name__
        if isinstance(self.size, timedelta) != isinstance(self.slide, timedelta):
            msg = f"{owner}: size and slide must both be ints or both timedeltas"
            raise TypeError(msg)
        if self.slide > self.size:  # type: ignore[operator]
            msg = (
                f"{owner}.slide={self.slide!r} is larger than size={self.size!r}: events "
                "between windows would be in none; use slide <= size"
            )
            raise ValueError(msg)

    def build(self, store: KVStore) -> SlidingWindowLogic:
        """Create the shard logic on ``store`` (resumes the panes and watermark it holds)."""
        return SlidingWindowLogic(self, store)


class SlidingWindowLogic(EventTimeLogic):
    """Running logic of :class:`SlidingWindow` on one shard.

    Panes move through two places: ``_panes`` (start -> state keys) lists the panes only
    the engine holds (open ones, which events may still update, and closed ones not read
    since the logic was built or evicted from the cache); the barrier that closes a pane
    (its first window ends by the watermark, so every later event for it is late) reads
    it once from the engine into ``_closed``, a :class:`PaneTable` kept until the pane is
    deleted. The cache is rebuilt from the engine after a restore (it starts empty and
    every pane is in ``_panes``) and is kept under ``cache_bytes`` by evicting the oldest
    panes back to ``_panes`` (re-read at the next barrier).
    """

    op: SlidingWindow
    #: Byte budget of the closed-pane cache (``PaneTable.nbytes``).
    cache_bytes: int = CACHE_BYTES

    def __init__(self, op: SlidingWindow, store: KVStore) -> None:
        self._size = self._slide = self._pane = 1
        #: Pane start -> state keys of the panes not in the cache.
        self._panes: dict[int, list[bytes]] = {}
        #: State key -> value of open panes written since the logic was built (their
        #: values as in the engine, so the barrier that closes them need not read them).
        self._fresh: dict[bytes, bytes] = {}
        #: ``_fresh`` went over budget this epoch (it is empty until the next barrier).
        self._fresh_off = False
        #: Closed panes read from the engine, until deleted (``None``: none yet).
        self._closed: PaneTable | None = None
        #: Encoded user key -> the watermark through which its windows were emitted.
        self._cursor: dict[bytes, int] = {}
        super().__init__(op, store)
        if self._schema is not None:
            for k, v in store.items():
                if k in META_KEYS:
                    continue
                if k[-8:] == CURSOR:
                    self._cursor[k[:-8]] = int.from_bytes(v, "little", signed=True)
                else:
                    self._panes.setdefault(_suffix_time(k), []).append(k)

    def _setup_spans(self, t: pa.DataType) -> None:
        owner = self._name()
        self._size = to_units(owner, "size", self.op.size, t)
        self._slide = to_units(owner, "slide", self.op.slide, t)
        self._pane = math.gcd(self._size, self._slide)

    def _layout(self) -> str:
        assert self.layout is not None
        return f"sliding/1;size={self._size};slide={self._slide};" + self.layout.layout_id

    def _first_end(self, pane_starts: np.ndarray) -> np.ndarray:
        """End of the first window containing each pane (vectorized :meth:`_first_end_of`)."""
        first = np.floor_divide(pane_starts - self._size, self._slide) + 1
        return first * self._slide + self._size  # type: ignore[no-any-return]

    def _first_end_of(self, pane_start: int) -> int:
        return ((pane_start - self._size) // self._slide + 1) * self._slide + self._size

    def _last_ends(self, pane_starts: np.ndarray) -> np.ndarray:
        """End of the last window containing each pane."""
        return np.floor_divide(pane_starts, self._slide) * self._slide + self._size  # type: ignore[no-any-return]

    def _process(self, batch: pa.RecordBatch) -> None:
        layout = self.layout
        assert layout is not None
        t = self._times(batch)
        panes = t - np.mod(t, self._pane)
        late = self._first_end(panes) <= self.clock.running(t)
        original = batch
        batch, panes, n_late = self._without_late(batch, panes, late)
        keys: list[bytes] = []
        new: list[bytes] = []
        if batch.num_rows:
            batch = self._canonical(batch).append_column(_PS, pa.array(panes, pa.int64()))
            part = layout.partials(batch, [self.key, _PS])
            key_col = part.column(self.key)
            ps = part.column(_PS).to_numpy()
            keys = self._state_keys(key_col, _suffixes(ps))
            old = self.store.multi_get(keys)

            def describe(i: int) -> str:
                return f"key {key_col[i].as_py()!r} pane start {int(ps[i])}"

            new, _ = layout.combine(old, part, describe)
        else:
            old = []
        extra = self.clock.pending(t, n_late)
        self._write(keys, new, track=False, extra=extra)
        if keys and not self._fresh_off:  # never skip a key it holds: it would be stale
            self._fresh.update(zip(keys, new, strict=True))
            if len(self._fresh) * _FRESH_ENTRY > self.cache_bytes:
                self._fresh.clear()  # over budget: read them at the barrier instead
                self._fresh_off = True
        self.clock.commit(t, n_late)
        self._keep_late(original, late)
        if keys:  # index the panes new to the engine (the others are listed already)
            new_at = np.flatnonzero(np.fromiter(map(operator.not_, old), bool, len(old)))
            self._index(objects(keys)[new_at], ps[new_at])

    def _index(self, keys: np.ndarray, starts: np.ndarray) -> None:
        """Add the state keys ``keys`` (object array) of panes at ``starts`` to ``_panes``."""
        if not len(keys):
            return
        order = np.argsort(starts, kind="stable")
        keys, starts = keys[order], starts[order]
        cuts = np.flatnonzero(starts[1:] != starts[:-1]) + 1
        panes = self._panes
        for start, chunk in zip(starts[np.r_[0, cuts]].tolist(), np.split(keys, cuts),
                                strict=True):
            at = panes.get(start)
            if at is None:
                panes[start] = chunk.tolist()
            else:
                at.extend(chunk.tolist())

    # ------------------------------------------------------------------ closing

    def export_state(self) -> pa.RecordBatch | None:
        """The windows not yet emitted with their current aggregates, changing nothing."""
        if self.layout is None:
            return None
        table, _ = self._gather(None, take=False)
        out, _ = self._windows(table, None)
        return out

    def _values(self, keys: list[bytes], *, take: bool) -> list[bytes]:
        """The engine values of pane ``keys``.

        From ``_fresh`` (popped with ``take``), the rest with one ``multi_get``.
        """
        fresh = self._fresh
        values: list[bytes | None] = list(map(fresh.pop if take else fresh.get, keys,
                                              repeat(None)))
        if None in values:
            missing = [i for i, v in enumerate(values) if v is None]
            for i, v in zip(missing, self.store.multi_get([keys[i] for i in missing]),
                            strict=True):
                values[i] = v
        return values  # type: ignore[return-value]

    def _gather(self, wm: int | None, *, take: bool = True) -> tuple[PaneTable, list[int]]:
        """The cached panes plus those of ``_panes`` closed at ``wm`` (all for ``None``).

        Returns the table and the starts read from ``_panes``.
        """
        assert self.layout is not None
        starts = [s for s in self._panes if wm is None or self._first_end_of(s) <= wm]
        keys: list[bytes] = []
        counts = []
        for start in starts:
            keys.extend(self._panes[start])
            counts.append(len(self._panes[start]))
        cache = self._closed if self._closed is not None else PaneTable.empty(self.layout)
        if not keys:
            return cache, starts
        values = self._values(keys, take=take)
        ps = np.repeat(np.array(starts, dtype=np.int64), counts)
        read = PaneTable.build(self.layout, keys, ps, values)
        return cache.union(read), starts

    def _close(self, wm: int | None) -> pa.RecordBatch | None:
        """Emit the windows ending ``<=`` ``wm`` (``None``: all); delete unneeded panes.

        Cost: one ``multi_get`` of the panes this barrier closes (cached panes are not
        read again), O(p log p) numpy work over the closed panes ``p`` and O(1) amortized
        per emitted window (``panes.combine_fixed``), one ``multi_set`` (deleted panes,
        cursors).
        """
        if self.layout is None:  # no batch yet: no state
            return None
        table, read = self._gather(wm)
        self._fresh_off = False
        for s in read:
            del self._panes[s]
        out, emitted = self._windows(table, wm)
        users = table.users
        gone = np.ones(len(table), dtype=bool) if wm is None else self._last_ends(table.ps) <= wm
        keep = table.take(np.flatnonzero(~gone))
        # deleted panes, then cursors (a cursor key never equals a pane's: pane start -2**63)
        keys: list[bytes] = table.keys[gone].tolist()
        values = [b""] * len(keys)
        emptied = self._emptied(users, table.uid[gone], keep.uid)
        for user in emptied:  # no panes left: no cursor needed
            if self._cursor.pop(user, None) is not None:
                keys.append(user + CURSOR)
                values.append(b"")
        if wm is not None:
            record = wm.to_bytes(8, "little", signed=True)
            for u in emitted.tolist():
                user = users[u]
                if user not in emptied:
                    self._cursor[user] = wm
                    keys.append(user + CURSOR)
                    values.append(record)
        if keys:
            self._write(keys, values, track=False)
        self._closed = self._bounded(keep) if wm is not None else None
        return out

    def _emptied(self, users: list[bytes], deleted: np.ndarray, kept: np.ndarray) -> set[bytes]:
        """The users of ``deleted`` panes with no pane left (none kept, none open)."""
        n = len(users)
        cand = np.flatnonzero((np.bincount(deleted, minlength=n) > 0)
                              & (np.bincount(kept, minlength=n) == 0))
        if not len(cand):
            return set()
        out = {users[u] for u in cand.tolist()}
        if out and self._panes:
            out.difference_update(k[:-8] for keys in self._panes.values() for k in keys)
        return out

    def _bounded(self, table: PaneTable) -> PaneTable:
        """``table`` within ``cache_bytes``: the oldest panes go back to ``_panes``."""
        if table.nbytes <= self.cache_bytes or not len(table):
            return table
        per = max(table.nbytes // len(table), 1)
        room = self.cache_bytes // per
        order = np.argsort(table.ps, kind="stable")
        cut = len(table) - room
        out = np.zeros(len(table), dtype=bool)
        out[order[:cut]] = True
        evicted = table.take(np.flatnonzero(out))
        for start, key in zip(evicted.ps.tolist(), evicted.keys.tolist(), strict=True):
            self._panes.setdefault(start, []).append(key)
        return table.take(np.flatnonzero(~out))

    def _windows(
        self, table: PaneTable, wm: int | None
    ) -> tuple[pa.RecordBatch | None, np.ndarray]:
        """The windows of ``table``'s panes to emit at watermark ``wm`` (all for ``None``).

        Returns the output rows and the ``uid`` of the user keys that have some.
        """
        none = np.zeros(0, np.int64)
        if not len(table):
            return None, none
        uid, ps, users = table.uid, table.ps, table.users
        size, slide = self._size, self._slide
        # the windows of each pane not emitted yet: k in [a, b] (start = k * slide)
        cursor = np.array([self._cursor.get(u, NONE) for u in users], dtype=np.int64)
        kmin = np.floor_divide(np.maximum(cursor, -(1 << 62)) - size, slide) + 1
        a = np.maximum(np.floor_divide(ps - size, slide) + 1, kmin[uid])
        b = np.floor_divide(ps, slide)
        if wm is not None:
            b = np.minimum(b, (wm - size) // slide)
        # union of each key's intervals, enumerated without repeats: panes are sorted by
        # start within a key, so a and b never decrease there
        new_user = np.ones(len(uid), dtype=bool)
        new_user[1:] = uid[1:] != uid[:-1]
        prev_b = np.empty_like(b)
        prev_b[1:] = b[:-1]
        prev_b[new_user] = -(1 << 62)
        s = np.maximum(a, prev_b + 1)
        count = np.maximum(b - s + 1, 0)
        total = int(count.sum())
        if not total:
            return None, none
        w_uid = np.repeat(uid, count)
        w_k = np.repeat(s, count) + (np.arange(total) - np.repeat(np.cumsum(count) - count, count))
        w_start = w_k * slide
        lo, hi = _locate(uid, ps, w_uid, w_start, w_start + size, self._pane)
        out_order = np.argsort((w_k - int(w_k.min())) * len(users) + w_uid)
        w_uid, w_start, lo, hi = w_uid[out_order], w_start[out_order], lo[out_order], hi[out_order]

        def describe(i: int) -> str:
            return f"window start {int(w_start[i])} of key {users[int(w_uid[i])]!r} (encoded)"

        assert self.layout is not None
        pane_tails = None if table.tails is None else table.tails.tolist()
        states, tails, empty = combine_fixed(self.layout, table.st.view(self.layout.dtype),
                                             pane_tails, lo, hi,
                                             describe)
        if empty.any():  # cannot happen (every window listed holds a pane): keep it safe
            full = np.flatnonzero(~empty)
            states, w_uid, w_start = states[full], w_uid[full], w_start[full]
            tails = None if tails is None else [tails[i] for i in full.tolist()]
        emitted = np.flatnonzero(np.bincount(w_uid, minlength=len(users)))
        return self._emit_windows(users, w_uid, w_start, states, tails), emitted

    def _emit_windows(
        self, users: list[bytes], w_uid: np.ndarray, w_start: np.ndarray, states: np.ndarray,
        tails: list[bytes] | None,
    ) -> pa.RecordBatch | None:
        """The output batch: window ``i`` of user ``users[w_uid[i]]`` from ``w_start[i]``."""
        assert self.layout is not None and self._time_type is not None
        assert self._key_type is not None and self._out_schema is not None
        if not len(w_uid):
            return None
        values: list[bytes] = states.view(f"V{self.layout.size}").tolist()
        if tails is not None:
            values = list(map(bytes.__add__, values, tails))
        key_col = decode_keys(users, self._key_type).take(pa.array(w_uid))
        cols = [
            key_col,
            time_array(w_start, self._time_type),
            time_array(w_start + self._size, self._time_type),
            *(c for _, c in self.layout.render(values)),
        ]
        return pa.RecordBatch.from_arrays(cols, schema=self._out_schema)

    def _render(
        self, state_keys: Sequence[bytes], values: Sequence[bytes]
    ) -> list[tuple[str, pa.Array]]:
        assert self.layout is not None and self._time_type is not None
        starts = _suffix_times(state_keys)
        cols = [
            (WINDOW_START, time_array(starts, self._time_type)),
            (WINDOW_END, time_array(starts + self._size, self._time_type)),
        ]
        return cols + self.layout.render(values)


def _suffixes(times: np.ndarray) -> list[bytes]:
    """8-byte state-key suffixes of int64 ``times`` (sign bit flipped, big-endian)."""
    words = (np.asarray(times, dtype=np.int64).view(np.uint64) ^ _SIGN).astype(">u8")
    out: list[bytes] = words.view("V8").tolist()
    return out


def _suffix_times(state_keys: Sequence[bytes]) -> np.ndarray:
    """The int64 times in the 8-byte suffixes of ``state_keys`` (vectorized)."""
    words = np.frombuffer(b"".join(k[-8:] for k in state_keys), dtype=">u8")
    out: np.ndarray = (words.astype(np.uint64) ^ _SIGN).view(np.int64)
    return out


def _locate(
    uid: np.ndarray, ps: np.ndarray, q_uid: np.ndarray, q_lo: np.ndarray, q_hi: np.ndarray,
    pane: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For panes sorted by ``(uid, ps)``, the index ranges of ``q_lo <= ps < q_hi`` per query.

    The bounds are multiples of ``pane``. One int64 sort key (``uid * span + pane index``)
    and two ``searchsorted``; a structured-array search when that key could overflow.
    """
    base = int(ps.min())
    span = (int(ps.max()) - base) // pane + 2
    if (int(uid.max()) + 1) * span < (1 << 62):
        sort_key = uid * span + (ps - base) // pane

        def probe(q: np.ndarray) -> np.ndarray:
            idx = np.clip(-((base - q) // pane), 0, span - 1)  # ceil((q - base) / pane)
            found: np.ndarray = np.searchsorted(sort_key, q_uid * span + idx)
            return found

        return probe(q_lo), probe(q_hi)
    pairs = np.empty(len(uid), dtype=[("u", np.int64), ("p", np.int64)])
    pairs["u"], pairs["p"] = uid, ps

    def probe_pairs(q: np.ndarray) -> np.ndarray:
        keys = np.empty(len(q), dtype=pairs.dtype)
        keys["u"], keys["p"] = q_uid, q
        return np.searchsorted(pairs, keys)

    return probe_pairs(q_lo), probe_pairs(q_hi)


def _suffix_time(state_key: bytes) -> int:
    """The int64 time in a state key's 8-byte suffix."""
    return int.from_bytes(state_key[-8:], "big") - (1 << 63)
