from __future__ import annotations

import datetime as dt
import doctest
import pickle
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import raykv.operators.window as window_module
from raykv.engines import ENGINES, MemOnly
from raykv.operators import TumblingWindow
from raykv.operators.base import WATERMARK_KEY
from tests.operators.helpers import open_engine_or_skip, reopen, state
from tests.operators.test_aggregate import CountingMemOnly

AGGS = {"v": ["sum", "count", "min", "max", "first", "last", "mean"]}


class WindowModel:
    """Plain-Python tumbling windows, row by row (the reference)."""

    def __init__(self, size: int, lateness: int) -> None:
        self.size, self.lateness = size, lateness
        self.max_seen: int | None = None
        self.windows: dict[tuple[Any, int], list[Any]] = {}
        self.late = 0

    def add(self, batch: pa.RecordBatch, time_col: str = "t") -> None:
        times = batch.column(time_col)
        if pa.types.is_timestamp(times.type):
            times = times.view(pa.int64())
        for k, t, v in zip(batch.column("k").to_pylist(), times.to_pylist(),
                           batch.column("v").to_pylist(), strict=True):
            self.max_seen = t if self.max_seen is None else max(self.max_seen, t)
            start = t - t % self.size
            if start + self.size <= self.max_seen - self.lateness:
                self.late += 1
                continue
            self.windows.setdefault((k, start), []).append(v)

    def close(self, everything: bool = False) -> list[dict[str, Any]]:
        if self.max_seen is None:
            return []
        wm = self.max_seen - self.lateness
        done = sorted(
            (w for w in self.windows if everything or w[1] + self.size <= wm),
            key=lambda w: (w[1], w[0]),
        )
        rows = []
        for k, start in done:
            vals = [x for x in self.windows.pop((k, start)) if x is not None]
            rows.append({
                "k": k, "window_start": start, "window_end": start + self.size,
                "v_sum": sum(vals), "v_count": len(vals),
                "v_min": min(vals, default=None), "v_max": max(vals, default=None),
                "v_first": vals[0] if vals else None, "v_last": vals[-1] if vals else None,
                "v_mean": sum(vals) / len(vals) if vals else None,
            })
        return rows


def events(rng: random.Random, n: int, t0: int, keys: list[Any], jitter: int) -> pa.RecordBatch:
    times = [t0 + i * 3 + rng.randrange(-jitter, jitter + 1) for i in range(n)]
    return pa.record_batch({
        "k": [rng.choice(keys) for _ in range(n)],
        "t": pa.array(times, pa.int64()),
        "v": pa.array(
            [None if rng.random() < 0.1 else rng.randrange(-50, 50) for _ in range(n)], pa.int64()
        ),
    })


def to_py(out: pa.RecordBatch | None) -> list[dict[str, Any]]:
    if out is None:
        return []
    rows = out.to_pylist()
    for r in rows:
        for c in ("window_start", "window_end"):
            if isinstance(r[c], dt.datetime):
                r[c] = int(pa.scalar(r[c], pa.timestamp("ms")).cast(pa.int64()).as_py())
    return rows


def run(
    store: Any,
    op: TumblingWindow,
    epochs: list[list[pa.RecordBatch]],
    restart_after: int | None = None,
) -> tuple[Any, Any]:
    size = op.size if isinstance(op.size, int) else 1000
    lateness = op.allowed_lateness if isinstance(op.allowed_lateness, int) else 250
    model = WindowModel(size, lateness)
    logic = op.build(store)
    for e, batches in enumerate(epochs, 1):
        for b in batches:
            logic.process(b)
            model.add(b)
        out = logic.on_barrier(e)
        assert to_py(out) == model.close(), f"epoch {e}"
        assert logic.late_events == model.late
        assert logic.watermark == model.max_seen - lateness
        if e == restart_after:
            store, logic = reopen(store, type(store), op)
    assert to_py(logic.finish()) == model.close(everything=True)
    assert [k for k, _ in store.items() if k != WATERMARK_KEY and k != b"\xff\xffM"] == []
    return store, logic


