"""SlidingWindow against a plain-Python model over the whole input (issue 13 item 2)."""

from __future__ import annotations

import datetime as dt
import doctest
import math
import pickle
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raykv.operators.sliding as sliding_module
from raykv.engines import ENGINES, MemOnly
from raykv.operators import SlidingWindow, TumblingWindow
from raykv.operators.base import META_KEY, WATERMARK_KEY
from tests.operators.helpers import open_engine_or_skip, reopen, state
from tests.operators.test_window import AGGS, events, to_py


def summarize(vals: list[Any]) -> dict[str, Any]:
    vals = [x for x in vals if x is not None]
    return {
        "v_sum": sum(vals), "v_count": len(vals),
        "v_min": min(vals, default=None), "v_max": max(vals, default=None),
        "v_first": vals[0] if vals else None, "v_last": vals[-1] if vals else None,
        "v_mean": sum(vals) / len(vals) if vals else None,
    }


class SlidingModel:
    """Plain-Python hopping windows, row by row: every window a row is in, listed."""

    def __init__(self, size: int, slide: int, lateness: int) -> None:
        self.size, self.slide, self.lateness = size, slide, lateness
        self.pane = math.gcd(size, slide)
        self.max_seen: int | None = None
        self.rows: dict[Any, list[tuple[int, int, Any]]] = {}  # key -> (t, arrival, v)
        self.emitted: set[tuple[Any, int]] = set()
        self.late = 0
        self.late_rows: list[dict[str, Any]] = []
        self.arrivals = 0

    def starts(self, t: int) -> list[int]:
        """Starts of the windows [s, s + size) holding t, s a multiple of slide."""
        first = (t - self.size) // self.slide + 1
        return [j * self.slide for j in range(first, t // self.slide + 1)]

    def add(self, batch: pa.RecordBatch) -> None:
        for row in batch.to_pylist():
            k, t, v = row["k"], row["t"], row["v"]
            self.max_seen = t if self.max_seen is None else max(self.max_seen, t)
            if min(self.starts(t)) + self.size <= self.max_seen - self.lateness:
                self.late += 1
                self.late_rows.append(row)
                continue
            self.arrivals += 1
            self.rows.setdefault(k, []).append((t, self.arrivals, v))

    def close(self, everything: bool = False) -> list[dict[str, Any]]:
        if self.max_seen is None:
            return []
        wm = self.max_seen - self.lateness
        out = []
        for k, rows in self.rows.items():
            for s in sorted({s for t, _, _ in rows for s in self.starts(t)}):
                if (k, s) in self.emitted or not (everything or s + self.size <= wm):
                    continue
                self.emitted.add((k, s))
                inside = sorted((t // self.pane, a, v) for t, a, v in rows
                                if s <= t < s + self.size)
                out.append({"k": k, "window_start": s, "window_end": s + self.size,
                            **summarize([v for _, _, v in inside])})
        return sorted(out, key=lambda r: (r["window_start"], r["k"]))


def run(store: Any, op: SlidingWindow, epochs: list[list[pa.RecordBatch]],
        restart_after: set[int] = frozenset()) -> Any:  # type: ignore[assignment]
    model = SlidingModel(op.size, op.slide, op.allowed_lateness)  # type: ignore[arg-type]
    logic = op.build(store)
    for e, batches in enumerate(epochs, 1):
        for b in batches:
            logic.process(b)
            model.add(b)
        out = logic.on_barrier(e)
        assert to_py(out) == model.close(), f"epoch {e}"
        assert logic.late_events == model.late
        late = logic.late_rows()
        assert (late.to_pylist() if late is not None else []) == (
            model.late_rows if op.late == "emit" else [])
        model.late_rows = []
        if e in restart_after:
            store, logic = reopen(store, type(store), op)
    assert to_py(logic.finish()) == model.close(everything=True)
    assert [k for k in state(store) if k not in (WATERMARK_KEY, META_KEY)] == []
    return store


def random_epochs(rng: random.Random, keys: list[Any], n_epochs: int = 6,
                  jitter: int = 60) -> list[list[pa.RecordBatch]]:
    t = -300  # negative times: panes must floor, not truncate
    epochs = []
    for _ in range(n_epochs):
        epoch = []
        for _ in range(rng.randrange(0, 4)):
            n = rng.randrange(1, 50)
            epoch.append(events(rng, n, t, keys, jitter=jitter))
            t += n * 3
        epochs.append(epoch)
    return epochs


@pytest.mark.parametrize(("size", "slide"), [(50, 10), (50, 20), (30, 30), (40, 25), (7, 1)])
@pytest.mark.parametrize("lateness", [0, 40])
@pytest.mark.parametrize("late", ["drop", "emit"])
def test_matches_python_model(tmp_path: Path, size: int, slide: int, lateness: int,
                              late: str) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    keys: list[Any] = [-5, 0, 7, 1000] if rng.random() < 0.5 else ["a", "", "bb", "é"]
    op = SlidingWindow("k", "t", size, slide, AGGS, allowed_lateness=lateness, late=late)
    with MemOnly(tmp_path) as store:
        run(store, op, random_epochs(rng, keys), restart_after={2, 4})


@pytest.mark.parametrize("engine", list(ENGINES))
def test_restart_keeps_panes_cursors_and_watermark(tmp_path: Path, engine: str) -> None:
    rng = random.Random(5)
    epochs = [[events(rng, 40, i * 120, [1, 2, 3], jitter=30)] for i in range(6)]
    op = SlidingWindow("k", "t", 60, 15, AGGS, allowed_lateness=10, late="emit")
    store = open_engine_or_skip(engine, tmp_path / engine)
    store = run(store, op, epochs, restart_after={1, 2, 3, 4})
    store.close()


@settings(max_examples=40, deadline=None)
@given(
    size_slide=st.sampled_from([(6, 2), (6, 4), (5, 5), (9, 6), (4, 1)]),
    lateness=st.integers(0, 5),
    data=st.lists(
        st.lists(st.tuples(st.sampled_from(["x", "y"]), st.integers(-20, 40),
                           st.one_of(st.none(), st.integers(-9, 9))), max_size=8),
        min_size=1, max_size=6),
    restarts=st.sets(st.integers(1, 6)),
)
def test_property_against_model(tmp_path_factory: Any, size_slide: tuple[int, int],
                                 lateness: int, data: list[list[tuple[str, int, Any]]],
                                 restarts: set[int]) -> None:
    size, slide = size_slide
    epochs = []
    for rows in data:
        batch = pa.record_batch({"k": [r[0] for r in rows], "t": pa.array([r[1] for r in rows],
                                 pa.int64()), "v": pa.array([r[2] for r in rows], pa.int64())})
        epochs.append([batch] if rows else [])
    op = SlidingWindow("k", "t", size, slide, AGGS, allowed_lateness=lateness, late="emit")
    with MemOnly(tmp_path_factory.mktemp("p")) as store:
        run(store, op, epochs, restart_after=restarts)


def test_slide_equal_to_size_is_a_tumbling_window(tmp_path: Path) -> None:
    rng = random.Random(3)
    epochs = random_epochs(rng, [1, 2], n_epochs=5)
    outs = []
    for i, op in enumerate([SlidingWindow("k", "t", 25, 25, AGGS, allowed_lateness=5),
                            TumblingWindow("k", "t", 25, AGGS, allowed_lateness=5)]):
        with MemOnly(tmp_path / str(i)) as store:
            logic = op.build(store)
            got = []
            for e, batches in enumerate(epochs, 1):
                for b in batches:
                    logic.process(b)
                got.append(to_py(logic.on_barrier(e)))
            got.append(to_py(logic.finish()))
            outs.append((got, logic.late_events))
    assert outs[0] == outs[1]


def test_timestamp_column_with_timedelta_spans(tmp_path: Path) -> None:
    rng = random.Random(9)
    batches = []
    for i in range(4):
        b = events(rng, 50, i * 150 * 3, ["x", "y"], jitter=400)
        batches.append(b.set_column(1, "t", b.column("t").view(pa.timestamp("ms"))))
    op = SlidingWindow("k", "t", dt.timedelta(seconds=1), dt.timedelta(milliseconds=250), AGGS,
                       allowed_lateness=dt.timedelta(milliseconds=100))
    model = SlidingModel(1000, 250, 100)
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        for e, b in enumerate(batches, 1):
            logic.process(b)
            model.add(b.set_column(1, "t", b.column("t").view(pa.int64())))
            out = logic.on_barrier(e)
            if out is not None:
                assert out.schema.field("window_end").type == pa.timestamp("ms")
            assert to_py(out) == model.close()
        assert to_py(logic.finish()) == model.close(everything=True)


def test_panes_are_deleted_when_no_window_needs_them(tmp_path: Path) -> None:
    op = SlidingWindow("k", "t", 10, 5, {"v": "sum"})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(pa.record_batch({"k": [1, 1], "t": [1, 6], "v": [1, 2]}))
        assert len([k for k in state(store) if k not in (WATERMARK_KEY, META_KEY)]) == 2
        logic.process(pa.record_batch({"k": [1], "t": [10], "v": [4]}))
        out = logic.on_barrier(1).to_pylist()  # watermark 10: [-5, 5) and [0, 10) close
        assert [(r["window_start"], r["v_sum"]) for r in out] == [(-5, 1), (0, 3)]
        # pane [0, 5) is in no open window any more; pane [5, 10) is in [5, 15)
        user = {k for k in state(store) if k not in (WATERMARK_KEY, META_KEY)}
        assert len(user) == 3  # panes [5, 10) and [10, 15) and the key's cursor
        logic.process(pa.record_batch({"k": [1], "t": [30], "v": [8]}))
        out = logic.on_barrier(2).to_pylist()
        assert [(r["window_start"], r["v_sum"]) for r in out] == [(5, 6), (10, 4)]
        left = {k[-8:] for k in state(store) if k not in (WATERMARK_KEY, META_KEY)}
        assert left == {bytes.fromhex("800000000000001e"), bytes(8)}  # pane [30, 35), cursor
        logic.finish()
        assert set(state(store)) == {WATERMARK_KEY, META_KEY}


def test_external_watermark(tmp_path: Path) -> None:
    op = SlidingWindow("k", "t", 10, 5, {"v": ["sum"]})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.advance_watermark(0)
        logic.process(pa.record_batch({"k": [1, 1, 1], "t": [1, 25, 3], "v": [1, 2, 4]}))
        assert logic.on_barrier(1) is None and logic.late_events == 0
        logic.advance_watermark(10)
        assert to_py(logic.on_barrier(2)) == [
            {"k": 1, "window_start": -5, "window_end": 5, "v_sum": 5},
            {"k": 1, "window_start": 0, "window_end": 10, "v_sum": 5}]
        logic.process(pa.record_batch({"k": [1, 1, 1], "t": [4, 5, 10], "v": [8, 16, 32]}))
        assert logic.late_events == 2  # the first windows of 4 and 5 have closed, not of 10


def test_export_state_renders_pending_windows_without_changing_them(tmp_path: Path) -> None:
    op = SlidingWindow("k", "t", 10, 5, {"v": "sum"})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(pa.record_batch({"k": [1, 1], "t": [1, 7], "v": [1, 2]}))
        before = state(store)
        exported = to_py(logic.export_state())
        assert state(store) == before
        assert exported == to_py(logic.finish())


def test_config_validation() -> None:
    op = SlidingWindow("k", "t", 10, 5, {"v": "sum"}, allowed_lateness=5, late="emit")
    assert pickle.loads(pickle.dumps(op)) == op
    with pytest.raises(ValueError, match="slide=20 is larger than size=10"):
        SlidingWindow("k", "t", 10, 20, {"v": "sum"})
    with pytest.raises(ValueError, match="slide must be > 0"):
        SlidingWindow("k", "t", 10, 0, {"v": "sum"})
    with pytest.raises(ValueError, match="size must be > 0"):
        SlidingWindow("k", "t", -1, 1, {"v": "sum"})
    with pytest.raises(TypeError, match="both be ints or both timedeltas"):
        SlidingWindow("k", "t", dt.timedelta(seconds=1), 1, {"v": "sum"})
    with pytest.raises(ValueError, match="late must be one of"):
        SlidingWindow("k", "t", 10, 5, {"v": "sum"}, late="keep")
    with pytest.raises(ValueError, match="unknown ops"):
        SlidingWindow("k", "t", 10, 5, {"v": "median"})


def test_bad_time_column(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        op = SlidingWindow("k", "t", 10, 5, {"v": "sum"})
        with pytest.raises(ValueError, match=r"time column 't' has a null at row 1"):
            op.build(store).process(pa.record_batch({"k": [1, 1], "t": [1, None], "v": [1, 1]}))
        with pytest.raises(TypeError, match=r"time column 't' must be a signed integer or "
                                            r"timestamp, it is double"):
            op.build(store).process(pa.record_batch({"k": [1], "t": [1.5], "v": [1]}))
        with pytest.raises(ValueError, match=r"holds 4611686018427387904 at row 0"):
            op.build(store).process(pa.record_batch({"k": [1], "t": [1 << 62], "v": [1]}))
        assert state(store) == {}


def test_string_values_and_routing_keys(tmp_path: Path) -> None:
    op = SlidingWindow("k", "t", 6, 2, {"s": ["min", "max", "first", "last", "count"]})
    rows = [("a", 1, "m"), ("a", 3, None), ("a", 2, "b"), ("b", 4, "z"), ("a", 5, ""),
            ("a", 9, "q")]
    batch = pa.record_batch({"k": [r[0] for r in rows], "t": [r[1] for r in rows],
                             "s": [r[2] for r in rows]})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(batch)
        assert {op.routing_key(k) for k in state(store)} == {b"a", b"b", None}
        got = to_py(logic.finish())
    model: dict[tuple[str, int], list[tuple[int, int, Any]]] = {}
    for i, (k, t, s) in enumerate(rows):
        for start in range((t - 6) // 2 * 2 + 2, t + 1, 2):
            model.setdefault((k, start), []).append((t // 2, i, s))
    want = []
    for (k, start), vals in sorted(model.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        present = [s for _, _, s in sorted(vals) if s is not None]
        want.append({"k": k, "window_start": start, "window_end": start + 6,
                     "s_min": min(present, default=None), "s_max": max(present, default=None),
                     "s_first": present[0] if present else None,
                     "s_last": present[-1] if present else None, "s_count": len(present)})
    assert got == want


def test_int64_sum_overflow_across_panes_names_the_window(tmp_path: Path) -> None:
    op = SlidingWindow("k", "t", 4, 2, {"v": "sum"})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        big = (1 << 63) - 10
        logic.process(pa.record_batch({"k": [1, 1], "t": [0, 2], "v": [big, big]}))
        with pytest.raises(OverflowError, match="window start 0"):
            logic.finish()


def test_doctests() -> None:
    result = doctest.testmod(sliding_module)
    assert result.attempted > 0 and result.failed == 0


def check_cache(logic: Any, store: Any) -> None:
    """The closed-pane cache is sorted, within budget, and equal to the engine's panes;
    the open panes' values held in memory equal the engine's too."""
    for key, value in logic._fresh.items():
        assert store.get(key) == value
    listed = [k for ks in logic._panes.values() for k in ks]
    cached = [] if logic._closed is None else logic._closed.keys.tolist()
    assert len(set(listed + cached)) == len(listed) + len(cached)  # each pane once
    panes = {k for k in state(store) if k not in (WATERMARK_KEY, META_KEY)
             and k[-8:] != sliding_module.CURSOR}
    assert set(listed + cached) == panes
    table = logic._closed
    if table is None:
        return
    assert table.nbytes <= max(logic.cache_bytes, 0) or len(table) == 0
    pairs = list(zip(table.uid.tolist(), table.ps.tolist(), strict=True))
    assert pairs == sorted(set(pairs))
    size = logic.layout.size
    for i, key in enumerate(table.keys.tolist()):
        assert key[:-8] == table.users[table.uid[i]]
        assert sliding_module._suffix_time(key) == table.ps[i]
        value = store.get(key)
        assert value[:size] == table.st[i].tobytes()
        if table.tails is not None:
            assert value[size:] == table.tails[i]
        assert logic._first_end_of(int(table.ps[i])) <= logic.watermark  # closed
    assert not set(table.keys.tolist()) & {k for ks in logic._panes.values() for k in ks}


@pytest.mark.parametrize("cache_bytes", [0, 300, 1 << 30])
@pytest.mark.parametrize("keys", [[-5, 0, 7, 1000], ["a", "", "bb", "é"]])
def test_closed_pane_cache_against_model_with_restarts(
        tmp_path: Path, cache_bytes: int, keys: list[Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """60 panes a window (the sliding aggregation path), the cache evicting (0, 300 bytes)
    or not; restarts rebuild it from the engine. Same output as the model every time."""
    monkeypatch.setattr(sliding_module.SlidingWindowLogic, "cache_bytes", cache_bytes)
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    op = SlidingWindow("k", "t", 60, 1, AGGS, allowed_lateness=3, late="emit")
    epochs = random_epochs(rng, keys, n_epochs=8, jitter=5)
    model = SlidingModel(60, 1, 3)
    with MemOnly(tmp_path) as first:
        store: Any = first
        logic: Any = op.build(store)
        for e, batches in enumerate(epochs, 1):
            for b in batches:
                logic.process(b)
                model.add(b)
            assert to_py(logic.on_barrier(e)) == model.close(), f"epoch {e}"
            check_cache(logic, store)
            if e in (3, 6):
                store, logic = reopen(store, MemOnly, op)
                assert logic._closed is None  # rebuilt from the engine at the next barrier
        assert to_py(logic.finish()) == model.close(everything=True)
        assert logic._closed is None
        store.close()


def test_cache_is_rebuilt_after_restore_and_not_reread(tmp_path: Path) -> None:
    """After a restore the first barrier reads every closed pane from the engine; later
    barriers read nothing (cached closed panes, and the values of the panes written since
    the restore, are in memory)."""
    op = SlidingWindow("k", "t", 10, 1, {"v": "sum"})
    reads: list[int] = []

    class Counting(MemOnly):
        def multi_get(self, keys: Any) -> Any:
            reads.append(len(keys))
            return super().multi_get(keys)

    store: Any = Counting(tmp_path)
    logic: Any = op.build(store)
    logic.process(pa.record_batch({"k": [1, 2] * 10, "t": list(range(20)), "v": [1] * 20}))
    first = to_py(logic.on_barrier(1))
    cached = len(logic._closed)
    assert cached == 9  # panes 10..18 are closed (19 is open) and still needed
    store, logic = reopen(store, Counting, op)
    assert logic._closed is None
    logic.process(pa.record_batch({"k": [1], "t": [25], "v": [5]}))
    reads.clear()
    out = to_py(logic.on_barrier(2))
    assert reads == [9 + 1]  # the 9 cached before the restore, and pane 19 (not pane 25)
    assert [(r["k"], r["window_start"], r["v_sum"]) for r in out if r["window_start"] == 10] == [
        (1, 10, 5), (2, 10, 5)]  # the windows [10, 20) hold 5 events of each key
    assert {r["window_start"] for r in out} == set(range(10, 16))
    assert first[-1]["window_start"] == 9
    logic.process(pa.record_batch({"k": [1], "t": [40], "v": [5]}))
    reads.clear()
    logic.on_barrier(3)
    assert reads == []  # pane 25 was written since: nothing is read
    store.close()
