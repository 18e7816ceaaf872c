"""``Map`` and ``Filter``: stateless, vectorized stages over whole record batches.

Contract. ``Map(key, fn)`` applies ``fn(batch) -> RecordBatch | Table | None`` to every
input batch; the output of epoch ``e`` (returned by ``on_barrier(e)``) is the
concatenation of ``fn``'s results for the batches of ``e``, in arrival order. ``Filter(key,
predicate)`` keeps the rows a ``pyarrow.compute`` expression (or a function returning a
boolean mask) selects; it is a ``Map`` whose output schema is the input schema.

Rows still arrive partitioned by ``key`` (so a stage after a keyed stage keeps its key
locality and a ``Map`` can compute per-key things within a batch), but nothing is kept
per key: the engine holds only the stage's metadata record (operator, key, input schema),
written with the first batch, so a restart on another stage's state is refused and a
restarted stage checks its input schema as the other operators do.

Memory: the mapped output of the current epoch is held until its barrier (Arrow
buffers, not copied; :attr:`MapLogic.buffered_bytes`). It is bounded by the epoch's
output: checkpoint more often (``checkpoint_interval``/``epoch_every_batches``) to bound
it further. ``finish()`` returns the mapped rows received since the last barrier (the
final epoch), and ``finish_chunks()`` streams them batch by batch without a copy.

Exactly once: the logic has no state besides the buffer of the current epoch, which a
replay of the epoch rebuilds; restoring the engine to any epoch and replaying gives the
same output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raykv.engines.base import KVStore
from raykv.errors import mark_user_code
from raykv.operators.base import META_KEY, KeyedOperator, OperatorLogic
from raykv.operators.schemas import describe_schema_change, same_columns
from raykv.operators.state_meta import StateMetadata

__all__ = ["Filter", "Map", "MapLogic"]

MapFn = Callable[[pa.RecordBatch], "pa.RecordBatch | pa.Table | None"]


@dataclass(frozen=True)
class Map(KeyedOperator):
    """A stateless stage: ``fn`` applied to every input batch (see the module docstring).

    Output of an epoch: ``fn``'s results for its batches, concatenated in arrival order
    (empty and ``None`` results contribute nothing). The first non-empty result fixes the
    output schema (or ``schema=`` does, from the start); a later result with the same
    column names is cast to it when the cast is safe (e.g. a ``null``-typed column of an
    all-null batch), otherwise the batch is refused with a ``ValueError`` naming the
    columns that differ. ``fn`` sees the ``_change`` column when the input is a
    changelog (``raykv.operators.changelog``); keeping it in its output passes the
    changelog on.

    Cost per batch: ``fn`` plus the input checks (O(1)); no engine call except the
    metadata record with the first batch. Memory: the epoch's output until its barrier.

    Example:
        >>> import pyarrow as pa, pyarrow.compute as pc, tempfile
        >>> from raykv.engines import MemOnly
        >>> op = Map("k", lambda b: b.append_column("v2", pc.multiply(b["v"], 2)))
        >>> with MemOnly(tempfile.mkdtemp()) as store:
        ...     logic = op.build(store)
        ...     logic.process(pa.record_batch({"k": [1, 2], "v": [3, 4]}))
        ...     logic.on_barrier(1).to_pydict()
        {'k': [1, 2], 'v': [3, 4], 'v2': [6, 8]}

    Attributes:
        fn: ``fn(batch) -> RecordBatch | Table | None``; must be picklable by cloudpickle.
        schema: the output schema, if known (then ``output_schema()`` is known before the
            first output and every result is cast to it).
    """

    fn: MapFn
    schema: pa.Schema | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        if not callable(self.fn):
            msg = f"{owner}.fn must be callable fn(batch) -> RecordBatch | Table | None, " \
                  f"got {type(self.fn).__name__}"
            raise TypeError(msg)
        if self.schema is not None and not isinstance(self.schema, pa.Schema):
            msg = f"{owner}.schema must be a pyarrow.Schema or None, got {self.schema!r}"
            raise TypeError(msg)

    def changelog_refusal(self, *, retractions: bool) -> str | None:
        """``None``: ``fn`` sees each row's kind in the ``_change`` column and decides."""
        return None

    def build(self, store: KVStore) -> MapLogic:
        """Create the shard logic on ``store`` (checks the metadata record it may hold)."""
        return MapLogic(self, store, self.fn, self.schema)


@dataclass(frozen=True, eq=False)  # an Expression has no truth value: compared by identity
class Filter(KeyedOperator):
    """A stateless stage that keeps the rows ``predicate`` selects; the schema is unchanged.

    ``predicate``: a ``pyarrow.compute.Expression`` (``pc.field("price") > 100``) or a
    function ``predicate(batch) -> boolean array`` of the batch's length. Null in the
    mask drops the row (Arrow's ``filter`` with ``null_selection_behavior="drop"``).
    Output of an epoch: the selected rows of its batches, in arrival order. Cost per
    batch: the predicate and one ``filter`` (a copy of the kept rows).
    """

    predicate: pc.Expression | Callable[[pa.RecordBatch], Any]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.predicate, pc.Expression) and not callable(self.predicate):
            msg = (
                "Filter.predicate must be a pyarrow.compute.Expression or a function "
                f"batch -> boolean mask, got {type(self.predicate).__name__}"
            )
            raise TypeError(msg)

    def changelog_refusal(self, *, retractions: bool) -> str | None:
        """``None``: a changelog row is kept or dropped with its kind."""
        return None

    def build(self, store: KVStore) -> MapLogic:
        """Create the shard logic on ``store``."""
        return MapLogic(self, store, self._apply, None)

    def _apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        pred = self.predicate
        if isinstance(pred, pc.Expression):
            return batch.filter(pred)
        mask = pred(batch)
        if isinstance(mask, pa.ChunkedArray):
            mask = mask.combine_chunks()
        if not isinstance(mask, pa.Array):
            mask = pa.array(mask)
        if mask.type != pa.bool_() or len(mask) != batch.num_rows:
            msg = (
                f"Filter.predicate must return a boolean array of the batch's length "
                f"({batch.num_rows}), got {mask.type} of length {len(mask)}"
            )
            raise TypeError(msg)
        return batch.filter(mask)


