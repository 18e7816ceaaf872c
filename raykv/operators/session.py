"""``SessionWindow``: per-key aggregations over sessions of activity, closed by watermark."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raykv.engines.base import KVStore
from raykv.operators.base import EMPTY_KEY, META_KEYS
from raykv.operators.eventtime import WINDOW_END, WINDOW_START, EventTimeLogic, EventTimeWindow
from raykv.operators.panes import combine_ranges
from raykv.operators.watermark import time_array, to_units

_LABEL = "\x00session"
_COUNT = struct.Struct("<I")
_SESSION = struct.Struct("<qqI")  # first event time, last event time, state length

Session = tuple[int, int, bytes]  # first, last, aggregation state


@dataclass(frozen=True)
class SessionWindow(EventTimeWindow):
    """Aggregations per key and session: events less than ``gap`` apart, chained.

    Two events of a key are in one session when a chain of its events leads from one to
    the other with less than ``gap`` between neighbours. A session covers
    ``[first event, last event + gap)``: it grows while events arrive within ``gap`` of it
    (before or after it: out-of-order events extend it backwards), and an event within
    ``gap`` of two sessions merges them. Output: ``window_start`` is the first event time
    and ``window_end`` the last event time plus ``gap``.

    Watermark as for ``TumblingWindow`` (largest event time seen minus
    ``allowed_lateness``, or the runtime's through ``advance_watermark``). A session
    *closes* when the watermark reaches its end (``last + gap <= watermark``): it takes
    no more events (an event near it starts a new session) and is emitted once at the
    next barrier, then deleted. An event is late, counted in ``late_events`` and dropped
    (kept for ``late_rows()`` with ``late="emit"``), when it joins no open session and its
    own session ``[t, t + gap)`` would already be closed. ``finish`` emits all sessions.

    ``first``/``last`` follow arrival order, except when sessions merge: the merged
    state combines the merged sessions in start order, then the rows of the batch that
    merged them in arrival order.

    State: one engine record per key (state key = the encoded key, so restore and
    rescale move it with its key group) holding the key's open sessions, each its first
    and last event time and aggregation state. An in-memory index (session end -> keys)
    is rebuilt by one ``store.items()`` scan when the logic is built.

    Input: the ``key``, the ``time_column`` (signed integer or timestamp, no nulls,
    within +-2**62) and the aggregated columns. Output: the key column, ``window_start``
    and ``window_end`` (the time column's type), then ``{column}_{op}`` as for
    ``Aggregate``; rows ordered by window start, then encoded key, then window end (a
    key may have a closed session and a later one that grew back to the same start).

    Cost per batch: one ``multi_get`` and one ``multi_set`` of the batch's distinct keys,
    a Python pass over the rows to assign sessions (O(sessions open for the row's key)
    per row), one Arrow group by session for the aggregates. Per barrier: one
    ``multi_get`` and one ``multi_set`` of the keys with a closing session.

    Example:
        >>> import pyarrow as pa, tempfile
        >>> from raykv.engines import MemOnly
        >>> op = SessionWindow("k", "t", gap=5, aggs={"v": ["sum", "count"]})
        >>> with MemOnly(tempfile.mkdtemp()) as store:
        ...     logic = op.build(store)
        ...     logic.process(pa.record_batch({"k": [1, 1, 1, 1], "t": [1, 4, 12, 30],
        ...                                    "v": [1, 2, 4, 8]}))
        ...     out = logic.on_barrier(1).to_pydict()
        >>> out["window_start"], out["window_end"], out["v_sum"], out["v_count"]
        ([1, 12], [9, 17], [3, 4], [2, 1])

    Attributes:
        time_column: event-time column (signed integer or timestamp).
        gap: the inactivity gap that ends a session (``> 0``; an int in the time column's
            unit, or a ``timedelta`` for a timestamp column).
        aggs: ``{column: [ops]}`` as for ``Aggregate``.
        allowed_lateness: how far behind the largest event time seen an event may be and
            still count (same units as ``gap``); default 0.
        late: ``"drop"`` (default) or ``"emit"`` (late rows on ``late_rows()``, see
            ``raykv.operators.eventtime``).
    """

    time_column: str
    gap: int | timedelta
    aggs: Mapping[str, Sequence[str]]
    allowed_lateness: int | timedelta = 0
    late: str = "drop"

    key_suffix_len: ClassVar[int] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_window([("gap", self.gap)])

    def build(self, store: KVStore) -> SessionWindowLogic:
        """Create the shard logic on ``store`` (resumes the sessions and watermark it holds)."""
        return SessionWindowLogic(self, store)


class SessionWindowLogic(EventTimeLogic):
    """Running logic of :class:`SessionWindow` on one shard."""

    op: SessionWindow

    def __init__(self, op: SessionWindow, store: KVStore) -> None:
        self._gap = 1
        #: Session end -> state keys of the keys with a session ending there.
        self._by_end: dict[int, set[bytes]] = {}
        self._times_out: tuple[list[int], list[int]] = ([], [])
        super().__init__(op, store)
        if self._schema is not None:
            for k, v in store.items():
                if k not in META_KEYS:
                    self._index(k, [], decode_sessions(v))

    def _setup_spans(self, t: pa.DataType) -> None:
        self._gap = to_units(self._name(), "gap", self.op.gap, t)

    def _layout(self) -> str:
        assert self.layout is not None
        return f"session/1;gap={self._gap};" + self.layout.layout_id

    def _index(self, key: bytes, old: Sequence[Session], new: Sequence[Session]) -> None:
        gap = self._gap
        for _, last, _ in old:
            keys = self._by_end.get(last + gap)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_end[last + gap]
        for _, last, _ in new:
            self._by_end.setdefault(last + gap, set()).add(key)

    # ------------------------------------------------------------------ process

    def _process(self, batch: pa.RecordBatch) -> None:
        layout = self.layout
        assert layout is not None
        gap = self._gap
        t = self._times(batch)
        wm = self.clock.running(t)
        canon = self._canonical(batch)
        key_col = canon.column(self.key)
        uniq = pc.unique(key_col)
        ids = pc.index_in(key_col, value_set=uniq).to_numpy(zero_copy_only=False)
        state_keys = self._state_keys(uniq)
        old_values = self.store.multi_get(state_keys)
        # labels: the keys' stored sessions first, then the sessions this batch starts
        first: list[int] = []
        last: list[int] = []
        parent: list[int] = []
        label_key: list[int] = []
        old_sessions: list[list[Session]] = []
        key_labels: list[list[int]] = []
        for kid, raw in enumerate(old_values):
            sessions = decode_sessions(raw)
            old_sessions.append(sessions)
            labels = []
            for f, la, _ in sessions:
                labels.append(len(first))
                first.append(f)
                last.append(la)
                parent.append(len(parent))
                label_key.append(kid)
            key_labels.append(labels)
        n_old = len(first)
        old = [x for sessions in old_sessions for x in sessions]
        n = len(t)
        row_label = np.full(n, -1, dtype=np.int64)
        late = np.zeros(n, dtype=bool)
        for i, (kid, ti, w) in enumerate(zip(ids.tolist(), t.tolist(), wm.tolist(),
                                             strict=True)):
            labels = key_labels[kid]
            hit = -1
            for lab in list(labels):
                if first[lab] - gap < ti < last[lab] + gap and last[lab] + gap > w:
                    if hit < 0:
                        hit = lab
                    else:  # the row bridges two open sessions: merge them
                        parent[lab] = hit
                        first[hit] = min(first[hit], first[lab])
                        last[hit] = max(last[hit], last[lab])
                        labels.remove(lab)
            if hit < 0:
                if ti + gap <= w:
                    late[i] = True
                    continue
                hit = len(first)
                first.append(ti)
                last.append(ti)
                parent.append(hit)
                label_key.append(kid)
                labels.append(hit)
            else:
                first[hit] = min(first[hit], ti)
                last[hit] = max(last[hit], ti)
            row_label[i] = hit

        def find(lab: int) -> int:
            while parent[lab] != lab:
                lab = parent[lab]
            return lab

        n_late = int(late.sum())
        writes: dict[bytes, bytes] = {}
        changes: list[tuple[bytes, list[Session], list[Session]]] = []
        if n_late < n:
            keep = ~late
            roots = np.fromiter((find(int(x)) for x in row_label[keep]), dtype=np.int64,
                                count=n - n_late)
            kept = canon.filter(pa.array(keep)) if n_late else canon
            part = layout.partials(kept.append_column(_LABEL, pa.array(roots)), [_LABEL])
            part_roots = part.column(_LABEL).to_numpy()
            members: dict[int, list[int]] = {}
            for lab in range(n_old):
                members.setdefault(find(lab), []).append(lab)
            flat: list[bytes] = []
            lo, hi = [], []
            for r in part_roots.tolist():
                lo.append(len(flat))
                flat += [old[m][2] for m in sorted(members.get(r, []), key=lambda m: old[m][0])]
                hi.append(len(flat))

            def describe(i: int) -> str:
                r = int(part_roots[i])
                return f"key {uniq[label_key[r]].as_py()!r} session starting at {first[r]}"

            merged = combine_ranges(layout, flat, np.array(lo), np.array(hi), describe)
            new_states, _ = layout.combine(merged, part, describe)
            state_of = dict(zip(part_roots.tolist(), new_states, strict=True))
            for kid in np.unique(ids[keep]).tolist():
                sessions = [
                    (first[lab], last[lab], state_of[lab]) if lab in state_of
                    else old[lab]  # a stored session that this batch did not touch
                    for lab in key_labels[kid]
                ]
                sessions.sort()
                writes[state_keys[kid]] = encode_sessions(sessions)
                changes.append((state_keys[kid], old_sessions[kid], sessions))
        extra = self.clock.pending(t, n_late)
        self._write(list(writes), list(writes.values()), track=False, extra=extra)
        self.clock.commit(t, n_late)
        self._keep_late(batch, late)
        for key, old, new in changes:
            self._index(key, old, new)

    # ------------------------------------------------------------------ closing

    def export_state(self) -> pa.RecordBatch | None:
        """Every open session with its current aggregates, changing nothing."""
        pairs = sorted((k, v) for k, v in self.store.items() if k not in META_KEYS)
        rows = [(f, k, la, s) for k, v in pairs for f, la, s in decode_sessions(v)]
        return self._emit_sessions(rows)

    def _close(self, wm: int | None) -> pa.RecordBatch | None:
        """Emit and delete every session whose end is ``<=`` ``wm`` (``None``: all)."""
        ends = [e for e in self._by_end if wm is None or e <= wm]
        keys = sorted({k for e in ends for k in self._by_end[e]})
        if not keys:
            return None
        values = self.store.multi_get(keys)
        gap = self._gap
        rows: list[tuple[int, bytes, int, bytes]] = []
        writes: list[bytes] = []
        for k, raw in zip(keys, values, strict=True):
            open_: list[Session] = []
            for f, la, s in decode_sessions(raw):
                if wm is None or la + gap <= wm:
                    rows.append((f, k, la, s))
                else:
                    open_.append((f, la, s))
            writes.append(encode_sessions(open_) if open_ else b"")
        out = self._emit_sessions(rows)
        self._write(keys, writes, track=False)
        for e in ends:
            del self._by_end[e]
        return out

    def _emit_sessions(self, rows: list[tuple[int, bytes, int, bytes]]) -> pa.RecordBatch | None:
        """Output rows of sessions ``(first, state key, last, state)``, by start, key, end."""
        if not rows:
            return None
        rows.sort(key=lambda r: (r[0], b"" if r[1] == EMPTY_KEY else r[1], r[2]))
        self._times_out = ([r[0] for r in rows], [r[2] + self._gap for r in rows])
        try:
            return self._emit([r[1] for r in rows], [r[3] for r in rows])
        finally:
            self._times_out = ([], [])

    def _render(
        self, state_keys: Sequence[bytes], values: Sequence[bytes]
    ) -> list[tuple[str, pa.Array]]:
        assert self.layout is not None and self._time_type is not None
        starts, ends = self._times_out
        cols = [
            (WINDOW_START, time_array(np.array(starts, dtype=np.int64), self._time_type)),
            (WINDOW_END, time_array(np.array(ends, dtype=np.int64), self._time_type)),
        ]
        return cols + self.layout.render(values)


def encode_sessions(sessions: Sequence[Session]) -> bytes:
    """Encode a key's sessions as its state value.

    Layout (little-endian): ``uint32 n``, then per session ``int64 first``,
    ``int64 last``, ``uint32 len`` and ``len`` bytes of aggregation state.
    """
    parts = [_COUNT.pack(len(sessions))]
    for f, la, s in sessions:
        parts.append(_SESSION.pack(f, la, len(s)))
        parts.append(s)
    return b"".join(parts)


def decode_sessions(raw: bytes) -> list[Session]:
    """Inverse of :func:`encode_sessions` (``b""``: no sessions)."""
    if not raw:
        return []
    (n,) = _COUNT.unpack_from(raw, 0)
    pos = _COUNT.size
    out = []
    for _ in range(n):
        f, la, size = _SESSION.unpack_from(raw, pos)
        pos += _SESSION.size
        out.append((f, la, raw[pos : pos + size]))
        pos += size
    return out
