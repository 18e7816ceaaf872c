"""Watermarks from the sources (``raykv.watermarks``; issue 13 item 1).

Without Ray: the reader clock (splits read one after another, a floor from finished
splits, idleness by a fake clock, errors naming the split) and the shard's combination.
Through Ray: ``TumblingWindow`` over out-of-order input in several Parquet splits read by
two readers, against a plain-Python model of the rule: a reader's watermark at a barrier
is the largest event time it has read minus ``max_delay``; every shard's is the minimum
over the readers still reading (all done: the largest); windows close by it at barriers,
and a row is late when its window closed by the watermark of the previous barrier.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raykv
from raykv.checkpointing import CheckpointStore
from raykv.operators import TumblingWindow
from raykv.partitioning import Partitioning
from raykv.runtime.reader_actor import plan_readers
from raykv.sinks import CollectSink
from raykv.sources import ParquetSource
from raykv.watermarks import ReaderClock, Watermark, combine

# ---------------------------------------------------------------------------- no Ray


def _batch(times: list[int], col: str = "t") -> pa.RecordBatch:
    return pa.record_batch({col: pa.array(times, pa.int64()), "k": [1] * len(times)})


def test_a_reader_follows_its_largest_time_and_never_goes_back() -> None:
    clock = ReaderClock(Watermark("t", max_delay=10))
    clock.observe("a", _batch([50, 100, 70]))
    assert clock.mark(["a"], set()) == (90, False)
    clock.observe("b", _batch([20]))  # the next split starts earlier: no step back
    assert clock.mark(["b"], {"a"}) == (90, False)
    clock.observe("b", _batch([130]))
    assert clock.mark(["b"], {"a"}) == (120, False)
    assert clock.mark([], {"a", "b"}) == (120, True)  # done: idle, holds nobody back
    assert clock.maxes() == {"a": 100, "b": 130}


def test_restored_maxes_set_the_floor_and_an_unseen_split_holds() -> None:
    clock = ReaderClock(Watermark("t", max_delay=5), maxes={"a": 40})
    assert clock.mark(["b"], {"a"}) == (35, False)  # b has no time yet; a's floor
    unbounded = ReaderClock(Watermark("t"))
    unbounded.observe("a", _batch([10]))
    assert unbounded.mark(["a", "b"], set()) == (None, False)  # b holds it back


def test_an_idle_split_stops_holding_the_watermark_back() -> None:
    now = [0.0]
    clock = ReaderClock(Watermark("t", idle_timeout=5), now=lambda: now[0])
    clock.observe("a", _batch([100]))
    clock.observe("b", _batch([10]))
    assert clock.mark(["a", "b"], set()) == (10, False)
    now[0] = 4.0
    clock.observe("a", _batch([200]))
    now[0] = 6.0  # b: nothing for 6 s
    assert clock.mark(["a", "b"], set()) == (200, False)
    now[0] = 12.0  # a quiet too: the reader is idle
    assert clock.mark(["a", "b"], set())[1] is True


def test_timestamps_and_timedelta_delays() -> None:
    clock = ReaderClock(Watermark("ts", max_delay=timedelta(milliseconds=3)))
    ts = pa.array([5_000], pa.timestamp("us"))
    clock.observe("s", pa.record_batch({"ts": ts}))
    assert clock.mark(["s"], set()) == (2_000, False)


def test_bad_columns_and_configs_say_what_is_wrong() -> None:
    clock = ReaderClock(Watermark("t"))
    with pytest.raises(ValueError, match="watermark column 't' is missing in a batch of "
                                         "split 'part-3'"):
        clock.observe("part-3", _batch([1], col="time"))
    with pytest.raises(TypeError, match="signed integer or a timestamp"):
        clock.observe("s", pa.record_batch({"t": pa.array([1.5])}))
    with pytest.raises(ValueError, match="max_delay must be >= 0"):
        Watermark("t", max_delay=-1)
    with pytest.raises(ValueError, match="idle_timeout"):
        Watermark("t", idle_timeout=0)
    with pytest.raises(TypeError, match="non-empty column name"):
        Watermark("")


def test_the_shard_takes_the_minimum_of_its_inputs_still_reading() -> None:
    assert combine([(10, False), (30, False)]) == (10, False)
    assert combine([(10, True), (30, False)]) == (30, False)
    assert combine([(10, True), (30, True)]) == (30, True)
    assert combine([(None, False), (30, False)]) == (None, False)


def test_a_pipeline_refuses_a_window_on_another_column() -> None:
    with pytest.raises(ValueError, match=r"closes windows on column 'u'.*watermark is on "
                                         r"column 't'"):
        raykv.Pipeline(source=ParquetSource("/nonexistent"),
                       stages=[TumblingWindow("k", "u", 10, {"v": "sum"})],
                       watermark=Watermark("t"))
    with pytest.raises(TypeError, match=r"raykv\.Watermark"):
        raykv.Pipeline(source=ParquetSource("/nonexistent"),
                       stages=[TumblingWindow("k", "t", 10, {"v": "sum"})],
                       watermark="t")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- through Ray

BATCH, EVERY, SIZE, DELAY, LATENESS = 100, 2, 100, 40, 20


def _write_splits(folder: Path, n_splits: int, seed: int) -> None:
    """Splits of out-of-order events (each a multiple of BATCH rows, one row group per batch)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for s in range(n_splits):
        n = BATCH * int(rng.integers(3, 9))
        base = int(rng.integers(0, 400))
        t = base + np.arange(n) * 3 + rng.integers(-60, 60, n)
        table = pa.table({"k": rng.integers(0, 5, n), "t": t.astype(np.int64),
                          "v": rng.integers(1, 10, n)})
        pq.write_table(table, folder / f"part-{s}.parquet", row_group_size=BATCH)


