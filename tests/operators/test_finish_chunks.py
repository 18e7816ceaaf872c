"""Streaming finish (issue 15 item 4): ``finish_chunks`` gives ``finish``'s rows in chunks.

Against a plain pyarrow group_by on every engine, with the state sealed and reopened on
the way; each chunk is bounded and sorted; on LSMTree the stream is ``finish``'s order.
Also the byte bound on Aggregate's buffered partials.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from raykv.engines import ENGINES
from raykv.keys import encode_keys
from raykv.operators import Aggregate, Reduce, StatefulMap
from raykv.operators.base import EMPTY_KEY
from tests.operators.helpers import (
    assert_rows_equal,
    model_aggregate,
    open_engine_or_skip,
    random_batch,
    reopen,
    rows_by_key,
)

AGGS = {"i": ["sum", "count", "min"], "f": ["mean"], "s": ["max", "first"]}


def _epochs(seed: int, kind: str) -> list[list[pa.RecordBatch]]:
    rng = random.Random(seed)
    return [[random_batch(rng, 300, key_kind=kind, space=500) for _ in range(3)]
            for _ in range(3)]


def _assert_chunks(chunks: list[pa.RecordBatch], max_rows: int) -> None:
    assert chunks, "no chunk"
    for c in chunks:
        assert 0 < c.num_rows <= max_rows
        keys = [k or EMPTY_KEY for k in encode_keys(c.column("k"), "k")]  # state keys
        assert keys == sorted(keys), "a chunk is not in key order"


def _concat(chunks: list[pa.RecordBatch]) -> pa.Table:
    return pa.Table.from_batches(chunks)


@pytest.mark.parametrize("kind", ["int", "str"])
@pytest.mark.parametrize("engine", list(ENGINES))
def test_aggregate_streaming_finish_equals_finish_and_model(tmp_path: Path, engine: str,
                                                            kind: str) -> None:
    epochs = _epochs(hash((engine, kind)) & 0xFFFF, kind)
    op = Aggregate("k", AGGS, finish_chunk_rows=37)
    store = open_engine_or_skip(engine, tmp_path / "a")
    logic = op.build(store)
    for e, batches in enumerate(epochs, 1):
        for b in batches:
            logic.process(b)
        logic.on_barrier(e)
        store.seal()
        if e == 2:
            store, logic = reopen(store, type(store), op)
    logic.process(random_batch(random.Random(5), 50, key_kind=kind, space=500))  # buffered
    epochs[-1].append(random_batch(random.Random(5), 50, key_kind=kind, space=500))
    chunks = list(logic.finish_chunks())
    _assert_chunks(chunks, 37)
    streamed = _concat(chunks)
    seen = [b for batches in epochs for b in batches]
    assert_rows_equal(rows_by_key(streamed), model_aggregate(seen, "k", AGGS))
    whole = op.build(store).finish()  # a new logic on the same state: the one-table finish
    assert whole is not None
    assert_rows_equal(rows_by_key(streamed), rows_by_key(whole))
    if engine == "lsm":  # the engine iterates in key order: exactly finish()'s rows
        assert streamed.equals(pa.Table.from_batches([whole]))
    store.close()


@pytest.mark.parametrize("engine", list(ENGINES))
def test_reduce_streaming_finish_equals_finish(tmp_path: Path, engine: str) -> None:
    rng = random.Random(3)
    batches = [random_batch(rng, 400, key_kind="int", space=700, nulls=0.0) for _ in range(4)]
    op = Reduce("k", max, "i", finish_chunk_rows=50)
    store = open_engine_or_skip(engine, tmp_path / "r")
    logic = op.build(store)
    for b in batches:
        logic.process(b)
    store.seal()
    chunks = list(logic.finish_chunks())
    _assert_chunks(chunks, 50)
    table = pa.Table.from_batches(batches)
    model = table.group_by("k").aggregate([("i", "max")])
    want = {r["k"]: {"k": r["k"], "i": r["i_max"]} for r in model.to_pylist()}
    assert_rows_equal(rows_by_key(_concat(chunks)), want)
    whole = op.build(store).finish()
    assert_rows_equal(rows_by_key(_concat(chunks)), rows_by_key(whole))
    store.close()


def test_max_rows_argument_and_empty_state(tmp_path: Path) -> None:
    store = open_engine_or_skip("lsm", tmp_path / "e")
    logic = Aggregate("k", {"i": "sum"}).build(store)
    assert list(logic.finish_chunks(5)) == []
    logic.process(random_batch(random.Random(1), 100, space=1000))
    chunks = list(logic.finish_chunks(5))
    _assert_chunks(chunks, 5)
    with pytest.raises(ValueError, match="finish_chunk_rows"):
        list(logic.finish_chunks(0))
    store.close()


def test_generic_finish_chunks_slices_finish(tmp_path: Path) -> None:
    """A layer without a streaming finish (StatefulMap: its undrained output) slices it."""

    def count(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
        n = (state or 0) + 1
        return n, {"n": n}

    store = open_engine_or_skip("memonly", tmp_path / "m")
    logic = StatefulMap("k", count).build(store)
    logic.process(random_batch(random.Random(2), 25, space=5))
    chunks = list(logic.finish_chunks(10))
    assert [c.num_rows for c in chunks] == [10, 10, 5]
    assert list(logic.finish_chunks(10)) == []  # drained
    store.close()


@pytest.mark.parametrize("bad", [-1, 1.5, "x"])
def test_bad_bounds_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_buffered_bytes"):
        Aggregate("k", {"i": "sum"}, max_buffered_bytes=bad)
    with pytest.raises(ValueError, match="finish_chunk_rows"):
        Aggregate("k", {"i": "sum"}, finish_chunk_rows=bad)
    with pytest.raises(ValueError, match="finish_chunk_rows"):
        Reduce("k", max, "i", finish_chunk_rows=bad)


def test_byte_bound_folds_early_and_keeps_the_result(tmp_path: Path) -> None:
    """Past ``max_buffered_bytes`` the partials are folded mid-epoch; same output."""
    epochs = _epochs(9, "int")
    outs = []
    for limit in (0, 4096):
        store = open_engine_or_skip("hybridlog", tmp_path / f"b{limit}")
        logic = Aggregate("k", AGGS, max_buffered_bytes=limit).build(store)
        got = []
        for e, batches in enumerate(epochs, 1):
            for b in batches:
                logic.process(b)
                if limit:
                    assert logic._buffered_bytes <= limit + b.nbytes * 4
            got.append(rows_by_key(logic.on_barrier(e)))
        outs.append(got)
        if limit:
            assert logic.buffered_rows == 0 or logic._buffered_bytes <= limit
        store.close()
    for a, b in zip(*outs, strict=True):
        assert_rows_equal(a, b)
