"""``combine_ranges``: the sliding aggregation (prefix sums, sparse tables) against
``reduceat`` and a plain-Python model, on random states and overlapping ranges."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import raykv.operators.panes as panes
from raykv.operators.aggspec import normalize_aggs
from raykv.operators.aggstate import AggLayout

AGGS = {"i": ["sum", "count", "min", "max", "first", "last", "mean"],
        "f": ["sum", "min", "max", "first", "last"], "s": ["min", "max", "first", "last"]}


def states(rng: random.Random, n: int, big: bool = False) -> tuple[AggLayout, list[bytes],
                                                                    list[list[dict[str, Any]]]]:
    """``n`` states (one group each) of 1-3 random rows, and the rows of each."""
    rows: list[dict[str, Any]] = []
    per: list[list[dict[str, Any]]] = []
    for g in range(n):
        mine = []
        for _ in range(1 if big else rng.randrange(1, 4)):
            row = {"g": g,
                   "i": rng.choice([None, rng.randrange(-50, 50)]) if not big
                   else rng.choice([(1 << 62) + rng.randrange(1 << 20), -5]),
                   "f": rng.choice([None, math.nan, rng.uniform(-1, 1)]),
                   "s": rng.choice([None, "", "a", "bb", "é", "z"])}
            mine.append(row)
        rows += mine
        per.append(mine)
    batch = pa.RecordBatch.from_pylist(rows, schema=pa.schema(
        [("g", pa.int64()), ("i", pa.int64()), ("f", pa.float64()), ("s", pa.string())]))
    layout = AggLayout(normalize_aggs(AGGS, "t"), batch.schema, "t")
    part = layout.partials(batch, ["g"])
    order = np.argsort(part.column("g").to_numpy())
    part = part.take(pa.array(order))
    values, _ = layout.combine([b""] * n, part, lambda i: f"group {i}")
    return layout, values, per


def ranges(rng: random.Random, n: int, w: int, longest: int) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([rng.randrange(0, n + 1) for _ in range(w)], dtype=np.intp)
    hi = np.minimum(lo + np.array([rng.randrange(0, longest + 1) for _ in range(w)]), n)
    return lo, hi


def rendered(layout: AggLayout, values: list[bytes]) -> list[dict[str, Any]]:
    full = [v for v in values if v]
    cols = layout.render(full)
    table = pa.table({name: col for name, col in cols}).to_pylist()
    it = iter(table)
    return [next(it) if v else {} for v in values]


def model(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col, ops in AGGS.items():
        vals = [r[col] for r in rows if r[col] is not None]
        for op in ops:
            if op == "count":
                out[f"{col}_count"] = len(vals)
            elif op == "sum":
                out[f"{col}_sum"] = sum(vals) if vals else 0
            elif op == "mean":
                out[f"{col}_mean"] = sum(vals) / len(vals) if vals else None
            elif op in ("first", "last"):
                out[f"{col}_{op}"] = (vals[0] if op == "first" else vals[-1]) if vals else None
            else:
                nonnan = [v for v in vals if not (isinstance(v, float) and math.isnan(v))]
                pool = nonnan or vals
                out[f"{col}_{op}"] = (min(pool) if op == "min" else max(pool)) if pool else None
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12,
                                                                 abs_tol=1e-12)
    return bool(a == b)


@pytest.mark.parametrize("seed", range(8))
def test_sliding_aggregation_equals_reduceat_and_model(seed: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    n = rng.randrange(1, 120)
    layout, values, per = states(rng, n)
    lo, hi = ranges(rng, n, rng.randrange(1, 200), rng.choice([1, 7, 60, n]))
    monkeypatch.setattr(panes, "use_sliding", lambda *_: False)
    plain = panes.combine_ranges(layout, values, lo, hi, str)
    monkeypatch.setattr(panes, "use_sliding", lambda *_: True)
    sliding = panes.combine_ranges(layout, values, lo, hi, str)
    got_plain, got_sliding = rendered(layout, plain), rendered(layout, sliding)
    for w, (a, b) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
        if a >= b:
            assert plain[w] == sliding[w] == b""
            continue
        want = model([r for g in range(a, b) for r in per[g]])
        for name, value in want.items():
            assert same(got_sliding[w][name], value), (w, name)
            if name != "f_sum":  # float sums are sequential sums on both paths
                assert same(got_plain[w][name], value), (w, name)
        assert got_plain[w]["f_sum"] == got_sliding[w]["f_sum"] or same(
            got_plain[w]["f_sum"], got_sliding[w]["f_sum"])
    assert plain == sliding  # bit for bit, float sums included


@pytest.mark.parametrize("force", [False, True])
def test_int64_overflow_is_found_on_both_paths(force: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    layout, values, _ = states(rng, 40, big=True)
    monkeypatch.setattr(panes, "use_sliding", lambda *_: force)
    lo = np.arange(0, 30, dtype=np.intp)
    with pytest.raises(OverflowError, match="int64 sum of column 'i' overflows for range"):
        panes.combine_ranges(layout, values, lo, lo + 10, lambda i: f"range {i}")
    # single states never overflow
    one = panes.combine_ranges(layout, values, lo, lo + 1, str)
    assert one == [values[i] for i in range(30)]