def _model(source: ParquetSource, readers: int, late: list[tuple[int, int, int]] | None = None
           ) -> dict[int, dict[tuple[int, int], int]]:
    """Per epoch, the emitted windows {(key, start): sum} by the rule of the module doc.

    ``late`` (given): collects the late rows ``(k, t, v)``.
    """
    specs = plan_readers(source, None, readers, key="k",
                         partitioning=Partitioning(num_shards=2, num_key_groups=16))
    batches: list[list[pa.Table]] = []
    for spec in specs:
        t = pa.concat_tables([pq.read_table(sp) for sp, _ in spec.splits])
        batches.append([t.slice(i, BATCH) for i in range(0, t.num_rows, BATCH)])
    out: dict[int, dict[tuple[int, int], int]] = {}
    windows: dict[tuple[int, int], int] = {}
    last_wm: int | None = None
    e = 0
    while True:
        e += 1
        rows = [b for bs in batches for b in bs[(e - 1) * EVERY:e * EVERY]]
        for b in rows:
            for k, t, v in zip(*(b[c].to_pylist() for c in ("k", "t", "v")), strict=True):
                start = t // SIZE * SIZE
                if last_wm is not None and start + SIZE <= last_wm - LATENESS:
                    if late is not None:
                        late.append((k, t, v))
                    continue  # late: its window closed at the previous barrier
                windows[(k, start)] = windows.get((k, start), 0) + v
        done = [len(bs) < e * EVERY for bs in batches]
        marks = [(max(t for b in bs[:e * EVERY] for t in b["t"].to_pylist()) - DELAY, d)
                 for bs, d in zip(batches, done, strict=True)]
        wm, _ = combine(marks)
        assert wm is not None
        if all(done):
            out[e] = windows
            return out
        closed = {w: s for w, s in windows.items() if w[1] + SIZE <= wm - LATENESS}
        out[e] = closed
        windows = {w: s for w, s in windows.items() if w not in closed}
        last_wm = wm


def _by_epoch(summary: raykv.RunSummary) -> dict[int, dict[tuple[int, int], int]]:
    return {e: dict(zip(zip(t["k"].to_pylist(), t["window_start"].to_pylist(), strict=True),
                        t["v_sum"].to_pylist(), strict=True))
            for e, t in summary.output_by_epoch.items()}


def _pipeline(tmp_path: Path, source: ParquetSource, late: str = "drop",
              **kw: Any) -> raykv.Pipeline:
    kw.setdefault("sink", CollectSink())
    return raykv.Pipeline(
        source=source, stages=[TumblingWindow("k", "t", SIZE, {"v": "sum"},
                                              allowed_lateness=LATENESS, late=late)],
        num_shards=2, source_parallelism=2,
        checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
        epoch_every_batches=EVERY, watermark=Watermark("t", max_delay=DELAY), **kw)


