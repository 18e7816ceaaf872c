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
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

OPS = ("count", "sum", "mean", "min", "max", "first", "last")
_STATS = ("count", "sum", "min", "max", "first", "last")
_INT64_MAX = (1 << 63) - 1
_COUNT_OPTS = pc.CountOptions(mode="only_valid")
_SUM_OPTS = pc.ScalarAggregateOptions(skip_nulls=True, min_count=0)
_LEN = struct.Struct("<I")


def normalize_aggs(aggs: object, owner: str) -> dict[str, tuple[str, ...]]:
    """Validate ``aggs`` (``{column: op | [ops]}``) and return ``{column: (ops...)}``.

    Raises:
        TypeError: not a mapping of strings to strings/lists of strings.
        ValueError: empty, an unknown op, or a repeated op.
    """
    if not isinstance(aggs, Mapping) or not aggs:
        msg = (
            f"{owner}.aggs must be a non-empty dict like {{'price': ['sum', 'mean']}}, "
            f"got {aggs!r}"
        )
        raise TypeError(msg) if not isinstance(aggs, Mapping) else ValueError(msg)
    out: dict[str, tuple[str, ...]] = {}
    for col, ops in aggs.items():
        if not isinstance(col, str) or not col:
            msg = f"{owner}.aggs keys must be non-empty column names, got {col!r}"
            raise TypeError(msg)
        seq: tuple[object, ...] | None = None
        if isinstance(ops, str):
            seq = (ops,)
        elif isinstance(ops, list | tuple):
            seq = tuple(ops)
        if not seq or not all(isinstance(o, str) for o in seq):
            msg = (
                f"{owner}.aggs[{col!r}] must be an op or a non-empty list of ops "
                f"from {OPS}, got {ops!r}"
            )
            raise TypeError(msg)
        unknown = [o for o in seq if o not in OPS]
        if unknown:
            msg = f"{owner}.aggs[{col!r}] has unknown ops {unknown}; choose from {OPS}"
            raise ValueError(msg)
        if len(set(seq)) != len(seq):
            msg = f"{owner}.aggs[{col!r}] repeats an op: {list(seq)}"
            raise ValueError(msg)
        out[col] = seq  # type: ignore[assignment]
    return out


def _value_kind(t: pa.DataType) -> str:
    """Storage kind of a value column: 'i', 'u', 'f', 'v' (variable) or '' (unsupported)."""
    if pa.types.is_signed_integer(t) or pa.types.is_boolean(t):
        return "i"
    if pa.types.is_temporal(t) and not pa.types.is_interval(t):
        return "i"
    if pa.types.is_unsigned_integer(t):
        return "u"
    if pa.types.is_floating(t):
        return "f"
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    ):
        return "v"
    return ""


def _is_numeric(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    )


@dataclass(frozen=True)
class _Col:
    """One aggregated input column."""

    index: int
    name: str
    type: pa.DataType  # value type (dictionaries decoded)
    kind: str
    ops: tuple[str, ...]
    stats: tuple[str, ...]  # stored stats, in _STATS order
    tmp: str  # name of the storage-typed column in the partial table

    def field(self, stat: str) -> str:
        return f"{self.index}:{stat}"


