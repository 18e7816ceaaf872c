"""``Aggregate``: running per-key aggregations, vectorized per batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import ClassVar

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.keys import is_fixed_width
from raykv.operators.aggfold import AggregateFold
from raykv.operators.aggminmax import MinMaxMultisets
from raykv.operators.aggretract import ROWS, signed_partials
from raykv.operators.aggspec import normalize_aggs
from raykv.operators.aggstate import AggLayout
from raykv.operators.base import KeyedOperator
from raykv.operators.changelog import CHANGE, ORDER_DEPENDENT, is_changelog
from raykv.operators.epoch_changes import EpochChanges, as_lists
from raykv.operators.keyed_state import (
    DEFAULT_FINISH_CHUNK_ROWS,
    KeyedStateLogic,
    key_order,
)
from raykv.operators.packed import Packed
from raykv.operators.ttl import TTL, normalize_ttl

#: Ops that an input row's retraction can undo exactly (a changelog input): count, sum
#: and mean subtract; min and max keep a multiset of values per group (``aggminmax.py``).
RETRACTABLE = frozenset({"count", "sum", "mean", "min", "max"})

#: Default bound on buffered partial rows (``Aggregate.max_buffered_rows``).
DEFAULT_MAX_BUFFERED_ROWS = 1_000_000

#: Default bound on the Arrow bytes of buffered partials (``Aggregate.max_buffered_bytes``).
DEFAULT_MAX_BUFFERED_BYTES = 16 << 20


@dataclass(frozen=True)
class Aggregate(KeyedOperator):
    """Running aggregations per key: count, sum, mean, min, max, first, last.

    Input: any batch with the ``key`` column and the aggregated columns. Output (changelog
    at each barrier, all keys at ``finish``): the key column, then ``{column}_{op}`` for
    each op in ``aggs`` order. Output types: count and integer sums int64, float sums and
    means float64, min/max/first/last the column's type (dictionaries decoded). Nulls are
    skipped; an int64 sum that would overflow raises ``OverflowError`` (see below). State:
    a fixed binary layout per key (``aggstate.py``), never pickle.

    Epoch-level partial combining: ``process`` checks the batch (schema, keys) and keeps
    its per-key partial aggregates (one Arrow group_by) in memory; they are folded into
    the engine at ``on_barrier``, ``finish``, ``export_state`` and whenever more than
    ``max_buffered_rows`` partial rows or ``max_buffered_bytes`` bytes of them are
    buffered. A fold is one group_by-like pass over the partials, one ``multi_get`` and
    one ``multi_set`` of the distinct keys, and vectorized numpy; the engine state after
    it is bit-identical to applying the batches one by one (float sums in arrival order).
    An int64 overflow is found at the fold: ``OverflowError`` naming column and key,
    nothing written, the input since the previous fold dropped (the runtime restores the
    last checkpoint). Buffered partials are not in the engine: a logic dropped mid-epoch
    loses them, and the runtime replays the epoch from the last checkpoint.

    Cost: per batch one Arrow group_by (no engine call, no Python per row); per fold
    O(buffered rows) Arrow/numpy work plus one engine read and write per distinct key.

    Over a changelog input (the batches carry ``_change``, ``raykv.operators.changelog``;
    known from the first batch's schema, so the append-only path above is unchanged):
    +I/+U rows are added and -U/-D rows retracted. ``count``, ``sum`` and ``mean``
    subtract; ``min`` and ``max`` keep, per group and column, a multiset of the values of
    its live rows (value -> row count, stored in the group's engine value after the fixed
    layout, ``aggminmax.py``), so retracting the current extreme falls back exactly to the
    next value. Their extra cost: one more Arrow group_by per batch and column, and per
    fold a rewrite of each touched group's multiset (16 bytes per distinct value of a
    number column, so a group is limited to about ``max_value_len / 16`` distinct values;
    past it the fold raises ``ValueError`` naming the group, like an overflow). A group
    whose rows were all retracted is deleted. ``first`` and ``last`` are refused when the
    pipeline is built (``changelog.ORDER_DEPENDENT`` says why).

    Example:
        >>> import pyarrow as pa, tempfile
        >>> from raykv.engines import MemOnly
        >>> op = Aggregate("user", {"amount": ["sum", "count"]})
        >>> with MemOnly(tempfile.mkdtemp()) as store:
        ...     logic = op.build(store)
        ...     logic.process(pa.record_batch({"user": ["a", "b", "a"], "amount": [1, 2, 3]}))
        ...     logic.on_barrier(1).to_pydict()
        {'user': ['a', 'b'], 'amount_sum': [4, 2], 'amount_count': [2, 1]}

    ``ttl``: state that expires (``raykv.operators.ttl``): ``TTL(seconds)`` or a number
    of seconds (processing time), or ``TTL(span, time="event", column=...)``; an expired
    key reads as absent (silently: nothing is emitted for it) and leaves the engine in
    its merges. Event time follows ``Pipeline(watermark=...)``: the runtime calls
    ``logic.advance_watermark(wm)`` before each barrier.

    Attributes:
        aggs: ``{column: [ops]}`` (a single op may be a string); ops from
            ``count, sum, mean, min, max, first, last``.
        max_buffered_rows: fold the buffered partials into the engine once more than this
            many partial rows are buffered (bounds memory when barriers are rare; about
            ``8 * (1 + stored fields)`` bytes per row plus the key). ``0`` folds every
            batch (no buffering: one ``multi_get`` + one ``multi_set`` per batch).
        max_buffered_bytes: also fold once the buffered partials hold more than this many
            bytes (their Arrow buffers). A fold builds a few Python objects per distinct key
            (about 300 bytes each), so this bound, not the row count, is what keeps a
            fold of many distinct keys small (16 MiB of partials: about 0.5M keys of a
            sum+count, ~150 MB during the fold). ``0``: no byte bound.
        finish_chunk_rows: rows per batch of the end-of-input output
            (:meth:`AggregateLogic.finish_chunks`, what the runtime sends on).
    """

    # {col: op} and {col: [ops]} both fit (a str is a Sequence[str]); normalized in __post_init__
    aggs: Mapping[str, Sequence[str]]
    max_buffered_rows: int = field(default=DEFAULT_MAX_BUFFERED_ROWS, kw_only=True)
    max_buffered_bytes: int = field(default=DEFAULT_MAX_BUFFERED_BYTES, kw_only=True)
    finish_chunk_rows: int = field(default=DEFAULT_FINISH_CHUNK_ROWS, kw_only=True)
    ttl: TTL | int | float | timedelta | None = field(default=None, kw_only=True)

    #: Each epoch's changed keys are emitted with their old values retracted (-U/+U, +I,
    #: and -D when a key's rows were all retracted): ``raykv.operators.changelog``.
    emits_updates: ClassVar[bool] = True
    emits_retractions: ClassVar[bool] = True

    def changelog_refusal(self, *, retractions: bool) -> str | None:
        """Over retractions: count, sum, mean, min and max are exact; first/last refused.

        ``first`` and ``last`` are refused because their meaning depends on arrival order
        (:data:`ORDER_DEPENDENT`, quoted in the error).
        """
        if not retractions:
            return "the updates carry no before-images to retract"
        other = sorted({op for ops in self.aggs.values() for op in ops} - RETRACTABLE)
        if other:
            return f"{', '.join(other)} cannot be retracted: {ORDER_DEPENDENT}"
        return None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "ttl", normalize_ttl(self.ttl, type(self).__name__))
        if type(self.max_buffered_rows) is not int or self.max_buffered_rows < 0:
            msg = (
                "Aggregate.max_buffered_rows must be an int >= 0 (0: no buffering), "
                f"got {self.max_buffered_rows!r}"
            )
            raise ValueError(msg)
        for name, low in (("max_buffered_bytes", 0), ("finish_chunk_rows", 1)):
            value = getattr(self, name)
            if type(value) is not int or value < low:
                msg = f"Aggregate.{name} must be an int >= {low}, got {value!r}"
                raise ValueError(msg)
        object.__setattr__(self, "aggs", normalize_aggs(self.aggs, type(self).__name__))
        names = [f"{c}_{op}" for c, ops in self.aggs.items() for op in ops]
        if self.key in names:
            msg = f"Aggregate: output column {self.key!r} would clash with the key column"
            raise ValueError(msg)

    def build(self, store: KVStore) -> AggregateLogic:
        """Create the shard logic on ``store`` (resumes the state the store holds)."""
        return AggregateLogic(self, store)


class AggregateLogic(AggregateFold, KeyedStateLogic):
    """Running logic of :class:`Aggregate` on one shard (buffers partials between folds)."""

    op: Aggregate

    def __init__(self, op: Aggregate, store: KVStore) -> None:
        # Table.group_by imports pyarrow.acero (-> pyarrow.dataset -> pandas) on first use,
        # ~0.4 s of CPU; pay it when the shard builds its logic, not on its first batch
        import pyarrow.acero  # noqa: F401

        self.layout: AggLayout | None = None
        self._parts: list[pa.Table] = []
        self._tmax: list[pa.Table] = []  # event-time TTL: per batch, each key's max time
        self._buffered_rows = 0
        self._buffered_bytes = 0
        # what the folds since the last barrier wrote (the changelog's keys and values)
        self._changes = EpochChanges()
        # a changelog input (``_change`` column): rows are added or retracted, and a key
        # whose rows were all retracted is deleted (kept here until the barrier)
        self._retract = False
        self._epoch_deleted: set[bytes] = set()
        # min/max over a changelog: per-group multisets (None on the append-only path),
        # and their per-batch signed counts since the last fold, one list per column
        self._minmax: MinMaxMultisets | None = None
        self._deltas: list[list[pa.Table]] = []
        # configs pickled before the field existed lack it (cloudpickled in epoch metadata)
        self._max_rows: int = getattr(op, "max_buffered_rows", DEFAULT_MAX_BUFFERED_ROWS)
        self._max_bytes: int = getattr(op, "max_buffered_bytes", DEFAULT_MAX_BUFFERED_BYTES)
        # an epoch's partials moved aside by detach(), folded by the next on_barrier
        self._detached: tuple[list[pa.Table], list[pa.Table], list[list[pa.Table]]] | None = None
        self._key_counts: tuple[pa.Array | pa.ChunkedArray, np.ndarray] | None = None
        self._cache: Packed | None = None  # the values written so far (aggfold.py)
        self._cache_base: Packed | None = None
        #: Set by the shard when epochs end on its epoch thread: returns once that thread
        #: is idle. Called before this logic touches the engine outside ``on_barrier``.
        self.fence: Callable[[], None] = _no_fence
        super().__init__(op, store)

    def key_counts(self) -> tuple[pa.Array | pa.ChunkedArray, np.ndarray] | None:
        """The last batch's distinct keys and row counts (see the base class).

        Counted by the partials' group_by when ``count_keys`` is set. Cost: O(1).
        """
        out, self._key_counts = self._key_counts, None
        return out

    def detach(self) -> None:
        """Move the epoch's buffered partials aside; the next ``on_barrier`` folds them.

        For a shard that ends epochs on a second thread (``raykv.runtime.shard_epochs``):
        after ``detach()``, ``on_barrier``/``changelog`` may run on that thread while
        ``process`` buffers the next epoch's partials into fresh lists; ``process`` calls
        :attr:`fence` before it folds or writes to the engine. The state at each barrier
        is the same as without it. Cost: O(1).
        """
        assert self._detached is None, "detach() twice without on_barrier"
        self._detached = (self._parts, self._tmax, self._deltas)
        self._parts, self._tmax = [], []
        self._deltas = [[] for _ in self._deltas]
        self._buffered_rows = self._buffered_bytes = 0

    @property
    def buffered_rows(self) -> int:
        """Partial rows buffered since the last fold (not yet in the engine)."""
        return self._buffered_rows

    def _setup(self, schema: pa.Schema) -> None:
        aggs: dict[str, Sequence[str]] = dict(self.op.aggs)
        self._retract = is_changelog(schema)
        if self._retract:  # count every row (added or retracted) in a hidden field
            why = self.op.changelog_refusal(retractions=True)
            if why is not None:
                msg = f"{self._name()}: its input is a changelog (column {CHANGE!r}) and {why}"
                raise ValueError(msg)
            aggs[ROWS] = ()
            schema = schema.remove(schema.get_field_index(CHANGE)).append(
                pa.field(ROWS, pa.int64()))
        self.layout = AggLayout(aggs, schema, self._name())
        if self._retract and MinMaxMultisets.wanted(self.layout):
            self._minmax = MinMaxMultisets(self.layout, self.key)
            self._deltas = [[] for _ in self._minmax.cols]
        key_field = pa.field(self.key, schema.field(self.key).type)
        self._out_schema = pa.schema([key_field, *self.layout.output_fields()])

    def _layout(self) -> str:
        assert self.layout is not None
        return self.layout.layout_id + (self._minmax.tag if self._minmax else "")

    def _process(self, batch: pa.RecordBatch) -> None:
        layout = self.layout
        assert layout is not None
        self._key_counts = None
        batch = self._canonical(batch)
        # with a load-tracking shard, each key's rows are counted in the same group_by
        count = self.count_keys and not self._retract and self.key != "count_all"
        parts = signed_partials(layout, batch, self.key) if self._retract else [
            layout.partials(batch, [self.key], row_counts=count)]  # OverflowError in the batch
        if count:
            part = parts[0]
            counts = part.column("count_all").to_numpy()
            parts[0] = part.drop_columns(["count_all"])
        assert self._key_type is not None
        for part in parts:
            key_col = part.column(self.key)
            if is_fixed_width(self._key_type):
                self._state_keys(key_col.slice(0, 1))  # only the width is checked
            else:
                self._state_keys(key_col)  # too long / reserved: refused before buffering
        rows = sum(p.num_rows for p in parts)
        deltas = self._minmax.deltas(batch) if self._minmax is not None else []
        rows += sum(d.num_rows for d in deltas)
        nbytes = sum(p.nbytes for p in parts) + sum(d.nbytes for d in deltas)
        fold = self._buffered_rows + rows > self._max_rows or (
            0 < self._max_bytes < self._buffered_bytes + nbytes)
        if self._pending_meta and not fold:  # the first batch passed: store the schema now
            self.fence()
            self._write((), (), track=False)
        if self.expiry is not None and self.expiry.event:  # each key's latest event time
            times = pa.table({self.key: batch.column(self.key),
                              "t": pa.array(self.expiry.times(batch, self._name()))})
            self._tmax.append(times.group_by(self.key, use_threads=False).aggregate(
                [("t", "max")]))
        self._parts.extend(parts)
        if count:  # the batch is taken: its counts are the tracker's
            self._key_counts = (parts[0].column(self.key), counts)
        for buffered, d in zip(self._deltas, deltas, strict=True):
            buffered.append(d)
        self._buffered_rows += rows
        self._buffered_bytes += nbytes
        if fold:
            self.fold()

    def fold(self) -> None:
        """Fold the buffered partials into the engine (no-op when nothing is buffered).

        One pass over the buffered partial rows, one ``multi_get`` and one ``multi_set``
        per ``FOLD_SLICE_KEYS`` of their distinct keys (every slice is combined before
        any is written); the keys whose stored value changed join the changelog. The
        buffer is emptied whether or not the fold succeeds. Memory: the partials, the
        epoch's changed keys and values, and one slice's reads and writes.

        Raises:
            OverflowError: an int64 sum leaves int64 for some key (named); the engine and
                the changelog are unchanged and the buffered input is dropped.
        """
        self.fence()
        parts, tmax, deltas = self._parts, self._tmax, self._deltas
        self._parts, self._tmax = [], []
        self._deltas = [[] for _ in deltas]
        self._buffered_rows = self._buffered_bytes = 0
        self._fold(parts, tmax, deltas)

    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        """Fold the buffered partials, then emit the new values of the changed keys.

        The changed keys' values are the ones the epoch's folds just wrote, so they are
        emitted from memory (no ``multi_get``); cost: a sort of the changed keys. With a
        changelog input, a key whose rows were all retracted is emitted once with a
        zero state (count and sum 0, mean null): the sink's tombstone of a deleted key.
        """
        changes, deleted = self._take_epoch()
        self._end_epoch()
        if deleted:
            zero = bytes(self.layout.size) if self.layout is not None else b""
            if self._minmax is not None:
                zero = self._minmax.join(zero, b"")
            changes.add(sorted(deleted), [zero] * len(deleted))
        packs = self._packs_keys()  # (string keys that all had 8 bytes pack too)
        batches = [self._emit_packed(c) if packs and isinstance(c, Packed)
                   else self._emit(*as_lists(c)) for c in self._sorted_changes(changes)]
        if not batches:
            return None
        return batches[0] if len(batches) == 1 else pa.concat_batches(batches)

    def _take_epoch(self) -> tuple[EpochChanges, set[bytes]]:
        """Fold; the epoch's written keys and values, and its deleted keys; reset them.

        After :meth:`detach` the detached partials are folded (the current buffer belongs
        to the next epoch), else the current buffer.
        """
        detached, self._detached = self._detached, None
        if detached is not None:
            self._fold(*detached)
        else:
            self.fold()
        changes, deleted = self._changes, self._epoch_deleted
        self._changes = EpochChanges()
        self._epoch_deleted = set()
        self._changed = set()
        return changes, deleted

    def changelog(self, epoch: int) -> pa.RecordBatch | None:
        """Fold; the epoch's changes with their row kinds (``raykv.operators.changelog``).

        For each changed key, in key order: ``+I`` new value (no value before the
        epoch), or ``-U`` old value then ``+U`` new value; for each deleted key ``-D``
        its old value. Used instead of :meth:`on_barrier` and :meth:`finish` when the
        output feeds another stage (``keep_before_images``). Cost: a sort of the changed
        keys, their old values kept since the first fold of the epoch.
        """
        changes, deleted = self._take_epoch()
        keys: list[bytes] = []
        values: list[bytes] = []
        for chunk in self._sorted_changes(changes):
            chunk_keys, chunk_values = as_lists(chunk)
            keys += chunk_keys
            values += chunk_values
        if deleted:  # b"": deleted (-D of the before-image)
            keys += deleted
            values += [b""] * len(deleted)
            order = key_order(keys)
            keys, values = [keys[i] for i in order], [values[i] for i in order]
        out = self._changes_of(keys, values)
        self._end_epoch()
        return out

    def finish(self) -> pa.RecordBatch | None:
        """Fold the buffered partials, then return the values of all keys."""
        self._take_epoch()
        self._before = {}
        return super().finish()

    def finish_chunks(self, max_rows: int | None = None) -> Iterator[pa.RecordBatch]:
        """Fold the buffered partials, then stream every key's value in chunks.

        The rows of :meth:`finish`, at most ``max_rows`` (default ``finish_chunk_rows``)
        per batch, read from the engine's iterator one chunk at a time; in key order on
        ``LSMTree``, sorted within each chunk on other engines
        (:meth:`KeyedStateLogic._state_chunks`). Memory: one chunk, not the state.
        """
        n = self._chunk_rows(max_rows)
        self._take_epoch()
        self._before = {}
        yield from self._state_chunks(n)

    def export_state(self) -> pa.RecordBatch | None:
        """Fold the buffered partials, then render the state of every key.

        Cost: one ``items()`` pass, a sort of the keys (numpy for fixed-width keys).
        """
        self.fold()
        pairs = self._items()
        keys = [k for k, _ in pairs]
        values = [v for _, v in pairs]
        if not keys:
            return None
        order = key_order(keys)
        return self._emit([keys[i] for i in order], [values[i] for i in order])

    def _render_rows(self, p: Packed) -> list[tuple[str, pa.Array]]:
        """The rows read as the layout's numpy records (no multisets, no string fields)."""
        assert self.layout is not None
        if self._minmax is not None or self.layout.var_fields:
            return super()._render_rows(p)
        return self.layout.render_records(p.rows)

    def _render(
        self, state_keys: Sequence[bytes], values: Sequence[bytes]
    ) -> list[tuple[str, pa.Array]]:
        assert self.layout is not None
        if self._minmax is not None:  # the record without the multisets
            size = self.layout.size
            values = [v[:size] for v in values] if not self.layout.var_fields else (
                self._minmax.split(values)[0])
        return self.layout.render(values)


def _no_fence() -> None:
    """The default :attr:`AggregateLogic.fence`: no epoch thread to wait for."""