class MapLogic(StateMetadata, OperatorLogic):
    """Running logic of :class:`Map` and :class:`Filter` on one shard."""

    def __init__(self, op: KeyedOperator, store: KVStore, fn: MapFn,
                 schema: pa.Schema | None) -> None:
        self.op = op
        self.store = store
        self.key = op.key
        self.expiry = None
        self.fn = fn
        self._fixed_schema = schema
        self._schema: pa.Schema | None = None
        self._key_type: pa.DataType | None = None
        self._out_schema: pa.Schema | None = schema
        self._pending_meta: list[tuple[bytes, bytes]] = []
        self._buffer: list[pa.RecordBatch] = []
        #: Bytes of Arrow buffers held for the current epoch's output.
        self.buffered_bytes = 0
        raw = store.get(META_KEY)
        if raw:
            self._load_meta(raw)

    # ------------------------------------------------------------------ StateMetadata hooks

    def _setup(self, schema: pa.Schema) -> None:
        if isinstance(self.op, Filter):
            self._out_schema = schema

    def _layout(self) -> str:
        return "map/1"

    # ------------------------------------------------------------------ OperatorLogic

    def process(self, batch: pa.RecordBatch) -> None:
        """Check ``batch``, apply ``fn`` and buffer the result for the epoch's output.

        Raises:
            TypeError: not a ``RecordBatch``, or ``fn`` returned another type.
            ValueError: missing key column, another input schema than the first batch, a
                null key, or an output whose columns differ from the first output's.
            Exception: whatever ``fn`` raises (marked as user code). Nothing is buffered.
        """
        fresh = self._schema is None
        out_before = self._out_schema
        try:
            self._check_batch(batch)
            if not batch.num_rows:
                return
            parts = self._conform(self._call(batch))
            if self._pending_meta:
                self.store.multi_set(dict(self._pending_meta))
                self._pending_meta = []
        except BaseException:
            self._out_schema = out_before
            if fresh:
                self._schema = self._key_type = None
                self._out_schema = self._fixed_schema
                self._pending_meta = []
            raise
        for part in parts:
            self._buffer.append(part)
            self.buffered_bytes += part.nbytes

    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        """The epoch's mapped rows (one batch, arrival order), or ``None`` if there are none.

        Cost: one concatenation (a copy) of the buffered results.
        """
        return self._take()

    def finish(self) -> pa.RecordBatch | None:
        """End of bounded input: the mapped rows received since the last barrier."""
        return self._take()

    def finish_chunks(self, max_rows: int | None = None) -> Iterator[pa.RecordBatch]:
        """The rows :meth:`finish` returns, one buffered result at a time (no copy).

        ``max_rows``: slice results longer than this (``None``: as ``fn`` returned them).
        """
        parts, self._buffer, self.buffered_bytes = self._buffer, [], 0
        for part in parts:
            if max_rows is None or part.num_rows <= max_rows:
                yield part
            else:
                for start in range(0, part.num_rows, max_rows):
                    yield part.slice(start, max_rows)

    def output_schema(self) -> pa.Schema | None:
        """The output schema: ``schema=``, the input schema (Filter) or the first output's."""
        return self._out_schema

    def export_state(self) -> pa.RecordBatch | None:
        """A Map keeps no per-key state: ``None`` (``raykv checkpoints export``)."""
        return None

    # ------------------------------------------------------------------ helpers

    def _take(self) -> pa.RecordBatch | None:
        parts, self._buffer, self.buffered_bytes = self._buffer, [], 0
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else pa.concat_batches(parts)

    def _call(self, batch: pa.RecordBatch) -> Any:
        try:
            return self.fn(batch)
        except Exception as err:
            mark_user_code(err, f"{type(self.op).__name__}.{_fn_attr(self.op)}")
            raise

    def _conform(self, out: Any) -> list[pa.RecordBatch]:
        """``fn``'s result as non-empty batches of the output schema (fixed by the first)."""
        if out is None:
            return []
        if isinstance(out, pa.RecordBatch):
            parts = [out]
        elif isinstance(out, pa.Table):
            parts = out.to_batches()
        else:
            msg = (
                f"{self._name()}: fn must return a pyarrow RecordBatch, Table or None, "
                f"got {type(out).__name__}"
            )
            raise TypeError(msg)
        parts = [p for p in parts if p.num_rows]
        if not parts:
            return []
        if self._out_schema is None:
            self._out_schema = parts[0].schema
        target = self._out_schema
        return [p if same_columns(p.schema, target) else self._cast(p, target) for p in parts]

    def _cast(self, part: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
        if part.schema.names == target.names:
            try:
                return part.cast(target, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                pass
        msg = (
            f"{self._name()}: fn returned another schema than its first output: "
            f"{describe_schema_change(target, part.schema)}; return the same columns and "
            "types every time (or pass schema= to the operator)"
        )
        raise ValueError(msg)


def _fn_attr(op: KeyedOperator) -> str:
    return "predicate" if isinstance(op, Filter) else "fn"