class AggLayout:
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
        self.cols: list[_Col] = []
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
            kind = _value_kind(t)
            wanted = set(ops)
            if "mean" in wanted:
                wanted.add("sum")
            if wanted & {"sum"} and not _is_numeric(t):
                msg = f"{owner}: sum/mean of column {name!r} need a numeric column, it is {t}"
                raise TypeError(msg)
            if wanted & {"min", "max", "first", "last"} and not kind:
                msg = (
                    f"{owner}: min/max/first/last of column {name!r} are not supported for "
                    f"type {t}; use numeric, boolean, temporal, string or binary columns"
                )
                raise TypeError(msg)
            stats = tuple(s for s in _STATS if s == "count" or s in wanted)
            col = _Col(i, name, t, kind, tuple(ops), stats, f"\x00{i}")
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

    def partials(self, batch: pa.RecordBatch, group_cols: Sequence[str]) -> pa.Table:
        """Per-group partial aggregates of ``batch`` (one Arrow group_by, arrival order kept).

        The result has the ``group_cols`` plus ``{tmp}_{stat}`` columns in storage types.
        Raises ``OverflowError`` if an int64 partial sum would overflow.
        """
        arrays = [batch.column(g) for g in group_cols]
        names = list(group_cols)
        specs: list[tuple[str, str, pc.FunctionOptions | None]] = []
        sums_exact: dict[str, pa.Array] = {}
        for c in self.cols:
            arr = _to_storage(batch.column(c.name), c.kind)
            arrays.append(arr)
            names.append(c.tmp)
            for stat in c.stats:
                if stat == "count":
                    specs.append((c.tmp, "count", _COUNT_OPTS))
                elif stat == "sum":
                    if c.kind in ("i", "u") and _sum_may_overflow(arr):
                        sums_exact[c.tmp] = arr.cast(pa.decimal128(38, 0))
                        arrays.append(sums_exact[c.tmp])
                        names.append(c.tmp + "d")
                        specs.append((c.tmp + "d", "sum", _SUM_OPTS))
                    else:
                        specs.append((c.tmp, "sum", _SUM_OPTS))
                else:
                    specs.append((c.tmp, stat, None))
        table = pa.Table.from_arrays(arrays, names=names)
        part = table.group_by(list(group_cols), use_threads=False).aggregate(specs)
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

    # ------------------------------------------------------------------ combine

    def combine(
        self,
        old: Sequence[bytes],
        part: pa.Table,
        describe: Callable[[int], str],
    ) -> tuple[list[bytes], np.ndarray]:
        """Merge old state values (``b""`` = none) with the partials row by row.

        Args:
            old: the state values of ``part``'s groups, in ``part``'s row order.
            part: the result of :meth:`partials`.
            describe: ``describe(i)`` names group ``i`` (for error messages).

        Returns:
            The new state values and a boolean mask of the groups whose value changed.

        Raises:
            OverflowError: an int64 sum overflows (nothing has been written).
            ValueError: an old value does not have this layout (configuration changed).

        Cost: O(groups) numpy work plus, with string/binary min/max/first/last, a Python
        loop over the groups.
        """
        n = len(old)
        size = self.size
        st, present, tails = self._decode(old, describe)
        prev = st.copy()
        counts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for c in self.cols:
            oc = st[c.field("count")].copy()
            pcount = _np(part.column(c.tmp + "_count"), 0)
            counts[c.index] = (oc, pcount)
            for stat in c.stats:
                if stat == "count" or (c.kind == "v" and stat != "sum"):
                    continue
                f = c.field(stat)
                o = st[f]
                p = _np(part.column(f"{c.tmp}_{stat}"), 0)
                if stat == "sum":
                    r = o + p
                    if c.kind != "f":
                        over = ((o ^ r) & (p ^ r)) < 0
                        if over.any():
                            i = int(np.argmax(over))
                            msg = (
                                f"int64 sum of column {c.name!r} overflows for {describe(i)}; "
                                "cast the column to float64 to sum it approximately"
                            )
                            raise OverflowError(msg)
                    st[f] = r
                elif stat in ("min", "max"):
                    pick = (np.fmin if stat == "min" else np.fmax) if c.kind == "f" else (
                        np.minimum if stat == "min" else np.maximum
                    )
                    st[f] = np.where(oc == 0, p, np.where(pcount == 0, o, pick(o, p)))
                elif stat == "first":
                    st[f] = np.where(oc > 0, o, p)
                else:  # last
                    st[f] = np.where(pcount > 0, p, o)
            st[c.field("count")] = oc + pcount
        changed = ~present | (st != prev)
        out: list[bytes] = st.view(f"V{size}").tolist() if n else []
        if self.var_fields:
            new_tails = self._combine_var(tails, part, counts)
            changed |= np.fromiter(map(bytes.__ne__, tails, new_tails), dtype=bool, count=n)
            out = list(map(bytes.__add__, out, new_tails))
        return out, changed

    def fold(
        self,
        old: Sequence[bytes],
        part: pa.Table,
        index: np.ndarray,
        describe: Callable[[int], str],
    ) -> tuple[list[bytes], np.ndarray]:
        """Merge old state values with several partial rows per group, in row order.

        The epoch-level form of :meth:`combine`: ``part`` is the concatenation of several
        :meth:`partials` results (in arrival order), so a group may have many rows.
        The result is bit-identical to calling :meth:`combine` once per partial table in
        order: float sums are added to the old sum row by row (``np.add.at``, sequential),
        min/max/first/last follow the same sequence, and an int64 sum raises if any running
        total (old + the group's partial sums so far) leaves int64, naming the group.

        Args:
            old: the state values of the groups (``b""`` = none), group ``g`` at ``old[g]``.
            part: concatenated partial tables (``partials`` column layout).
            index: ``index[r]`` is the group (``0 <= g < len(old)``) of row ``r`` of
                ``part``; every group has at least one row.
            describe: ``describe(g)`` names group ``g`` (for error messages).

        Returns:
            The new state values (one per group) and a boolean mask of the groups whose
            value changed.

        Raises:
            OverflowError: an int64 running sum overflows (nothing has been written).
            ValueError: an old value does not have this layout (configuration changed).

        Cost: O(rows) numpy ``ufunc.at`` passes per stored field, one Python pass over
        the rows of the groups whose int64 sum could come near the int64 limit (none in
        practice), and with string/binary min/max/first/last one Arrow group_by plus a
        Python loop over the groups.
        """
        n = len(old)
        size = self.size
        index = np.asarray(index, dtype=np.intp)
        rows = len(index)
        st, present, tails = self._decode(old, describe)
        prev = st.copy()
        counts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        order = np.arange(rows, dtype=np.intp)
        for c in self.cols:
            oc = st[c.field("count")].copy()
            pcount = _np(part.column(c.tmp + "_count"), 0)
            total = np.zeros(n, dtype=np.int64)
            np.add.at(total, index, pcount)
            counts[c.index] = (oc, total)
            # rows that carry a value (pcount > 0), and per group the first/last of them
            seen = np.flatnonzero(pcount > 0)
            gseen = index[seen]
            first = np.full(n, len(seen), dtype=np.intp)
            np.minimum.at(first, gseen, order[: len(seen)])
            last = np.full(n, -1, dtype=np.intp)
            np.maximum.at(last, gseen, order[: len(seen)])
            # groups without a value before the fold take their first value as is
            init = (oc == 0) & (last >= 0)
            for stat in c.stats:
                if stat == "count" or (c.kind == "v" and stat != "sum"):
                    continue
                f = c.field(stat)
                o = st[f]
                p = _np(part.column(f"{c.tmp}_{stat}"), 0)
                if stat == "sum":
                    if c.kind == "f":
                        r = o.copy()
                        np.add.at(r, index, p)  # sequential: ((o + p1) + p2) + ...
                    else:
                        r = self._int_sum(c, o, p, index, describe)
                    st[f] = r
                    continue
                pv = p[seen]
                v = np.where(oc > 0, o, np.zeros_like(o))
                v[init] = pv[first[init]]
                if stat in ("min", "max"):
                    rest = np.ones(len(seen), dtype=bool)
                    rest[first[init]] = False
                    pick: np.ufunc
                    if c.kind == "f":
                        pick = np.fmin if stat == "min" else np.fmax
                    else:
                        pick = np.minimum if stat == "min" else np.maximum
                    pick.at(v, gseen[rest], pv[rest])
                elif stat == "last":
                    has = last >= 0
                    v[has] = pv[last[has]]
                st[f] = v  # first: the old value, or the group's first value
            st[c.field("count")] = oc + total
        changed = ~present | (st != prev)
        out: list[bytes] = st.view(f"V{size}").tolist() if n else []
        if self.var_fields:
            reduced = self._reduce_var(part, index, n)
            new_tails = self._combine_var(tails, reduced, counts)
            changed |= np.fromiter(map(bytes.__ne__, tails, new_tails), dtype=bool, count=n)
            out = list(map(bytes.__add__, out, new_tails))
        return out, changed

    def _int_sum(
        self,
        c: _Col,
        o: np.ndarray,
        p: np.ndarray,
        index: np.ndarray,
        describe: Callable[[int], str],
    ) -> np.ndarray:
        """Old int64 sums plus the partial sums per group, raising like :meth:`combine`.

        A float64 bound ``|o| + sum |p|`` per group proves most groups cannot leave int64
        (then ``np.add.at`` is exact); the others are summed in Python row by row.
        """
        bound = np.abs(o.astype(np.float64))
        np.add.at(bound, index, np.abs(p.astype(np.float64)))
        r = o.copy()
        np.add.at(r, index, p)  # exact wherever the bound holds
        risky = bound >= float(1 << 62)
        if risky.any():
            exact = {int(g): int(o[g]) for g in np.flatnonzero(risky)}
            for row in np.flatnonzero(risky[index]).tolist():
                g = int(index[row])
                total = exact[g] + int(p[row])
                if not -_INT64_MAX - 1 <= total <= _INT64_MAX:
                    msg = (
                        f"int64 sum of column {c.name!r} overflows for {describe(g)}; "
                        "cast the column to float64 to sum it approximately"
                    )
                    raise OverflowError(msg)
                exact[g] = total
            for g, total in exact.items():
                r[g] = total
        return r

    def _reduce_var(self, part: pa.Table, index: np.ndarray, n: int) -> pa.Table:
        """One partial row per group for the string/binary fields (min/max/first/last).

        Arrow's ordered group_by skips nulls (rows without a value), so each result is the
        min/max/first/last over the group's values in row order.
        """
        names = ["\x00g"]
        arrays: list[pa.Array | pa.ChunkedArray] = [pa.array(index, pa.int64())]
        specs: list[tuple[str, str]] = []
        for i, stat in self.var_fields:
            name = f"{self.cols[i].tmp}_{stat}"
            names.append(name)
            arrays.append(part.column(name))
            specs.append((name, stat))
        table = pa.Table.from_arrays(arrays, names=names)
        red = table.group_by("\x00g", use_threads=False).aggregate(specs)
        pos = red.column("\x00g").to_numpy()
        cols = []
        for name, stat in specs:
            vals = red.column(f"{name}_{stat}")
            if len(pos) != n or not np.array_equal(pos, np.arange(n)):  # put groups in order
                vals = vals.take(pa.array(np.argsort(pos, kind="stable")))
            cols.append(vals)
        return pa.Table.from_arrays(cols, names=[name for name, _ in specs])

    def _combine_var(
        self,
        tails: list[bytes],
        part: pa.Table,
        counts: dict[int, tuple[np.ndarray, np.ndarray]],
    ) -> list[bytes]:
        nvar = len(self.var_fields)
        old_fields = [_split_tail(t, nvar) for t in tails]
        columns = []
        for i, stat in self.var_fields:
            c = self.cols[i]
            p_vals = part.column(f"{c.tmp}_{stat}").to_pylist()
            oc, pcount = counts[i]
            columns.append((stat, p_vals, oc.tolist(), pcount.tolist()))
        out = []
        for r, fields in enumerate(old_fields):
            parts = []
            for j, (stat, p_vals, oc, pcount) in enumerate(columns):
                o = fields[j] if oc[r] else None
                p = p_vals[r] if pcount[r] else None
                if o is None:
                    v = p
                elif p is None:
                    v = o
                elif stat == "min":
                    v = min(o, p)
                elif stat == "max":
                    v = max(o, p)
                elif stat == "first":
                    v = o
                else:
                    v = p
                v = v or b""
                parts.append(_LEN.pack(len(v)))
                parts.append(v)
            out.append(b"".join(parts))
        return out

    def _decode(
        self, old: Sequence[bytes], describe: Callable[[int], str]
    ) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Decode old values: fixed fields (zeros where absent), presence mask, var tails."""
        n = len(old)
        size = self.size
        lens = np.fromiter(map(len, old), dtype=np.int64, count=n)
        present = lens > 0
        tails: list[bytes] = []
        if self.var_fields:
            bad = present & (lens < size)
            fixed = [v[:size] for v in old]
            tails = [v[size:] for v in old]
        else:
            bad = present & (lens != size)
            fixed = list(old)
        if bad.any():
            i = int(np.argmax(bad))
            msg = (
                f"state of {describe(i)} has {lens[i]} bytes, which does not match this "
                f"operator's state layout ({self.layout_id}); the aggregations changed since "
                "the state was written: keep the old configuration or start from empty state"
            )
            raise ValueError(msg)
        st = np.zeros(n, dtype=self.dtype)
        if present.all():
            st[:] = np.frombuffer(b"".join(fixed), dtype=self.dtype)
        elif present.any():
            st[present] = np.frombuffer(b"".join(fixed), dtype=self.dtype)
        return st, present, tails

    # ------------------------------------------------------------------ render

    def render(self, values: Sequence[bytes]) -> list[tuple[str, pa.Array]]:
        """Decode non-empty state ``values`` into output columns (see ``output_fields``)."""
        size = self.size
        fixed = [v[:size] for v in values] if self.var_fields else values
        st = np.frombuffer(b"".join(fixed), dtype=self.dtype)
        var: dict[tuple[int, str], list[bytes | None]] = {}
        if self.var_fields:
            nvar = len(self.var_fields)
            split = [_split_tail(v[size:], nvar) for v in values]
            for j, (i, stat) in enumerate(self.var_fields):
                var[(i, stat)] = [s[j] for s in split]
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
                    out.append((name, _from_storage(raw, c.type)))
        return out


# ---------------------------------------------------------------------------- helpers


def _np(col: pa.ChunkedArray | pa.Array, fill: int) -> np.ndarray:
    """A partial column as a numpy array, nulls replaced by ``fill``."""
    if col.null_count:
        col = pc.fill_null(col, pa.scalar(fill, col.type))
    return col.to_numpy()  # type: ignore[no-any-return]


def _to_storage(arr: pa.Array, kind: str) -> pa.Array:
    """Cast a value column to its storage type (int64, uint64, float64, large_binary)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if kind == "i":
        if pa.types.is_temporal(t):
            if t.bit_width == 64:
                return arr.view(pa.int64())
            return arr.view(pa.int32()).cast(pa.int64())
        return arr if t == pa.int64() else arr.cast(pa.int64())
    if kind == "u":
        return arr if t == pa.uint64() else arr.cast(pa.uint64())
    if kind == "f":
        return arr if t == pa.float64() else arr.cast(pa.float64())
    if kind == "v":
        return arr if t == pa.large_binary() else arr.cast(pa.large_binary())
    return arr  # count only


def _from_storage(arr: pa.Array, t: pa.DataType) -> pa.Array:
    """Inverse of ``_to_storage`` for fixed-width kinds."""
    if pa.types.is_temporal(t):
        return arr.cast(pa.int32()).view(t) if t.bit_width == 32 else arr.view(t)
    return arr if arr.type == t else arr.cast(t)


def _sum_may_overflow(arr: pa.Array) -> bool:
    """True unless ``rows * max|value|`` proves every int64 partial sum fits."""
    if len(arr) == arr.null_count:
        return False
    mm = pc.min_max(arr)
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    return bool(max(abs(lo), abs(hi)) * len(arr) > _INT64_MAX)


def _split_tail(tail: bytes, nvar: int) -> list[bytes]:
    """Split a variable tail into its ``nvar`` fields (empty tail: all empty)."""
    if not tail:
        return [b""] * nvar
    out = []
    pos = 0
    for _ in range(nvar):
        (n,) = _LEN.unpack_from(tail, pos)
        pos += 4
        out.append(tail[pos : pos + n])
        pos += n
    return out
