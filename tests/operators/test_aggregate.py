from __future__ import annotations

import doctest
import pickle
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import raykv.operators.aggfold as aggfold_module
import raykv.operators.aggregate as aggregate_module
from raykv.engines import ENGINES, MemOnly
from raykv.engines.base import KVStore
from raykv.keys import encode_keys
from raykv.operators import Aggregate
from raykv.operators.aggregate import DEFAULT_MAX_BUFFERED_ROWS
from raykv.operators.base import EMPTY_KEY, META_KEYS
from raykv.operators.keyed_state import KeyedStateLogic
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


def state_keys(store: KVStore) -> list[bytes]:
    """User-state keys of ``store`` (metadata keys left out)."""
    return [k for k, _ in store.items() if k not in META_KEYS]

AGGS: dict[str, list[str]] = {
    "i": ["sum", "count", "mean", "min", "max", "first", "last"],
    "f": ["sum", "mean", "min", "max", "first"],
    "s": ["min", "max", "first", "last", "count"],
    "t": ["min", "max", "first", "last"],
    "u": ["sum", "max", "min"],
    "b": ["sum", "min", "max", "count", "last"],
}


class CountingMemOnly(MemOnly):
    """MemOnly that counts batch calls (to check the engine calls per fold)."""

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


def test_reopen_mid_epoch_loses_the_buffer_and_replay_gives_the_same_result(
    tmp_path: Path,
) -> None:
    """A restart between barriers drops the buffered partials; replaying the epoch's input
    (what the runtime does from the last checkpoint) gives the uninterrupted result."""
    rng = random.Random(7)
    epochs = [[random_batch(rng, 200, key_kind="int") for _ in range(3)] for _ in range(3)]
    op = Aggregate("k", AGGS)
    store = MemOnly(tmp_path)
    logic = op.build(store)
    for e, batches in enumerate(epochs, 1):
        committed = dict(store.items())
        for b in batches[:2]:
            logic.process(b)
        assert dict(store.items()) == committed or e == 1  # epoch 1 stores the schema
        store, logic = reopen(store, MemOnly, op)  # the buffered partials are gone
        assert logic.output_schema() is not None  # the schema was stored by the 1st batch
        for b in batches:  # replay the whole epoch
            logic.process(b)
        logic.on_barrier(e)
    seen = [b for batches in epochs for b in batches]
    assert_rows_equal(rows_by_key(logic.finish()), model_aggregate(seen, "k", AGGS))
    store.close()


def test_finish_right_after_restore_knows_the_key_type(tmp_path: Path) -> None:
    op = Aggregate("k", {"v": ["sum"]})
    batch = pa.record_batch({"k": pa.array([3, 1, 2], pa.int16()), "v": [1, 2, 3]})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(batch)
        logic.on_barrier(1)  # folds the buffered partials into the engine
    with MemOnly(tmp_path) as store:
        out = op.build(store).finish()
    assert out is not None
    assert out.schema.field("k").type == pa.int16()
    assert out.to_pydict() == {"k": [1, 2, 3], "v_sum": [2, 3, 1]}  # sorted by key


def test_engine_calls_at_most_one_read_and_write_per_fold(tmp_path: Path) -> None:
    rng = random.Random(3)
    batches = [random_batch(rng, 500, key_kind="str") for _ in range(4)]
    with CountingMemOnly(tmp_path / "buffered") as store:
        logic = Aggregate("k", AGGS).build(store)
        logic.process(batches[0])
        assert (store.gets, store.sets) == (0, 1)  # the first batch stores the schema
        for b in batches[1:]:
            logic.process(b)
        assert (store.gets, store.sets) == (0, 1)  # buffered: no engine call
        logic.on_barrier(1)
        assert (store.gets, store.sets) == (1, 2)  # fold: 1 get + 1 set; changelog from it
        assert logic.on_barrier(2) is None and (store.gets, store.sets) == (1, 2)
    with CountingMemOnly(tmp_path / "unbuffered") as store:
        logic = Aggregate("k", AGGS, max_buffered_rows=0).build(store)
        store.gets = store.sets = 0
        for b in batches:
            logic.process(b)
        assert (store.gets, store.sets) == (4, 4)  # one fold per batch
        logic.on_barrier(1)
        assert (store.gets, store.sets) == (4, 4)


