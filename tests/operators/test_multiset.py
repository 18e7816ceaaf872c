"""The per-group multisets behind min/max over a changelog (``raykv.operators.multiset``):
encoding round trips and merges against a ``Counter`` model, with hypothesis."""

from __future__ import annotations

import itertools
import math
import struct
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.operators import multiset
from raykv.operators.multiset import Entries

VALUES: dict[str, Any] = {
    "i": st.integers(-(2**63), 2**63 - 1),
    "u": st.integers(0, 2**64 - 1),
    "f": st.floats(allow_nan=True, allow_infinity=True, width=64),
    "v": st.binary(max_size=6),
}
NP = {"i": np.int64, "u": np.uint64, "f": np.float64}


def _canon(kind: str, x: Any) -> Any:
    """What makes two values one entry: float bit patterns, else the value."""
    return struct.pack("<d", x) if kind == "f" else x


def entries(kind: str, rows: list[tuple[int, Any, int]]) -> Entries:
    g = np.array([r[0] for r in rows], np.int64)
    c = np.array([r[2] for r in rows], np.int64)
    v: Any = [r[1] for r in rows] if kind == "v" else np.array([r[1] for r in rows], NP[kind])
    return Entries(g, v, c)


def model(kind: str, *parts: list[tuple[int, Any, int]]) -> dict[int, Counter[Any]]:
    out: dict[int, Counter[Any]] = {}
    for rows in parts:
        for g, v, c in rows:
            out.setdefault(g, Counter())[_canon(kind, v)] += c
    return {g: Counter({v: c for v, c in cnt.items() if c}) for g, cnt in out.items()}


def as_model(kind: str, e: Entries) -> dict[int, Counter[Any]]:
    vals = e.v if isinstance(e.v, list) else e.v.tolist()
    out: dict[int, Counter[Any]] = {}
    for g, v, c in zip(e.g.tolist(), vals, e.c.tolist(), strict=True):
        assert c != 0
        key = _canon(kind, v)
        assert key not in out.get(g, {})  # one entry per distinct value
        out.setdefault(g, Counter())[key] = c
    return out


def rows_of(kind: str, groups: int) -> st.SearchStrategy[list[tuple[int, Any, int]]]:
    return st.lists(st.tuples(st.integers(0, groups - 1), VALUES[kind], st.integers(-3, 3)),
                    max_size=40)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), kind=st.sampled_from("iufv"), groups=st.integers(1, 6))
def test_merge_encode_decode_and_extremes_match_a_counter_model(
        data: st.DataObject, kind: str, groups: int) -> None:
    first = data.draw(rows_of(kind, groups))
    second = data.draw(rows_of(kind, groups))
    merged = multiset.merge(multiset.empty(kind), entries(kind, first), kind)
    want = model(kind, first)
    assert as_model(kind, merged) == {g: c for g, c in want.items() if c}
    # the stored form round-trips, next to a second column of another kind
    sections = multiset.encode([merged, merged], [kind, kind], groups)
    assert [bool(s) for s in sections] == [bool(want.get(g)) for g in range(groups)]
    back = multiset.decode(sections, [kind, kind])
    for e in back:
        assert as_model(kind, e) == as_model(kind, merged)
    # merging more signed counts into the decoded entries
    again = multiset.merge(back[0], entries(kind, second), kind)
    want = model(kind, first, second)
    assert as_model(kind, again) == {g: c for g, c in want.items() if c}
    # sorted by (group, value)
    vals = again.v if isinstance(again.v, list) else again.v.tolist()
    for (g0, v0), (g1, v1) in itertools.pairwise(zip(again.g.tolist(), vals, strict=True)):
        assert g0 <= g1
        if g0 == g1 and not (kind == "f" and (math.isnan(v0) or math.isnan(v1))):
            assert v0 <= v1
    # min/max over the values with a positive count
    has, lo, hi = multiset.extremes(again, kind, groups)
    for g in range(groups):
        live = [v for v, c in want.get(g, Counter()).items() if c > 0]
        assert bool(has[g]) == bool(live)
        if not live:
            continue
        if kind == "f":
            nums = [struct.unpack("<d", b)[0] for b in live]
            real = [x for x in nums if not math.isnan(x)]
            if real:
                assert lo[g] == min(real) and hi[g] == max(real)
            else:
                assert math.isnan(lo[g]) and math.isnan(hi[g])
        else:
            assert lo[g] == min(live) and hi[g] == max(live)


def test_an_empty_section_is_every_multiset_empty_and_bad_bytes_are_refused() -> None:
    e = multiset.decode([b"", b""], ["i", "v"])
    assert [len(x) for x in e] == [0, 0]
    assert multiset.encode(e, ["i", "v"], 2) == [b"", b""]
    good = multiset.encode([entries("i", [(0, 5, 2)])], ["i"], 1)[0]
    assert good == struct.pack("<Iqq", 1, 2, 5)
    with pytest.raises(ValueError, match="does not decode"):
        multiset.decode([good + b"x"], ["i"])


@settings(max_examples=100, deadline=None)
@given(data=st.data(), kinds=st.lists(st.sampled_from("iuf"), min_size=1, max_size=3),
       groups=st.integers(0, 6))
def test_the_vectorized_codec_writes_and_reads_the_same_bytes_as_the_loop(
        data: st.DataObject, kinds: list[str], groups: int) -> None:
    cols = []
    for kind in kinds:
        rows = data.draw(rows_of(kind, groups)) if groups else []
        cols.append(multiset.merge(multiset.empty(kind), entries(kind, rows), kind))
    fast = multiset.encode(cols, kinds, groups)
    assert fast == multiset._encode_py(cols, kinds, groups)
    for a, b in zip(multiset.decode(fast, kinds), multiset._decode_py(fast, kinds),
                    strict=True):
        assert a.g.tolist() == b.g.tolist() and a.c.tolist() == b.c.tolist()
        assert np.asarray(a.v).view(np.uint8).tolist() == np.asarray(b.v).view(
            np.uint8).tolist()
    if any(fast):
        bad = [s + b"\x00" if s else s for s in fast]
        with pytest.raises(ValueError, match="does not decode"):
            multiset.decode(bad, kinds)
        with pytest.raises(ValueError, match=r"truncated|does not decode"):
            multiset.decode([s[:-1] for s in fast], kinds)
