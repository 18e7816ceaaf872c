"""Deduplicate against a plain-Python model: random rows, barriers, watermarks, restarts."""

from __future__ import annotations

import datetime as dt
import doctest
import pickle
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raykv.operators.dedup as dedup_module
from raykv.engines import ENGINES, MemOnly
from raykv.operators import Deduplicate
from tests.operators.helpers import open_engine_or_skip, reopen, state

SCHEMA_INT = pa.schema([("k", pa.int64()), ("t", pa.int64()), ("v", pa.int64()),
                        ("s", pa.string())])
SCHEMA_STR = pa.schema([("k", pa.string()), ("t", pa.int64()), ("v", pa.int64()),
                        ("s", pa.string())])


def _nulls_last(x: Any) -> tuple[bool, Any]:
    return (x is None, 0 if x is None else x)


class DedupModel:
    """Plain-Python dedup: late rows at arrival, the rest decided per epoch in time order."""

    def __init__(self, within: int, lateness: int = 0) -> None:
        self.within, self.lateness = within, lateness
        self.max_seen: int | None = None
        self.external: int | None = None
        self.last: dict[Any, int] = {}  # never expires: expiry must not change decisions
        self.pending: list[dict[str, Any]] = []
        self.late: list[dict[str, Any]] = []

    def watermark(self) -> int | None:
        if self.external is not None:
            return self.external - self.lateness
        return None if self.max_seen is None else self.max_seen - self.lateness

    def add(self, batch: pa.RecordBatch) -> None:
        for row in batch.to_pylist():
            if self.external is None:
                t = row["t"]
                self.max_seen = t if self.max_seen is None else max(self.max_seen, t)
            wm = self.watermark()
            if wm is not None and row["t"] < wm:
                self.late.append(row)
            else:
                self.pending.append(row)

    def barrier(self) -> list[dict[str, Any]]:
        rows = sorted(self.pending, key=lambda r: (r["t"], r["k"], _nulls_last(r["v"]),
                                                    _nulls_last(r["s"])))
        self.pending = []
        out = []
        for r in rows:
            prev = self.last.get(r["k"])
            if prev is None or r["t"] >= prev + self.within:
                self.last[r["k"]] = r["t"]
                out.append(r)
        return out

    def live(self) -> set[Any]:
        """Keys whose state has not expired at the current watermark."""
        wm = self.watermark()
        return {k for k, t in self.last.items() if wm is None or t + self.within > wm}


