from __future__ import annotations

import doctest
import pickle
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import raykv.operators.stateful_map as stateful_map_module
from raykv.engines import ENGINES, MemOnly
from raykv.operators import StatefulMap
from tests.operators.helpers import key_of, open_engine_or_skip, random_batch, reopen, state
from tests.operators.test_aggregate import CountingMemOnly


def session(st: Any, row: dict[str, Any]) -> tuple[Any, Any]:
    """Running total per key; the state ends (is deleted) when it passes 1000.

    Rows with a null ``i`` produce no output.
    """
    total, n = st if st is not None else (0, 0)
    if row["i"] is None:
        return st, None
    total, n = total + row["i"], n + 1
    out = {"total": total, "n": n, "s": row["s"]}
    return (None if total > 1000 else [total, n]), out


def model(batches: list[pa.RecordBatch], states: dict[Any, Any]) -> list[dict[str, Any]]:
    rows = []
    for b in batches:
        for row in b.to_pylist():
            k = key_of(row["k"])
            new, out = session(states.get(k), row)
            if new is None:
                states.pop(k, None)
            else:
                states[k] = new
            if out is not None:
                rows.append({"k": row["k"], **out})
    return rows


@pytest.mark.parametrize("codec", ["json", "pickle"])
@pytest.mark.parametrize("key_kind", ["int", "str", "float", "dict", "bool"])
def test_matches_python_model(tmp_path: Path, codec: str, key_kind: str) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    op = StatefulMap("k", session, codec=codec)
    store = MemOnly(tmp_path)
    logic = op.build(store)
    states: dict[Any, Any] = {}
    for e in range(1, 7):
        batches = [random_batch(rng, rng.randrange(1, 100), key_kind=key_kind, space=15)
                   for _ in range(rng.randrange(1, 4))]
        for b in batches:
            logic.process(b)
        want = model(batches, states)
        out = logic.on_barrier(e)
        assert (out.to_pylist() if out is not None else []) == want
        if e == 4:
            store, logic = reopen(store, MemOnly, op)
        # the engine holds exactly the model's states
        stored = {k: v for k, v in state(store).items() if not k.startswith(b"\xff\xffM")}
        assert len(stored) == len(states)
    assert logic.finish() is None  # everything was emitted at the barriers
    store.close()


@pytest.mark.parametrize("engine", list(ENGINES))
def test_every_engine(tmp_path: Path, engine: str) -> None:
    rng = random.Random(4)
    store = open_engine_or_skip(engine, tmp_path / engine)
    op = StatefulMap("k", session)
    logic = op.build(store)
    states: dict[Any, Any] = {}
    for e in range(1, 4):
        batches = [random_batch(rng, 80, key_kind="str", space=10) for _ in range(2)]
        for b in batches:
            logic.process(b)
        assert logic.on_barrier(e).to_pylist() == model(batches, states)
        if e == 2:
            store, logic = reopen(store, type(store), op)
    store.close()