@pytest.mark.parametrize("key_kind", KEY_TYPES)
def test_buffered_state_is_identical_to_unbuffered_at_every_barrier(
    tmp_path: Path, key_kind: str
) -> None:
    """Random batches and barriers: the engine bytes and the changelogs of a buffered run
    (default bound, and a small bound that folds mid-epoch) equal those of a run that
    folds every batch, and both match a plain pyarrow group_by."""
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    aggs = {**AGGS, "f": ["sum", "mean", "min", "max", "first", "last", "count"]}
    bounds = (0, 60, DEFAULT_MAX_BUFFERED_ROWS)
    stores = [MemOnly(tmp_path / str(b)) for b in bounds]
    logics = [Aggregate("k", aggs, max_buffered_rows=b).build(s) for b, s in zip(
        bounds, stores, strict=True)]
    seen: list[pa.RecordBatch] = []
    for epoch in range(1, 7):
        for _ in range(rng.randrange(0, 6)):
            b = random_batch(rng, rng.randrange(1, 120), key_kind=key_kind, space=30)
            if rng.random() < 0.3:  # NaN and -0.0 values: float sums must add in order
                f = b.column("f").to_pylist()
                f[rng.randrange(len(f))] = rng.choice([float("nan"), -0.0, 1e300, -1e-300])
                b = b.set_column(2, "f", pa.array(f, pa.float64()))
            seen.append(b)
            for logic in logics:
                logic.process(b)
        outs = [logic.on_barrier(epoch) for logic in logics]
        reference = dict(stores[0].items())
        for s, out in zip(stores[1:], outs[1:], strict=True):
            assert dict(s.items()) == reference  # bit-identical state
            if out is None or outs[0] is None:
                assert out is None and outs[0] is None
                continue
            assert out.schema == outs[0].schema and out.column("k").equals(outs[0].column("k"))
            assert_rows_equal(rows_by_key(out), rows_by_key(outs[0]))  # NaN-aware
        if outs[0] is not None:  # sorted by state key, as KeyedStateLogic emits
            enc = [k or EMPTY_KEY for k in encode_keys(outs[0].column("k"), "k")]
            assert enc == sorted(enc)
        for logic in logics:  # the fast export equals the core's (multi-pass) one
            fast, core = logic.export_state(), KeyedStateLogic.export_state(logic)
            if fast is None or core is None:
                assert fast is None and core is None
                continue
            assert fast.column("k").equals(core.column("k"))
            assert_rows_equal(rows_by_key(fast), rows_by_key(core))
    want = model_aggregate(seen, "k", aggs)
    for logic in logics:
        assert_rows_equal(rows_by_key(logic.finish()), want)
    for s in stores:
        s.close()


def test_the_bound_triggers_a_fold(tmp_path: Path) -> None:
    op = Aggregate("k", {"v": ["sum", "count"]}, max_buffered_rows=5)
    with CountingMemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(pa.record_batch({"k": [1, 2, 3], "v": [1, 1, 1]}))  # 3 rows buffered
        assert logic.buffered_rows == 3 and state_keys(store) == []
        logic.process(pa.record_batch({"k": [1, 2], "v": [1, 1]}))  # 5: not more than 5
        assert logic.buffered_rows == 5 and store.sets == 1  # only the schema
        logic.process(pa.record_batch({"k": [4], "v": [7]}))  # 6 > 5: fold
        assert logic.buffered_rows == 0 and (store.gets, store.sets) == (1, 2)
        assert len([k for k in state_keys(store)]) == 4
        logic.process(pa.record_batch({"k": [1], "v": [10]}))  # buffered again
        assert logic.on_barrier(1).to_pydict() == {
            "k": [1, 2, 3, 4], "v_sum": [12, 2, 1, 7], "v_count": [3, 2, 1, 1]
        }
    with pytest.raises(ValueError, match="max_buffered_rows"):
        Aggregate("k", {"v": "sum"}, max_buffered_rows=-1)
    with pytest.raises(ValueError, match="max_buffered_rows"):
        Aggregate("k", {"v": "sum"}, max_buffered_rows=1.5)  # type: ignore[arg-type]


def test_finish_and_export_include_buffered_partials(tmp_path: Path) -> None:
    op = Aggregate("k", {"v": ["sum", "last"], "s": ["max"]})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(pa.record_batch({"k": ["a", "b"], "v": [1, 2], "s": ["x", "y"]}))
        logic.on_barrier(1)
        logic.process(pa.record_batch({"k": ["b", "c"], "v": [3, 4], "s": ["z", None]}))
        logic.process(pa.record_batch({"k": ["c", "a"], "v": [5, None], "s": ["w", "a"]}))
        want = {
            "k": ["a", "b", "c"], "v_sum": [1, 5, 9], "v_last": [1, 3, 5],
            "s_max": ["x", "z", "w"],
        }
        assert logic.export_state().to_pydict() == want  # folds: the state is in the engine
        assert logic.buffered_rows == 0 and len(state_keys(store)) == 3
        logic.process(pa.record_batch({"k": ["d"], "v": [6], "s": ["q"]}))
        want = {k: [*v, x] for (k, v), x in zip(want.items(), ["d", 6, 6, "q"], strict=True)}
        assert logic.finish().to_pydict() == want
        assert logic.on_barrier(2) is None  # finish emitted everything


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


