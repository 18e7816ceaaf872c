"""The join row encoding and row blobs against plain Python lists (hypothesis)."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.operators.joins.matching import latest_at_or_before, pairs_equal, pairs_in_range
from raykv.operators.joins.rows import BlobSet, RowCodec, blob_times, build_blobs

TYPES: dict[str, tuple[pa.DataType, Any]] = {
    "i8": (pa.int8(), st.integers(-128, 127)),
    "i64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "u32": (pa.uint32(), st.integers(0, 2**32 - 1)),
    "f32": (pa.float32(), st.floats(width=32, allow_nan=False)),
    "f64": (pa.float64(), st.floats(allow_nan=False)),
    "bool": (pa.bool_(), st.booleans()),
    "str": (pa.string(), st.text(max_size=6)),
    "lstr": (pa.large_string(), st.text(max_size=3)),
    "bin": (pa.binary(), st.binary(max_size=5)),
    "fsb": (pa.binary(3), st.binary(min_size=3, max_size=3)),
    "ts": (pa.timestamp("us", tz="UTC"),
           st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1),
                        timezones=st.just(dt.UTC))),
    "date": (pa.date32(), st.dates()),
    "dur": (pa.duration("ms"), st.timedeltas(min_value=dt.timedelta(days=-9),
                                             max_value=dt.timedelta(days=9))),
    "dec": (pa.decimal128(9, 3), st.decimals(min_value=-999999, max_value=999999, places=3,
                                             allow_nan=False)),
}


@st.composite
def batches(draw: Any) -> pa.RecordBatch:
    names = draw(st.lists(st.sampled_from(sorted(TYPES)), min_size=1, max_size=6, unique=True))
    n = draw(st.integers(0, 12))
    cols = {}
    for name in names:
        t, values = TYPES[name]
        cols[name] = pa.array(draw(st.lists(st.none() | values, min_size=n, max_size=n)), t)
    if draw(st.booleans()) and n:
        cols["dict"] = pa.array(draw(st.lists(st.none() | st.sampled_from(["a", "bb", ""]),
                                              min_size=n, max_size=n)),
                                pa.string()).dictionary_encode()
    if draw(st.booleans()):
        cols["none"] = pa.nulls(n)
    return pa.RecordBatch.from_pydict(cols)


@settings(max_examples=150, deadline=None)
@given(batches(), st.integers(0, 4), st.data())
def test_rows_roundtrip_through_blobs(batch: pa.RecordBatch, offset: int, data: Any) -> None:
    part = batch.slice(min(offset, batch.num_rows))  # sliced arrays have offsets
    codec = RowCodec(part.schema, "test")
    raw, lens = codec.encode(part)
    n = part.num_rows
    assert len(lens) == n and int(lens.sum()) == len(raw)
    groups = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)),
                      dtype=np.int64)
    times = np.arange(n, dtype=np.int64) * 7 - 3
    # append the rows to three empty blobs, then again to the result
    empty = BlobSet([b""] * 3, [0, 1, 2])
    blobs = empty.append(groups, times, np.zeros(n, np.uint8), raw, lens)
    model: list[list[int]] = [[i for i in range(n) if groups[i] == g] for g in range(3)]
    assert [len(blob_times(b)) for b in blobs] == [len(m) for m in model]
    twice = BlobSet(blobs, [0, 1, 2]).append(groups, times + 1000, np.ones(n, np.uint8), raw,
                                             lens)
    model = [m + m for m in model]
    got = BlobSet(twice, [10, 11, 12])
    assert got.group.tolist() == [10 + g for g, m in enumerate(model) for _ in m]
    assert got.flags.tolist() == [f for m in model for f in [0] * (len(m) // 2) + [1] * (
        len(m) // 2)]
    want_rows = [i for m in model for i in m]
    decoded = got.decode(codec, np.arange(len(got)))
    assert decoded.schema == part.schema
    assert decoded.to_pylist() == part.take(pa.array(want_rows, pa.int64())).to_pylist()
    # keep every other row, with new flags
    keep = np.arange(len(got)) % 2 == 0
    flags = (np.arange(len(got)) % 3 == 0).astype(np.uint8)
    rewritten = got.rewrite(keep, flags)
    after = BlobSet([r if r is not None else v for r, v in zip(rewritten, twice, strict=True)],
                    [0, 1, 2])
    assert after.times.tolist() == got.times[keep].tolist()
    assert after.flags.tolist() == flags[keep].tolist()
    assert after.decode(codec, np.arange(len(after))).to_pylist() == \
        part.take(pa.array([r for r, k in zip(want_rows, keep, strict=True) if k],
                           pa.int64())).to_pylist()


def test_unchanged_blobs_are_not_rewritten() -> None:
    batch = pa.record_batch({"v": [1, 2, 3]})
    codec = RowCodec(batch.schema, "test")
    raw, lens = codec.encode(batch)
    blobs = build_blobs(np.array([2, 0, 1]), np.array([5, 6, 7]), np.zeros(3, np.uint8), lens,
                        raw, np.cumsum(lens.astype(np.int64)) - lens)
    assert blobs[1] == b""
    bs = BlobSet(blobs, [0, 1, 2])
    assert bs.rewrite(np.ones(3, bool)) == [None, None, None]
    out = bs.rewrite(np.array([True, False, True]))
    assert out[1] is None and out[2] is None and out[0] is not None
    assert BlobSet([out[0]], [0]).decode(codec, np.arange(1)).to_pylist() == [{"v": 1}]


def test_unsupported_column_type() -> None:
    with pytest.raises(TypeError, match="column 'l' has type list<item: int64>"):
        RowCodec(pa.schema([("l", pa.list_(pa.int64()))]), "J")
    assert RowCodec(pa.schema([("d", pa.decimal128(5, 2))]), "J").encode(
        pa.record_batch({"d": pa.array([decimal.Decimal("1.5")], pa.decimal128(5, 2))}))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-5, 5), st.integers(0, 4))),
       st.lists(st.tuples(st.integers(0, 3), st.integers(-8, 8))))
def test_matching_against_loops(left: list[tuple[int, int, int]],
                                right: list[tuple[int, int]]) -> None:
    lg = np.array([g for g, _, _ in left], dtype=np.int64)
    lo = np.array([a for _, a, _ in left], dtype=np.int64)
    hi = lo + np.array([w for _, _, w in left], dtype=np.int64)
    rg = np.array([g for g, _ in right], dtype=np.int64)
    rv = np.array([v for _, v in right], dtype=np.int64)
    i, j = pairs_in_range(lg, lo, hi, rg, rv)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [
        (a, b) for a in range(len(left)) for b in range(len(right))
        if lg[a] == rg[b] and lo[a] <= rv[b] <= hi[a]]
    i, j = pairs_equal(lg, rg)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [
        (a, b) for a in range(len(left)) for b in range(len(right)) if lg[a] == rg[b]]
    got = latest_at_or_before(lg, lo, rg, rv)
    for a in range(len(left)):
        cands = [(rv[b], b) for b in range(len(right)) if rg[b] == lg[a] and rv[b] <= lo[a]]
        assert got[a] == (max(cands)[1] if cands else -1)
