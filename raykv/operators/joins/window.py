"""``WindowJoin``: rows of equal keys in the same tumbling or sliding event-time window."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.operators.eventtime import WINDOW_END, WINDOW_START
from raykv.operators.joins.common import TIME_LIMIT, JoinLogic
from raykv.operators.joins.config import JoinOperator, check_bound, span_units
from raykv.operators.joins.matching import pairs_equal, unique_pairs
from raykv.operators.joins.rows import BlobSet
from raykv.operators.joins.state import SIDES, bucket_bytes, bucket_of
from raykv.operators.watermark import time_array


@dataclass(frozen=True)
class WindowJoin(JoinOperator):
    """Window join: every left row with every right row of the same key and window.

    Windows are ``[s, s + size)`` with ``s`` a multiple of ``slide`` (tumbling when
    ``slide`` is ``None``, i.e. ``size``); a row is in every window holding its time.
    A window's pairs are emitted once, by the barrier whose watermark reaches the
    window's end (``end <= watermark``), or at ``finish``; a pair of rows sharing
    several sliding windows is emitted once per window. A row whose first window has
    already closed by the epoch watermark when it arrives is late: counted in
    ``late_events`` and dropped (so every emitted window holds exactly its non-late
    rows, as for ``SlidingWindow``). Inner join only (Flink's window join also offers
    outer joins: not yet). The output does not depend on how the sides interleave
    within an epoch. The pipeline needs ``watermark=`` (``requires_watermark``).

    Output: ``key`` (the left key's type), ``window_start``, ``window_end`` (the time
    column's type), the left columns other than ``left_key``, the right columns other
    than ``right_key`` (a name taken already gets ``_right``). Rows of one barrier are
    ordered by window start, then key.

    State: per key, side and pane of ``gcd(size, slide)`` one engine record
    (``encode_keys(key) + side byte + int64 pane index``) holding the pane's rows; a
    pane is deleted once the last window holding it has been emitted. In memory: pane ->
    keys (rebuilt from the engine at build).

    Cost per batch: one ``multi_get`` and one ``multi_set`` of the batch's (key, side,
    pane) records (rows appended, nothing decoded). Per barrier: one ``multi_get`` of
    both sides' records of the panes in the closing windows, a vectorized cross product
    per (window, key), one ``multi_set`` deleting the panes no open window holds. A
    sliding pane is read by each barrier that closes one of its ``size / slide``
    windows.

    Attributes:
        time_column: the event-time column of both sides (or ``left_time`` and
            ``right_time``); signed integer or timestamp, one type on both sides.
        size: window length (``> 0``; an int in the time column's unit or a
            ``timedelta`` for timestamps).
        slide: window step (``0 < slide <= size``; ``None``: tumbling).
    """

    time_column: str | None = None
    size: int | timedelta = 0
    slide: int | timedelta | None = None
    how: str = "inner"
    left_time: str | None = None
    right_time: str | None = None

    HOWS: ClassVar[tuple[str, ...]] = ("inner",)
    key_suffix_len: ClassVar[int] = 9
    requires_watermark: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        self._check_how(self.how)
        self._check_times(self.time_column, self.left_time, self.right_time, required=True)
        check_bound(owner, "size", self.size, positive=True)
        if self.slide is not None:
            check_bound(owner, "slide", self.slide, positive=True)
            if type(self.slide) is not type(self.size):
                msg = f"{owner}: size and slide must both be ints or both timedeltas"
                raise TypeError(msg)
            if self.slide > self.size:  # type: ignore[operator]
                msg = f"{owner}: slide ({self.slide}) must be <= size ({self.size})"
                raise ValueError(msg)

    def build(self, store: KVStore) -> JoinLogic:
        """Create the shard logic on ``store`` (resumes the panes it holds)."""
        return WindowJoinLogic(self, store)


class WindowJoinLogic(JoinLogic):
    """Running logic of :class:`WindowJoin` on one shard."""

    op: WindowJoin

    def __init__(self, op: WindowJoin, store: KVStore) -> None:
        self.size = self.slide = self.pane = 1
        self._time_type: pa.DataType = pa.int64()
        #: Pane index -> encoded user keys with rows in it (either side).
        self.panes: dict[int, set[bytes]] = {}
        super().__init__(op, store)

    def _setup_times(self, t: pa.DataType) -> None:
        op = self.op
        self.size = span_units(self.name, "size", op.size, t)
        self.slide = self.size if op.slide is None else span_units(self.name, "slide",
                                                                     op.slide, t)
        if self.size >= TIME_LIMIT:
            msg = f"{self.name}: size must be below 2**62 time units, got {self.size}"
            raise ValueError(msg)
        self.pane = math.gcd(self.size, self.slide)
        self._time_type = t
        self.extra_fields = [pa.field(WINDOW_START, t), pa.field(WINDOW_END, t)]

    def _layout(self) -> str:
        return f"window-join/1;size={self.size};slide={self.slide}"

    def _index(self, state_key: bytes, value: bytes) -> None:
        self.panes.setdefault(bucket_of(state_key[-8:]), set()).add(state_key[:-9])

    # ------------------------------------------------------------------ process

    def _apply(self, batch: pa.RecordBatch, side: int) -> None:
        t = self._times(batch, side)
        n_late = 0
        if self.watermark is not None:
            first_end = ((t - self.size) // self.slide + 1) * self.slide + self.size
            late = first_end <= self.watermark
            n_late = int(late.sum())
            if n_late:
                keep = ~late
                batch, t = batch.filter(pa.array(keep)), t[keep]
        self._late(n_late)
        if not len(t):
            self._write({})
            return
        kb = self._keys(batch, side, 9)
        pairs, group = unique_pairs(kb.ids, t // self.pane)
        keys = [kb.enc[k] + SIDES[side] + s for k, s in
                zip(pairs[:, 0].tolist(), bucket_bytes(pairs[:, 1]), strict=True)]
        raws = self.store.multi_get(keys)
        data, lens = self.codec(side).encode(self._stored(batch, side))
        flags = np.zeros(len(t), dtype=np.uint8)
        mine = BlobSet(raws, range(len(keys)))
        writes = dict(zip(keys, mine.append(group, t, flags, data, lens), strict=True))
        self._write(writes)
        for k, p in pairs.tolist():
            self.panes.setdefault(p, set()).add(kb.enc[k])

    # ------------------------------------------------------------------ closing

    def _close(self, wm: int | None) -> None:
        """Emit the windows ending in ``(epoch watermark, wm]`` (``None``: all open ones)."""
        if not self.panes:
            return
        size, slide, pane = self.size, self.slide, self.pane
        prev = self.watermark
        idx = np.array(sorted(self.panes), dtype=np.int64)
        p_start = idx * pane
        k_lo = -((size - p_start - pane) // slide)  # ceil((p_end - size) / slide)
        k_hi = p_start // slide
        counts = np.maximum(k_hi - k_lo + 1, 0)
        ks = np.repeat(k_lo - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        starts = np.unique(ks * slide)
        ends = starts + size
        closing = np.ones(len(starts), bool) if prev is None else ends > prev
        if wm is not None:
            closing &= ends <= wm
        win = starts[closing]
        # panes in a closing window, and panes no open window holds any more
        last_end = (p_start // slide) * slide + size
        lo = np.searchsorted(win, p_start + pane - size, side="left")
        hi = np.searchsorted(win, p_start, side="right")
        read = hi > lo
        done = np.ones(len(idx), bool) if wm is None else last_end <= wm
        if not read.any() and not done.any():
            return
        encs = sorted({e for p in idx[read].tolist() for e in self.panes[p]})
        kid = dict(zip(encs, range(len(encs)), strict=True))
        keys: list[bytes] = []
        sides: list[np.ndarray] = []
        groups: list[np.ndarray] = []
        panes: list[np.ndarray] = []
        for p, suffix in zip(idx[read].tolist(), bucket_bytes(idx[read]), strict=True):
            members = list(self.panes[p])
            ids = np.fromiter(map(kid.__getitem__, members), dtype=np.int64,
                              count=len(members))
            for side in (0, 1):
                tail = SIDES[side] + suffix
                keys += [e + tail for e in members]
                sides.append(np.full(len(members), side, dtype=np.int64))
                groups.append(ids)
                panes.append(np.full(len(members), p, dtype=np.int64))
        if keys:
            self._emit_windows(win, keys, np.concatenate(sides), np.concatenate(groups),
                               np.concatenate(panes), encs)
        writes: dict[bytes, bytes] = {}
        for p, suffix in zip(idx[done].tolist(), bucket_bytes(idx[done]), strict=True):
            gone = self.panes.pop(p)
            for side in (0, 1):
                tail = SIDES[side] + suffix
                writes.update(dict.fromkeys([e + tail for e in gone], b""))
        self._write(writes)

    def _emit_windows(self, win: np.ndarray, keys: list[bytes], key_side: np.ndarray,
                      key_group: np.ndarray, key_pane: np.ndarray, encs: list[bytes]) -> None:
        """Emit the pairs of every closing window ``win`` from the pane records ``keys``.

        Per record: its side, key id (into the sorted encoded keys ``encs``) and pane.
        """
        raws = self.store.multi_get(keys)
        rows = BlobSet(raws, range(len(keys)))
        rec = rows.group
        p_start = key_pane[rec] * self.pane
        lo = np.searchsorted(win, p_start + self.pane - self.size, side="left")
        hi = np.searchsorted(win, p_start, side="right")
        counts = hi - lo
        row = np.repeat(np.arange(len(rec)), counts)
        w = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        nkeys = len(encs)
        grp = w * nkeys + key_group[rec[row]]
        is_left = key_side[rec[row]] == 0
        li, ri = pairs_equal(grp[is_left], grp[~is_left])
        if not len(li):
            return
        lrow, rrow = row[is_left][li], row[~is_left][ri]
        pw = w[is_left][li]
        order = np.lexsort((grp[is_left][li], pw))
        lrow, rrow, pw = lrow[order], rrow[order], pw[order]
        enc = [encs[g] for g in key_group[rec[lrow]].tolist()]
        t = self._time_type
        self._emit(self._key_values(enc), rows.decode(self.codec(0), lrow),
                   rows.decode(self.codec(1), rrow),
                   [time_array(win[pw], t), time_array(win[pw] + self.size, t)])
