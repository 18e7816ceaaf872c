"""``LookupJoin``: enrich each left row with the right row of its key (a temporal join)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.operators.joins.common import JoinLogic
from raykv.operators.joins.config import JoinOperator
from raykv.operators.joins.matching import latest_at_or_before
from raykv.operators.joins.rows import BlobSet, blob_times, group_min, latest_per_group
from raykv.operators.joins.state import NONE, SIDES, EarliestIndex

VERSIONS = ("event_time", "latest")
#: Flag of a left row that found no right row while the right columns were unknown:
#: emitted padded once they are known (or at the end of input).
WAITING = 2


@dataclass(frozen=True)
class LookupJoin(JoinOperator):
    r"""Lookup (stream-table, temporal) join: each left row gets its key's right row.

    The right input is an upsert stream kept as a table per key.

    ``version="event_time"`` (Flink's event-time temporal join, Quix/Pathway as-of
    join): a left row at time ``t`` gets the right row of its key with the latest time
    ``<= t`` (equal times: the one that arrived last). Left rows wait in the state until
    the watermark passes their time (``t < watermark``): from then on the right versions
    up to ``t`` are known, and the barrier that applies that watermark emits them
    (``finish``: all). Left rows behind the epoch watermark when they arrive are late
    (counted in ``late_events``, dropped). Right versions are pruned by the watermark: a
    key keeps its versions newer than the epoch watermark and the latest one at or
    before it. Results do not depend on how the sides interleave within an epoch. The
    pipeline needs ``watermark=``.

    ``version="latest"`` (Flink's processing-time lookup, Arroyo's lookup join): a left
    row is emitted in the epoch it arrives, enriched with the right row of its key that
    arrived last before it. This is **not deterministic** run to run: which right rows
    arrived first depends on the timing of the two inputs (a replay after a failure may
    enrich differently); the time column is not used (``time_column`` may be ``None``).
    The right side keeps one row per key.

    ``how="inner"`` drops a left row with no right row; ``"left"`` emits it padded with
    nulls. Output: ``key`` (the left key's type), the left columns other than
    ``left_key``, the right columns other than ``right_key`` (a name taken already gets
    ``_right``). Right rows are upserts: deletions of an updating stream are not
    supported (the pipeline refuses a changelog input).

    State: per key, the right versions (``encode_keys(key) + b"\x01"``) and, for
    ``event_time``, the waiting left rows (``+ b"\x00"``). In memory (``event_time``):
    a heap of (earliest waiting time, key), rebuilt from the engine at build.

    Cost per batch: right, ``latest``: one ``multi_set`` (no read); right,
    ``event_time``: one ``multi_get`` and ``multi_set`` of the keys' versions; left,
    ``latest``: one ``multi_get`` of the keys' right rows (decoded for matched rows);
    left, ``event_time``: one ``multi_get`` and ``multi_set`` of the keys' waiting rows.
    Per barrier (``event_time``): one ``multi_get`` and ``multi_set`` of the keys with a
    due left row (waiting rows and versions).

    Attributes:
        time_column: the event-time column of both sides (or ``left_time`` and
            ``right_time``); required for ``event_time``.
        version: ``"event_time"`` (default) or ``"latest"``.
        how: ``"inner"`` (default) or ``"left"``.
    """

    time_column: str | None = None
    version: str = "event_time"
    how: str = "inner"
    left_time: str | None = None
    right_time: str | None = None

    key_suffix_len: ClassVar[int] = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_how(self.how)
        if self.version not in VERSIONS:
            msg = f"LookupJoin.version must be one of {VERSIONS}, got {self.version!r}"
            raise ValueError(msg)
        self._check_times(self.time_column, self.left_time, self.right_time,
                          required=self.version == "event_time")

    @property
    def requires_watermark(self) -> bool:
        """Whether the pipeline must have ``watermark=`` (``version="event_time"``)."""
        return self.version == "event_time"

    def build(self, store: KVStore) -> JoinLogic:
        """Create the shard logic on ``store`` (resumes the table and waiting rows)."""
        return LookupJoinLogic(self, store)


class LookupJoinLogic(JoinLogic):
    """Running logic of :class:`LookupJoin` on one shard."""

    op: LookupJoin

    def __init__(self, op: LookupJoin, store: KVStore) -> None:
        self.event = op.version == "event_time"
        #: Per key with waiting left rows: the earliest of their times.
        self.waiting = EarliestIndex()
        super().__init__(op, store)

    def _layout(self) -> str:
        return f"lookup/1;version={self.op.version};how={self.op.how}"

    def _index(self, state_key: bytes, value: bytes) -> None:
        if state_key[-1:] == SIDES[0]:
            times = blob_times(value)
            self.waiting.track(state_key[:-1], int(times.min()) if len(times) else None)

    # ------------------------------------------------------------------ process

    def _apply(self, batch: pa.RecordBatch, side: int) -> None:
        if side == 1:
            self._upsert(batch)
        elif self.event:
            self._wait(batch)
        else:
            self._enrich_now(batch)

    def _upsert(self, batch: pa.RecordBatch) -> None:
        kb = self._keys(batch, 1, 1)
        k = len(kb.enc)
        keys = [e + SIDES[1] for e in kb.enc]
        n = batch.num_rows
        if self.event:
            t = self._times(batch, 1)
            old = BlobSet(self.store.multi_get(keys), range(k))
            rows, ids = batch, kb.ids
            keep = self._versions_kept(np.concatenate([old.blob, ids]),
                                       np.concatenate([old.times, t]), self.watermark)
        else:  # only the last row of each key matters: no read
            last = np.zeros(k, dtype=np.int64)
            last[kb.ids] = np.arange(n)
            old = BlobSet([b""] * k, range(k))
            rows, ids, keep = batch.take(pa.array(last)), np.arange(k), None
            t = np.zeros(k, np.int64)
        data, lens = self.codec(1).encode(self._stored(rows, 1))
        values = old.append(ids, t, np.zeros(len(ids), np.uint8), data, lens, keep)
        self._write(dict(zip(keys, values, strict=True)))

    @staticmethod
    def _versions_kept(groups: np.ndarray, times: np.ndarray, wm: int | None) -> np.ndarray:
        """Versions to keep: newer than ``wm``, or the latest at or before it, per key."""
        if wm is None:
            return np.ones(len(times), dtype=bool)
        old = times <= wm
        kept: np.ndarray = ~old | latest_per_group(groups, times, old)
        return kept

    def _wait(self, batch: pa.RecordBatch) -> None:
        """``event_time`` left rows: drop late ones, keep the rest until the watermark."""
        t = self._times(batch, 0)
        n_late = 0
        if self.watermark is not None:
            late = t < self.watermark
            n_late = int(late.sum())
            if n_late:
                batch, t = batch.filter(pa.array(~late)), t[~late]
        self._late(n_late)
        if not len(t):
            self._write({})
            return
        self._append_waiting(batch, t, np.zeros(len(t), np.uint8))

    def _append_waiting(self, batch: pa.RecordBatch, t: np.ndarray, flags: np.ndarray
                        ) -> None:
        kb = self._keys(batch, 0, 1)
        keys = [e + SIDES[0] for e in kb.enc]
        old = BlobSet(self.store.multi_get(keys), range(len(keys)))
        data, lens = self.codec(0).encode(self._stored(batch, 0))
        self._write(dict(zip(keys, old.append(kb.ids, t, flags, data, lens), strict=True)))
        self.waiting.track_groups(kb.enc, np.concatenate([old.group, kb.ids]),
                                  np.concatenate([old.times, t]),
                                  group_min(old.group, old.times, len(keys)))

    def _enrich_now(self, batch: pa.RecordBatch) -> None:
        """``latest`` left rows: emitted at once with the current right row of their key."""
        kb = self._keys(batch, 0, 1)
        table = BlobSet(self.store.multi_get([e + SIDES[1] for e in kb.enc]),
                        range(len(kb.enc)))
        row_of = np.full(len(kb.enc), -1, dtype=np.int64)
        row_of[table.group] = np.arange(len(table))
        j = row_of[kb.ids]
        hit = np.flatnonzero(j >= 0)
        stored = self._stored(batch, 0)
        if len(hit):
            self._emit(kb.uniq.take(pa.array(kb.ids[hit])), stored.take(pa.array(hit)),
                       table.decode(self.codec(1), j[hit]))
        miss = np.flatnonzero(j < 0)
        if self.op.how == "left" and len(miss):
            if self.schemas[1] is not None:
                self._emit(kb.uniq.take(pa.array(kb.ids[miss])), stored.take(pa.array(miss)),
                           None)
            else:  # no right columns yet: wait (as unmatched) until they are known
                part = batch.take(pa.array(miss))
                self._append_waiting(part, np.full(len(miss), NONE, np.int64),
                                     np.full(len(miss), WAITING, np.uint8))
                return
        self._write({})

    # ------------------------------------------------------------------ barriers

    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        """Emit the left rows the watermark passed (and those waiting for the right columns)."""
        if not self._finished:
            limit = self._next_wm if self.event else None
            self._flush(NONE + 1 if limit is None else limit, final=False)
        return super().on_barrier(epoch)

    def _close(self, wm: int | None) -> None:
        if wm is None:
            self._flush(None, final=True)

    def _flush(self, limit: int | None, *, final: bool) -> None:
        """Emit the waiting left rows with a time ``< limit`` (``None``: all)."""
        encs = self.waiting.pop_due(limit)
        if not encs:
            return
        n = len(encs)
        keys = [e + SIDES[0] for e in encs] + [e + SIDES[1] for e in encs]
        raws = self.store.multi_get(keys)
        left = BlobSet(raws[:n], range(n))
        right = BlobSet(raws[n:], range(n))
        ready = np.ones(len(left), bool) if limit is None else left.times < limit
        waiting = left.flags == WAITING
        flags = None
        if self.op.how == "left" and self.schemas[1] is None and not final:
            flags = np.where(ready, WAITING, left.flags).astype(np.uint8)
            ready[:] = False
        else:
            match = np.full(len(left), -1, dtype=np.int64)
            probe = np.flatnonzero(ready & ~waiting)
            if len(probe):
                match[probe] = latest_at_or_before(left.group[probe], left.times[probe],
                                                   right.group, right.times)
            hit = np.flatnonzero(ready & (match >= 0))
            if len(hit):
                self._emit(self._key_values([encs[g] for g in left.group[hit].tolist()]),
                           left.decode(self.codec(0), hit),
                           right.decode(self.codec(1), match[hit]))
            miss = np.flatnonzero(ready & (match < 0))
            if self.op.how == "left" and len(miss):
                self._emit(self._key_values([encs[g] for g in left.group[miss].tolist()]),
                           left.decode(self.codec(0), miss), None)
        writes: dict[bytes, bytes] = {}
        for i, v in enumerate(left.rewrite(~ready, flags)):
            if v is not None:
                writes[keys[i]] = v
        if self.event and limit is not None and not final:
            kept = self._versions_kept(right.group, right.times, limit)
            for i, v in enumerate(right.rewrite(kept)):
                if v is not None:
                    writes[keys[n + i]] = v
        self._write(writes)
        self.waiting.track_groups(encs, left.group[~ready], left.times[~ready])
