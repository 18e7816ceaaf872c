"""Packed emission (``raykv.operators.packed``): the same rows as the ``bytes`` path.

``Aggregate`` emits an epoch's changes and the end of input from numpy words and rows when
its keys are 8-byte numbers and its state has no string fields. These tests compare that
output with a plain pyarrow ``group_by`` for every key type that packs, and the helpers
with the lists they stand for.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from raykv.engines import HybridLog, MemOnly
from raykv.keys import decode_keys, decode_words, encode_keys
from raykv.operators import Aggregate
from raykv.operators.packed import pack, sort_packed, unpack

AGGS = {"v": ["sum", "count", "mean", "min", "max", "first", "last"], "f": ["sum", "max"]}


def _keys(kind: str, picks: list[int]) -> pa.Array:
    """Keys of a type whose state key is 8 bytes, from small ints (some negative)."""
    ints = [p - 20 for p in picks]
    if kind == "int64":
        return pa.array(ints, pa.int64())
    if kind == "int16":
        return pa.array(ints, pa.int16())
    if kind == "uint64":
        return pa.array([p * (1 << 58) + p for p in picks], pa.uint64())
    if kind == "float":
        return pa.array([-0.0 if i == 0 else i / 3 for i in ints], pa.float64())
    if kind == "ts":
        return pa.array([i * 1000 for i in ints], pa.int64()).view(pa.timestamp("ms"))
    if kind == "date":
        return pa.array(ints, pa.int32()).view(pa.date32())
    if kind == "dict":
        return pa.array(ints, pa.int32()).dictionary_encode()
    raise AssertionError(kind)


KINDS = ("int64", "int16", "uint64", "float", "ts", "date", "dict")


@pytest.mark.parametrize("kind", KINDS)
def test_decode_words_is_decode_keys(kind: str) -> None:
    keys = _keys(kind, list(range(40)))
    encoded = encode_keys(keys, "k")
    words = np.frombuffer(b"".join(encoded), ">u8")
    assert decode_words(words, keys.type).equals(decode_keys(encoded, keys.type))
    assert decode_words(words.astype(np.uint64), keys.type).equals(keys)


def test_pack_sort_unpack_against_lists() -> None:
    rng = random.Random(5)
    keys = [rng.randrange(1 << 64).to_bytes(8, "big") for _ in range(500)]
    keys = list(dict.fromkeys(keys))
    values = [rng.randbytes(24) for _ in keys]
    p = pack(keys, values)
    assert p is not None and unpack(p) == (keys, values)
    ordered = sorted(zip(keys, values, strict=True))
    assert unpack(sort_packed(p)) == ([k for k, _ in ordered], [v for _, v in ordered])
    assert pack(keys, [b"x" * 24] * (len(keys) - 1) + [b"y"]) is None  # one size only
    assert pack([*keys[:-1], b"short"], values) is None  # 8-byte keys only
    assert pack(keys, [b""] * len(keys)) is None and pack([], []) is None


def _model(batches: list[pa.RecordBatch]) -> pa.Table:
    t = pa.Table.from_batches(batches)
    k = t.column("k")
    if pa.types.is_dictionary(k.type):
        k = k.cast(k.type.value_type)
    if pa.types.is_floating(k.type):
        k = pc.add(k, 0.0)  # -0.0 is the key 0.0 (raykv.keys)
    t = t.set_column(0, "k", k)
    return t.group_by("k", use_threads=False).aggregate(
        [("v", "sum"), ("v", "count"), ("v", "mean"), ("v", "min"), ("v", "max"),
         ("v", "first"), ("v", "last"), ("f", "sum"), ("f", "max")])


def _assert_rows(out: pa.Table, model: pa.Table, keys: list[object]) -> None:
    """``out`` holds one row per key of ``keys`` (ascending) with ``model``'s values."""
    k = out.column("k")
    if pa.types.is_dictionary(k.type):
        k = k.cast(k.type.value_type)
    assert k.to_pylist() == sorted(keys)
    want = model.filter(pc.is_in(model["k"], k.combine_chunks())).sort_by("k")
    for name in ("v_sum", "v_count", "v_min", "v_max", "v_first", "v_last", "f_max"):
        assert out.column(name).to_pylist() == want[name].to_pylist(), name
    for name in ("v_mean", "f_sum"):  # float sums in another order than pyarrow's
        assert np.allclose(out.column(name).to_numpy(), want[name].to_numpy()), name


@pytest.mark.parametrize("engine", [MemOnly, HybridLog])
@pytest.mark.parametrize("kind", KINDS)
def test_aggregate_emits_packed_rows_equal_to_a_group_by(tmp_path: Path, kind: str,
                                                         engine: type) -> None:
    """Three epochs of four folds each (a tiny byte bound): every barrier's rows (the
    epoch's compact changes) and the end of input's (the engine's chunks, 7 rows each)."""
    rng = random.Random(11)
    seen: list[pa.RecordBatch] = []
    with engine(tmp_path) as store:
        logic = Aggregate("k", AGGS, max_buffered_bytes=1, finish_chunk_rows=7).build(store)
        for epoch in range(3):
            touched: set[object] = set()
            for _ in range(4):
                picks = [rng.randrange(60) for _ in range(50)]
                keys = _keys(kind, picks)
                batch = pa.record_batch({
                    "k": keys,
                    "v": pa.array([rng.randrange(-99, 99) for _ in picks], pa.int64()),
                    "f": pa.array([rng.uniform(-1, 1) for _ in picks], pa.float64())})
                logic.process(batch)
                seen.append(batch)
                touched.update(pa.array(keys).to_pylist() if not pa.types.is_dictionary(
                    keys.type) else keys.cast(keys.type.value_type).to_pylist())
            out = logic.on_barrier(epoch)
            assert out is not None and out.schema.field("k").type == seen[0].schema.field(
                "k").type
            _assert_rows(pa.Table.from_batches([out]), _model(seen), sorted(touched))
        chunks = list(logic.finish_chunks())
        assert all(0 < c.num_rows <= 7 for c in chunks)
        final = pa.Table.from_batches(chunks)
        if pa.types.is_dictionary(final.schema.field("k").type):
            final = final.set_column(0, "k", final.column("k").cast(pa.int32()))
        final = final.sort_by("k")  # (chunks are sorted each, HybridLog's not across)
        model = _model(seen)
        _assert_rows(final, model, model["k"].to_pylist())
