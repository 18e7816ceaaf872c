"""Built-in aggregation state: a fixed binary layout combined with numpy, no pickle.

Used by ``Aggregate`` and ``TumblingWindow``. For one batch:

1. ``partials``: one Arrow ``group_by(...).aggregate(...)`` gives per-group partial
   aggregates (count, sum, min, max, first, last) in storage types (int64, uint64,
   float64, binary);
2. the caller encodes the group keys and reads the old states with one ``multi_get``;
3. ``combine``: old states are decoded with one ``np.frombuffer`` over the joined values
   (missing keys are ``b""`` and get a zero state), combined with the partials by
   vectorized numpy, and encoded with one ``tobytes`` sliced into per-key values;
4. the caller writes them with one ``multi_set``.

State value layout (little-endian, no header; documented in ``docs/operators.md``): for
each aggregated column, in ``aggs`` order, the fixed fields

    count int64                     non-null values seen (always present)
    sum   int64 | float64           if ``sum`` or ``mean`` is requested
    min, max, first, last           one 8-byte field each if requested:
                                    int64 (signed ints, bool, temporal), uint64, float64

followed, only if some string/binary column has min/max/first/last, by a variable tail:
for each such field, ``uint32 length`` + bytes (length 0 while the count is 0). A value
is meaningful only while ``count > 0``; otherwise the output is null (sum: 0).

Semantics: nulls are skipped (SQL-like); ``count`` counts non-null values; ``mean`` is
``sum / count`` at emission (float64, null when count is 0); ``first``/``last`` are the
first/last non-null value by arrival order; float min/max ignore NaN unless all values are
NaN (Arrow's rule); integer sums are int64 and raise ``OverflowError`` instead of
wrapping (the batch is then not applied).

This module owns the layout (``AggLayout``: fields, ``partials``, ``render``); the
combine kernels it inherits (``combine``, ``fold``) are in ``aggkernels.py``, the ops and
their validation (``normalize_aggs``) in ``aggspec.py``, the storage casts and the
variable-tail codec in ``aggstorage.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raykv.operators.aggkernels import AggKernels
from raykv.operators.aggspec import STATS, AggColumn, is_numeric, value_kind
from raykv.operators.aggstorage import from_storage, split_tail, sum_may_overflow, to_storage

_COUNT_OPTS = pc.CountOptions(mode="only_valid")
_SUM_OPTS = pc.ScalarAggregateOptions(skip_nulls=True, min_count=0)


class AggLayout(AggKernels):
    """State layout, partial aggregation, combine and rendering for fixed ``aggs``.

    Args:
        aggs: normalized aggregations (``normalize_aggs``).
        schema: the input schema (the value columns' types decide the storage types).
        owner: operator name for error messages.

    Raises:
        ValueError: an aggregated column is missing from ``schema``.
        TypeError: an op does not apply to a column's type (e.g. ``sum`` of strings).
    """

    def __init__(self, aggs: Mapping[str, Sequence[str]], schema: pa.Schema, owner: str) -> None:
        self.cols = []
        fields: list[tuple[str, str]] = []
        var_fields: list[tuple[int, str]] = []
        for i, (name, ops) in enumerate(aggs.items()):
            if name not in schema.names:
                msg = (
                    f"{owner}: aggregated column {name!r} is missing; "
                    f"the columns are {schema.names}"
                )
                raise ValueError(msg)
            t = schema.field(name).type
            if pa.types.is_dictionary(t):
                t = t.value_type
            kind = value_kind(t)
            wanted = set(ops)
            if "mean" in wanted:
                wanted.add("sum")
            if wanted & {"sum"} and not is_numeric(t):
                msg = f"{owner}: sum/mean of column {name!r} need a numeric column, it is {t}"
                raise TypeError(msg)
            if wanted & {"min", "max", "first", "last"} and not kind:
                msg = (
                    f"{owner}: min/max/first/last of column {name!r} are not supported for "
                    f"type {t}; use numeric, boolean, temporal, string or binary columns"
                )
                raise TypeError(msg)
            stats = tuple(s for s in STATS if s == "count" or s in wanted)
            col = AggColumn(i, name, t, kind, tuple(ops), stats, f"\x00{i}")
            self.cols.append(col)
            for stat in stats:
                if stat == "count":
                    fields.append((col.field(stat), "<i8"))
                elif stat == "sum":
                    fields.append((col.field(stat), "<f8" if kind == "f" else "<i8"))
                elif kind == "v":
                    var_fields.append((i, stat))
                else:
                    fields.append((col.field(stat), {"i": "<i8", "u": "<u8", "f": "<f8"}[kind]))
        self.dtype = np.dtype(fields)
        self.size = self.dtype.itemsize
        self.var_fields = var_fields
        self.layout_id = "aggstate/1;" + ",".join(
            [f"{n}={t}" for n, t in fields] + [f"{i}:{s}=var" for i, s in var_fields]
        )

    # ------------------------------------------------------------------ output

    def output_fields(self) -> list[pa.Field]:
        """Output columns ``{column}_{op}`` in ``aggs`` order with their types."""
        out = []
        for c in self.cols:
            for op in c.ops:
                if op == "count":
                    t = pa.int64()
                elif op == "sum":
                    t = pa.float64() if c.kind == "f" else pa.int64()
                elif op == "mean":
                    t = pa.float64()
                else:
                    t = c.type
                out.append(pa.field(f"{c.name}_{op}", t))
        return out

    # ------------------------------------------------------------------ partials

    def partials(self, batch: pa.RecordBatch, group_cols: Sequence[str], *,
                 row_counts: bool = False) -> pa.Table:
        """Per-group partial aggregates of ``batch`` (one Arrow group_by, arrival order kept).

        The result has the ``group_cols`` plus ``{tmp}_{stat}`` columns in storage types,
        and with ``row_counts`` a last column ``count_all`` (each group's rows, in the same
        pass). Raises ``OverflowError`` if an int64 partial sum would overflow.
        """
        arrays = [batch.column(g) for g in group_cols]
        names = list(group_cols)
        specs: list[tuple[str, str, pc.FunctionOptions | None]] = []
        sums_exact: dict[str, pa.Array] = {}
        for c in self.cols:
            arr = to_storage(batch.column(c.name), c.kind)
            arrays.append(arr)
            names.append(c.tmp)
            for stat in c.stats:
                if stat == "count":
                    specs.append((c.tmp, "count", _COUNT_OPTS))
                elif stat == "sum":
                    if c.kind in ("i", "u") and sum_may_overflow(arr):
                        sums_exact[c.tmp] = arr.cast(pa.decimal128(38, 0))
                        arrays.append(sums_exact[c.tmp])
                        names.append(c.tmp + "d")
                        specs.append((c.tmp + "d", "sum", _SUM_OPTS))
                    else:
                        specs.append((c.tmp, "sum", _SUM_OPTS))
                else:
                    specs.append((c.tmp, stat, None))
        table = pa.Table.from_arrays(arrays, names=names)
        every: list[Any] = [([], "count_all")] if row_counts else []
        part = table.group_by(list(group_cols), use_threads=False).aggregate([*specs, *every])
        for c in self.cols:
            if "sum" not in c.stats:
                continue
            name = c.tmp + ("d_sum" if c.tmp in sums_exact else "_sum")
            col = part.column(name)
            if col.type != pa.int64() and c.kind != "f":
                try:
                    col = col.cast(pa.int64())
                except pa.ArrowInvalid as err:
                    msg = (
                        f"int64 sum of column {c.name!r} overflows within one batch; "
                        "cast the column to float64 to sum it approximately"
                    )
                    raise OverflowError(msg) from err
                part = part.set_column(part.schema.get_field_index(name), c.tmp + "_sum", col)
        return part

    # ------------------------------------------------------------------ render

    def render(self, values: Sequence[bytes]) -> list[tuple[str, pa.Array]]:
        """Decode non-empty state ``values`` into output columns (see ``output_fields``)."""
        size = self.size
        fixed = [v[:size] for v in values] if self.var_fields else values
        st = np.frombuffer(b"".join(fixed), dtype=self.dtype)
        var: dict[tuple[int, str], list[bytes | None]] = {}
        if self.var_fields:
            nvar = len(self.var_fields)
            split = [split_tail(v[size:], nvar) for v in values]
            for j, (i, stat) in enumerate(self.var_fields):
                var[(i, stat)] = [s[j] for s in split]
        return self._columns(st, var)

    def render_records(self, rows: np.ndarray) -> list[tuple[str, pa.Array]]:
        """:meth:`render` of values given as a ``(n, size)`` ``uint8`` array (no var fields)."""
        assert not self.var_fields and rows.shape[1] == self.size
        return self._columns(np.ascontiguousarray(rows).view(self.dtype).reshape(-1), {})

    def _columns(self, st: np.ndarray, var: Mapping[tuple[int, str], list[bytes | None]]
                 ) -> list[tuple[str, pa.Array]]:
        out: list[tuple[str, pa.Array]] = []
        for c in self.cols:
            count = st[c.field("count")]
            empty = count == 0
            for op in c.ops:
                name = f"{c.name}_{op}"
                if op == "count":
                    out.append((name, pa.array(count, pa.int64())))
                elif op == "sum":
                    out.append((name, pa.array(st[c.field("sum")])))
                elif op == "mean":
                    with np.errstate(divide="ignore", invalid="ignore"):
                        mean = st[c.field("sum")] / np.where(empty, 1, count)
                    out.append((name, pa.array(mean, pa.float64(), mask=empty)))
                elif c.kind == "v":
                    seen = var[(c.index, op)]
                    vals = [None if e else v for v, e in zip(seen, empty.tolist(), strict=True)]
                    out.append((name, pa.array(vals, pa.large_binary()).cast(c.type)))
                else:
                    raw = pa.array(st[c.field(op)], mask=empty)
                    out.append((name, from_storage(raw, c.type)))
        return out
