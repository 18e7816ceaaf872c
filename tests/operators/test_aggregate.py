from __future__ import annotations

import doctest
import pickle
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import raykv.operators.aggregate as aggregate_module
from raykv.engines import ENGINES, MemOnly
from raykv.engines.base import KVStore
from raykv.operators import Aggregate
from raykv.partitioning import encode_keys
from tests.operators.helpers import (
    KEY_TYPES,
    assert_rows_equal,
    changed_rows,
    model_aggregate,
    open_engine_or_skip,
    random_batch,
    reopen,
    rows_by_key,
)

AGGS: dict[str, list[str]] = {
    "i": ["sum", "count", "mean", "min", "max", "first", "last"],
    "f": ["sum", "mean", "min", "max", "first"],
    "s": ["min", "max", "first", "last", "count"],
    "t": ["min", "max", "first", "last"],
    "u": ["sum", "max", "min"],
    "b": ["sum", "min", "max", "count", "last"],
}


class CountingMemOnly(MemOnly):
    """MemOnly that counts batch calls (to check one multi_get/multi_set per batch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.gets = self.sets = 0
        super().__init__(*args, **kwargs)

    def multi_get(self, keys: Any) -> list[bytes]:
        self.gets += 1
        return super().multi_get(keys)

    def multi_set(self, pairs: Any) -> None:
        self.sets += 1
        super().multi_set(pairs)


def make_epochs(rng: random.Random, key_kind: str, n_epochs: int = 5) -> list[list[pa.RecordBatch]]:
    return [
        [
            random_batch(rng, rng.randrange(1, 250), key_kind=key_kind)
            for _ in range(rng.randrange(1, 4))
        ]
        for _ in range(n_epochs)
    ]


def check_against_model(
    store: KVStore,
    epochs: list[list[pa.RecordBatch]],
    aggs: dict[str, list[str]] = AGGS,
    restart_after: int | None = None,
) -> KVStore:
    """Run the epochs through Aggregate; compare every changelog and the final output."""
    op = Aggregate("k", aggs)
    logic = op.build(store)
    seen: list[pa.RecordBatch] = []
    before: dict[Any, dict[str, Any]] = {}
    for e, batches in enumerate(epochs, 1):
        for b in batches:
            logic.process(b)
        out = logic.on_barrier(e)
        seen.extend(batches)
        after = model_aggregate(seen, "k", aggs)
        assert_rows_equal(rows_by_key(out), changed_rows(before, after))
        if out is not None:
            assert out.schema == logic.output_schema()
        before = after
        if e == restart_after:
            store, logic = reopen(store, type(store), op)
    final = logic.finish()
    assert_rows_equal(rows_by_key(final), before)
    assert logic.on_barrier(len(epochs) + 1) is None
    return store


@pytest.mark.parametrize("key_kind", KEY_TYPES)
def test_matches_pyarrow_group_by_per_epoch(tmp_path: Path, key_kind: str) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    with MemOnly(tmp_path) as store:
        check_against_model(store, make_epochs(rng, key_kind))


@pytest.mark.parametrize("engine", list(ENGINES))
def test_every_engine_with_restart(tmp_path: Path, engine: str) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    store = open_engine_or_skip(engine, tmp_path / engine)
    store = check_against_model(store, make_epochs(rng, "str", 4), restart_after=2)
    store.close()


def test_state_survives_mid_epoch_seal_close_reopen(tmp_path: Path) -> None:
    rng = random.Random(7)
    batches = [random_batch(rng, 200, key_kind="int") for _ in range(6)]
    op = Aggregate("k", AGGS)
    store = MemOnly(tmp_path)
    logic = op.build(store)
    for i, b in enumerate(batches):
        logic.process(b)
        if i in (1, 3):
            store, logic = reopen(store, MemOnly, op)
    assert logic.output_schema() is not None  # restored from the stored metadata
    assert_rows_equal(rows_by_key(logic.finish()), model_aggregate(batches, "k", AGGS))
    store.close()


def test_finish_right_after_restore_knows_the_key_type(tmp_path: Path) -> None:
    op = Aggregate("k", {"v": ["sum"]})
    batch = pa.record_batch({"k": pa.array([3, 1, 2], pa.int16()), "v": [1, 2, 3]})
    with MemOnly(tmp_path) as store:
        op.build(store).process(batch)
    with MemOnly(tmp_path) as store:
        out = op.build(store).finish()
    assert out is not None
    assert out.schema.field("k").type == pa.int16()
    assert out.to_pydict() == {"k": [1, 2, 3], "v_sum": [2, 3, 1]}  # sorted by key


def test_one_multi_get_and_one_multi_set_per_batch(tmp_path: Path) -> None:
    rng = random.Random(3)
    with CountingMemOnly(tmp_path) as store:
        logic = Aggregate("k", AGGS).build(store)
        store.gets = store.sets = 0
        for _ in range(4):
            logic.process(random_batch(rng, 500, key_kind="str"))
        assert (store.gets, store.sets) == (4, 4)
        logic.on_barrier(1)
        assert (store.gets, store.sets) == (5, 4)


def test_changelog_lists_only_keys_changed_in_the_epoch(tmp_path: Path) -> None:
    op = Aggregate("k", {"v": ["sum", "count"]})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(pa.record_batch({"k": [5, 1, 3], "v": [1, 1, 1]}))
        assert logic.on_barrier(1).to_pydict() == {
            "k": [1, 3, 5], "v_sum": [1, 1, 1], "v_count": [1, 1, 1]
        }
        assert logic.on_barrier(2) is None
        logic.process(pa.record_batch({"k": [3, 3], "v": [2, None]}))
        logic.process(pa.record_batch({"k": [1], "v": pa.array([None], pa.int64())}))  # no change
        assert logic.on_barrier(3).to_pydict() == {"k": [3], "v_sum": [3], "v_count": [2]}


def test_int_sum_overflow_raises_and_changes_nothing(tmp_path: Path) -> None:
    big = 2**62
    op = Aggregate("k", {"v": ["sum"]})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(pa.record_batch({"k": [1, 2], "v": [big, 5]}))
        snapshot = dict(store.items())
        # across batches: big + big overflows int64
        with pytest.raises(OverflowError, match=r"column 'v'.*key 1"):
            logic.process(pa.record_batch({"k": [2, 1], "v": [1, big]}))
        assert dict(store.items()) == snapshot
        # within one batch (Arrow's own sum would wrap silently)
        with pytest.raises(OverflowError, match="column 'v'"):
            logic.process(pa.record_batch({"k": [3, 3, 3], "v": [big, big, big]}))
        assert dict(store.items()) == snapshot
        # large values that do fit use the exact path
        logic.process(pa.record_batch({"k": [4, 4], "v": [big, big - 1]}))
        rows = {r["k"]: r["v_sum"] for r in logic.finish().to_pylist()}
        assert rows == {1: big, 2: 5, 4: 2 * big - 1}


def test_uint64_sums_and_extremes(tmp_path: Path) -> None:
    u64 = pa.uint64()
    with MemOnly(tmp_path / "sum") as store:
        logic = Aggregate("k", {"u": ["sum"]}).build(store)
        logic.process(pa.record_batch({"k": [1, 1], "u": pa.array([2**63 - 10, 3], u64)}))
        with pytest.raises(OverflowError, match="column 'u'"):
            logic.process(pa.record_batch({"k": [1], "u": pa.array([10], u64)}))
        with pytest.raises(OverflowError, match="column 'u'"):  # a uint64 beyond int64
            logic.process(pa.record_batch({"k": [2], "u": pa.array([2**64 - 1], u64)}))
        assert logic.finish().to_pylist() == [{"k": 1, "u_sum": 2**63 - 7}]
    with MemOnly(tmp_path / "minmax") as store:
        logic = Aggregate("k", {"u": ["min", "max", "first", "last"]}).build(store)
        logic.process(pa.record_batch({"k": [1, 1], "u": pa.array([2**64 - 1, 3], u64)}))
        logic.process(pa.record_batch({"k": [1], "u": pa.array([2**63], u64)}))
        assert logic.finish().to_pylist() == [
            {"k": 1, "u_min": 3, "u_max": 2**64 - 1, "u_first": 2**64 - 1, "u_last": 2**63}
        ]


def test_output_schema_and_types(tmp_path: Path) -> None:
    op = Aggregate("k", AGGS)
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        assert logic.output_schema() is None
        batch = random_batch(random.Random(1), 20, key_kind="dict")
        logic.process(batch)
        schema = logic.output_schema()
    assert schema.field("k").type == batch.schema.field("k").type
    assert schema.field("i_sum").type == pa.int64()
    assert schema.field("i_mean").type == pa.float64()
    assert schema.field("i_min").type == pa.int32()
    assert schema.field("t_first").type == pa.timestamp("us")
    assert schema.field("s_max").type == pa.string()
    assert schema.field("u_max").type == pa.uint64()
    assert schema.field("b_sum").type == pa.int64()
    assert schema.field("b_min").type == pa.bool_()
    assert schema.names[:3] == ["k", "i_sum", "i_count"]


def test_all_null_values_and_empty_batches(tmp_path: Path) -> None:
    op = Aggregate("k", {"v": ["sum", "count", "mean", "min", "first"], "s": ["max"]})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        schema = pa.schema({"k": pa.string(), "v": pa.float64(), "s": pa.string()})
        logic.process(pa.RecordBatch.from_pylist([], schema))
        assert logic.on_barrier(1) is None
        logic.process(pa.RecordBatch.from_pylist([{"k": "x", "v": None, "s": None}], schema))
        assert logic.on_barrier(2).to_pylist() == [
            {"k": "x", "v_sum": 0.0, "v_count": 0, "v_mean": None, "v_min": None,
             "v_first": None, "s_max": None}
        ]


def test_count_rows_via_the_key_and_floats_with_nan(tmp_path: Path) -> None:
    nan = float("nan")
    op = Aggregate("k", {"k": ["count"], "f": ["min", "max", "sum"]})
    batches = [
        pa.record_batch({"k": ["a", "a", "b"], "f": [nan, 1.0, nan]}),
        pa.record_batch({"k": ["a", "b", "c"], "f": [-2.0, nan, 3.0]}),
    ]
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        for b in batches:
            logic.process(b)
        got = rows_by_key(logic.finish())
    want = model_aggregate(batches, "k", {"k": ["count"], "f": ["min", "max", "sum"]})
    assert_rows_equal(got, want)


def test_config_validation_and_pickling() -> None:
    op = Aggregate(
        "k", {"v": "sum", "w": ["min", "max"]}, name="totals", engine="lsm", num_shards=3
    )
    assert op.aggs == {"v": ("sum",), "w": ("min", "max")}
    assert pickle.loads(pickle.dumps(op)) == op
    with pytest.raises(ValueError, match="non-empty"):
        Aggregate("k", {})
    with pytest.raises(ValueError, match=r"unknown ops \['median'\]"):
        Aggregate("k", {"v": ["sum", "median"]})
    with pytest.raises(ValueError, match="repeats"):
        Aggregate("k", {"v": ["sum", "sum"]})
    with pytest.raises(TypeError, match="aggs"):
        Aggregate("k", [("v", "sum")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        Aggregate(3, {"v": "sum"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_shards"):
        Aggregate("k", {"v": "sum"}, num_shards=0)
    with pytest.raises(TypeError, match="engine_params"):
        Aggregate("k", {"v": "sum"}, engine_params=[1])  # type: ignore[arg-type]


def test_sorted_numeric_output_and_routing_key(tmp_path: Path) -> None:
    op = Aggregate("k", {"v": "sum"})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(pa.record_batch({"k": [10, -3, 7, -100, 0], "v": [1, 1, 1, 1, 1]}))
        assert logic.on_barrier(1).column("k").to_pylist() == [-100, -3, 0, 7, 10]
        keys = [k for k, _ in store.items() if op.routing_key(k) is not None]
    assert sorted(keys) == sorted(encode_keys(pa.array([10, -3, 7, -100, 0]), "k"))
    assert all(op.routing_key(k) == k for k in keys)
    assert op.routing_key(b"\xff\xffM") is None
    assert op.routing_key(b"\xff\xffE") == b""


def test_doctests() -> None:
    result = doctest.testmod(aggregate_module)
    assert result.attempted > 0 and result.failed == 0
