"""The core keyed-state logic: bad input, reserved keys, stored metadata (all operators)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from raykv.engines import MemOnly
from raykv.operators import (
    Aggregate,
    KeyedOperator,
    Reduce,
    SessionWindow,
    SlidingWindow,
    StatefulMap,
    TumblingWindow,
)
from raykv.operators.base import EMPTY_KEY, META_KEY
from tests.operators.helpers import random_batch, state

OPERATORS: dict[str, Callable[[], KeyedOperator]] = {
    "aggregate": lambda: Aggregate("k", {"i": ["sum", "count"], "s": ["max"]}),
    "reduce": lambda: Reduce("k", lambda a, b: a + b, "i"),
    "stateful_map": lambda: StatefulMap("k", lambda s, r: ((s or 0) + 1, (s or 0) + 1)),
    "window": lambda: TumblingWindow("k", "w", 100, {"i": ["sum"]}),
    "sliding": lambda: SlidingWindow("k", "w", 100, 50, {"i": ["sum"], "s": ["max"]}),
    "session": lambda: SessionWindow("k", "w", 5, {"i": ["sum"], "s": ["first"]}),
}
WINDOWS = (TumblingWindow, SlidingWindow, SessionWindow)


def batch(keys: list[Any], n0: int = 0, key_type: pa.DataType | None = None) -> pa.RecordBatch:
    n = len(keys)
    return pa.record_batch(
        {
            "k": pa.array(keys, key_type),
            "i": pa.array(range(n0, n0 + n), pa.int64()),
            "s": pa.array([f"s{j}" for j in range(n)]),
            "w": pa.array(range(n0, n0 + n), pa.int64()),
        }
    )


@pytest.fixture(params=sorted(OPERATORS))
def op(request: pytest.FixtureRequest) -> KeyedOperator:
    return OPERATORS[request.param]()


def start(op: KeyedOperator, store: MemOnly) -> Any:
    logic = op.build(store)
    logic.process(batch(["a", "b", "a"]))
    logic.on_barrier(1)
    logic.process(batch(["c"], 10))
    return logic


@pytest.mark.parametrize(
    ("bad", "exc", "words"),
    [
        (lambda: pa.record_batch({"key": ["a"], "i": [1], "s": ["x"], "w": [1]}), ValueError,
         r"key column 'k' .*missing.*\['key', 'i', 's', 'w'\]"),
        (lambda: batch(["a", None, "b"]), ValueError, r"'k'.*null at row 1"),
        (lambda: batch(["a"]).append_column("extra", pa.array([1])), ValueError,
         r"another schema.*extra columns \['extra'\]"),
        (lambda: batch(["a"]).drop_columns(["s"]), ValueError, r"missing columns \['s'\]"),
        (lambda: batch([1], key_type=pa.int64()), ValueError,
         r"column 'k' is int64 \(was string\)"),
        (lambda: batch(["x" * 40]), ValueError,
         r"'xxxx.*in column 'k' is \d+ bytes.*max_key_len=32"),
        (lambda: pa.Table.from_batches([batch(["a"])]), TypeError, "RecordBatch.*to_batches"),
    ],
    ids=["missing-key", "null-key", "extra-column", "missing-column", "key-type", "key-too-long",
         "table"],
)
def test_bad_input_names_the_problem_and_changes_nothing(
    tmp_path: Path, op: KeyedOperator, bad: Callable[[], Any], exc: type[Exception], words: str
) -> None:
    with MemOnly(tmp_path, max_key_len=32) as store:
        logic = start(op, store)
        before = state(store)
        with pytest.raises(exc, match=words):
            logic.process(bad())
        assert state(store) == before
        # the logic goes on as if the bad batch never came
        logic.process(batch(["d"], 20))
        out = logic.on_barrier(2)
        if not isinstance(op, WINDOWS):
            assert out is not None
            keys = set(out.column("k").to_pylist())
            assert keys <= {"a", "b", "c", "d"} and "d" in keys and "c" in keys


@pytest.mark.parametrize("bad_keys", [["ok", "y" * 50], ["ok", None]], ids=["long", "null"])
def test_first_batch_errors_leave_no_schema(
    tmp_path: Path, op: KeyedOperator, bad_keys: list[Any]
) -> None:
    with MemOnly(tmp_path, max_key_len=32) as store:
        logic = op.build(store)
        with pytest.raises(ValueError, match=r"max_key_len|null"):
            logic.process(batch(bad_keys))
        assert state(store) == {} and logic.output_schema() is None
        other = batch([1, 2], key_type=pa.int32())  # another schema is fine now
        logic.process(other)
        assert store.get(META_KEY)


def test_unsupported_key_type(tmp_path: Path, op: KeyedOperator) -> None:
    bad = batch(["a"]).set_column(0, "k", pa.array([[1, 2]]))
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        with pytest.raises(TypeError, match=r"key column 'k' has type list<item: int64>"):
            logic.process(bad)
        assert state(store) == {}


def test_schema_is_enforced_across_restarts(tmp_path: Path, op: KeyedOperator) -> None:
    with MemOnly(tmp_path) as store:
        start(op, store)
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        assert logic.output_schema() is not None or isinstance(op, StatefulMap)
        with pytest.raises(ValueError, match="another schema"):
            logic.process(batch([1, 2], key_type=pa.int64()))
        logic.process(batch(["e"], 30))


def test_other_operator_or_config_on_the_same_state_is_refused(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        start(Aggregate("k", {"i": ["sum"]}), store)
    with MemOnly(tmp_path) as store:
        with pytest.raises(ValueError, match=r"written by Aggregate\(key='k'\).*Reduce"):
            Reduce("k", max, "i").build(store)
        with pytest.raises(ValueError, match=r"layout.*aggregations"):
            Aggregate("k", {"i": ["sum", "max"]}).build(store)
        with pytest.raises(ValueError, match="written by"):
            Aggregate("other", {"i": ["sum"]}).build(store)
        Aggregate("k", {"i": ["sum"]}).build(store)  # the same config resumes


def test_reserved_binary_keys_are_rejected(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        logic = Aggregate("k", {"i": "sum"}).build(store)
        bad = pa.record_batch({"k": pa.array([b"ok", META_KEY], pa.binary()), "i": [1, 2]})
        with pytest.raises(ValueError, match="reserved"):
            logic.process(bad)
        assert state(store) == {}


def test_empty_string_key_is_a_normal_key(tmp_path: Path, op: KeyedOperator) -> None:
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(batch(["", "a", ""]))
        out = logic.finish()
        if not isinstance(op, WINDOWS):
            assert EMPTY_KEY in dict(store.items()) or isinstance(op, StatefulMap)
        assert out is not None and "" in out.column("k").to_pylist()
        assert op.routing_key(EMPTY_KEY) == b""


def test_fixed_width_keys_need_room(tmp_path: Path) -> None:
    with MemOnly(tmp_path, max_key_len=12) as store:
        logic = TumblingWindow("k", "w", 10, {"i": "sum"}).build(store)
        with pytest.raises(ValueError, match=r"16 bytes as a state key.*max_key_len=12"):
            logic.process(batch([1], key_type=pa.int64()))


def test_logic_after_bad_config_value_columns(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        logic = Aggregate("k", {"nope": ["sum"]}).build(store)
        with pytest.raises(ValueError, match=r"aggregated column 'nope' is missing"):
            logic.process(batch(["a"]))
        logic = Aggregate("k", {"s": ["sum"]}).build(store)
        with pytest.raises(TypeError, match=r"sum/mean of column 's' need a numeric column"):
            logic.process(batch(["a"]))
        assert state(store) == {}


def test_random_bad_batches_never_corrupt_state(tmp_path: Path) -> None:
    """Interleave good and bad batches; the result equals that of the good ones alone."""
    rng = random.Random(11)
    op = Aggregate("k", {"i": ["sum", "count", "min"]})
    good: list[pa.RecordBatch] = []
    with MemOnly(tmp_path / "a", max_key_len=16) as store, MemOnly(tmp_path / "b") as ref:
        logic, ref_logic = op.build(store), op.build(ref)
        for _ in range(30):
            b = random_batch(rng, 50, key_kind="str")
            if rng.random() < 0.3:
                keys = b.column("k").to_pylist()
                keys[rng.randrange(len(keys))] = rng.choice([None, "z" * 40])
                with pytest.raises(ValueError):
                    logic.process(b.set_column(0, "k", pa.array(keys)))
            else:
                good.append(b)
                logic.process(b)
                ref_logic.process(b)
        assert logic.finish() == ref_logic.finish()