def test_int_sum_overflow_is_found_at_the_fold_and_changes_nothing(tmp_path: Path) -> None:
    big = 2**62
    op = Aggregate("k", {"v": ["sum"], "w": ["count"]})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(pa.record_batch({"k": [1, 2], "v": [big, 5], "w": [1, 1]}))
        logic.on_barrier(1)
        snapshot = dict(store.items())
        # across batches: big + big overflows int64, found when the epoch is folded
        logic.process(pa.record_batch({"k": [2, 1], "v": [1, big - 1], "w": [1, 1]}))
        logic.process(pa.record_batch({"k": [2, 1], "v": [1, 1], "w": [1, 1]}))
        assert dict(store.items()) == snapshot
        with pytest.raises(OverflowError, match=r"column 'v'.*key 1"):
            logic.on_barrier(2)
        assert dict(store.items()) == snapshot  # nothing written
        assert logic.buffered_rows == 0  # the epoch's buffered input was dropped
        assert logic.on_barrier(2) is None
        # within one batch (Arrow's own sum would wrap silently): refused by process
        with pytest.raises(OverflowError, match="column 'v'"):
            logic.process(pa.record_batch({"k": [3, 3, 3], "v": [big, big, big], "w": [1] * 3}))
        assert logic.buffered_rows == 0
        # a running total that leaves int64 and comes back is refused, as batch by batch
        logic.process(pa.record_batch({"k": [5], "v": [big], "w": [1]}))
        logic.process(pa.record_batch({"k": [5], "v": [big], "w": [1]}))
        logic.process(pa.record_batch({"k": [5], "v": [-big], "w": [1]}))
        with pytest.raises(OverflowError, match=r"column 'v'.*key 5"):
            logic.finish()
        assert dict(store.items()) == snapshot
        # large values that do fit use the exact paths (in a batch and across batches)
        logic.process(pa.record_batch({"k": [4, 4], "v": [big, big - 1], "w": [1, 1]}))
        logic.process(pa.record_batch({"k": [1, 6], "v": [big - 1, -big], "w": [1, 1]}))
        logic.process(pa.record_batch({"k": [6, 6], "v": [1 - big, -1], "w": [1, 1]}))
        rows = {r["k"]: r["v_sum"] for r in logic.finish().to_pylist()}
        assert rows == {1: 2 * big - 1, 2: 5, 4: 2 * big - 1, 6: -2 * big}  # -2**63 fits


@pytest.mark.parametrize("bound", [0, DEFAULT_MAX_BUFFERED_ROWS])
def test_overflow_without_buffering_refuses_only_the_batch(tmp_path: Path, bound: int) -> None:
    big = 2**62
    op = Aggregate("k", {"v": ["sum"]}, max_buffered_rows=bound)
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(pa.record_batch({"k": [1, 2], "v": [big, 5]}))
        if bound:
            logic.on_barrier(1)
        snapshot = dict(store.items())
        with pytest.raises(OverflowError, match=r"column 'v'.*key 1"):
            logic.process(pa.record_batch({"k": [2, 1], "v": [1, big]}))
            logic.on_barrier(2)
        assert dict(store.items()) == snapshot
        logic.process(pa.record_batch({"k": [2], "v": [1]}))  # goes on
        assert logic.finish().to_pylist() == [{"k": 1, "v_sum": big}, {"k": 2, "v_sum": 6}]


def test_uint64_sums_and_extremes(tmp_path: Path) -> None:
    u64 = pa.uint64()
    with MemOnly(tmp_path / "sum") as store:
        logic = Aggregate("k", {"u": ["sum"]}).build(store)
        logic.process(pa.record_batch({"k": [1, 1], "u": pa.array([2**63 - 10, 3], u64)}))
        logic.on_barrier(1)
        logic.process(pa.record_batch({"k": [1], "u": pa.array([10], u64)}))
        with pytest.raises(OverflowError, match="column 'u'"):
            logic.on_barrier(2)
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


