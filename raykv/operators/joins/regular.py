"""``Join``: the regular (unbounded) equi-join of two inputs, inner or left, with a TTL."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.operators.base import META_KEYS
from raykv.operators.joins.common import JoinLogic
from raykv.operators.joins.config import JoinOperator, span_units
from raykv.operators.joins.matching import pairs_equal
from raykv.operators.joins.rows import BlobSet, blob_times, group_min
from raykv.operators.joins.state import SIDES, EarliestIndex
from raykv.operators.ttl import TTL, normalize_ttl

_NO_STAMP = 0
#: Flag of an expired, unmatched left row kept until the right schema is known.
WAITING = 2


@dataclass(frozen=True)
class Join(JoinOperator):
    """Regular join: every left row with every right row of the same key, unbounded inputs.

    Flink's regular join (Arroyo's updating join, without retractions).

    Semantics: a pair is emitted once, in the epoch in which the later of its two rows
    arrives (``on_barrier`` of that epoch). With ``how="left"`` a left row that never
    matched is emitted once, padded with nulls on the right, when it can no longer match:
    when the TTL expires it, or at the end of input (``finish``). The output is
    append-only (no retractions): a left row padded at expiry stays emitted even if a
    right row of its key would have come later. Without a TTL, state grows with the
    input (every row is kept); inner pairs do not depend on how the sides interleave.

    TTL (``ttl=TTL(span)``, processing time, or ``TTL(span, time="event", column=c)``,
    ``c`` on both sides): each row lives ``span`` after it arrived (processing: the
    shard's wall clock, so a replay after a failure may expire other rows: as for
    ``ttl.py``) or until the watermark passes its event time + ``span`` (event time: the
    pipeline needs ``watermark=``; a replay expires the same rows). A row is removed, and
    padded if it is an unmatched left row, by the first barrier whose horizon passed its
    stamp (expired means ``stamp < horizon``; horizon = now, or watermark + 1); until then
    it still matches. A match does not refresh a row's TTL.

    Output: ``key`` (the left key's type), the left columns other than ``left_key``, the
    right columns other than ``right_key`` (a name taken already gets ``_right``; see
    ``raykv.operators.joins.common``).

    State: per key and side one engine record (``encode_keys(key) + side byte``) holding
    the side's rows (``rows.py``), each with its TTL stamp and matched flag. In memory
    (TTL only): a heap of (earliest stamp, record), rebuilt from the engine at build.

    Cost per batch: one ``multi_get`` of the batch's keys on both sides, one
    ``multi_set`` (the side's records with the rows appended; for a left join's right
    batch also the left records whose rows matched for the first time); the other
    side's records are decoded only for matched rows. A hot key's record grows with its
    live rows, and every batch with the key rewrites it: bound it with the TTL. Per
    barrier with a TTL: one ``multi_get`` and ``multi_set`` of the records holding
    expired rows.

    Attributes:
        how: ``"inner"`` (default) or ``"left"``.
        ttl: a :class:`~raykv.operators.TTL`, seconds of processing time, or ``None``
            (keep every row).
    """

    how: str = "inner"
    ttl: TTL | int | float | timedelta | None = field(default=None)

    key_suffix_len = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_how(self.how)
        object.__setattr__(self, "ttl", normalize_ttl(self.ttl, type(self).__name__))
        col = self.ttl.column if isinstance(self.ttl, TTL) else None
        self._check_times(col, None, None, required=False)

    @property
    def requires_watermark(self) -> bool:
        """Whether the pipeline must have ``watermark=`` (an event-time TTL)."""
        return isinstance(self.ttl, TTL) and self.ttl.time == "event"

    def build(self, store: KVStore) -> JoinLogic:
        """Create the shard logic on ``store`` (resumes the rows it holds)."""
        return RegularJoinLogic(self, store)


class RegularJoinLogic(JoinLogic):
    """Running logic of :class:`Join` on one shard."""

    op: Join

    def __init__(self, op: Join, store: KVStore) -> None:
        self._span = 0
        #: Per record (TTL only): the earliest stamp of its rows.
        self.expiring = EarliestIndex()
        ttl = op.ttl
        assert ttl is None or isinstance(ttl, TTL)
        self._ttl = ttl
        if ttl is not None and ttl.time == "processing":
            s = ttl.span
            self._span = int((s.total_seconds() if isinstance(s, timedelta) else s) * 1e9)
        #: Processing-time clock in nanoseconds (tests replace it).
        self.clock: Callable[[], int] = time.time_ns
        super().__init__(op, store)

    def _layout(self) -> str:
        t = self._ttl
        return f"join/1;how={self.op.how};ttl={'none' if t is None else t.time}"

    def _setup_times(self, t: pa.DataType) -> None:
        assert self._ttl is not None
        span = self._ttl.span
        assert not isinstance(span, float)
        self._span = span_units(self.name, "ttl.span", span, t)

    def _index(self, state_key: bytes, value: bytes) -> None:
        if self._ttl is not None:
            times = blob_times(value)
            self.expiring.track(state_key, int(times.min()) if len(times) else None)

    # ------------------------------------------------------------------ process

    def _apply(self, batch: pa.RecordBatch, side: int) -> None:
        kb = self._keys(batch, side, 1)
        k = len(kb.enc)
        own = [e + SIDES[side] for e in kb.enc]
        opp = [e + SIDES[1 - side] for e in kb.enc]
        raws = self.store.multi_get(own + opp)
        other = BlobSet(raws[k:], range(k))
        new_i, old_j = pairs_equal(kb.ids, other.group)
        if side == 1 and len(old_j) and (other.flags == WAITING).any():
            live = other.flags[old_j] != WAITING
            new_i, old_j = new_i[live], old_j[live]
        stored = self._stored(batch, side)
        self._emit_pairs(kb.uniq.take(pa.array(kb.ids[new_i])), stored, new_i, other, old_j,
                         side)
        flags = np.zeros(batch.num_rows, dtype=np.uint8)
        writes: dict[bytes, bytes] = {}
        left_join = self.op.how == "left"
        if left_join and side == 0:
            flags[new_i] = 1
        if left_join and side == 1 and len(old_j):
            now = other.flags.copy()
            now[old_j] = 1
            for i, v in enumerate(other.rewrite(np.ones(len(other), bool), now)):
                if v is not None:
                    writes[opp[i]] = v
        stamps = self._stamps(batch, side)
        data, lens = self.codec(side).encode(stored)
        mine_set = BlobSet(raws[:k], range(k))
        writes.update(zip(own, mine_set.append(kb.ids, stamps, flags, data, lens), strict=True))
        self._write(writes)
        if self._ttl is not None:
            self.expiring.track_groups(own, np.concatenate([mine_set.group, kb.ids]),
                                       np.concatenate([mine_set.times, stamps]),
                                       group_min(mine_set.group, mine_set.times, k))

    def _stamps(self, batch: pa.RecordBatch, side: int) -> np.ndarray:
        n = batch.num_rows
        if self._ttl is None:
            return np.full(n, _NO_STAMP, dtype=np.int64)
        if self._ttl.time == "processing":
            return np.full(n, self.clock() + self._span, dtype=np.int64)
        return self._times(batch, side) + self._span

    # ------------------------------------------------------------------ expiry

    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        """The pairs found this epoch, then (TTL) the expired unmatched left rows."""
        if self._ttl is not None and not self._finished:
            if self._ttl.time == "processing":
                self._expire(self.clock())
            elif self._next_wm is not None:
                self._expire(self._next_wm + 1)
        return super().on_barrier(epoch)

    def _close(self, wm: int | None) -> None:
        if wm is None and self.op.how == "left":  # an inner join has nothing left to emit
            self._expire(None)

    def _expire(self, horizon: int | None) -> None:
        """Remove rows stamped below ``horizon`` (``None``: all), padding unmatched left rows."""
        if horizon is None:
            pairs = sorted((k, v) for k, v in self.store.items() if k not in META_KEYS)
            keys = [k for k, _ in pairs]
            raws = [v for _, v in pairs]
            self.expiring.pop_due(None)
        else:
            keys = self.expiring.pop_due(horizon)
            raws = self.store.multi_get(keys) if keys else []
        if not keys:
            return
        blobs = BlobSet(raws, range(len(keys)))
        expired = np.ones(len(blobs), bool) if horizon is None else blobs.times < horizon
        is_left = np.fromiter((k[-1] == 0 for k in keys), dtype=bool, count=len(keys))
        flags = None
        if self.op.how == "left":
            pad = expired & (blobs.flags != 1) & is_left[blobs.group]
            if self.schemas[1] is None and horizon is not None:
                # no right row yet, so no right columns: keep them, matching nothing,
                # until the right schema is known (or the end of input)
                flags = np.where(pad, WAITING, blobs.flags).astype(np.uint8)
                expired &= ~pad
            elif pad.any():
                rows = np.flatnonzero(pad)
                enc = [keys[g][:-1] for g in blobs.group[rows].tolist()]
                self._emit(self._key_values(enc), blobs.decode(self.codec(0), rows), None)
        writes: dict[bytes, bytes] = {}
        for i, v in enumerate(blobs.rewrite(~expired, flags)):
            if v is not None:
                writes[keys[i]] = v
        self._write(writes)
        if horizon is not None and self._ttl is not None:
            self.expiring.track_groups(keys, blobs.group[~expired], blobs.times[~expired])