def events(rng: random.Random, n: int, t0: int, keys: list[Any], jitter: int,
           schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([
        {"k": rng.choice(keys), "t": t0 + i + rng.randrange(-jitter, jitter + 1),
         "v": None if rng.random() < 0.2 else rng.randrange(3),
         "s": None if rng.random() < 0.2 else rng.choice("ab")}
        for i in range(n)], schema=schema)


def rows(out: pa.RecordBatch | None) -> list[dict[str, Any]]:
    return [] if out is None else out.to_pylist()


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize(("within", "lateness", "keys"), [
    (20, 30, [1, 2, 3]),
    (50, 10, ["a", "", "é", "bb", "c"]),
    (7, 0, [0, 1]),
])
def test_matches_python_model(tmp_path: Path, engine: str, within: int, lateness: int,
                              keys: list[Any]) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    schema = SCHEMA_STR if isinstance(keys[0], str) else SCHEMA_INT
    op = Deduplicate("k", within, "t", allowed_lateness=lateness, late="emit")
    make = lambda p: open_engine_or_skip(engine, p)  # noqa: E731
    store = make(tmp_path / "s")
    logic = op.build(store)
    model = DedupModel(within, lateness)
    restart = rng.randrange(1, 7)
    t = -100
    for e in range(1, 9):
        late_before = len(model.late)
        for _ in range(rng.randrange(1, 4)):
            b = events(rng, rng.randrange(1, 30), t, keys, 25, schema)
            t += b.num_rows
            logic.process(b)
            model.add(b)
        last = e == 8
        out = logic.finish() if last else logic.on_barrier(e)
        assert rows(out) == model.barrier(), f"epoch {e}"
        assert logic.late_events == len(model.late)
        late = logic.late_rows()
        assert rows(late) == model.late[late_before:]
        if not last:  # expired keys read as absent (the engine drops them at its merges)
            live = logic.export_state()
            got = set() if live is None else set(live.column("k").to_pylist())
            assert got == model.live(), "state expires by the watermark"
        if e == restart:
            store, logic = reopen(store, make, op)
    store.close()


def test_arrival_order_within_an_epoch(tmp_path: Path) -> None:
    rows_ = [{"k": 1, "t": t, "v": v, "s": None} for t, v in
             [(10, 0), (3, 1), (3, 0), (12, 5), (15, 2)]]
    outs = []
    for i, perm in enumerate([rows_, rows_[::-1], rows_[2:] + rows_[:2]]):
        logic = Deduplicate("k", 10, "t", allowed_lateness=100).build(MemOnly(tmp_path / str(i)))
        for r in perm:
            logic.process(pa.RecordBatch.from_pylist([r], schema=SCHEMA_INT))
        outs.append(rows(logic.on_barrier(1)))
    assert outs[0] == outs[1] == outs[2]
    assert [(r["t"], r["v"]) for r in outs[0]] == [(3, 0), (15, 2)]


def test_external_watermark_timestamps_and_export(tmp_path: Path) -> None:
    op = Deduplicate("k", dt.timedelta(seconds=10), "t")
    store = MemOnly(tmp_path)
    logic = op.build(store)
    logic.advance_watermark(None)
    ts = pa.timestamp("ms")

    def batch(k: list[int], t: list[int]) -> pa.RecordBatch:
        return pa.record_batch({"k": k, "t": pa.array(t, pa.int64()).view(ts)})

    logic.process(batch([1, 2, 1], [1_000, 2_000, 5_000]))
    logic.advance_watermark(4_000)
    assert rows(logic.on_barrier(1)) == rows(batch([1, 2], [1_000, 2_000]))
    exported = logic.export_state()
    assert exported is not None and exported.column_names == ["k", "last_kept"]
    logic.process(batch([1, 1, 2], [3_000, 11_000, 13_000]))  # 3_000 < watermark: late
    assert logic.late_events == 1
    logic.advance_watermark(11_500)  # key 1's state (1_000 + 10 s) expires
    assert rows(logic.on_barrier(2)) == rows(batch([1, 2], [11_000, 13_000]))
    live = logic.export_state()  # key 1 again (11_000), key 2 again (13_000)
    assert live is not None and live.column("k").to_pylist() == [1, 2]
    logic.advance_watermark(25_000)
    assert logic.on_barrier(3) is None
    assert logic.export_state() is None


# ---------------------------------------------------------------------------- bad input


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="within must be > 0"):
        Deduplicate("k", 0, "t")
    with pytest.raises(ValueError, match="keep must be one of"):
        Deduplicate("k", 5, "t", keep="last")
    with pytest.raises(ValueError, match="differ from the key"):
        Deduplicate("k", 5, "k")
    with pytest.raises(TypeError, match=r"int or a datetime\.timedelta"):
        Deduplicate("k", 1.5, "t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="late must be"):
        Deduplicate("k", 5, "t", late="x")


def test_bad_input(tmp_path: Path) -> None:
    store = MemOnly(tmp_path)
    logic = Deduplicate("k", 5, "t").build(store)
    with pytest.raises(ValueError, match="time column 't' is missing"):
        logic.process(pa.record_batch({"k": [1]}))
    with pytest.raises(TypeError, match="must be a signed integer or timestamp"):
        logic.process(pa.record_batch({"k": [1], "t": ["x"]}))
    with pytest.raises(TypeError, match="has no order"):
        logic.process(pa.record_batch({"k": [1], "t": [1], "l": [[1]]}))
    with pytest.raises(TypeError, match="timedelta"):
        Deduplicate("k", dt.timedelta(seconds=1), "t").build(store).process(
            pa.record_batch({"k": [1], "t": [1]}))
    with pytest.raises(ValueError, match="within must be <= 2"):
        Deduplicate("k", (1 << 62) + 1, "t").build(store).process(
            pa.record_batch({"k": [1], "t": [1]}))
    assert state(store) == {}
    logic.process(pa.record_batch({"k": [1], "t": [1]}))
    with pytest.raises(ValueError, match="null at row 0"):
        logic.process(pa.record_batch({"k": [1], "t": pa.array([None], pa.int64())}))
    assert rows(logic.on_barrier(1)) == [{"k": 1, "t": 1}]
    with pytest.raises(ValueError, match="state layout"):
        Deduplicate("k", 6, "t").build(store)


def test_pickle_doctest_and_routing() -> None:
    op = Deduplicate("k", dt.timedelta(seconds=3), "t")
    assert pickle.loads(pickle.dumps(op)) == op
    assert op.routing_key(b"\x00" * 8) == b"\x00" * 8  # the state key is the encoded key
    assert doctest.testmod(dedup_module).failed == 0


@pytest.mark.parametrize("engine", ["memonly", "hybridlog"])
def test_rescale_gives_the_same_rows(tmp_path: Path, engine: str) -> None:
    from tests.operators.test_topn import events as topn_events
    from tests.operators.test_topn import rescale_run, sort_rows

    rng = random.Random(12)
    epochs = []
    t = 0
    for _ in range(6):
        batches = [topn_events(rng, 40, t + 120 * i, ["a", "b", "c", "d", ""], jitter=5)
                   for i in range(2)]
        t += 240
        epochs.append((batches, t - 200))
    op = Deduplicate("k", 30, "t")
    make = lambda p: open_engine_or_skip(engine, p)  # noqa: E731
    whole = rescale_run(op, make, tmp_path / "a", epochs, at=len(epochs))
    split = rescale_run(op, make, tmp_path / "b", epochs, at=3)
    assert sort_rows(split) == sort_rows(whole)
    assert len(whole) > 20


@settings(max_examples=60, deadline=None)
@given(
    within=st.integers(1, 8),
    lateness=st.integers(0, 6),
    epochs=st.lists(st.lists(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30),
                                                st.integers(0, 2)),
                                      min_size=1, max_size=6),
                             max_size=3), min_size=1, max_size=4),
)
def test_hypothesis_against_model(within: int, lateness: int,
                                  epochs: list[list[list[tuple[int, int, int]]]]) -> None:
    """Any batches and epochs: the logic's kept and late rows are the model's."""
    import tempfile

    with MemOnly(tempfile.mkdtemp()) as store:
        logic = Deduplicate("k", within, "t", allowed_lateness=lateness, late="emit").build(store)
        model = DedupModel(within, lateness)
        for e, batches in enumerate(epochs, 1):
            before = len(model.late)
            for rows_ in batches:
                b = pa.RecordBatch.from_pylist(
                    [{"k": k, "t": t, "v": v, "s": None} for k, t, v in rows_], schema=SCHEMA_INT)
                logic.process(b)
                model.add(b)
            assert rows(logic.on_barrier(e)) == model.barrier()
            assert rows(logic.late_rows()) == model.late[before:]
