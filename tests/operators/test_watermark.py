"""The event clock (watermark seam) and the late output, on TumblingWindow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raykv.engines import MemOnly
from raykv.operators import TumblingWindow
from raykv.operators.base import WATERMARK_KEY
from raykv.operators.watermark import EventClock, merge_records
from tests.operators.helpers import reopen


def test_derived_clock_record_is_the_tumbling_format(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        clock = EventClock(store)
        clock.set_lateness(5)
        assert clock.watermark is None
        t = np.array([10, 3, 20, 7], dtype=np.int64)
        assert clock.running(t).tolist() == [5, 5, 15, 15]
        pairs = clock.pending(t, 2)
        assert pairs and len(pairs[0][1]) == 16  # <qq: max time, late events
        store.multi_set(pairs)
        clock.commit(t, 2)
        assert (clock.watermark, clock.late_events) == (15, 2)
        assert clock.pending(np.array([1], dtype=np.int64), 0) == []  # nothing changed
        again = EventClock(store)
        again.set_lateness(5)
        assert (again.watermark, again.late_events, again.external) == (15, 2, False)


def test_external_clock_ignores_rows_and_never_goes_back(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        clock = EventClock(store)
        clock.set_lateness(2)
        clock.advance(None, store)
        assert clock.external and clock.watermark is None
        assert clock.running(np.array([100], dtype=np.int64)).tolist() == [-(1 << 63)]
        clock.advance(50, store)
        clock.advance(40, store)  # behind: ignored
        assert clock.watermark == 48
        t = np.array([500], dtype=np.int64)
        assert clock.running(t).tolist() == [48]  # rows do not move it
        store.multi_set(clock.pending(t, 1))
        clock.commit(t, 1)
        again = EventClock(store)
        again.set_lateness(2)
        assert (again.external, again.watermark, again.max_time, again.late_events) == (
            True, 48, 500, 1)
        with pytest.raises(TypeError, match="must be an int"):
            clock.advance(1.5, store)  # type: ignore[arg-type]


def test_merge_records_takes_the_largest_times_and_adds_late_counts(tmp_path: Path) -> None:
    records = []
    for i, (times, ext) in enumerate([([5, 40], None), ([12], 30), ([3], None)]):
        with MemOnly(tmp_path / str(i)) as store:
            clock = EventClock(store)
            t = np.array(times, dtype=np.int64)
            store.multi_set(clock.pending(t, i))
            clock.commit(t, i)
            if ext is not None:
                clock.advance(ext, store)
            records.append(store.get(WATERMARK_KEY))
    derived = merge_records([records[0], records[2]])
    with MemOnly(tmp_path / "d") as store:
        store.set(WATERMARK_KEY, derived)
        clock = EventClock(store)
        assert (clock.external, clock.watermark, clock.late_events) == (False, 40, 2)
    with MemOnly(tmp_path / "m") as store:
        store.set(WATERMARK_KEY, merge_records(records))
        clock = EventClock(store)
        assert (clock.external, clock.watermark, clock.max_time, clock.late_events) == (
            True, 30, 40, 3)


def test_tumbling_closes_by_an_external_watermark(tmp_path: Path) -> None:
    op = TumblingWindow("k", "t", 10, {"v": ["sum"]}, allowed_lateness=1)
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.advance_watermark(None)
        logic.process(pa.record_batch({"k": [1, 1, 1], "t": [1, 25, 3], "v": [1, 2, 4]}))
        assert logic.late_events == 0  # 25 does not move the watermark any more
        assert logic.on_barrier(1) is None
        logic.advance_watermark(12)  # watermark 11: [0, 10) closes
        assert logic.on_barrier(2).to_pylist() == [
            {"k": 1, "window_start": 0, "window_end": 10, "v_sum": 5}]
        logic.process(pa.record_batch({"k": [1, 1], "t": [9, 11], "v": [8, 16]}))
        assert logic.late_events == 1
        store, logic = reopen(store, MemOnly, op)
        assert (logic.watermark, logic.late_events) == (11, 1)
        assert logic.finish().to_pylist() == [
            {"k": 1, "window_start": 10, "window_end": 20, "v_sum": 16},
            {"k": 1, "window_start": 20, "window_end": 30, "v_sum": 2}]
        store.close()


def test_tumbling_late_emit_returns_the_input_rows_once_per_epoch(tmp_path: Path) -> None:
    op = TumblingWindow("k", "t", 10, {"v": ["sum"]}, late="emit")
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        b1 = pa.record_batch({"k": ["a", "b", "a"], "t": [1, 25, 3], "v": [1, 2, 4]})
        b2 = pa.record_batch({"k": ["b", "a"], "t": [9, 30], "v": [8, 16]})
        logic.process(b1)
        logic.process(b2)
        assert logic.late_rows() is None  # nothing before the barrier ends the epoch
        logic.on_barrier(1)
        late = logic.late_rows()
        assert late.schema == b1.schema
        assert late.to_pylist() == [{"k": "a", "t": 3, "v": 4}, {"k": "b", "t": 9, "v": 8}]
        assert logic.late_rows() is None  # once
        assert logic.late_events == 2
        logic.process(pa.record_batch({"k": ["a"], "t": [2], "v": [1]}))
        logic.on_barrier(2)
        logic.process(pa.record_batch({"k": ["a"], "t": [4], "v": [1]}))
        logic.on_barrier(3)  # epoch 2's late rows were not fetched: replaced
        assert logic.late_rows().to_pylist() == [{"k": "a", "t": 4, "v": 1}]
        logic.process(pa.record_batch({"k": ["a"], "t": [5], "v": [1]}))
        logic.finish()
        assert logic.late_rows().to_pylist() == [{"k": "a", "t": 5, "v": 1}]


def test_late_drop_keeps_nothing(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        logic = TumblingWindow("k", "t", 10, {"v": "sum"}).build(store)
        logic.process(pa.record_batch({"k": [1, 1], "t": [25, 3], "v": [1, 1]}))
        logic.on_barrier(1)
        assert logic.late_events == 1 and logic.late_rows() is None


def test_late_mode_is_validated() -> None:
    with pytest.raises(ValueError, match=r"late must be one of \('drop', 'emit'\)"):
        TumblingWindow("k", "t", 10, {"v": "sum"}, late="keep")


def test_pipeline_refuses_late_emit_into_a_sink_without_a_late_sink() -> None:
    import raykv
    from raykv.sinks import Sink
    from raykv.sources import TableSource

    class Nowhere(Sink):
        def start(self, epoch: int | None, *, new_run: bool, abandoned: object = ()) -> None:
            pass

        def stage(self, epoch: int, part: str, table: pa.Table) -> None:
            pass

        def publish(self, epoch: int) -> None:
            pass

    table = pa.table({"k": [1], "t": [1], "v": [1]})
    with pytest.raises(ValueError, match=r"late='emit', but sink Nowhere has no place"):
        raykv.Pipeline(source=TableSource(table), sink=Nowhere(),
                       stages=[TumblingWindow("k", "t", 10, {"v": "sum"}, late="emit")])
    raykv.Pipeline(source=TableSource(table),  # CollectSink: late_output
                   stages=[TumblingWindow("k", "t", 10, {"v": "sum"}, late="emit")])
