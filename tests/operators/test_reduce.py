from __future__ import annotations

import doctest
import pickle
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import raykv.operators.reduce as reduce_module
from raykv.engines import MemOnly
from raykv.operators import Reduce
from tests.operators.helpers import key_of, random_batch, reopen, rows_by_key, state
from tests.operators.test_aggregate import CountingMemOnly


def add(acc: Any, v: Any) -> Any:
    return acc + v


def capped(acc: int, v: int) -> int | None:
    """Sum that deletes the key's state once it passes 1500."""
    s = acc + v
    return None if s > 1500 else s


def join(acc: str, v: str) -> str:
    return f"{acc},{v}"


class ReduceModel:
    """Plain dict fold; tracks which keys changed at some batch boundary of the epoch."""

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.fn = fn
        self.accs: dict[Any, Any] = {}
        self.changed: set[Any] = set()

    def add(self, batch: pa.RecordBatch, column: str) -> None:
        before = dict(self.accs)
        for k, v in zip(batch.column("k").to_pylist(), batch.column(column).to_pylist(),
                        strict=True):
            if v is None:
                continue
            k = key_of(k)
            acc = self.accs.get(k)
            new = v if acc is None else self.fn(acc, v)
            if new is None:
                self.accs.pop(k, None)
            else:
                self.accs[k] = new
        for k in set(before) | set(self.accs):
            if before.get(k) != self.accs.get(k):
                self.changed.add(k)

    def barrier(self) -> dict[Any, Any]:
        out = {k: self.accs[k] for k in self.changed if k in self.accs}
        self.changed = set()
        return out


def values(out: pa.RecordBatch | None, column: str) -> dict[Any, Any]:
    return {k: row[column] for k, row in rows_by_key(out).items()}


@pytest.mark.parametrize(
    ("fn", "column", "codec"),
    [(add, "i", "json"), (max, "s", "json"), (capped, "i", "pickle"), (add, "f", "json"),
     (join, "s", "pickle")],
    ids=["sum-json", "max-str", "capped-pickle", "float-sum", "join-pickle"],
)
@pytest.mark.parametrize("key_kind", ["int", "str", "float", "bin"])
def test_matches_dict_model(
    tmp_path: Path, fn: Callable[[Any, Any], Any], column: str, codec: str, key_kind: str
) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    op = Reduce("k", fn, column, codec=codec)
    model = ReduceModel(fn)
    store = MemOnly(tmp_path)
    logic = op.build(store)
    for e in range(1, 7):
        for _ in range(rng.randrange(1, 4)):
            b = random_batch(rng, rng.randrange(1, 120), key_kind=key_kind, space=25)
            logic.process(b)
            model.add(b, column)
        got = values(logic.on_barrier(e), column)
        want = model.barrier()
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k]) if column == "f" else got[k] == want[k]
        if e == 3:
            store, logic = reopen(store, MemOnly, op)
    final = values(logic.finish(), column)
    assert final.keys() == model.accs.keys()
    for k, v in model.accs.items():
        assert final[k] == pytest.approx(v) if column == "f" else final[k] == v
    store.close()


def test_output_types(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        logic = Reduce("k", add, "v").build(store)
        logic.process(pa.record_batch({"k": ["a", "a"], "v": pa.array([1, 2], pa.int16())}))
        assert logic.output_schema() == pa.schema({"k": pa.string(), "v": pa.int16()})
        out = logic.on_barrier(1)
        assert out.schema == logic.output_schema() and out.to_pydict() == {"k": ["a"], "v": [3]}
    with MemOnly(tmp_path / "b") as store:
        logic = Reduce("k", lambda a, v: [*a, *v], "v", codec="pickle").build(store)
        logic.process(pa.record_batch({"k": ["a", "a"], "v": [[1], [2, 3]]}))
        assert logic.on_barrier(1).to_pydict() == {"k": ["a"], "v": [[1, 2, 3]]}
    with MemOnly(tmp_path / "c") as store:  # accumulators of another type than the values
        logic = Reduce("k", lambda a, v: f"{a}{v}", "v").build(store)
        logic.process(pa.record_batch({"k": ["a", "a"], "v": [1, 2]}))
        out = logic.on_barrier(1)
        assert out.to_pydict() == {"k": ["a"], "v": ["12"]}
        assert logic.output_schema() == out.schema
        logic.process(pa.record_batch({"k": ["b"], "v": [1]}))  # an int and a str: no column
        with pytest.raises(TypeError, match="one Arrow column"):
            logic.finish()


def test_one_multi_get_and_one_multi_set_per_batch(tmp_path: Path) -> None:
    rng = random.Random(2)
    with CountingMemOnly(tmp_path) as store:
        logic = Reduce("k", add, "i").build(store)
        store.gets = store.sets = 0
        for _ in range(3):
            logic.process(random_batch(rng, 300, key_kind="str"))
        assert (store.gets, store.sets) == (3, 3)


def test_fn_errors_change_nothing(tmp_path: Path) -> None:
    def picky(acc: int, v: int) -> int:
        if v == 13:
            raise RuntimeError("unlucky")
        return acc + v

    with MemOnly(tmp_path) as store:
        logic = Reduce("k", picky, "v").build(store)
        logic.process(pa.record_batch({"k": [1, 1, 2], "v": [1, 2, 3]}))
        before = state(store)
        with pytest.raises(RuntimeError, match="unlucky"):
            logic.process(pa.record_batch({"k": [1, 2, 1], "v": [5, 5, 13]}))
        assert state(store) == before
        assert logic.finish().to_pydict() == {"k": [1, 2], "v": [3, 3]}


def test_codec_errors(tmp_path: Path) -> None:
    with MemOnly(tmp_path, max_value_len=64) as store:
        logic = Reduce("k", lambda a, v: [*a, v] if isinstance(a, list) else [a, v], "v").build(
            store
        )
        with pytest.raises(ValueError, match="max_value_len=64"):
            logic.process(pa.record_batch({"k": [1] * 40, "v": list(range(40))}))
        logic = Reduce("k", lambda a, v: {a, v}, "v").build(store)  # json cannot store a set
        with pytest.raises(TypeError, match=r"cannot be stored as JSON.*codec='pickle'"):
            logic.process(pa.record_batch({"k": [1, 1], "v": [1, 2]}))
        assert state(store) == {}


def test_config_validation_and_pickling() -> None:
    op = Reduce("k", add, "v", codec="pickle")
    assert pickle.loads(pickle.dumps(op)) == op
    with pytest.raises(TypeError, match="callable"):
        Reduce("k", 3, "v")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown codec 'yaml'"):
        Reduce("k", add, "v", codec="yaml")
    with pytest.raises(ValueError, match="differ from the key"):
        Reduce("k", add, "k")
    with MemOnly(Path(tempfile.mkdtemp())) as store, pytest.raises(
        ValueError, match=r"value column 'v' is missing"
    ):
        Reduce("k", add, "v").build(store).process(pa.record_batch({"k": [1], "w": [1]}))


def test_doctests() -> None:
    result = doctest.testmod(reduce_module)
    assert result.attempted > 0 and result.failed == 0
