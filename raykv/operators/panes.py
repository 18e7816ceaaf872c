"""Combining aggregation states over ranges: the window results of sliding panes and sessions.

Contract: :func:`combine_ranges` takes state values in the ``AggLayout`` format (as
``Aggregate``/``TumblingWindow`` store them, ``aggstate.py``) in a fixed order and, for
each range ``[lo, hi)`` of them, returns the state of all of them combined in that
order: counts and sums added, min/max over the values present (floats ignore NaN unless
all values are NaN), ``first`` from the first state in the range that has a value,
``last`` from the last one. Ranges may overlap (sliding windows share panes). Pure: no
engine access; ``OverflowError`` (an int64 sum that leaves int64, naming the range with
``describe``) before returning anything. :func:`combine_fixed` is the same on states
already decoded (a ``layout.dtype`` array plus the variable tails), returning arrays.

Cost: with ``n`` states, ``w`` ranges and ``L`` the total range length, either numpy
``reduceat`` passes, O(n + L) C work per stored field (used when the ranges barely
overlap, ``L <= n * (log2(longest range) + 2)``), or a *sliding aggregation* for heavily
overlapping ranges (sliding windows: ``L = w * size / slide``): prefix sums for counts
and integer sums, a sparse table (O(n log longest) to build, O(1) per range) for min and
max, next/previous-present indexes for first and last, O(n log(longest) + w) in all.
Float sums always use ``reduceat`` (the result is bit-for-bit the sequential sum).
String/binary min/max add a Python loop over each range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from raykv.operators.aggstate import AggLayout
from raykv.operators.aggstorage import INT64_MAX, TAIL_LEN, split_tail

_INT_BOUND = float(1 << 62)


def combine_ranges(
    layout: AggLayout,
    values: Sequence[bytes],
    lo: np.ndarray,
    hi: np.ndarray,
    describe: Callable[[int], str],
) -> list[bytes]:
    """One combined state value per range ``values[lo[i]:hi[i]]`` (``b""`` if empty).

    Args:
        layout: the layout the values were written with.
        values: non-empty state values, in combining order.
        lo: range starts (``0 <= lo <= len(values)``).
        hi: range ends (``lo <= hi <= len(values)``).
        describe: ``describe(i)`` names range ``i`` in an ``OverflowError``.
    """
    st, tails = decode_states(layout, values)
    out, out_tails, empty = combine_fixed(layout, st, tails, lo, hi, describe)
    encoded: list[bytes] = out.view(f"V{layout.size}").tolist()
    if out_tails is not None:
        encoded = list(map(bytes.__add__, encoded, out_tails))
    return [b"" if e else v for v, e in zip(encoded, empty.tolist(), strict=True)]


def decode_states(
    layout: AggLayout, values: Sequence[bytes]
) -> tuple[np.ndarray, list[bytes] | None]:
    """Non-empty state values as a ``layout.dtype`` array and their variable tails.

    The tails (``v[layout.size:]``) are ``None`` when the layout has no variable fields.
    Cost: one join and one ``frombuffer``; a slice per value with variable fields.
    """
    size = layout.size
    if not values:
        return np.zeros(0, layout.dtype), [] if layout.var_fields else None
    if layout.var_fields:
        st = np.frombuffer(b"".join(v[:size] for v in values), dtype=layout.dtype)
        return st, [v[size:] for v in values]
    return np.frombuffer(b"".join(values), dtype=layout.dtype), None


def use_sliding(n: int, total: int, levels: int) -> bool:
    """Whether to use the sliding aggregation rather than ``reduceat``.

    For ranges of total length ``total`` over ``n`` states, the longest below
    ``2**levels``: the sliding aggregation costs about ``n * levels``, ``reduceat`` ``total``.
    """
    return total > n * (levels + 2)


class _Ranges:
    """Range reductions over arrays of ``n`` elements for fixed ranges ``[lo, hi)``.

    Chooses ``reduceat`` or the sliding aggregation (see the module docstring) once.
    """

    def __init__(self, n: int, lo: np.ndarray, hi: np.ndarray) -> None:
        self.n, self.lo, self.hi = n, lo, hi
        self.empty = hi <= lo
        length = np.where(self.empty, 0, hi - lo)
        longest = int(length.max()) if len(length) else 0
        self.longest = longest
        self.levels = max(longest, 1).bit_length()  # 2**(levels-1) <= longest
        self.sliding = n > 0 and use_sliding(n, int(length.sum()), self.levels)
        self.idx = np.empty(2 * len(lo), dtype=np.intp)
        self.idx[0::2] = lo
        self.idx[1::2] = hi
        if self.sliding:
            # level of each range: the largest j with 2**j <= length (0 for empty)
            self.level = np.zeros(len(lo), dtype=np.intp)
            nz = length > 0
            self.level[nz] = np.floor(np.log2(length[nz])).astype(np.intp)
            too_big = (1 << self.level) > length  # float log2 rounding
            self.level[too_big & nz] -= 1
            self.qlo = np.where(nz, lo, 0)
            self.qhi = np.where(nz, hi - (1 << self.level), 0)

    def seg(self, ufunc: np.ufunc, arr: np.ndarray, fill: object) -> np.ndarray:
        """``ufunc`` reduced over each range with ``reduceat`` (empty ranges: garbage)."""
        ext = np.append(arr, np.array([fill], dtype=arr.dtype))
        out: np.ndarray = ufunc.reduceat(ext, self.idx)[0::2]
        return out

    def add(self, arr: np.ndarray) -> np.ndarray:
        """Integer sums per range (wrapping int64 arithmetic; exact when in range)."""
        if not self.sliding:
            return self.seg(np.add, arr, 0)
        cs = np.zeros(self.n + 1, dtype=arr.dtype)
        np.cumsum(arr, out=cs[1:])
        out: np.ndarray = cs[self.hi] - cs[self.lo]
        return out

    def abs_bound(self, arr: np.ndarray) -> np.ndarray:
        """An upper bound of the float64 sum of ``|arr|`` per range."""
        a = np.abs(arr.astype(np.float64))
        if not self.sliding:
            return self.seg(np.add, a, 0.0)
        cs = np.zeros(self.n + 1, dtype=np.float64)
        np.cumsum(a, out=cs[1:])
        out: np.ndarray = (cs[self.hi] - cs[self.lo]) + cs[self.hi] * 1e-9
        return out

    def pick(self, ufunc: np.ufunc, arr: np.ndarray, fill: object) -> np.ndarray:
        """An idempotent ``ufunc`` (min/max) per range; a sparse table when sliding."""
        if not self.sliding:
            return self.seg(ufunc, arr, fill)
        table = np.empty((self.levels, self.n), dtype=arr.dtype)
        table[0] = arr
        for j in range(1, self.levels):
            half = 1 << (j - 1)
            row = table[j]
            ufunc(table[j - 1][:-half], table[j - 1][half:], out=row[:-half])
            row[-half:] = table[j - 1][-half:]
        out: np.ndarray = ufunc(table[self.level, self.qlo], table[self.level, self.qhi])
        return out

    def first(self, has: np.ndarray) -> np.ndarray:
        """Index of the first element with ``has`` in each range (``n`` if none)."""
        n = self.n
        positions = np.arange(n, dtype=np.intp)
        if not self.sliding:
            return self.seg(np.minimum, np.where(has, positions, n), n)
        nxt = np.minimum.accumulate(np.where(has, positions, n)[::-1])[::-1]
        nxt = np.append(nxt, n)
        at = nxt[self.lo]
        return np.where(at < self.hi, at, n)

    def last(self, has: np.ndarray) -> np.ndarray:
        """Index of the last element with ``has`` in each range (-1 if none)."""
        positions = np.arange(self.n, dtype=np.intp)
        if not self.sliding:
            return self.seg(np.maximum, np.where(has, positions, -1), -1)
        prv = np.maximum.accumulate(np.where(has, positions, -1))
        at = prv[np.maximum(self.hi - 1, 0)] if self.n else np.full(len(self.hi), -1)
        return np.where((at >= self.lo) & ~self.empty, at, -1)


def combine_fixed(
    layout: AggLayout,
    st: np.ndarray,
    tails: Sequence[bytes] | None,
    lo: np.ndarray,
    hi: np.ndarray,
    describe: Callable[[int], str],
) -> tuple[np.ndarray, list[bytes] | None, np.ndarray]:
    """:func:`combine_ranges` on decoded states (:func:`decode_states`).

    Returns the combined fixed parts (``layout.dtype``), their variable tails (``None``
    without variable fields) and a mask of the empty ranges (whose result is meaningless).
    """
    lo = np.asarray(lo, dtype=np.intp)
    hi = np.asarray(hi, dtype=np.intp)
    nw = len(lo)
    n = len(st)
    if not nw:
        return np.zeros(0, layout.dtype), [] if layout.var_fields else None, np.zeros(0, bool)
    r = _Ranges(n, lo, hi)
    empty = r.empty
    out = np.zeros(nw, dtype=layout.dtype)
    firsts: dict[int, np.ndarray] = {}
    lasts: dict[int, np.ndarray] = {}
    for c in layout.cols:
        count = st[c.field("count")]
        has = count > 0
        total = r.add(count)
        total[empty] = 0
        out[c.field("count")] = total
        found = total > 0  # some state in the range has a value
        if "first" in c.stats or "last" in c.stats or c.kind == "v":
            first = r.first(has)
            last = r.last(has)
            first[empty] = n
            last[empty] = -1
            firsts[c.index], lasts[c.index] = first, last
        for stat in c.stats:
            if stat == "count" or (c.kind == "v" and stat != "sum"):
                continue
            f = c.field(stat)
            v = st[f]
            if stat == "sum":
                if c.kind == "f":
                    s = r.seg(np.add, v, 0)
                else:
                    s = _check_int_sums(c.name, v, r.add(v), r, describe)
                s[empty] = 0
                out[f] = s
            elif stat in ("min", "max"):
                pick: np.ufunc
                if c.kind == "f":
                    pick = np.fmin if stat == "min" else np.fmax
                    m = r.pick(pick, np.where(has, v, np.nan), np.nan)
                else:
                    info = np.iinfo(v.dtype)
                    pad = info.max if stat == "min" else info.min
                    pick = np.minimum if stat == "min" else np.maximum
                    m = r.pick(pick, np.where(has, v, pad), pad)
                out[f] = np.where(found, m, np.zeros_like(m))
            else:  # first, last: the value of the first/last state that has one
                at = first if stat == "first" else last
                out[f] = np.where(found, v[np.clip(at, 0, max(n - 1, 0))] if n else 0, 0)
    out_tails = None
    if layout.var_fields:
        assert tails is not None
        out_tails = _var_tails(layout, st, tails, lo, hi, firsts, lasts)
    return out, out_tails, empty


def _check_int_sums(
    name: str,
    v: np.ndarray,
    r: np.ndarray,
    ranges: _Ranges,
    describe: Callable[[int], str],
) -> np.ndarray:
    """Exact int64 range sums: the wrapped ``r`` where a float bound proves it exact."""
    if not len(v) or max(int(v.max()), -int(v.min())) * ranges.longest < _INT_BOUND:
        return r  # no range can reach the bound
    bound = ranges.abs_bound(v)
    lo, hi = ranges.lo, ranges.hi
    risky = np.flatnonzero((bound >= _INT_BOUND) & (hi > lo))
    if not len(risky):
        return r
    r = r.copy()
    for i in risky.tolist():
        total = sum(int(x) for x in v[lo[i]:hi[i]])
        if not -INT64_MAX - 1 <= total <= INT64_MAX:
            msg = (
                f"int64 sum of column {name!r} overflows for {describe(i)}; "
                "cast the column to float64 to sum it approximately"
            )
            raise OverflowError(msg)
        r[i] = total
    return r


def _var_tails(
    layout: AggLayout,
    st: np.ndarray,
    tails: Sequence[bytes],
    lo: np.ndarray,
    hi: np.ndarray,
    firsts: dict[int, np.ndarray],
    lasts: dict[int, np.ndarray],
) -> list[bytes]:
    """The variable tails (string/binary min/max/first/last) of the combined states."""
    nvar = len(layout.var_fields)
    split = [split_tail(t, nvar) for t in tails]
    columns = []
    for j, (i, stat) in enumerate(layout.var_fields):
        col = layout.cols[i]
        count = st[col.field("count")]
        first, last = firsts[i].tolist(), lasts[i].tolist()
        got: list[bytes] = []
        for w, (a, b) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
            if stat == "first":
                got.append(split[first[w]][j] if first[w] < b else b"")
            elif stat == "last":
                got.append(split[last[w]][j] if last[w] >= a else b"")
            else:
                present = [split[x][j] for x in range(a, b) if count[x] > 0]
                pick = min if stat == "min" else max
                got.append(pick(present) if present else b"")
        columns.append(got)
    out = []
    for w in range(len(lo)):
        parts = []
        for got in columns:
            parts.append(TAIL_LEN.pack(len(got[w])))
            parts.append(got[w])
        out.append(b"".join(parts))
    return out
