"""``Deduplicate``: a key's first row, its repeats within ``within`` event time dropped.

Contract (see :class:`Deduplicate`): per key the engine holds the event time of the
last row kept (8 bytes behind a TTL stamp, ``ttl.py``); it expires once the watermark
reaches that time + ``within``, through the engine's expiry merges
(``KVStore.set_expiry``), so the store follows the keys seen in the last ``within``.
The rows of an epoch are decided at its barrier, in event-time order, so which of them
are kept does not depend on their arrival order within the epoch.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raykv.engines.base import KVStore
from raykv.keys import decode_keys
from raykv.operators.eventtime import LATE_MODES, TIME_LIMIT, EventTimeLogic, EventTimeWindow
from raykv.operators.rowsort import row_order, stored_schema, to_stored
from raykv.operators.ttl import TTL
from raykv.operators.watermark import (
    check_span,
    check_time_column,
    time_array,
    time_type,
    to_units,
)

__all__ = ["LAST_KEPT", "Deduplicate", "DeduplicateLogic"]

KEEP_MODES = ("first",)
#: Column of ``export_state``: the event time of a key's last kept row.
LAST_KEPT = "last_kept"
_TIME = struct.Struct("<q")


@dataclass(frozen=True)
class Deduplicate(EventTimeWindow):
    """Keep a key's first row; drop its repeats for ``within`` time units after it.

    Per key, a row at event time ``t`` is **kept** if the key has no kept row yet or
    ``t >= last + within``, where ``last`` is the time of its last kept row; it then
    becomes ``last``. Otherwise it is a repeat and dropped. That includes a row *earlier*
    than ``last`` that arrives after it (out of order across epochs): it is treated as a
    repeat. Within one epoch the rows are decided at the barrier in the order (event
    time, then every other column ascending with nulls last, ``rowsort.row_order``), not
    in arrival order: the earliest row of a burst wins even if it arrived last.

    A row is **late** when ``t < watermark`` at its arrival (the watermark as for the
    windows: the largest event time seen minus ``allowed_lateness``, or once the runtime
    sets it, the sources' watermark minus ``allowed_lateness``): counted in
    ``late_events`` and dropped, or kept for ``late_rows()`` with ``late="emit"``. A
    key's state expires when the watermark reaches ``last + within`` (no non-late row
    can be its repeat any more), so expiry never changes a decision. Out-of-order input
    with a derived watermark needs ``allowed_lateness``.

    Output: the kept rows, unchanged (input schema), in the epoch they arrived in,
    ordered by the order above (event time first). ``finish()``: the kept rows of the
    last epoch. Memory: the epoch's non-late rows are held until its barrier.

    Cost per batch: the checks and one filter (no engine call). Per barrier: one sort of
    the epoch's rows, one ``multi_get`` and one ``multi_set`` of its distinct keys, and
    a Python loop over the rows of the keys seen more than once in the epoch (a key seen
    once is decided vectorized).

    Example:
        >>> import pyarrow as pa, tempfile
        >>> from raykv.engines import MemOnly
        >>> op = Deduplicate("k", 10, "t", allowed_lateness=100)
        >>> with MemOnly(tempfile.mkdtemp()) as store:
        ...     logic = op.build(store)
        ...     logic.process(pa.record_batch({"k": [1, 1, 2, 1], "t": [5, 3, 4, 13]}))
        ...     logic.on_barrier(1).to_pydict()
        {'k': [1, 2, 1], 't': [3, 4, 13]}

    Attributes:
        within: how long after a kept row its repeats are dropped (``> 0``; an int in the
            time column's unit or a ``timedelta`` for a timestamp column).
        time_column: the event-time column (signed integer or timestamp).
        keep: ``"first"`` (the only mode).
        allowed_lateness: subtracted from the watermark; default 0.
        late: ``"drop"`` (default) or ``"emit"``.
    """

    within: int | timedelta
    time_column: str
    keep: str = "first"
    allowed_lateness: int | timedelta = 0
    late: str = "drop"

    key_suffix_len: ClassVar[int] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_time_column(owner, self.time_column, self.key)
        check_span(owner, "within", self.within, positive=True)
        check_span(owner, "allowed_lateness", self.allowed_lateness, positive=False)
        if self.keep not in KEEP_MODES:
            msg = f"{owner}.keep must be one of {KEEP_MODES}, got {self.keep!r}"
            raise ValueError(msg)
        if self.late not in LATE_MODES:
            msg = f"{owner}.late must be one of {LATE_MODES}, got {self.late!r}"
            raise ValueError(msg)

    @property
    def ttl(self) -> TTL:
        """The expiry of a key's state: ``within`` after its last kept row, by event time."""
        return TTL(self.within, time="event", column=self.time_column)

    def build(self, store: KVStore) -> DeduplicateLogic:
        """Create the shard logic on ``store`` (resumes the keys and watermark it holds)."""
        return DeduplicateLogic(self, store)


class DeduplicateLogic(EventTimeLogic):
    """Running logic of :class:`Deduplicate` on one shard."""

    op: Deduplicate

    def __init__(self, op: Deduplicate, store: KVStore) -> None:
        self._within = 0
        self._order: list[tuple[str, str, str]] = []
        self._stored: pa.Schema | None = None
        self._pending: list[pa.RecordBatch] = []
        super().__init__(op, store)

    def _setup(self, schema: pa.Schema) -> None:
        op = self.op
        owner = self._name()
        t = time_type(owner, schema, op.time_column)
        self._stored = stored_schema(schema, None, owner)  # every column orderable
        self._time_type = t
        self._within = to_units(owner, "within", op.within, t)
        if self._within > TIME_LIMIT:  # times and spans <= 2**62: sums stay in int64
            msg = f"{owner}.within must be <= 2**62 time units, got {self._within}"
            raise ValueError(msg)
        self.clock.set_lateness(to_units(owner, "allowed_lateness", op.allowed_lateness, t))
        self._order = row_order(self._stored, [(op.time_column, "ascending"),
                                               (self.key, "ascending")])
        self._out_schema = schema

    def _layout(self) -> str:
        return f"dedup/1;within={self._within};keep={self.op.keep}"

    # ------------------------------------------------------------------ input

    def _process(self, batch: pa.RecordBatch) -> None:
        t = self._times(batch)
        late = t < self.clock.running(t)
        kept, _, n_late = self._without_late(batch, t, late)
        extra = self.clock.pending(t, n_late)
        if extra or self._pending_meta:
            self._write([], [], track=False, extra=extra)
        self.clock.commit(t, n_late)
        self._keep_late(batch, late)
        if kept.num_rows:
            self._pending.append(kept)

    # ------------------------------------------------------------------ barrier

    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        """The kept rows of the epoch; then the state's expiry moves to the watermark."""
        self._end_epoch()
        out = self._decide()
        if self.expiry is not None:
            wm = self.watermark
            self.expiry.advance_watermark(wm)
            self.expiry.end_epoch()
        return out

    def finish(self) -> pa.RecordBatch | None:
        """End of bounded input: the kept rows of the last epoch."""
        self._end_epoch()
        return self._decide()

    def _decide(self) -> pa.RecordBatch | None:
        """Decide the pending rows (see :class:`Deduplicate`); write the keys' new times."""
        rows, self._pending = self._pending, []
        if not rows:
            return None
        assert self._stored is not None
        batch = rows[0] if len(rows) == 1 else pa.concat_batches(rows)
        encoded = pc.dictionary_encode(self._canonical(batch).column(self.key))
        ids = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        table = to_stored(batch, self._stored)
        order = pc.sort_indices(table, sort_keys=self._order).to_numpy()
        ids = ids[order]
        times = self._times(batch, check_range=False)[order]
        keys = self._state_keys(encoded.dictionary)
        last = self._last_times(keys)
        within = self._within
        has = np.array([x is not None for x in last], dtype=bool)
        prev = np.array([0 if x is None else x for x in last], dtype=np.int64)
        # a key seen once in the epoch: decided from its state alone, vectorized
        single = np.bincount(ids, minlength=len(keys))[ids] == 1
        keep = single & (~has[ids] | (times >= prev[ids] + within))
        # keys seen more than once: one pass over their rows in (time, key, ...) order
        multi = np.flatnonzero(~single)
        for i, k, t in zip(multi.tolist(), ids[multi].tolist(), times[multi].tolist(),
                           strict=True):
            p = last[k]
            if p is None or t >= p + within:
                keep[i] = True
                last[k] = t
        prev[~has] = np.iinfo(np.int64).min
        np.maximum.at(prev, ids[keep], times[keep])  # each kept key's last kept time
        chosen = order[keep]
        if not len(chosen):
            return None
        kept_ids = np.unique(ids[keep])
        new_times = prev[kept_ids]
        assert self.expiry is not None
        self._write([keys[k] for k in kept_ids.tolist()],
                    [_TIME.pack(x) for x in new_times.tolist()], track=False,
                    stamps=self.expiry.fresh_stamps(len(kept_ids), new_times).tolist())
        return batch.take(pa.array(chosen))

    def _last_times(self, keys: Sequence[bytes]) -> list[int | None]:
        """The time of each key's last kept row (``None``: none, or expired)."""
        return [_TIME.unpack(v)[0] if v else None for v in self._read(keys)]

    # ------------------------------------------------------------------ export

    def export_state(self) -> pa.RecordBatch | None:
        """Each live key with the time of its last kept row (column ``last_kept``)."""
        pairs = sorted(self._items())
        if not pairs:
            return None
        assert self._key_type is not None and self._time_type is not None
        keys = decode_keys(self._user_keys([k for k, _ in pairs]), self._key_type)
        times = np.array([_TIME.unpack(v)[0] for _, v in pairs], dtype=np.int64)
        return pa.RecordBatch.from_arrays(
            [keys, time_array(times, self._time_type)], names=[self.key, LAST_KEPT])

    def _render(self, state_keys: Sequence[bytes], values: Sequence[bytes]
                ) -> list[tuple[str, pa.Array]]:
        msg = "Deduplicate emits input rows, not state (see export_state)"
        raise NotImplementedError(msg)