@pytest.mark.parametrize("lateness", [0, 40])
@pytest.mark.parametrize("key_kind", ["int", "str"])
def test_matches_python_model(tmp_path: Path, lateness: int, key_kind: str) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    keys: list[Any] = [-5, 0, 7, 1000] if key_kind == "int" else ["a", "", "bb", "é"]
    t = -300  # negative times: windows must floor, not truncate
    epochs = []
    for _ in range(6):
        epoch = []
        for _ in range(rng.randrange(1, 4)):
            n = rng.randrange(1, 60)
            epoch.append(events(rng, n, t, keys, jitter=60))
            t += n * 3
        epochs.append(epoch)
    op = TumblingWindow("k", "t", 50, AGGS, allowed_lateness=lateness)
    with MemOnly(tmp_path) as store:
        run(store, op, epochs)


@pytest.mark.parametrize("engine", list(ENGINES))
def test_restart_keeps_windows_and_watermark(tmp_path: Path, engine: str) -> None:
    rng = random.Random(5)
    t = 0
    epochs = []
    for _ in range(5):
        epochs.append([events(rng, 40, t, [1, 2, 3], jitter=30)])
        t += 120
    op = TumblingWindow("k", "t", 25, AGGS, allowed_lateness=10)
    store = open_engine_or_skip(engine, tmp_path / engine)
    store, _ = run(store, op, epochs, restart_after=3)
    store.close()


def test_timestamp_column_with_timedelta_size(tmp_path: Path) -> None:
    rng = random.Random(9)
    batches = []
    for i in range(4):
        b = events(rng, 50, i * 150 * 3, ["x", "y"], jitter=400)
        batches.append(b.set_column(1, "t", b.column("t").view(pa.timestamp("ms"))))
    op = TumblingWindow(
        "k", "t", dt.timedelta(seconds=1), AGGS, allowed_lateness=dt.timedelta(milliseconds=250)
    )
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(batches[0])
        assert logic.output_schema().field("window_start").type == pa.timestamp("ms")
    with MemOnly(tmp_path / "b") as store:
        run(store, op, [[b] for b in batches])


def test_one_multi_get_and_multi_set_per_batch_and_barrier(tmp_path: Path) -> None:
    with CountingMemOnly(tmp_path) as store:
        logic = TumblingWindow("k", "t", 10, {"v": "sum"}).build(store)
        store.gets = store.sets = 0
        rng = random.Random(1)
        for i in range(3):
            logic.process(events(rng, 30, i * 90, [1, 2], jitter=0))
        assert (store.gets, store.sets) == (3, 3)
        assert logic.on_barrier(1) is not None
        assert (store.gets, store.sets) == (4, 4)


def test_late_events_are_counted_dropped_and_persisted(tmp_path: Path) -> None:
    op = TumblingWindow("k", "t", 10, {"v": ["sum", "count"]})
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(pa.record_batch({"k": [1, 1, 1], "t": [1, 25, 3], "v": [1, 2, 4]}))
        # t=3 arrived after t=25 pushed the watermark to 25 >= end of [0, 10): late
        assert logic.late_events == 1
        out = logic.on_barrier(1).to_pylist()
        assert out == [{"k": 1, "window_start": 0, "window_end": 10, "v_sum": 1, "v_count": 1}]
        logic.process(pa.record_batch({"k": [1, 2], "t": [9, 21], "v": [8, 16]}))
        assert logic.late_events == 2
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        assert logic.late_events == 2 and logic.watermark == 25
        assert logic.finish().to_pylist() == [
            {"k": 1, "window_start": 20, "window_end": 30, "v_sum": 2, "v_count": 1},
            {"k": 2, "window_start": 20, "window_end": 30, "v_sum": 16, "v_count": 1},
        ]