@pytest.mark.ray
def test_windows_close_by_the_sources_watermark(ray_session: Any, tmp_path: Path) -> None:
    """One seed of split sizes (a second one ran the same code; the SIGKILL test below
    checks the same windows, late rows dropped, on a third). Late rows are emitted here:
    CollectSink's ``late_output`` holds each exactly once (the ``late="emit"`` run
    without a kill of test_late_rows_leave_on_their_own_output_exactly_once)."""
    _write_splits(tmp_path / "in", 5, 3)
    source = ParquetSource(str(tmp_path / "in"), batch_size=BATCH)
    late: list[tuple[int, int, int]] = []
    want = _model(source, 2, late)
    assert late  # the input has late rows
    s = _pipeline(tmp_path, source, late="emit").run()
    got = {e: w for e, w in _by_epoch(s).items() if w}
    assert got == {e: w for e, w in want.items() if w}
    assert _rows(s.late_output) == sorted(late)
    assert sum(st["late_events"] for st in s.shards.values()) > 0  # the rule was exercised
    # every split's largest event time is stored with the offsets
    with CheckpointStore(str(tmp_path / "ckpt")) as store:
        stored = store.read_epoch(store.latest_epoch()).offsets["event_maxes"]
    expect = {sp.id: pq.read_table(sp.id)["t"].to_numpy().max() for sp in source.splits()}
    assert stored == expect


@pytest.mark.ray
def test_a_sigkilled_shard_replays_to_the_same_windows(ray_session: Any,
                                                       tmp_path: Path) -> None:
    _write_splits(tmp_path / "in", 5, 6)
    source = ParquetSource(str(tmp_path / "in"), batch_size=BATCH)
    want = _model(source, 2)
    killed: list[int] = []

    def kill(ev: raykv.ProgressEvent) -> None:
        if not killed and ev.kind == "committed" and ev.epoch == 2:
            import ray

            name = sorted(n for n in ev.shards)[1]
            killed.append(ray.get(ev.shards[name].ping.remote()))
            os.kill(killed[0], signal.SIGKILL)

    s = _pipeline(tmp_path, source, on_progress=kill, max_pending_epochs=1).run()
    assert killed and s.restarts == 1
    got = {e: w for e, w in _by_epoch(s).items() if w}
    assert got == {e: w for e, w in want.items() if w}


@pytest.mark.ray
def test_an_event_time_ttl_expires_keys_by_the_sources_watermark(ray_session: Any,
                                                                 tmp_path: Path) -> None:
    """Key 1 is last seen at t=9; the watermark passes 9 + ttl: it is gone at the end."""
    from raykv.operators import TTL, Aggregate
    from raykv.sources import TableSource

    t = pa.table({"k": [1] * 10 + [2] * 90,
                  "t": list(range(10)) + list(range(1000, 1090))})

    def run(ttl: Any, name: str) -> set[int]:
        s = raykv.Pipeline(
            source=TableSource(t, batch_size=10),
            stages=[Aggregate("k", {"t": "count"}, ttl=ttl)], sink=CollectSink(),
            num_shards=2, source_parallelism=1, epoch_every_batches=2,
            checkpoint=str(tmp_path / name), local_dir=str(tmp_path / "local"),
            watermark=Watermark("t", max_delay=0)).run()
        final = s.output_by_epoch[max(s.output_by_epoch)]
        return set(final["k"].to_pylist())

    assert run(TTL(100, time="event", column="t"), "ttl") == {2}
    assert run(None, "none") == {1, 2}


def _rows(t: pa.Table | None) -> list[tuple[int, int, int]]:
    if t is None:
        return []
    return sorted(zip(*(t[c].to_pylist() for c in ("k", "t", "v")), strict=True))


@pytest.mark.ray
def test_late_rows_leave_on_their_own_output_exactly_once(ray_session: Any,
                                                          tmp_path: Path) -> None:
    """``late="emit"``: ParquetSink's ``_late/`` folder; with a SIGKILL in the middle the
    late rows are neither lost nor doubled (CollectSink's ``late_output`` without a kill:
    test_windows_close_by_the_sources_watermark)."""
    from raykv.sinks import ParquetSink

    _write_splits(tmp_path / "in", 5, 3)
    source = ParquetSource(str(tmp_path / "in"), batch_size=BATCH)
    late: list[tuple[int, int, int]] = []
    want = _model(source, 2, late)
    assert late  # the input has late rows

    killed: list[int] = []

    def kill(ev: raykv.ProgressEvent) -> None:
        if not killed and ev.kind == "committed" and ev.epoch == 3:
            import ray

            killed.append(ray.get(ev.shards[sorted(ev.shards)[0]].ping.remote()))
            os.kill(killed[0], signal.SIGKILL)

    out = tmp_path / "out"
    s = _pipeline(tmp_path / "b", source, late="emit", sink=ParquetSink(out),
                  on_progress=kill, max_pending_epochs=1).run()
    assert killed and s.restarts == 1 and s.late_output is None
    assert _rows(pq.read_table(out / "_late")) == sorted(late)
    assert sorted(p.name for p in (out / "_late").glob("*.parquet"))  # part files per epoch
    got = pq.read_table(out, columns=["k", "window_start", "v_sum"])
    assert sorted(zip(*(got[c].to_pylist() for c in got.column_names), strict=True)) == sorted(
        (k, ws, v) for w in want.values() for (k, ws), v in w.items())


