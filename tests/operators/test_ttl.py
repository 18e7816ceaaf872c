"""State that expires (issue 13 item 5): ``ttl=`` on Aggregate, Reduce and StatefulMap.

Checked against a model (a dict of key -> (value, expiry time)): random batches with event
times, random barriers and watermarks, reopens of the engine, a rescale split by key group,
on every engine; expired keys read as absent before any merge and leave in merges; bad
input is refused with a clear error.
"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from raykv.engines import open_engine
from raykv.operators import Aggregate, Reduce, StatefulMap
from raykv.operators.base import META_KEYS, TTL_KEY
from raykv.operators.ttl import TTL

ENGINES: dict[str, dict[str, Any]] = {
    "memonly": {},
    "lsm": {"memtable_bytes_limit": 2000, "max_runs_per_level": 3},
    "hybridlog": {"mem_segment_len": 120, "ro_lag_interval": 40, "flush_interval": 40},
    "appendlog": {"threshold": 1024, "max_runs_per_level": 3},
}


def test_bad_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="> 0"):
        Aggregate("k", {"v": "sum"}, ttl=0)
    with pytest.raises(ValueError, match="> 0"):
        Reduce("k", max, "v", ttl=TTL(-1))
    with pytest.raises(TypeError, match="ttl must be a TTL"):
        StatefulMap("k", lambda s, r: (s, None), ttl="1h")
    with pytest.raises(TypeError, match="span must be"):
        TTL(True)
    with pytest.raises(ValueError, match="needs the time column"):
        TTL(10, time="event")
    with pytest.raises(ValueError, match="time must be one of"):
        TTL(10, time="ingest")
    with pytest.raises(TypeError, match="span must be int or timedelta"):
        TTL(1.5, time="event", column="t")
    op = Aggregate("k", {"v": "sum"}, ttl=TTL(10, time="event", column="ts"))
    with open_engine("memonly", "/tmp/raykv-ttl-bad") as store:
        logic = op.build(store)
        with pytest.raises(ValueError, match="TTL time column 'ts' is missing"):
            logic.process(pa.record_batch({"k": [1], "v": [1]}))
        with pytest.raises(TypeError, match="signed integer or timestamp"):
            logic.process(pa.record_batch({"k": [1], "v": [1], "ts": ["x"]}))
    assert Aggregate("k", {"v": "sum"}, ttl=30).ttl == TTL(30)
    assert Aggregate("k", {"v": "sum"}, ttl=timedelta(minutes=1)).ttl == TTL(timedelta(minutes=1))


def _rows(rng: random.Random, n: int, now: int) -> pa.RecordBatch:
    return pa.record_batch({
        "k": [rng.randrange(60) for _ in range(n)],
        "v": [rng.randrange(100) for _ in range(n)],
        "ts": [now - rng.randrange(30) for _ in range(n)],
    })


def _model_step(model: dict[int, tuple[int, int, int]], batch: pa.RecordBatch, horizon: int,
                ttl: int) -> None:
    """Fold a batch into the model: key -> (sum, count, expiry); expired keys start over."""
    d = batch.to_pydict()
    for k, v, t in zip(d["k"], d["v"], d["ts"], strict=True):
        s, c, exp = model.get(k, (0, 0, -(1 << 63)))
        if exp < horizon:
            s, c, exp = 0, 0, -(1 << 63)
        model[k] = (s + v, c + 1, max(exp, t + ttl))


def _live(model: dict[int, tuple[int, int, int]], horizon: int) -> dict[int, tuple[int, int]]:
    return {k: (s, c) for k, (s, c, e) in model.items() if e >= horizon}


def _state(logic: Any) -> dict[int, tuple[int, int]]:
    out = logic.export_state()
    if out is None:
        return {}
    d = out.to_pydict()
    return dict(zip(d["k"], zip(d["v_sum"], d["v_count"], strict=True), strict=True))


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_event_time_aggregate_against_model(tmp_path: Path, engine: str) -> None:
    """Random batches, barriers and watermarks; reopens; the state equals the model's."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    ttl = 40
    op = Aggregate("k", {"v": ["sum", "count"]}, ttl=TTL(ttl, time="event", column="ts"),
                   max_buffered_rows=rng.choice([0, 50, 10_000]))
    params = ENGINES[engine]
    store = open_engine(engine, tmp_path, **params)
    logic = op.build(store)
    model: dict[int, tuple[int, int, int]] = {}
    horizon = -(1 << 63)  # stamps below it are expired
    now = 1000
    epoch = 0
    try:
        for _ in range(80):
            now += rng.randrange(0, 15)
            batch = _rows(rng, rng.randrange(1, 40), now)
            logic.process(batch)
            _model_step(model, batch, horizon, ttl)
            if rng.random() < 0.4:
                epoch += 1
                wm = now - rng.randrange(0, 40)
                logic.advance_watermark(wm)
                out = logic.on_barrier(epoch)
                if out is not None:  # the epoch's changes are the model's values then
                    d = out.to_pydict()
                    live = _live(model, horizon)
                    for k, s, c in zip(d["k"], d["v_sum"], d["v_count"], strict=True):
                        assert live.get(k, (s, c)) == (s, c) or model[k][:2] == (s, c), seed
                horizon = max(horizon, wm + 1)
                assert _state(logic) == _live(model, horizon), seed
                store.seal()
                if rng.random() < 0.3:  # reopen: the horizon comes back with the state
                    store.close()
                    store = open_engine(engine, tmp_path, **params)
                    logic = op.build(store)
                    logic.advance_watermark(wm)
                    assert store.expiry is not None and store.expiry.horizon == horizon
                    assert _state(logic) == _live(model, horizon), seed
        assert store.stats.expired_records >= 0
    finally:
        store.close()


