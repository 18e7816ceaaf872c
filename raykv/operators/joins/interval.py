"""``IntervalJoin``: rows of equal keys whose event times differ by ``[lower, upper]``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.operators.joins.common import TIME_LIMIT, JoinLogic
from raykv.operators.joins.config import JoinOperator, check_bound, span_units
from raykv.operators.joins.matching import pairs_in_range, unique_pairs
from raykv.operators.joins.rows import BlobSet
from raykv.operators.joins.state import SIDES, bucket_bytes, bucket_of

#: Flag of an expired, unmatched left row kept until the right schema is known.
WAITING = 2


@dataclass(frozen=True)
class IntervalJoin(JoinOperator):
    """Interval join: ``right.time - left.time`` in ``[lower, upper]``, equal keys.

    Semantics (Flink's interval join): a pair is emitted once, in the epoch in which the
    later of its two rows arrives. Rows behind the *epoch watermark* (the watermark of
    the last barrier) when they arrive are late: counted in ``late_events`` and dropped.
    At each barrier the new watermark ``wm`` deletes the rows that no on-time row can
    match any more: left rows with ``time + upper < wm``, right rows with
    ``time - lower < wm``. With ``how="left"`` a left row that never matched is emitted
    once, padded with nulls, by the barrier whose watermark passes ``time + upper``
    (or at ``finish``: the watermark is then +infinity). The pairs do not depend on how
    the sides interleave within an epoch; late rows do depend on which epoch a row falls
    in (a replay keeps the epochs). The pipeline needs ``watermark=``
    (``requires_watermark``); without watermarks nothing expires before ``finish``.

    Output: ``key`` (the left key's type), the left columns other than ``left_key``,
    the right columns other than ``right_key`` (a name taken already gets ``_right``).

    State: per key, side and time bucket (``bucket`` wide, default
    ``upper - lower + 1``) one engine record (``encode_keys(key) + side byte + int64
    bucket``) with the bucket's rows, their times and matched flags. A row probes at
    most ``ceil((upper - lower + 1) / bucket) + 1`` buckets of the other side (2 by
    default). In memory: per side, bucket -> keys (rebuilt from the engine at build).

    Cost per batch: one ``multi_get`` (the batch's own buckets, to append, and the
    other side's buckets in range), one vectorized match, one ``multi_set``; only the
    matched stored rows are decoded. Per barrier: one ``multi_get`` and ``multi_set`` of
    the buckets the watermark reaches (partly expired buckets are rewritten).

    Attributes:
        time_column: the event-time column of both sides (or ``left_time`` and
            ``right_time``); signed integer or timestamp, one type on both sides.
        lower, upper: the bounds of ``right.time - left.time`` (ints in the time
            column's unit, or ``timedelta``s for timestamps); ``lower <= upper``.
        how: ``"inner"`` (default) or ``"left"``.
        bucket: the width of a state bucket (default ``upper - lower + 1``).
    """

    time_column: str | None = None
    lower: int | timedelta = 0
    upper: int | timedelta = 0
    how: str = "inner"
    left_time: str | None = None
    right_time: str | None = None
    bucket: int | timedelta | None = None

    key_suffix_len: ClassVar[int] = 9
    requires_watermark: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        self._check_how(self.how)
        self._check_times(self.time_column, self.left_time, self.right_time, required=True)
        check_bound(owner, "lower", self.lower)
        check_bound(owner, "upper", self.upper)
        if type(self.lower) is not type(self.upper):
            msg = f"{owner}: lower and upper must both be ints or both timedeltas"
            raise TypeError(msg)
        if self.lower > self.upper:  # type: ignore[operator]
            msg = f"{owner}: lower ({self.lower}) must be <= upper ({self.upper})"
            raise ValueError(msg)
        if self.bucket is not None:
            check_bound(owner, "bucket", self.bucket, positive=True)

    def build(self, store: KVStore) -> JoinLogic:
        """Create the shard logic on ``store`` (resumes the rows it holds)."""
        return IntervalJoinLogic(self, store)


class IntervalJoinLogic(JoinLogic):
    """Running logic of :class:`IntervalJoin` on one shard."""

    op: IntervalJoin

    def __init__(self, op: IntervalJoin, store: KVStore) -> None:
        self.lower = self.upper = 0
        self.width = 1
        #: Per side: bucket -> encoded user keys with a record in it.
        self.buckets: tuple[dict[int, set[bytes]], dict[int, set[bytes]]] = ({}, {})
        super().__init__(op, store)

    def _setup_times(self, t: pa.DataType) -> None:
        op = self.op
        self.lower = span_units(self.name, "lower", op.lower, t)
        self.upper = span_units(self.name, "upper", op.upper, t)
        self.width = (self.upper - self.lower + 1 if op.bucket is None
                      else span_units(self.name, "bucket", op.bucket, t))
        if max(abs(self.lower), abs(self.upper), self.width) >= TIME_LIMIT:
            msg = (f"{self.name}: lower, upper and bucket must lie within +-2**62 time units, "
                   f"got {self.lower}, {self.upper}, {self.width}")
            raise ValueError(msg)

    def _layout(self) -> str:
        return (f"interval/1;how={self.op.how};lower={self.lower};upper={self.upper};"
                f"bucket={self.width}")

    def _index(self, state_key: bytes, value: bytes) -> None:
        side = state_key[-9]
        self.buckets[side].setdefault(bucket_of(state_key[-8:]), set()).add(state_key[:-9])

    # ------------------------------------------------------------------ process

    def _apply(self, batch: pa.RecordBatch, side: int) -> None:
        t = self._times(batch, side)
        n_late = 0
        if self.watermark is not None:
            late = t < self.watermark
            n_late = int(late.sum())
            if n_late == len(t):
                self._late(n_late)
                self._write({})
                return
            if n_late:
                keep = ~late
                batch, t = batch.filter(pa.array(keep)), t[keep]
        self._late(n_late)
        kb = self._keys(batch, side, 9)
        w = self.width
        # the other side's times a row matches: [lo, hi]
        lo, hi = (t + self.lower, t + self.upper) if side == 0 else (t - self.upper, t - self.lower)
        own_pairs, group = unique_pairs(kb.ids, t // w)
        b_lo, b_hi = lo // w, hi // w
        counts = b_hi - b_lo + 1
        rows = np.repeat(np.arange(len(t)), counts)
        offs = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        probe = unique_pairs(kb.ids[rows], b_lo[rows] + offs)[0]
        own_keys = [kb.enc[k] + SIDES[side] + s for k, s in
                    zip(own_pairs[:, 0].tolist(), bucket_bytes(own_pairs[:, 1]), strict=True)]
        opp_keys = [kb.enc[k] + SIDES[1 - side] + s for k, s in
                    zip(probe[:, 0].tolist(), bucket_bytes(probe[:, 1]), strict=True)]
        raws = self.store.multi_get(own_keys + opp_keys)
        no = len(own_keys)
        other = BlobSet(raws[no:], probe[:, 0].tolist())
        new_i, old_j = pairs_in_range(kb.ids, lo, hi, other.group, other.times)
        if side == 1 and len(old_j):
            live = other.flags[old_j] != WAITING
            new_i, old_j = new_i[live], old_j[live]
        stored = self._stored(batch, side)
        self._emit_pairs(kb.uniq.take(pa.array(kb.ids[new_i])), stored, new_i, other, old_j,
                         side)
        writes: dict[bytes, bytes] = {}
        flags = np.zeros(len(t), dtype=np.uint8)
        if self.op.how == "left":
            if side == 0:
                flags[new_i] = 1
            elif len(old_j):
                now = other.flags.copy()
                now[old_j] = 1
                for i, v in enumerate(other.rewrite(np.ones(len(other), bool), now)):
                    if v is not None:
                        writes[opp_keys[i]] = v
        data, lens = self.codec(side).encode(stored)
        own = BlobSet(raws[:no], range(no))
        writes.update(zip(own_keys, own.append(group, t, flags, data, lens), strict=True))
        self._write(writes)
        index = self.buckets[side]
        for k, b in own_pairs.tolist():
            index.setdefault(b, set()).add(kb.enc[k])

    # ------------------------------------------------------------------ expiry

    def _close(self, wm: int | None) -> None:
        """Delete rows no on-time row can match (``None``: all), padding left rows."""
        if wm is None and self.op.how == "inner":
            return  # the end of input: nothing left to emit, nothing worth deleting
        bounds = (self.upper, -self.lower)  # a row is dead once time + bound < wm
        keys: list[bytes] = []
        spans: list[tuple[int, int, list[bytes]]] = []  # (side, bucket, its keys' encodings)
        side_parts: list[np.ndarray] = []
        for side in (0, 1):
            due = [b for b in self.buckets[side]
                   if wm is None or b * self.width + bounds[side] < wm]
            for b, suffix in zip(due, bucket_bytes(np.array(due, dtype=np.int64)), strict=True):
                tail = SIDES[side] + suffix
                encs = list(self.buckets[side][b])
                spans.append((side, b, encs))
                keys += [e + tail for e in encs]
                side_parts.append(np.full(len(encs), side, dtype=np.int64))
        if not keys:
            return
        sides = np.concatenate(side_parts)
        blobs = BlobSet(self.store.multi_get(keys), range(len(keys)))
        row_side = sides[blobs.group]
        bound = np.where(row_side == 0, bounds[0], bounds[1])
        dead = np.ones(len(blobs), bool) if wm is None else blobs.times + bound < wm
        flags = None
        if self.op.how == "left":
            pad = dead & (row_side == 0) & (blobs.flags != 1)
            if self.schemas[1] is None and wm is not None:
                flags = np.where(pad, WAITING, blobs.flags).astype(np.uint8)
                dead &= ~pad
            elif pad.any():
                rows = np.flatnonzero(pad)
                enc = [keys[g][:-9] for g in blobs.group[rows].tolist()]
                self._emit(self._key_values(enc), blobs.decode(self.codec(0), rows), None)
        values = blobs.rewrite(~dead, flags)
        self._write({k: v for k, v in zip(keys, values, strict=True) if v is not None})
        # the index: drop emptied buckets whole, else the keys whose record is gone
        emptied = np.fromiter((v == b"" for v in values), dtype=bool, count=len(values))
        start = 0
        for side, b, encs in spans:
            end = start + len(encs)
            gone = emptied[start:end]
            if gone.all():
                del self.buckets[side][b]
            elif gone.any():
                self.buckets[side][b].difference_update(
                    [e for e, g in zip(encs, gone.tolist(), strict=True) if g])
            start = end