def test_bad_time_column(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        logic = TumblingWindow("k", "t", 10, {"v": "sum"}).build(store)
        with pytest.raises(ValueError, match=r"time column 't' has a null at row 1"):
            logic.process(pa.record_batch({"k": [1, 1], "t": [1, None], "v": [1, 1]}))
        assert state(store) == {}
        with pytest.raises(TypeError, match="signed integer or timestamp"):
            TumblingWindow("k", "t", 10, {"v": "sum"}).build(store).process(
                pa.record_batch({"k": [1], "t": [1.5], "v": [1]})
            )
        with pytest.raises(ValueError, match=r"time column 'when' is missing"):
            TumblingWindow("k", "when", 10, {"v": "sum"}).build(store).process(
                pa.record_batch({"k": [1], "t": [1], "v": [1]})
            )
        with pytest.raises(TypeError, match="timedelta but the time column is int64"):
            TumblingWindow("k", "t", dt.timedelta(seconds=1), {"v": "sum"}).build(store).process(
                pa.record_batch({"k": [1], "t": [1], "v": [1]})
            )
        ts = pa.array([1], pa.int64()).view(pa.timestamp("s"))
        with pytest.raises(ValueError, match="whole number of s"):
            TumblingWindow("k", "t", dt.timedelta(milliseconds=1500), {"v": "sum"}).build(
                store
            ).process(pa.record_batch({"k": [1], "t": ts, "v": [1]}))
        assert state(store) == {}


def test_config_validation() -> None:
    op = TumblingWindow("k", "t", 10, {"v": "sum"}, allowed_lateness=5)
    assert pickle.loads(pickle.dumps(op)) == op
    with pytest.raises(ValueError, match="size must be > 0"):
        TumblingWindow("k", "t", 0, {"v": "sum"})
    with pytest.raises(ValueError, match="allowed_lateness must be >= 0"):
        TumblingWindow("k", "t", 10, {"v": "sum"}, allowed_lateness=-1)
    with pytest.raises(TypeError, match=r"size must be an int or a datetime\.timedelta"):
        TumblingWindow("k", "t", 1.5, {"v": "sum"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time_column must differ"):
        TumblingWindow("k", "k", 10, {"v": "sum"})
    with pytest.raises(ValueError, match="clash"):
        TumblingWindow("window_start", "t", 10, {"v": "sum"})


def test_routing_key_strips_the_window_suffix(tmp_path: Path) -> None:
    op = TumblingWindow("k", "t", 10, {"v": "sum"})
    with MemOnly(tmp_path) as store:
        op.build(store).process(pa.record_batch({"k": ["ab", "ab"], "t": [1, 15], "v": [1, 2]}))
        routed = {op.routing_key(k) for k in state(store)}
    assert routed == {b"ab", None}


def test_doctests() -> None:
    result = doctest.testmod(window_module)
    assert result.attempted > 0 and result.failed == 0


def test_merge_metadata_for_rescaling(tmp_path: Path) -> None:
    op = TumblingWindow("k", "t", 10, {"v": "sum"})
    stores = []
    for i, times in enumerate([[5, 40], [12, 30], [3]]):
        store = MemOnly(tmp_path / str(i))
        logic = op.build(store)
        logic.process(pa.record_batch({"k": [i] * len(times), "t": times, "v": [1] * len(times)}))
        stores.append(store)
    logic.process(pa.record_batch({"k": [9], "t": [1], "v": [1]}))  # window [0, 10) still open
    assert logic.late_events == 0
    marks = [s.get(WATERMARK_KEY) for s in stores]
    merged = op.merge_metadata(WATERMARK_KEY, marks)
    metas = [s.get(b"\xff\xffM") for s in stores]
    assert op.merge_metadata(b"\xff\xffM", metas) == metas[0]
    with pytest.raises(ValueError, match="disagree"):
        op.merge_metadata(b"\xff\xffM", [metas[0], metas[0] + b" "])
    # a new shard with the merged watermark: the highest one wins, late counts add up
    target = MemOnly(tmp_path / "new")
    target.multi_set({WATERMARK_KEY: merged, b"\xff\xffM": metas[0]})
    logic = op.build(target)
    assert logic.watermark == 40
    logic.process(pa.record_batch({"k": [1], "t": [35], "v": [1]}))  # window [30, 40): late
    assert logic.late_events == 1
    for s in [*stores, target]:
        s.close()