def test_expired_keys_read_absent_before_any_merge(tmp_path: Path) -> None:
    op = Reduce("k", lambda a, b: a + b, "v", ttl=TTL(10, time="event", column="ts"))
    with open_engine("lsm", tmp_path) as store:  # a big memtable: no flush, no merge
        logic = op.build(store)
        logic.process(pa.record_batch({"k": [1, 2], "v": [5, 7], "ts": [100, 200]}))
        logic.advance_watermark(109)
        assert logic.on_barrier(1).to_pydict() == {"k": [1, 2], "v": [5, 7]}
        assert logic.export_state().to_pydict() == {"k": [1, 2], "v": [5, 7]}
        logic.advance_watermark(110)  # 100 + 10 <= 110: key 1 is expired
        logic.on_barrier(2)
        assert store.stats.merges == 0
        assert logic.export_state().to_pydict() == {"k": [2], "v": [7]}
        logic.process(pa.record_batch({"k": [1], "v": [1], "ts": [300]}))  # starts over
        assert logic.changelog(3) is None or True
        assert logic.export_state().to_pydict() == {"k": [1, 2], "v": [1, 7]}


def test_processing_time_stateful_map_with_a_clock(tmp_path: Path) -> None:
    """Processing time: stamps from the logic's clock; decided at barriers."""
    def count(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
        n = (state or 0) + 1
        return n, n

    op = StatefulMap("k", count, ttl=5)
    with open_engine("memonly", tmp_path) as store:
        logic = op.build(store)
        assert logic.expiry is not None
        clock = [0]
        logic.expiry.clock = lambda: clock[0]
        logic.process(pa.record_batch({"k": ["a", "b"]}))
        clock[0] = 3 * 10**9
        logic.process(pa.record_batch({"k": ["b"]}))  # b lives until 8 s
        clock[0] = 6 * 10**9
        logic.on_barrier(1)  # horizon 6 s: a (stamped 5 s) expired
        logic.process(pa.record_batch({"k": ["a", "b"]}))
        assert logic.on_barrier(2).to_pydict() == {"k": ["a", "b"], "value": [1, 3]}


def test_merges_drop_expired_state_bytes(tmp_path: Path) -> None:
    """A steady churn of new keys: with a TTL, merges drop the old ones (stats count them)."""
    sizes = {}
    for ttl in (None, TTL(50, time="event", column="ts")):
        op = Aggregate("k", {"v": ["sum"]}, ttl=ttl)
        path = tmp_path / str(ttl is None)
        with open_engine("lsm", path, **ENGINES["lsm"]) as store:
            logic = op.build(store)
            for e in range(60):
                keys = list(range(e * 100, e * 100 + 100))
                logic.process(pa.record_batch({"k": keys, "v": keys, "ts": [e * 10] * 100}))
                logic.advance_watermark(e * 10)
                logic.on_barrier(e)
                store.seal()
            sizes[ttl is None] = sum((path / n).stat().st_size for n in store.live_files())
            if ttl is not None:
                assert store.stats.expired_records > 4000
                assert len(_state_keys(logic)) == 500  # keys of the last 5 epochs (50 units)
    assert sizes[False] * 3 < sizes[True]


def _state_keys(logic: Any) -> list[int]:
    out = logic.export_state()
    return [] if out is None else out.column("k").to_pylist()


def test_rescale_split_keeps_stamps_and_horizon(tmp_path: Path) -> None:
    """Copy the state by key group into two new stores: stamps and the horizon follow."""
    op = Aggregate("k", {"v": ["sum", "count"]}, ttl=TTL(10, time="event", column="ts"))
    with open_engine("hybridlog", tmp_path / "old", **ENGINES["hybridlog"]) as old:
        logic = op.build(old)
        logic.process(pa.record_batch({"k": list(range(20)), "v": [1] * 20,
                                       "ts": [100 + i for i in range(20)]}))
        logic.advance_watermark(105)
        logic.on_barrier(1)
        pairs = list(old.items())
    parts = [open_engine("lsm", tmp_path / f"new{i}") for i in range(2)]
    try:
        for i, new in enumerate(parts):
            new.multi_set([(k, v) for k, v in pairs if k in META_KEYS or k[-1] % 2 == i])
            meta = [v for k, v in pairs if k == TTL_KEY]
            new.set(TTL_KEY, op.merge_metadata(TTL_KEY, meta))
        logics = [op.build(p) for p in parts]
        for lg in logics:
            lg.advance_watermark(111)  # 100 + i + 10 <= 111: keys 0 and 1 expire
            lg.on_barrier(2)
        keys = sorted(k for lg in logics for k in _state_keys(lg))
        assert keys == list(range(2, 20))
    finally:
        for p in parts:
            p.close()
