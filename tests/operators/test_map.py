"""Map and Filter against plain-Python models: random batches, barriers, restarts, bad input."""

from __future__ import annotations

import doctest
import pickle
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import raykv.operators.map as map_module
from raykv.engines import ENGINES, MemOnly
from raykv.errors import failure_context
from raykv.operators import Aggregate, Filter, Map
from raykv.operators.base import META_KEY
from tests.operators.helpers import open_engine_or_skip, random_batch, reopen, state


def doubled(batch: pa.RecordBatch) -> pa.RecordBatch | None:
    """Rows with an even ``i``, plus ``i2 = 2 * i``; ``None`` when nothing is left."""
    keep = batch.filter(pc.equal(pc.bit_wise_and(batch["i"], 1), 0))
    if not keep.num_rows:
        return None
    return keep.select(["k", "i"]).append_column("i2", pc.multiply(keep["i"], 2))


def doubled_model(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"k": r["k"], "i": r["i"], "i2": 2 * r["i"]}
            for r in rows if r["i"] is not None and r["i"] % 2 == 0]


def epochs_of(rng: random.Random, n: int, key_kind: str = "int") -> list[list[pa.RecordBatch]]:
    return [[random_batch(rng, rng.randrange(1, 60), key_kind=key_kind)
             for _ in range(rng.randrange(0, 4))] for _ in range(n)]


def rows(out: pa.RecordBatch | None) -> list[dict[str, Any]]:
    return [] if out is None else out.to_pylist()


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("restart_after", [None, 2])
def test_map_matches_model(tmp_path: Path, engine: str, restart_after: int | None) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    op = Map("k", doubled)
    store = open_engine_or_skip(engine, tmp_path / "s")
    logic = op.build(store)
    epochs = epochs_of(rng, 6, key_kind=rng.choice(["int", "str"]))
    for e, batches in enumerate(epochs, 1):
        for b in batches:
            logic.process(b)
        want = doubled_model([r for b in batches for r in b.to_pylist()])
        out = logic.finish() if e == len(epochs) else logic.on_barrier(e)
        assert rows(out) == want, f"epoch {e}"
        if e == restart_after:
            store, logic = reopen(store, lambda p: open_engine_or_skip(engine, p), op)
            assert logic.output_schema() is None  # a Map's output schema is not stored
    assert [k for k, _ in store.items()] in ([], [META_KEY])
    store.close()


def test_filter_expression_and_mask(tmp_path: Path) -> None:
    rng = random.Random(3)
    by_expr = Filter("k", pc.field("f") > 0).build(MemOnly(tmp_path / "a"))
    by_mask = Filter("k", lambda b: pc.greater(b["f"], 0)).build(MemOnly(tmp_path / "b"))
    for e in range(1, 5):
        batches = [random_batch(rng, rng.randrange(1, 50)) for _ in range(3)]
        for b in batches:
            by_expr.process(b)
            by_mask.process(b)
        want = [r for b in batches for r in b.to_pylist() if r["f"] is not None and r["f"] > 0]
        got = by_expr.on_barrier(e)
        assert rows(got) == want
        assert rows(by_mask.on_barrier(e)) == want
        assert by_expr.output_schema() == batches[0].schema


def test_finish_chunks_and_buffer(tmp_path: Path) -> None:
    logic = Map("k", lambda b: b).build(MemOnly(tmp_path))
    batches = [pa.record_batch({"k": pa.array(range(n), pa.int64()),
                                "v": pa.array([1.0] * n, pa.float64())}) for n in (5, 0, 12)]
    for b in batches:
        logic.process(b)
    assert logic.buffered_bytes > 0
    chunks = list(logic.finish_chunks(4))
    assert [c.num_rows for c in chunks] == [4, 1, 4, 4, 4]
    assert pa.Table.from_batches(chunks).to_pylist() == \
        pa.Table.from_batches(batches).to_pylist()
    assert logic.buffered_bytes == 0 and logic.finish() is None
    assert logic.on_barrier(9) is None


def test_table_output_and_safe_cast(tmp_path: Path) -> None:
    def fn(b: pa.RecordBatch) -> pa.Table:
        v = b["v"] if b["v"].null_count < len(b) else pa.nulls(len(b))  # null-typed column
        return pa.table({"k": b["k"], "v": v})

    logic = Map("k", fn).build(MemOnly(tmp_path))
    logic.process(pa.record_batch({"k": [1, 2], "v": pa.array([1, 2], pa.int64())}))
    logic.process(pa.record_batch({"k": [3], "v": pa.array([None], pa.int64())}))
    out = logic.on_barrier(1)
    assert out is not None and out.schema.field("v").type == pa.int64()
    assert out.to_pydict() == {"k": [1, 2, 3], "v": [1, 2, None]}


