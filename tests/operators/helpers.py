"""Shared test helpers for operators: random batches, engines, and plain models."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from raykv.engines import ENGINES, MemOnly, engine_class
from raykv.engines.base import KVStore
from raykv.operators.base import OperatorLogic
from raykv.operators.keyed_state import KeyedStateLogic

KEY_TYPES = ("int", "str", "float", "bool", "ts", "dict", "bin")


def key_values(rng: random.Random, kind: str, n: int, space: int) -> pa.Array:
    """``n`` random keys of ``kind`` drawn from ``space`` distinct values."""
    picks = [rng.randrange(space) for _ in range(n)]
    if kind == "int":
        return pa.array([p * 7919 - 1000 for p in picks], pa.int64())
    if kind == "str":
        return pa.array(["" if p == 0 else f"user-{p}" for p in picks])
    if kind == "float":
        return pa.array([(-0.0 if p == 0 and rng.random() < 0.5 else p / 4 - 3.0) for p in picks])
    if kind == "bool":
        return pa.array([p % 2 == 0 for p in picks])
    if kind == "ts":
        return pa.array([p * 1000 for p in picks], pa.int64()).view(pa.timestamp("ms"))
    if kind == "dict":
        return pa.array([f"d{p}" for p in picks]).dictionary_encode()
    if kind == "bin":
        return pa.array([bytes([p % 256, 0, p // 256]) for p in picks], pa.binary())
    raise AssertionError(kind)


def random_batch(
    rng: random.Random, n: int, *, key_kind: str = "int", space: int = 40, nulls: float = 0.1
) -> pa.RecordBatch:
    """A batch with key ``k`` and value columns of several types (with nulls)."""

    def maybe(v: Any) -> Any:
        return None if rng.random() < nulls else v

    return pa.record_batch(
        {
            "k": key_values(rng, key_kind, n, space),
            "i": pa.array([maybe(rng.randrange(-1000, 1000)) for _ in range(n)], pa.int32()),
            "f": pa.array([maybe(rng.uniform(-10, 10)) for _ in range(n)], pa.float64()),
            "s": pa.array(
                [maybe(rng.choice(["", "a", "b", "ab", "zz", "é"])) for _ in range(n)], pa.string()
            ),
            "t": pa.array([maybe(rng.randrange(10**6)) for _ in range(n)], pa.int64()).view(
                pa.timestamp("us")
            ),
            "u": pa.array([maybe(rng.randrange(2**40)) for _ in range(n)], pa.uint64()),
            "b": pa.array([maybe(rng.random() < 0.5) for _ in range(n)], pa.bool_()),
        }
    )


def key_of(value: Any) -> Any:
    """A hashable, canonical Python form of a key value (-0.0 -> 0.0)."""
    if isinstance(value, float):
        return value + 0.0
    return value


def rows_by_key(
    batch: pa.RecordBatch | pa.Table | None, key: str = "k"
) -> dict[Any, dict[str, Any]]:
    """Output rows as ``{key: row}``; asserts each key appears once."""
    if batch is None:
        return {}
    out: dict[Any, dict[str, Any]] = {}
    for row in batch.to_pylist():
        k = key_of(row[key])
        assert k not in out, f"key {k!r} emitted twice"
        out[k] = row
    return out


def assert_rows_equal(got: dict[Any, dict[str, Any]], want: dict[Any, dict[str, Any]]) -> None:
    """Compare row dicts; floats with a relative tolerance (summation order differs)."""
    assert set(got) == set(want), (sorted(map(repr, set(got) ^ set(want))))[:10]
    for k, row in want.items():
        g = got[k]
        assert set(g) == set(row), (k, set(g) ^ set(row))
        for col, v in row.items():
            w = g[col]
            if isinstance(v, float) and isinstance(w, float):
                assert (math.isnan(v) and math.isnan(w)) or math.isclose(
                    v, w, rel_tol=1e-9, abs_tol=1e-9
                ), (k, col, w, v)
            else:
                assert w == v, (k, col, w, v)


def model_aggregate(
    batches: list[pa.RecordBatch], key: str, aggs: dict[str, list[str]]
) -> dict[Any, dict[str, Any]]:
    """One plain pyarrow group_by over all ``batches`` (the reference for ``Aggregate``)."""
    if not batches:
        return {}
    table = pa.Table.from_batches(batches)
    if pa.types.is_dictionary(table.schema.field(key).type):
        table = table.set_column(
            table.schema.get_field_index(key), key, table.column(key).cast(pa.string())
        )
    if pa.types.is_floating(table.schema.field(key).type):  # group -0.0 with 0.0
        i = table.schema.get_field_index(key)
        table = table.set_column(i, key, pc.add(table.column(key), 0.0))
    specs: list[tuple[str, str, Any]] = []
    names: list[tuple[str, str]] = []
    for col, ops in aggs.items():
        for op in ops:
            if op == "count":
                specs.append((col, "count", pc.CountOptions(mode="only_valid")))
            elif op == "sum":
                specs.append((col, "sum", pc.ScalarAggregateOptions(min_count=0)))
            else:
                specs.append((col, op, None))
            names.append((f"{col}_{op}", f"{col}_{op}"))
    grouped = table.group_by(key, use_threads=False).aggregate(specs)
    out = {}
    for row in grouped.to_pylist():
        k = key_of(row[key])
        out[k] = {key: row[key], **{n: row[src] for n, src in names}}
        for n, v in out[k].items():  # Arrow sums bools/uints as uint64; we emit int64
            if n.endswith("_sum") and isinstance(v, bool):
                out[k][n] = int(v)
    return out


def changed_rows(
    before: dict[Any, dict[str, Any]], after: dict[Any, dict[str, Any]]
) -> dict[Any, dict[str, Any]]:
    """Rows of ``after`` that are new or differ from ``before`` (the expected changelog)."""
    out = {}
    for k, row in after.items():
        old = before.get(k)
        if old is None or not _rows_close(old, row):
            out[k] = row
    return out


def _rows_close(a: dict[str, Any], b: dict[str, Any]) -> bool:
    try:
        assert_rows_equal({0: a}, {0: b})
    except AssertionError:
        return False
    return True


# ---------------------------------------------------------------------------- engines


def available_engines() -> list[str]:
    """Engines from ``ENGINES`` that import (the others are still being written)."""
    return list(ENGINES)


def open_engine_or_skip(name: str, path: Path, **params: Any) -> KVStore:
    try:
        cls = engine_class(name)
    except Exception as err:  # an engine under construction elsewhere
        pytest.skip(f"engine {name} does not import yet: {err}")
    return cls(path, **params)


def memonly(path: Path, **params: Any) -> KVStore:
    return MemOnly(path, **params)


def state(store: KVStore) -> dict[bytes, bytes]:
    """The full engine state, for "unchanged" assertions."""
    return dict(store.items())


def run_epochs(
    logic: OperatorLogic, epochs: list[list[pa.RecordBatch]], start: int = 1
) -> Iterator[tuple[int, pa.RecordBatch | None]]:
    """Process each epoch's batches, then yield ``(epoch, on_barrier(epoch))``."""
    for e, batches in enumerate(epochs, start):
        for b in batches:
            logic.process(b)
        yield e, logic.on_barrier(e)


def reopen(
    store: KVStore, make: Callable[[Path], KVStore], op: Any
) -> tuple[KVStore, KeyedStateLogic]:
    """Seal, close, reopen the engine and build a new logic on it (a restart)."""
    path = store.data_dir
    store.seal()
    store.close()
    new_store = make(path)
    return new_store, op.build(new_store)