def _epochs(source: ParquetSource, readers: int
            ) -> list[tuple[list[pa.Table], int | None, bool]]:
    """The rule of the module docstring as (rows of the epoch, watermark at its barrier,
    final) per epoch: what every shard of the first stage sees, in sum."""
    specs = plan_readers(source, None, readers, key="k",
                         partitioning=Partitioning(num_shards=2, num_key_groups=16))
    batches = []
    for spec in specs:
        t = pa.concat_tables([pq.read_table(sp) for sp, _ in spec.splits])
        batches.append([t.slice(i, BATCH) for i in range(0, t.num_rows, BATCH)])
    out = []
    e = 0
    while True:
        e += 1
        rows = [b for bs in batches for b in bs[(e - 1) * EVERY:e * EVERY]]
        done = [len(bs) < e * EVERY for bs in batches]
        marks = [(max(t for b in bs[:e * EVERY] for t in b["t"].to_pylist()) - DELAY, d)
                 for bs, d in zip(batches, done, strict=True)]
        out.append((rows, combine(marks)[0], all(done)))
        if all(done):
            return out


def _replayed(op: Any, epochs: list[tuple[list[pa.Table], int | None, bool]]
              ) -> tuple[dict[int, list[tuple[Any, ...]]], list[tuple[Any, ...]]]:
    """``op``'s logic on one in-memory engine, fed the epochs with their watermarks."""
    import tempfile

    from raykv.engines import MemOnly

    out, late = {}, []
    with MemOnly(tempfile.mkdtemp()) as store:
        logic = op.build(store)
        logic.advance_watermark(None)  # external watermarks, as in a pipeline with one
        for e, (rows, wm, final) in enumerate(epochs, start=1):
            for t in rows:
                for b in t.to_batches():
                    logic.process(b)
            if wm is not None:
                logic.advance_watermark(wm)
            res = logic.finish() if final else logic.on_barrier(e)
            late += _rows(pa.Table.from_batches([lr]) if (lr := logic.late_rows()) else None)
            if res is not None and res.num_rows:
                out[e] = sorted(zip(*res.to_pydict().values(), strict=True))
    return out, sorted(late)


@pytest.mark.ray
@pytest.mark.parametrize("kind", ["sliding", "session"])
def test_every_window_kind_follows_the_sources_watermark_through_a_kill(
        ray_session: Any, tmp_path: Path, kind: str) -> None:
    """Sliding and session windows over 5 out-of-order splits, a SIGKILLed shard in the
    middle: per epoch the output, and the late rows, equal the operator replayed with the
    epochs and watermarks of the rule. Sliding: 2 readers. Session: 1 reader, because
    whether a row joins an open session or is late depends on the order rows arrive in
    within an epoch, and the interleaving of two readers' rows at a shard is timing
    (a replay after a failure may interleave them otherwise; exactly-once still holds,
    the published output is one of them)."""
    from raykv.operators import SessionWindow, SlidingWindow

    op: Any = (SlidingWindow("k", "t", 2 * SIZE, SIZE // 2, {"v": ["sum", "count"]},
                             allowed_lateness=LATENESS, late="emit") if kind == "sliding"
               else SessionWindow("k", "t", 30, {"v": ["sum", "count"]},
                                  allowed_lateness=LATENESS, late="emit"))
    _write_splits(tmp_path / "in", 5, 8)
    source = ParquetSource(str(tmp_path / "in"), batch_size=BATCH)
    readers = 2 if kind == "sliding" else 1
    want, want_late = _replayed(op, _epochs(source, readers))
    assert want_late  # the rule was exercised
    killed: list[int] = []

    def kill(ev: raykv.ProgressEvent) -> None:
        if not killed and ev.kind == "committed" and ev.epoch == 3:
            import ray

            killed.append(ray.get(ev.shards[sorted(ev.shards)[1]].ping.remote()))
            os.kill(killed[0], signal.SIGKILL)

    s = raykv.Pipeline(
        source=source, stages=[op], sink=CollectSink(), num_shards=2,
        source_parallelism=readers,
        checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
        epoch_every_batches=EVERY, watermark=Watermark("t", max_delay=DELAY),
        on_progress=kill, max_pending_epochs=1).run()
    assert killed and s.restarts == 1
    got = {e: sorted(zip(*t.to_pydict().values(), strict=True))
           for e, t in s.output_by_epoch.items() if t.num_rows}
    assert got == want
    assert _rows(s.late_output) == want_late