@pytest.mark.parametrize("bound", [40, DEFAULT_MAX_BUFFERED_ROWS])
def test_a_detached_epoch_folds_to_the_same_state_while_the_next_one_buffers(
        tmp_path: Path, bound: int) -> None:
    """The shard's epoch thread (``raykv.runtime.shard_epochs``), interleaved by hand.

    After ``detach()`` the next epoch's batches arrive before the detached epoch's
    ``on_barrier`` runs; the ``fence`` hook completes that epoch first whenever the logic
    must touch the engine (a full buffer: ``bound`` 40). Every epoch's output and the
    engine bytes equal a run without detaching, and the final values the model's.
    """
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    aggs = {**AGGS, "f": ["sum", "mean", "min", "max", "first", "last", "count"]}
    plain_store, store = MemOnly(tmp_path / "plain"), MemOnly(tmp_path / "detached")
    plain = Aggregate("k", aggs, max_buffered_rows=bound).build(plain_store)
    logic = Aggregate("k", aggs, max_buffered_rows=bound).build(store)
    pending: list[int] = []  # the detached epoch whose on_barrier has not run yet
    outs: dict[int, pa.RecordBatch | None] = {}
    wants: dict[int, pa.RecordBatch | None] = {}
    fenced = 0

    def complete() -> None:
        nonlocal fenced
        if pending:
            fenced += 1
            epoch = pending.pop()
            outs[epoch] = logic.on_barrier(epoch)

    logic.fence = complete
    seen: list[pa.RecordBatch] = []
    for epoch in range(1, 9):
        for _ in range(rng.randrange(0, 7)):
            b = random_batch(rng, rng.randrange(1, 60), space=25)
            seen.append(b)
            plain.process(b)
            logic.process(b)  # may fence: the detached epoch completes first
        wants[epoch] = plain.on_barrier(epoch)
        complete()  # the shard fences before it detaches the next epoch
        logic.detach()
        pending.append(epoch)
        if rng.random() < 0.5:  # else it completes at the next fence, after more batches
            complete()
            assert dict(store.items()) == dict(plain_store.items())
    complete()
    assert sorted(outs) == sorted(wants) == list(range(1, 9))
    for epoch, want in wants.items():
        got = outs[epoch]
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert_rows_equal(rows_by_key(got), rows_by_key(want))
    assert dict(store.items()) == dict(plain_store.items())
    assert_rows_equal(rows_by_key(logic.finish()), model_aggregate(seen, "k", aggs))
    assert fenced > 0


