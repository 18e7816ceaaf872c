"""Combining aggregation states over ranges: the window results of sliding panes and sessions.

Contract: :func:`combine_ranges` takes state values in the ``AggLayout`` format (as
``Aggregate``/``TumblingWindow`` store them, ``aggstate.py``) in a fixed order and, for
each range ``[lo, hi)`` of them, returns the state of all of them combined in that
order: counts and sums added, min/max over the values present (floats ignore NaN unless
all values are NaN), ``first`` from the first state in the range that has a value,
``last`` from the last one. Ranges may overlap (sliding windows share panes). Pure: no
engine access; ``OverflowError`` (an int64 sum that leaves int64, naming the range with
``describe``) before returning anything.

Cost: numpy ``reduceat`` passes, O(total range length + number of states) C work per
stored field; string/binary min/max add a Python loop over each range.
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
    lo = np.asarray(lo, dtype=np.intp)
    hi = np.asarray(hi, dtype=np.intp)
    nw = len(lo)
    n = len(values)
    if not nw:
        return []
    size = layout.size
    fixed = [v[:size] for v in values] if layout.var_fields else list(values)
    st = np.frombuffer(b"".join(fixed), dtype=layout.dtype) if n else np.zeros(0, layout.dtype)
    idx = np.empty(2 * nw, dtype=np.intp)
    idx[0::2] = lo
    idx[1::2] = hi
    empty = hi <= lo

    def seg(ufunc: np.ufunc, arr: np.ndarray, fill: object) -> np.ndarray:
        ext = np.append(arr, np.array([fill], dtype=arr.dtype))
        return ufunc.reduceat(ext, idx)[0::2]

    out = np.zeros(nw, dtype=layout.dtype)
    positions = np.arange(n, dtype=np.intp)
    firsts: dict[int, np.ndarray] = {}
    lasts: dict[int, np.ndarray] = {}
    for c in layout.cols:
        count = st[c.field("count")]
        has = count > 0
        total = seg(np.add, count, 0)
        total[empty] = 0
        out[c.field("count")] = total
        first = seg(np.minimum, np.where(has, positions, n), n)
        last = seg(np.maximum, np.where(has, positions, -1), -1)
        first[empty] = n
        last[empty] = -1
        firsts[c.index], lasts[c.index] = first, last
        found = (first < hi) & ~empty
        for stat in c.stats:
            if stat == "count" or (c.kind == "v" and stat != "sum"):
                continue
            f = c.field(stat)
            v = st[f]
            if stat == "sum":
                r = seg(np.add, v, 0)
                if c.kind != "f":
                    r = _check_int_sums(c.name, v, r, lo, hi, describe)
                r[empty] = 0
                out[f] = r
            elif stat in ("min", "max"):
                pick: np.ufunc
                if c.kind == "f":
                    pick = np.fmin if stat == "min" else np.fmax
                    r = seg(pick, np.where(has, v, np.nan), np.nan)
                else:
                    info = np.iinfo(v.dtype)
                    pad = info.max if stat == "min" else info.min
                    pick = np.minimum if stat == "min" else np.maximum
                    r = seg(pick, np.where(has, v, pad), pad)
                out[f] = np.where(found, r, np.zeros_like(r))
            else:  # first, last: the value of the first/last state that has one
                at = first if stat == "first" else last
                out[f] = np.where(found, v[np.clip(at, 0, max(n - 1, 0))] if n else 0, 0)
    encoded: list[bytes] = out.view(f"V{size}").tolist()
    if layout.var_fields:
        tails = _var_tails(layout, values, lo, hi, firsts, lasts)
        encoded = list(map(bytes.__add__, encoded, tails))
    return [b"" if e else v for v, e in zip(encoded, empty.tolist(), strict=True)]


def _check_int_sums(
    name: str,
    v: np.ndarray,
    r: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    describe: Callable[[int], str],
) -> np.ndarray:
    """Exact int64 range sums: the wrapped ``r`` where a float bound proves it exact."""
    bound = np.add.reduceat(np.append(np.abs(v.astype(np.float64)), 0.0),
                            np.column_stack([lo, hi]).ravel())[0::2]
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
    values: Sequence[bytes],
    lo: np.ndarray,
    hi: np.ndarray,
    firsts: dict[int, np.ndarray],
    lasts: dict[int, np.ndarray],
) -> list[bytes]:
    """The variable tails (string/binary min/max/first/last) of the combined states."""
    size = layout.size
    nvar = len(layout.var_fields)
    split = [split_tail(v[size:], nvar) for v in values]
    n = len(values)
    columns = []
    for j, (i, stat) in enumerate(layout.var_fields):
        col = layout.cols[i]
        count = np.frombuffer(b"".join(v[:size] for v in values), dtype=layout.dtype)[
            col.field("count")] if n else np.zeros(0, np.int64)
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