def test_finish_returns_rows_not_yet_emitted(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        logic = StatefulMap("k", lambda s, r: ((s or 0) + 1, (s or 0) + 1)).build(store)
        logic.process(pa.record_batch({"k": ["a", "a"]}))
        assert logic.on_barrier(1).to_pydict() == {"k": ["a", "a"], "value": [1, 2]}
        logic.process(pa.record_batch({"k": ["a", "b"]}))
        logic.process(pa.record_batch({"k": ["b"]}))
        assert logic.finish().to_pydict() == {"k": ["a", "b", "b"], "value": [3, 1, 2]}
        assert logic.finish() is None


def test_output_schema_widens_and_can_be_fixed(tmp_path: Path) -> None:
    def first_none(st: Any, row: dict[str, Any]) -> tuple[Any, Any]:
        n = (st or 0) + 1
        return n, {"x": None if n == 1 else n, "y": "s"}

    with MemOnly(tmp_path) as store:
        logic = StatefulMap("k", first_none).build(store)
        logic.process(pa.record_batch({"k": [1]}))
        logic.process(pa.record_batch({"k": [1, 1]}))
        out = logic.on_barrier(1)
        assert out.schema.field("x").type == pa.int64()
        assert out.to_pydict() == {"k": [1, 1, 1], "x": [None, 2, 3], "y": ["s", "s", "s"]}
        assert logic.output_schema() == out.schema
    fields = pa.schema({"x": pa.int32(), "y": pa.string()})
    with MemOnly(tmp_path / "b") as store:
        logic = StatefulMap("k", first_none, output_fields=fields).build(store)
        logic.process(pa.record_batch({"k": [1, 1]}))
        want = pa.schema({"k": pa.int64(), "x": pa.int32(), "y": pa.string()})
        assert logic.output_schema() == want
        assert logic.on_barrier(1).schema == logic.output_schema()


def test_bad_fn_results_change_nothing(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        logic = StatefulMap("k", lambda s, r: ((s or 0) + 1, None)).build(store)
        logic.process(pa.record_batch({"k": [1, 2]}))
        before = state(store)

        logic = StatefulMap("k", lambda s, r: 5).build(MemOnly(tmp_path / "b"))
        with pytest.raises(TypeError, match=r"\(new_state, output\) pair, got 5"):
            logic.process(pa.record_batch({"k": [1]}))

        def mixed(s: Any, r: dict[str, Any]) -> tuple[Any, Any]:
            return 1, ({"a": 1} if r["k"] == 1 else 2)

        logic = StatefulMap("k", mixed).build(MemOnly(tmp_path / "c"))
        with pytest.raises(TypeError, match="dict outputs always or never"):
            logic.process(pa.record_batch({"k": [1, 2]}))
        logic = StatefulMap("k", lambda s, r: (1, {"k": 5})).build(MemOnly(tmp_path / "d"))
        with pytest.raises(ValueError, match="must not contain the key column"):
            logic.process(pa.record_batch({"k": [1]}))
        logic = StatefulMap("k", lambda s, r: ({1, 2}, None)).build(MemOnly(tmp_path / "e"))
        with pytest.raises(TypeError, match="JSON"):
            logic.process(pa.record_batch({"k": [1]}))
        assert state(store) == before


def test_one_multi_get_and_one_multi_set_per_batch(tmp_path: Path) -> None:
    rng = random.Random(2)
    with CountingMemOnly(tmp_path) as store:
        logic = StatefulMap("k", session).build(store)
        store.gets = store.sets = 0
        for _ in range(3):
            logic.process(random_batch(rng, 300, key_kind="str"))
        assert (store.gets, store.sets) == (3, 3)
        logic.on_barrier(1)
        assert (store.gets, store.sets) == (3, 3)


def test_raw_codec_and_state_deletion(tmp_path: Path) -> None:
    def toggle(st: bytes | None, row: dict[str, Any]) -> tuple[bytes | None, str]:
        return (None if st else b"on"), ("off" if st else "on")

    with MemOnly(tmp_path) as store:
        logic = StatefulMap("k", toggle, codec="raw").build(store)
        logic.process(pa.record_batch({"k": ["a", "a", "a", "b"]}))
        assert logic.on_barrier(1).column("value").to_pylist() == ["on", "off", "on", "on"]
        assert sorted(k for k in state(store) if not k.startswith(b"\xff\xff")) == [b"a", b"b"]
        logic.process(pa.record_batch({"k": ["a", "b"]}))
        assert [k for k in state(store) if not k.startswith(b"\xff\xff")] == []


def test_config_validation_and_pickling() -> None:
    op = StatefulMap("k", session, codec="pickle", output_fields=pa.schema({"x": pa.int64()}))
    assert pickle.loads(pickle.dumps(op)) == op
    with pytest.raises(TypeError, match="callable"):
        StatefulMap("k", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"output_fields must be a pyarrow\.Schema"):
        StatefulMap("k", session, output_fields={"x": "int"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not contain the key"):
        StatefulMap("k", session, output_fields=pa.schema({"k": pa.int64()}))
    with pytest.raises(TypeError, match="encode"):
        StatefulMap("k", session, codec=object())  # type: ignore[arg-type]


def test_doctests() -> None:
    result = doctest.testmod(stateful_map_module)
    assert result.attempted > 0 and result.failed == 0