@pytest.mark.parametrize("bound", [60, DEFAULT_MAX_BUFFERED_ROWS])
@pytest.mark.parametrize("key_kind", ["int", "str"])
def test_a_fold_in_slices_equals_one_fold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          key_kind: str, bound: int) -> None:
    """``FOLD_SLICE_KEYS`` of 7: the same engine bytes and changelogs as one slice, one
    ``multi_get`` per slice, and an int64 overflow in a later slice writes nothing."""
    rng = random.Random(11)
    aggs = {**AGGS, "f": ["sum", "mean", "min", "max", "first", "last", "count"]}
    stores = [CountingMemOnly(tmp_path / "whole"), CountingMemOnly(tmp_path / "sliced")]
    logics = [Aggregate("k", aggs, max_buffered_rows=bound).build(s) for s in stores]
    seen: list[pa.RecordBatch] = []

    def barrier(epoch: int) -> list[pa.RecordBatch | None]:
        outs = []
        for slice_keys, logic in zip((1 << 30, 7), logics, strict=True):
            monkeypatch.setattr(aggfold_module, "FOLD_SLICE_KEYS", slice_keys)
            outs.append(logic.on_barrier(epoch))
        return outs

    for epoch in range(1, 6):
        for _ in range(rng.randrange(1, 5)):
            b = random_batch(rng, rng.randrange(1, 120), key_kind=key_kind, space=40)
            seen.append(b)
            for logic in logics:
                logic.process(b)
        gets = stores[1].gets
        whole, sliced = barrier(epoch)
        assert dict(stores[1].items()) == dict(stores[0].items())  # bit-identical state
        assert (whole is None) == (sliced is None)
        if whole is not None and sliced is not None:
            assert sliced.column("k").equals(whole.column("k"))
            assert_rows_equal(rows_by_key(sliced), rows_by_key(whole))
            if bound == DEFAULT_MAX_BUFFERED_ROWS:  # one fold per epoch: a read per slice
                assert stores[1].gets - gets == -(-whole.num_rows // 7)
    monkeypatch.setattr(aggfold_module, "FOLD_SLICE_KEYS", 7)
    assert_rows_equal(rows_by_key(logics[1].finish()), model_aggregate(seen, "k", aggs))

    big = 2**62
    with MemOnly(tmp_path / "overflow") as store:
        logic = Aggregate("k", {"v": ["sum"]}).build(store)
        logic.process(pa.record_batch({"k": list(range(20)), "v": [big] * 20}))
        logic.on_barrier(1)
        snapshot = dict(store.items())
        logic.process(pa.record_batch({"k": list(range(20)), "v": [1] * 17 + [big] + [1, 1]}))
        logic.process(pa.record_batch({"k": [0], "v": [1]}))
        with pytest.raises(OverflowError, match=r"column 'v'.*key 17"):
            logic.on_barrier(2)  # slices 0-6 and 7-13 combine first; nothing is written
        assert dict(store.items()) == snapshot


class KeyCountingMemOnly(MemOnly):
    """MemOnly that counts the keys ``multi_get`` was asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.keys_read = 0
        super().__init__(*args, **kwargs)

    def multi_get(self, keys: Any) -> list[bytes]:
        self.keys_read += len(keys)
        return super().multi_get(keys)


@pytest.mark.parametrize("cache_max", [aggfold_module.CACHE_MAX_KEYS, 12])
@pytest.mark.parametrize("key_kind", ["int", "float", "ts"])
def test_the_values_written_are_read_from_memory_and_stay_exact(
        tmp_path: Path, key_kind: str, cache_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folds' writes are the engine's values of those keys until the next fold writes,
    and folds read them from memory (``aggfold.py``). Checked against folds of every batch
    and of every 60 rows (later folds of an epoch must read the engine) and a plain
    group_by: identical state at every barrier. With room for every key, each key is read
    from the engine once, when first seen; with room for 12, the cache falls back to the
    epoch's changes alone, or to nothing."""
    monkeypatch.setattr(aggfold_module, "CACHE_MAX_KEYS", cache_max)
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    aggs = {"i": ["sum", "count", "min", "max", "first", "last"],
            "f": ["sum", "mean", "min", "max", "first", "last"], "u": ["sum", "max"]}
    bounds = (0, 60, DEFAULT_MAX_BUFFERED_ROWS)
    stores = [KeyCountingMemOnly(tmp_path / str(b)) for b in bounds]
    logics = [Aggregate("k", aggs, max_buffered_rows=b).build(s) for b, s in zip(
        bounds, stores, strict=True)]
    seen: list[pa.RecordBatch] = []
    folded = 0  # distinct keys of the epochs' folds in the default-bound logic
    for epoch in range(1, 11):
        batches = [random_batch(rng, rng.randrange(1, 40), key_kind=key_kind, space=70)
                   for _ in range(rng.randrange(0, 4))]
        seen += batches
        for b in batches:
            for logic in logics:
                logic.process(b)
        if batches:
            folded += len(set(pa.concat_arrays([b.column("k") for b in batches]).to_pylist()))
        outs = [logic.on_barrier(epoch) for logic in logics]
        reference = dict(stores[0].items())
        for s, out in zip(stores[1:], outs[1:], strict=True):
            assert dict(s.items()) == reference  # bit-identical state
            assert_rows_equal(rows_by_key(out), rows_by_key(outs[0]))
    want = model_aggregate(seen, "k", aggs)
    for logic in logics:
        assert_rows_equal(rows_by_key(logic.finish()), want)
    if cache_max > 70:  # every key read once; later folds found it in memory
        assert stores[2].keys_read == len(want) < folded
    for s in stores:
        s.close()


def test_string_keys_that_all_have_8_bytes_are_emitted_as_strings(tmp_path: Path) -> None:
    """An epoch's changes are kept packed whenever every key has 8 bytes, string keys
    included (``epoch_changes.py``); they were then emitted as if the key type were 8 bytes
    wide (``ValueError: Non-fixed width type``), and the next fold could look up keys of 7
    and 9 bytes in them as misaligned words."""
    epochs = [{"k": ["20261205", "20261206"], "v": [1, 2]},
              # joined, these read "20261205" "20261206": the first epoch's keys
              {"k": ["2026120", "520261206"], "v": [10, 20]}]
    with MemOnly(tmp_path) as store:
        logic = Aggregate("k", {"v": ["sum"]}).build(store)
        seen: list[pa.RecordBatch] = []
        before: dict[Any, dict[str, Any]] = {}
        for e, cols in enumerate(epochs, 1):
            batch = pa.record_batch(cols)
            seen.append(batch)
            logic.process(batch)
            after = model_aggregate(seen, "k", {"v": ["sum"]})
            assert_rows_equal(rows_by_key(logic.on_barrier(e)), changed_rows(before, after))
            before = after
