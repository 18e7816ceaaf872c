"""``Aggregate``: running per-key aggregations, vectorized per batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress

import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.operators.aggstate import AggLayout, normalize_aggs
from raykv.operators.base import KeyedOperator, KeyedStateLogic


@dataclass(frozen=True)
class Aggregate(KeyedOperator):
    """Running aggregations per key: count, sum, mean, min, max, first, last.

    Input: any batch with the ``key`` column and the aggregated columns. Output (changelog
    at each barrier, all keys at ``finish``): the key column, then ``{column}_{op}`` for
    each op in ``aggs`` order. Output types: count and integer sums int64, float sums and
    means float64, min/max/first/last the column's type (dictionaries decoded). Nulls are
    skipped; an int64 sum that would overflow raises ``OverflowError`` and the batch is not
    applied. State: a fixed binary layout per key (``aggstate.py``), never pickle.

    Cost per batch: one Arrow group_by, one ``multi_get`` and one ``multi_set`` of the
    distinct keys, numpy work per distinct key; no Python call per row.

    Example:
        >>> import pyarrow as pa, tempfile
        >>> from raykv.engines import MemOnly
        >>> op = Aggregate("user", {"amount": ["sum", "count"]})
        >>> with MemOnly(tempfile.mkdtemp()) as store:
        ...     logic = op.build(store)
        ...     logic.process(pa.record_batch({"user": ["a", "b", "a"], "amount": [1, 2, 3]}))
        ...     logic.on_barrier(1).to_pydict()
        {'user': ['a', 'b'], 'amount_sum': [4, 2], 'amount_count': [2, 1]}

    Attributes:
        aggs: ``{column: [ops]}`` (a single op may be a string); ops from
            ``count, sum, mean, min, max, first, last``.
    """

    aggs: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "aggs", normalize_aggs(self.aggs, type(self).__name__))
        names = [f"{c}_{op}" for c, ops in self.aggs.items() for op in ops]
        if self.key in names:
            msg = f"Aggregate: output column {self.key!r} would clash with the key column"
            raise ValueError(msg)

    def build(self, store: KVStore) -> AggregateLogic:
        """Create the shard logic on ``store`` (resumes the state the store holds)."""
        return AggregateLogic(self, store)


class AggregateLogic(KeyedStateLogic):
    """Running logic of :class:`Aggregate` on one shard."""

    op: Aggregate

    def __init__(self, op: Aggregate, store: KVStore) -> None:
        self.layout: AggLayout | None = None
        super().__init__(op, store)

    def _setup(self, schema: pa.Schema) -> None:
        self.layout = AggLayout(self.op.aggs, schema, self._name())
        key_field = pa.field(self.key, schema.field(self.key).type)
        self._out_schema = pa.schema([key_field, *self.layout.output_fields()])

    def _layout(self) -> str:
        assert self.layout is not None
        return self.layout.layout_id

    def _process(self, batch: pa.RecordBatch) -> None:
        layout = self.layout
        assert layout is not None
        batch = self._canonical(batch)
        part = layout.partials(batch, [self.key])
        key_col = part.column(self.key)
        keys = self._state_keys(key_col)
        old = self.store.multi_get(keys)
        new, changed = layout.combine(old, part, lambda i: f"key {key_col[i].as_py()!r}")
        if not changed.all():
            keys = list(compress(keys, changed))
            new = list(compress(new, changed))
        self._write(keys, new)

    def _render(
        self, state_keys: Sequence[bytes], values: Sequence[bytes]
    ) -> list[tuple[str, pa.Array]]:
        assert self.layout is not None
        return self.layout.render(values)
