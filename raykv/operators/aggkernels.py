"""Combine kernels of the aggregation state: merge old state values with partials.

Contract: ``AggKernels`` is the mixin of ``AggLayout`` (``aggstate.py``) that owns the
numpy merge of stored states with per-group partial aggregates: ``combine`` (one partial
row per group, the per-batch path) and ``fold`` (several partial rows per group in
arrival order, the epoch path; bit-identical to ``combine`` applied in order). Both decode
old values (``b""`` = none) with one ``np.frombuffer``, never write to an engine, and
raise ``OverflowError`` (int64 sum) or ``ValueError`` (value not in this layout) before
returning anything. The layout attributes they read (``cols``, ``dtype``, ``size``,
``var_fields``, ``layout_id``) are set by ``AggLayout.__init__``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from raykv.operators.aggspec import AggColumn
from raykv.operators.aggstorage import INT64_MAX, TAIL_LEN, partial_numpy, split_tail


class AggKernels:
    """Merge of old state values with partial aggregates (``combine``, ``fold``)."""

    cols: list[AggColumn]
    dtype: np.dtype
    size: int
    var_fields: list[tuple[int, str]]
    layout_id: str

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
            pcount = partial_numpy(part.column(c.tmp + "_count"), 0)
            counts[c.index] = (oc, pcount)
            for stat in c.stats:
                if stat == "count" or (c.kind == "v" and stat != "sum"):
                    continue
                f = c.field(stat)
                o = st[f]
                p = partial_numpy(part.column(f"{c.tmp}_{stat}"), 0)
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
            pcount = partial_numpy(part.column(c.tmp + "_count"), 0)
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
                p = partial_numpy(part.column(f"{c.tmp}_{stat}"), 0)
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
        c: AggColumn,
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
                if not -INT64_MAX - 1 <= total <= INT64_MAX:
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
        old_fields = [split_tail(t, nvar) for t in tails]
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
                parts.append(TAIL_LEN.pack(len(v)))
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
