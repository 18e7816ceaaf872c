from __future__ import annotations

import datetime as dt
import doctest
import itertools
import math
import random
from collections import Counter
from types import SimpleNamespace
from typing import Any

import mmh3
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raykv.partitioning as partitioning
from raykv.keys import decode_keys, encode_key_words, encode_keys, is_fixed_width, value_type
from raykv.partitioning import DEFAULT_NUM_KEY_GROUPS, Partitioning, key_groups_of, split_batch


def test_doctests() -> None:
    result = doctest.testmod(partitioning)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------- round trips

def _ints(bits: int, signed: bool = True) -> st.SearchStrategy[int]:
    if signed:
        return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return st.integers(0, (1 << bits) - 1)


TEXT = st.text(max_size=20)
BYTES = st.binary(max_size=20)

# (arrow type, strategy of Python values that Arrow accepts for it)
TYPES: list[tuple[pa.DataType, st.SearchStrategy[Any]]] = [
    (pa.int8(), _ints(8)),
    (pa.int16(), _ints(16)),
    (pa.int32(), _ints(32)),
    (pa.int64(), _ints(64)),
    (pa.uint8(), _ints(8, False)),
    (pa.uint16(), _ints(16, False)),
    (pa.uint32(), _ints(32, False)),
    (pa.uint64(), _ints(64, False)),
    (pa.float16(), st.sampled_from([0.0, -0.0, 1.5, -2.25, 65504.0, math.inf, -math.inf])),
    (pa.float32(), st.floats(width=32, allow_nan=False)),
    (pa.float64(), st.floats(allow_nan=False)),
    (pa.bool_(), st.booleans()),
    (pa.date32(), st.dates()),
    (pa.date64(), st.dates()),
    (pa.time32("s"), st.times().map(lambda t: t.replace(microsecond=0))),
    (pa.time32("ms"), st.times().map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))),  # noqa: E501
    (pa.time64("us"), st.times()),
    (pa.time64("ns"), st.times()),
    (pa.timestamp("s"), _ints(40)),
    (pa.timestamp("ms", tz="UTC"), _ints(50)),
    (pa.timestamp("us"), _ints(60)),
    (pa.timestamp("ns", tz="Europe/Amsterdam"), _ints(63)),
    (pa.duration("s"), _ints(40)),
    (pa.duration("ns"), _ints(64)),
    (pa.string(), TEXT),
    (pa.large_string(), TEXT),
    (pa.string_view(), TEXT),
    (pa.binary(), BYTES),
    (pa.large_binary(), BYTES),
    (pa.binary_view(), BYTES),
    (pa.binary(3), st.binary(min_size=3, max_size=3)),
    (pa.dictionary(pa.int8(), pa.string()), st.sampled_from(["a", "bb", "", "ü"])),
    (pa.dictionary(pa.int32(), pa.int64()), _ints(64)),
]


