"""IntervalJoin against plain-Python models over random interleavings and watermarks."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from raykv.engines import MemOnly
from raykv.operators import IntervalJoin
from tests.operators.join_helpers import (
    ENGINES_TESTED,
    Step,
    barrier_positions,
    multiset,
    run,
    run_rescaled,
    schedule,
    side_rows,
    to_batch,
)
from tests.operators.test_joins_regular import out_row


def all_pairs(left: list[Any], right: list[Any], lower: int, upper: int, how: str
              ) -> list[dict[str, Any]]:
    """Every pair of the whole input (what a run without late rows must give)."""
    out = []
    for lrow in left:
        hits = [r for r in right if r["k"] == lrow["k"] and lower <= r["t"] - lrow["t"] <= upper]
        out += [out_row(lrow["k"], lrow, r) for r in hits]
        if how == "left" and not hits:
            out.append(out_row(lrow["k"], lrow, None))
    return out


class IntervalModel:
    """Row by row, with the documented late rule and expiry by the epoch watermark."""

    def __init__(self, lower: int, upper: int, how: str) -> None:
        self.lower, self.upper, self.how = lower, upper, how
        self.stored: list[list[list[Any]]] = [[], []]  # [row, matched, waiting]
        self.epoch_wm: int | None = None
        self.next_wm: int | None = None
        self.late = 0
        self.right_seen = False
        self.out: list[dict[str, Any]] = []

    def fits(self, lrow: dict[str, Any], rrow: dict[str, Any]) -> bool:
        return lrow["k"] == rrow["k"] and self.lower <= rrow["t"] - lrow["t"] <= self.upper

    def batch(self, side: int, rows: list[dict[str, Any]]) -> None:
        self.right_seen |= side == 1
        new = []
        for row in rows:
            if self.epoch_wm is not None and row["t"] < self.epoch_wm:
                self.late += 1
                continue
            matched = False
            for other in self.stored[1 - side]:
                if other[2]:
                    continue
                pair = (row, other[0]) if side == 0 else (other[0], row)
                if self.fits(*pair):
                    matched = other[1] = True
                    self.out.append(out_row(row["k"], *pair))
            new.append([row, matched, False])
        self.stored[side] += new

    def barrier(self) -> None:
        wm = self.next_wm
        if wm is None or (self.epoch_wm is not None and wm <= self.epoch_wm):
            return
        self.epoch_wm = wm
        self._expire(lambda side, r: r["t"] + (self.upper if side == 0 else -self.lower) < wm)

    def finish(self) -> None:
        self.right_seen = True
        self._expire(lambda side, r: True)

    def _expire(self, dead: Any) -> None:
        for side in (0, 1):
            keep = []
            for e in self.stored[side]:
                if not dead(side, e[0]):
                    keep.append(e)
                elif side == 0 and self.how == "left" and not e[1]:
                    if self.right_seen:
                        self.out.append(out_row(e[0]["k"], e[0], None))
                    else:
                        e[2] = True
                        keep.append(e)
            self.stored[side] = keep


def model(steps: list[Step], lower: int, upper: int, how: str) -> IntervalModel:
    m = IntervalModel(lower, upper, how)
    for step in steps:
        if step[0] == "batch":
            m.batch(step[1], step[2].to_pylist())
        elif step[0] == "wm":
            m.next_wm = step[1] if m.next_wm is None else max(m.next_wm, step[1])
        else:
            m.barrier()
    m.finish()
    return m


def data(seed: int, n: int = 70, keys: int = 6, times: int = 60) -> tuple[list[Any], list[Any]]:
    rng = random.Random(seed)
    return (side_rows(rng, n, keys=keys, times=times, side=0),
            side_rows(rng, n, keys=keys, times=times, side=1))


def by_time(rows: list[Any], rng: random.Random, jitter: int = 0) -> list[Any]:
    """Rows roughly in time order (``jitter``: out of order by up to that much)."""
    return sorted(rows, key=lambda r: r["t"] + rng.randint(0, jitter))


@pytest.mark.parametrize("engine", ENGINES_TESTED)
@pytest.mark.parametrize(("lower", "upper", "how"), [(-3, 5, "inner"), (0, 0, "left"),
                                                     (2, 9, "left")])
def test_no_late_rows_equals_all_pairs_in_any_interleaving(
        tmp_path: Path, engine: str, lower: int, upper: int, how: str) -> None:
    left, right = data(1)
    op = IntervalJoin("k", left="a", right="b", time_column="t", lower=lower, upper=upper,
                      how=how)
    want = multiset(all_pairs(left, right, lower, upper, how))
    for seed in range(3):
        rng = random.Random(seed)
        steps = schedule(rng, by_time(left, rng, 10), by_time(right, rng, 10),
                         safe_watermarks=True)
        got = run(op, engine, tmp_path / str(seed), steps, restart_p=0.3, rng=rng)
        assert multiset(got) == want


@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("seed", range(8))
def test_late_rows_and_expiry_against_model(tmp_path: Path, how: str, seed: int) -> None:
    rng = random.Random(seed)
    left, right = data(seed + 100)
    lower, upper = rng.randint(-6, 2), rng.randint(2, 8)
    bucket = rng.choice([None, 1, 3])
    op = IntervalJoin("k", left="a", right="b", time_column="t", lower=lower, upper=upper,
                      how=how, bucket=bucket)
    steps = schedule(rng, by_time(left, rng, 15), by_time(right, rng, 15), wm_p=0.8)
    m = model(steps, lower, upper, how)
    store_dir = tmp_path / "s"
    got = run(op, "appendlog", store_dir, steps, restart_p=0.3, rng=rng)
    assert multiset(got) == multiset(m.out)
    with MemOnly(tmp_path / "late") as store:  # the late count survives in the engine
        logic = op.build(store)
        for step in steps:
            if step[0] == "batch":
                logic.process(step[2], step[1])
            elif step[0] == "wm":
                logic.advance_watermark(step[1])
            else:
                logic.on_barrier(1)
        assert logic.late_events == m.late


@pytest.mark.parametrize("how", ["inner", "left"])
def test_rescale_into_two_shards(tmp_path: Path, how: str) -> None:
    rng = random.Random(7)
    left, right = data(7, n=100, keys=30)
    op = IntervalJoin("k", left="a", right="b", time_column="t", lower=-4, upper=4, how=how)
    steps = schedule(rng, by_time(left, rng, 8), by_time(right, rng, 8), wm_p=0.8)
    at = barrier_positions(steps)[len(barrier_positions(steps)) // 2]
    got = run_rescaled(op, "lsm", tmp_path, steps, at)
    assert multiset(got) == multiset(model(steps, -4, 4, how).out)


def test_state_expires_by_watermark(tmp_path: Path) -> None:
    op = IntervalJoin("k", left="a", right="b", time_column="t", lower=0, upper=10)
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(to_batch([{"k": i, "t": i, "lv": 1, "s": None} for i in range(50)], 0), 0)
        logic.process(to_batch([{"k": i, "t": i + 5, "rv": 1, "s": None} for i in range(50)], 1), 1)
        out = logic.on_barrier(1)
        assert out is not None and out.num_rows == 50
        logic.advance_watermark(1000)
        logic.on_barrier(2)
        assert [k for k, _ in store.items() if op.routing_key(k) is not None] == []
        assert logic.buckets == ({}, {})


def test_timestamps_and_timedeltas(tmp_path: Path) -> None:
    op = IntervalJoin("id", left="orders", right="payments", time_column="ts",
                      lower=dt.timedelta(0), upper=dt.timedelta(minutes=10))
    ts = pa.timestamp("ms")
    base = 1_700_000_000_000
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(pa.record_batch({"id": ["a", "b"], "ts": pa.array([base, base], ts)}), 0)
        logic.process(pa.record_batch({
            "id": ["a", "b"], "ts": pa.array([base + 600_000, base + 600_001], ts),
            "amount": [3.5, 4.0]}), 1)
        out = logic.on_barrier(1)
        assert out is not None
        assert out.schema.names == ["id", "ts", "ts_right", "amount"]
        assert out.column("id").to_pylist() == ["a"]
    with pytest.raises(ValueError, match="whole number of s"):
        bad = IntervalJoin("id", left="o", right="p", time_column="ts", lower=dt.timedelta(0),
                           upper=dt.timedelta(milliseconds=1))
        with MemOnly(tmp_path / "2") as store:
            bad.build(store).process(pa.record_batch({
                "id": ["a"], "ts": pa.array([1], pa.timestamp("s"))}), 0)


def test_bad_config_and_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="event-time column of both inputs"):
        IntervalJoin("k", left="a", right="b", lower=0, upper=1)
    with pytest.raises(ValueError, match=r"lower .* must be <= upper"):
        IntervalJoin("k", left="a", right="b", time_column="t", lower=2, upper=1)
    with pytest.raises(TypeError, match="both be ints or both timedeltas"):
        IntervalJoin("k", left="a", right="b", time_column="t", lower=0,
                     upper=dt.timedelta(1))
    op = IntervalJoin("k", left="a", right="b", left_time="lt", right_time="rt",
                      lower=0, upper=1)
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        with pytest.raises(ValueError, match="time column 'lt' is missing from the left"):
            logic.process(pa.record_batch({"k": [1], "t": [1]}), 0)
        with pytest.raises(TypeError, match="signed integer or timestamp"):
            logic.process(pa.record_batch({"k": [1], "lt": [1.5]}), 0)
        logic.process(pa.record_batch({"k": [1], "lt": [1]}), 0)
        with pytest.raises(ValueError, match="time column 'rt' of the right input is timestamp"):
            logic.process(pa.record_batch({"k": [1], "rt": pa.array([1], pa.timestamp("s"))}), 1)
        with pytest.raises(ValueError, match="null at row 0"):
            logic.process(pa.record_batch({"k": [1], "lt": pa.array([None], pa.int64())}), 0)
        with pytest.raises(ValueError, match="outside the supported range"):
            logic.process(pa.record_batch({"k": [1], "lt": [2**62]}), 0)