def test_fixed_schema(tmp_path: Path) -> None:
    schema = pa.schema([("k", pa.int64()), ("v", pa.float64())])
    logic = Map("k", lambda b: b, schema=schema).build(MemOnly(tmp_path))
    assert logic.output_schema() == schema
    logic.process(pa.record_batch({"k": [1], "v": pa.array([2], pa.int32())}))
    assert logic.on_barrier(1).schema == schema  # type: ignore[union-attr]


def test_changelog_passes_through(tmp_path: Path) -> None:
    assert Map("k", lambda b: b).changelog_refusal(retractions=True) is None
    assert Filter("k", pc.field("k") > 0).changelog_refusal(retractions=True) is None
    from raykv.operators.changelog import check_chain

    check_chain([Aggregate("k", {"v": "sum"}), Map("k", lambda b: b)], ["a", "m"])


# ---------------------------------------------------------------------------- bad input


def test_bad_config() -> None:
    with pytest.raises(TypeError, match="callable"):
        Map("k", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Schema"):
        Map("k", lambda b: b, schema={"a": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Expression"):
        Filter("k", "price > 3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        Map("", lambda b: b)


def test_bad_input_changes_nothing(tmp_path: Path) -> None:
    store = MemOnly(tmp_path)
    logic = Map("k", doubled).build(store)
    good = pa.record_batch({"k": [1, 2], "i": [2, 4]})
    with pytest.raises(TypeError, match="to_batches"):
        logic.process(pa.table(good))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'k' .* missing"):
        logic.process(pa.record_batch({"x": [1]}))
    with pytest.raises(ValueError, match="null"):
        logic.process(pa.record_batch({"k": [1, None], "i": [2, 4]}))
    assert state(store) == {} and logic.output_schema() is None
    logic.process(good)
    before = state(store)
    with pytest.raises(ValueError, match="another schema"):
        logic.process(pa.record_batch({"k": [1], "i": ["a"]}))
    assert state(store) == before
    assert rows(logic.on_barrier(1)) == doubled_model(good.to_pylist())


def test_fn_errors(tmp_path: Path) -> None:
    def boom(b: pa.RecordBatch) -> pa.RecordBatch:
        raise ZeroDivisionError("x")

    logic = Map("k", boom).build(MemOnly(tmp_path / "a"))
    with pytest.raises(ZeroDivisionError) as info:
        logic.process(pa.record_batch({"k": [1]}))
    assert failure_context(info.value)["user_code"] == "Map.fn"
    assert logic._schema is None  # the first batch failed: its schema is forgotten
    logic = Map("k", lambda b: b.to_pylist()).build(MemOnly(tmp_path / "b"))
    with pytest.raises(TypeError, match="RecordBatch, Table or None, got list"):
        logic.process(pa.record_batch({"k": [1]}))
    flip = iter([pa.record_batch({"a": [1]}), pa.record_batch({"b": ["x"]})])
    logic = Map("k", lambda b: next(flip)).build(MemOnly(tmp_path / "c"))
    logic.process(pa.record_batch({"k": [1]}))
    with pytest.raises(ValueError, match="missing columns \\['a'\\]"):
        logic.process(pa.record_batch({"k": [1]}))
    assert rows(logic.on_barrier(1)) == [{"a": 1}]
    bad_mask = Filter("k", lambda b: pa.array([1] * len(b))).build(MemOnly(tmp_path / "d"))
    with pytest.raises(TypeError, match="boolean array"):
        bad_mask.process(pa.record_batch({"k": [1]}))


def test_refuses_other_operators_state(tmp_path: Path) -> None:
    store = MemOnly(tmp_path)
    logic = Aggregate("k", {"v": "sum"}).build(store)
    logic.process(pa.record_batch({"k": [1], "v": [2]}))
    logic.on_barrier(1)
    with pytest.raises(ValueError, match="written by Aggregate"):
        Map("k", lambda b: b).build(store)


def test_pickle_and_doctest() -> None:
    op = Filter("k", pc.field("k") > 1)
    back = pickle.loads(pickle.dumps(op))
    assert isinstance(back.predicate, pc.Expression) and back.predicate.equals(op.predicate)
    assert doctest.testmod(map_module).failed == 0