def _array(values: list[Any], t: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(t) or pa.types.is_duration(t):
        return pa.array(values, pa.int64()).view(t)
    if pa.types.is_dictionary(t):
        return pa.array(values, t.value_type).dictionary_encode().cast(t)
    return pa.array(values, t)


def _values(arr: pa.Array) -> list[Any]:
    """Python values of ``arr`` (timestamps/durations as ints: no datetime range limits)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_timestamp(arr.type) or pa.types.is_duration(arr.type):
        arr = arr.view(pa.int64())
    return arr.to_pylist()


@pytest.mark.parametrize(("t", "strategy"), TYPES, ids=[str(t) for t, _ in TYPES])
def test_encode_decode_round_trip(t: pa.DataType, strategy: st.SearchStrategy[Any]) -> None:
    @settings(max_examples=25, deadline=None)
    @given(st.lists(strategy, max_size=30))
    def check(values: list[Any]) -> None:
        arr = _array(values, t)
        keys = encode_keys(arr, "k")
        assert len(keys) == len(arr) and all(type(k) is bytes for k in keys)
        back = decode_keys(keys, t)
        assert back.type == t
        py = _values(arr)
        if pa.types.is_floating(t):  # -0.0 is canonicalized to 0.0
            assert _values(back) == [v + 0.0 for v in py]
            signs = [math.copysign(1, v) for v in _values(back)]
            assert signs == [1.0 if v == 0 else math.copysign(1, v) for v in py]
        else:
            assert _values(back) == py
        # equal values <-> equal keys
        for i in range(min(len(py), 8)):
            for j in range(min(len(py), 8)):
                assert (keys[i] == keys[j]) == (py[i] == py[j])

    check()


def test_canonical_float_keys() -> None:
    arr = pa.array([0.0, -0.0, math.nan, float("-nan"), 1.0])
    keys = encode_keys(arr, "k")
    assert keys[0] == keys[1] and keys[2] == keys[3] and keys[0] != keys[4]
    back = decode_keys(keys, pa.float64()).to_pylist()
    assert back[0] == 0.0 and math.copysign(1, back[1]) == 1.0 and math.isnan(back[2])
    # the same value in another width encodes alike
    assert encode_keys(pa.array([1.5], pa.float32()), "k") == encode_keys(pa.array([1.5]), "k")
    assert encode_keys(pa.array([-7], pa.int8()), "k") == encode_keys(pa.array([-7]), "k")


@pytest.mark.parametrize(
    ("t", "strategy"),
    [
        (pa.int64(), _ints(64)),
        (pa.int16(), _ints(16)),
        (pa.uint64(), _ints(64, False)),
        (pa.float64(), st.floats(allow_nan=False)),
        (pa.float32(), st.floats(width=32, allow_nan=False)),
        (pa.timestamp("ns"), _ints(64)),
        (pa.string(), TEXT),
    ],
    ids=str,
)
def test_key_order_matches_value_order(t: pa.DataType, strategy: st.SearchStrategy[Any]) -> None:
    @settings(max_examples=60, deadline=None)
    @given(st.lists(strategy, min_size=1, max_size=40))
    def check(values: list[Any]) -> None:
        arr = _array(values, t)
        keys = encode_keys(arr, "k")
        py = _values(arr)
        by_key = [py[i] for i in sorted(range(len(py)), key=keys.__getitem__)]
        assert by_key == sorted(py)

    check()


def test_nan_sorts_after_infinity() -> None:
    keys = encode_keys(pa.array([math.nan, math.inf, -math.inf, -0.0, 5e-324]), "k")
    assert sorted(range(5), key=keys.__getitem__) == [2, 3, 4, 1, 0]


def test_encode_errors_name_the_column() -> None:
    with pytest.raises(ValueError, match=r"'user'.*null at row 2"):
        encode_keys(pa.array([1, 2, None]), "user")
    with pytest.raises(TypeError, match=r"'tags'.*list<item: int64>"):
        encode_keys(pa.array([[1], [2]]), "tags")
    with pytest.raises(TypeError, match="decimal"):
        encode_keys(pa.array([1], pa.decimal128(5, 0)), "d")
    with pytest.raises(ValueError, match="expected 8 bytes"):
        decode_keys([b"\x00" * 7], pa.int64())
    with pytest.raises(ValueError, match="cannot decode"):
        decode_keys([b"\xff\xfe"], pa.string())
    with pytest.raises(ValueError, match="cannot decode"):  # 300 does not fit int8
        decode_keys(encode_keys(pa.array([300]), "k"), pa.int8())


def test_chunked_arrays_are_accepted() -> None:
    chunked = pa.chunked_array([[1, 2], [3]])
    assert encode_keys(chunked, "k") == encode_keys(pa.array([1, 2, 3]), "k")


# ---------------------------------------------------------------------------- key groups


def test_key_groups_are_mmh3_and_stable() -> None:
    keys = [b"a", b"user-42", encode_keys(pa.array([1]), "k")[0], b""]
    expected = [mmh3.hash(k, 0, signed=False) % 4096 for k in keys]
    assert key_groups_of(keys, 4096).tolist() == expected
    # fixed values: the hash is part of the checkpoint format and must never change
    assert expected == [(0x3C2569B2) % 4096, mmh3.hash(b"user-42", 0, False) % 4096, expected[2], 0]
    assert mmh3.hash(b"a", 0, signed=False) == 0x3C2569B2
    assert key_groups_of(keys, 4096).dtype == np.int64
    assert key_groups_of([], 16).tolist() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=8, max_size=8), max_size=40), st.integers(1, 1 << 31))
def test_numpy_hash_of_8_byte_keys_is_mmh3(keys: list[bytes], groups: int) -> None:
    """8-byte keys (given as bytes, or as the words ``encode_key_words`` makes) are hashed
    by numpy; the groups must be ``mmh3``'s, bit for bit (the checkpoint format)."""
    expected = [mmh3.hash(k, 0, signed=False) % groups for k in keys]
    assert key_groups_of(keys, groups).tolist() == expected
    words = np.frombuffer(b"".join(keys), ">u8")
    assert key_groups_of(words, groups).tolist() == expected
    mixed = [*keys, b"short"]  # one other length: every key through mmh3
    assert key_groups_of(mixed, groups).tolist() == [
        *expected, mmh3.hash(b"short", 0, signed=False) % groups]


@pytest.mark.parametrize(("t", "strategy"), TYPES, ids=[str(t) for t, _ in TYPES])
def test_encode_key_words_are_the_encoded_keys(t: pa.DataType,
                                               strategy: st.SearchStrategy[Any]) -> None:
    @settings(max_examples=10, deadline=None)
    @given(st.lists(strategy, max_size=30))
    def check(values: list[Any]) -> None:
        arr = _array(values, t)
        words = encode_key_words(arr, "k")
        keys = encode_keys(arr, "k")
        eight_bytes = is_fixed_width(t) and not pa.types.is_boolean(value_type(t))
        assert (words is not None) == eight_bytes  # None: strings, binaries, bools
        if words is not None:
            assert words.dtype == np.dtype(">u8") and words.tobytes() == b"".join(keys)

    check()


def test_key_groups_are_uniform() -> None:
    keys = encode_keys(pa.array(np.arange(200_000)), "k")
    groups = key_groups_of(keys, 64)
    counts = np.bincount(groups, minlength=64)
    mean = len(keys) / 64
    assert counts.min() > 0.9 * mean and counts.max() < 1.1 * mean
    strs = encode_keys(pa.array([f"user{i}" for i in range(50_000)]), "k")
    counts = np.bincount(key_groups_of(strs, 16), minlength=16)
    assert counts.min() > 0.9 * 50_000 / 16 and counts.max() < 1.1 * 50_000 / 16


def test_key_groups_bad_count() -> None:
    with pytest.raises(ValueError, match="num_key_groups"):
        key_groups_of([b"a"], 0)


# ---------------------------------------------------------------------------- Partitioning


def test_partitioning_ranges_cover_all_groups_contiguously() -> None:
    for shards, groups in [(1, 1), (3, 8), (7, 4096), (4096, 4096), (5, 17)]:
        p = Partitioning(num_shards=shards, num_key_groups=groups)
        ranges = [p.group_range(s) for s in range(shards)]
        assert ranges[0][0] == 0 and ranges[-1][1] == groups
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert all(lo < hi for lo, hi in ranges)
        owner = p.shard_of_groups(np.arange(groups))
        for s, (lo, hi) in enumerate(ranges):
            assert (owner[lo:hi] == s).all()


def test_partitioning_defaults_validation_and_json() -> None:
    p = Partitioning(num_shards=4)
    assert p.num_key_groups == DEFAULT_NUM_KEY_GROUPS == 4096
    assert Partitioning.from_dict(p.to_dict()) == p
    import json

    assert Partitioning.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ValueError, match="num_shards=0"):
        Partitioning(num_shards=0)
    with pytest.raises(ValueError, match="num_shards=9"):
        Partitioning(num_shards=9, num_key_groups=8)
    with pytest.raises(TypeError, match="num_shards"):
        Partitioning(num_shards=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hash"):
        Partitioning.from_dict({"num_shards": 2, "num_key_groups": 8, "hash": "crc32"})
    with pytest.raises(ValueError, match="unknown"):
        Partitioning.from_dict({"num_shards": 2, "shards": 3})
    with pytest.raises(ValueError, match="out of range"):
        p.group_range(4)
    with pytest.raises(ValueError, match="key groups"):
        p.shard_of_groups([4096])


# ---------------------------------------------------------------------------- split_batch


def _batch(n: int, distinct: int, seed: int = 0) -> pa.RecordBatch:
    rng = random.Random(seed)
    keys = [f"k{rng.randrange(distinct)}" for _ in range(n)]
    xs = [rng.random() for _ in range(n)]
    return pa.record_batch({"user": keys, "row": list(range(n)), "x": xs})


def test_split_batch_reassembles_and_routes_by_key() -> None:
    batch = _batch(5000, 300)
    p = Partitioning(num_shards=5, num_key_groups=64)
    parts = split_batch(batch, "user", p)
    assert sum(b.num_rows for b in parts.values()) == batch.num_rows
    for shard, sub in parts.items():
        assert sub.schema == batch.schema and sub.num_rows > 0
        rows = sub.column("row").to_pylist()
        assert rows == sorted(rows)  # input order kept within a shard
        want = p.shard_of_keys(encode_keys(sub.column("user"), "user"))
        assert (want == shard).all()
    merged = pa.Table.from_batches(list(parts.values())).sort_by("row")
    assert merged.to_pylist() == pa.Table.from_batches([batch]).to_pylist()


def test_split_batch_hashes_each_distinct_key_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: Counter[bytes] = Counter()

    def counting_hash(key: bytes, seed: int = 0, signed: bool = True) -> int:
        calls[key] += 1
        return mmh3.hash(key, seed, signed)

    monkeypatch.setattr(partitioning, "mmh3", SimpleNamespace(hash=counting_hash))
    batch = _batch(20_000, 250)
    split_batch(batch, "user", Partitioning(num_shards=4))
    distinct = set(batch.column("user").to_pylist())
    assert len(calls) == len(distinct) == 250
    assert set(calls.values()) == {1}


@pytest.mark.parametrize(
    "column",
    [
        pa.array([1, 2, 3, 1, 2, 3] * 50),
        pa.array([True, False] * 50),
        pa.array([0.0, -0.0, math.nan, 2.5] * 20),
        pa.array(["a", "b", "c"] * 30).dictionary_encode(),
        pa.array(list(range(100)), pa.timestamp("ms")),
    ],
    ids=["int", "bool", "float", "dictionary", "timestamp"],
)
def test_split_batch_key_types(column: pa.Array) -> None:
    batch = pa.record_batch({"k": column, "i": list(range(len(column)))})
    p = Partitioning(num_shards=3, num_key_groups=16)
    parts = split_batch(batch, "k", p)
    seen: dict[bytes, int] = {}
    for shard, sub in parts.items():
        for key in encode_keys(sub.column("k"), "k"):
            assert seen.setdefault(key, shard) == shard  # a key lives on one shard
            assert int(p.shard_of_keys([key])[0]) == shard
    assert sum(b.num_rows for b in parts.values()) == len(column)


def test_split_batch_trivial_cases() -> None:
    batch = _batch(10, 3)
    assert split_batch(batch, "user", Partitioning(num_shards=1)) == {0: batch}
    assert split_batch(batch.slice(0, 0), "user", Partitioning(num_shards=3)) == {}
    one_key = pa.record_batch({"user": ["same"] * 5})
    parts = split_batch(one_key, "user", Partitioning(num_shards=8))
    assert list(parts.values()) == [one_key]


def test_split_batch_bad_input() -> None:
    p = Partitioning(num_shards=2)
    with pytest.raises(ValueError, match=r"'account' is missing.*\['user', 'row', 'x'\]"):
        split_batch(_batch(5, 2), "account", p)
    with pytest.raises(ValueError, match=r"'user'.*null at row 1"):
        split_batch(pa.record_batch({"user": ["a", None, "b"]}), "user", p)
    with pytest.raises(TypeError, match="'user'"):
        split_batch(pa.record_batch({"user": [[1], [2]]}), "user", p)


def test_date_and_time_key_values() -> None:
    arr = pa.array([dt.date(2024, 1, 1), dt.date(1969, 12, 31)])
    keys = encode_keys(arr, "d")
    assert keys[1] < keys[0]
    assert decode_keys(keys, pa.date32()).to_pylist() == arr.to_pylist()
