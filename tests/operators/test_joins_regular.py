"""Join (regular, with TTL) against a plain-Python model over random interleavings."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from raykv.engines import MemOnly
from raykv.operators.joins import Join
from raykv.operators.joins.common import JoinLogic
from raykv.operators.ttl import TTL
from tests.operators.join_helpers import (
    ENGINES_TESTED,
    Step,
    barrier_positions,
    multiset,
    rows_of,
    run,
    run_rescaled,
    schedule,
    side_rows,
    to_batch,
)


def out_row(key: Any, left: dict[str, Any] | None, right: dict[str, Any] | None
            ) -> dict[str, Any]:
    """An output row: key, left columns, right columns (``s``/``t`` -> ``_right``)."""
    left = left or {"t": None, "lv": None, "s": None}
    right = right or {"t": None, "rv": None, "s": None}
    return {"k": key, "t": left["t"], "lv": left["lv"], "s": left["s"],
            "t_right": right["t"], "rv": right["rv"], "s_right": right["s"]}


class RegularModel:
    """Row by row: match the stored rows of the other side, then store the batch.

    TTL stamps: event time ``t + span`` or the fake clock + span; a barrier removes the
    rows stamped below its horizon, padding unmatched left rows (left joins).
    """

    def __init__(self, how: str, ttl: TTL | None) -> None:
        self.how, self.ttl = how, ttl
        self.stored: list[list[list[Any]]] = [[], []]  # per side: [row, stamp, matched]
        self.out: list[dict[str, Any]] = []
        self.wm: int | None = None
        self.now = 0

    def batch(self, side: int, rows: list[dict[str, Any]]) -> None:
        new = []
        for row in rows:
            matched = False
            for other in self.stored[1 - side]:
                if other[0]["k"] == row["k"]:
                    matched = True
                    other[2] = True
                    pair = (row, other[0]) if side == 0 else (other[0], row)
                    self.out.append(out_row(row["k"], *pair))
            stamp = 0
            if self.ttl is not None:
                span = self.ttl.span
                assert isinstance(span, int)
                stamp = (row["t"] if self.ttl.time == "event" else self.now * 10**9) + \
                    (span if self.ttl.time == "event" else span * 10**9)
            new.append([row, stamp, matched])
        self.stored[side] += new

    def barrier(self) -> None:
        if self.ttl is None:
            return
        if self.ttl.time == "event":
            if self.wm is None:
                return
            horizon = self.wm + 1
        else:
            horizon = self.now * 10**9
        self._expire(lambda e: e[1] < horizon)

    def finish(self) -> None:
        self._expire(lambda e: True)

    def _expire(self, dead: Any) -> None:
        for side in (0, 1):
            keep = []
            for e in self.stored[side]:
                if not dead(e):
                    keep.append(e)
                elif side == 0 and self.how == "left" and not e[2]:
                    self.out.append(out_row(e[0]["k"], e[0], None))
            self.stored[side] = keep


def model(steps: list[Step], how: str, ttl: TTL | None, clock: list[int] | None = None
          ) -> list[dict[str, Any]]:
    m = RegularModel(how, ttl)
    ticks = iter(clock or [])
    for step in steps:
        if step[0] == "batch":
            m.batch(step[1], step[2].to_pylist())
        elif step[0] == "wm":
            m.wm = step[1] if m.wm is None else max(m.wm, step[1])
        else:
            m.barrier()
            m.now = next(ticks, m.now)
    m.finish()
    return m.out


def data(seed: int, n: int = 60, keys: int = 8) -> tuple[list[Any], list[Any]]:
    rng = random.Random(seed)
    return (side_rows(rng, n, keys=keys, times=50, side=0),
            side_rows(rng, n, keys=keys, times=50, side=1))


@pytest.mark.parametrize("engine", ENGINES_TESTED)
@pytest.mark.parametrize("how", ["inner", "left"])
def test_join_matches_model_any_interleaving(tmp_path: Path, engine: str, how: str) -> None:
    left, right = data(1)
    op = Join("k", left="a", right="b", how=how)
    seen = None
    for seed in range(3):
        rng = random.Random(seed)
        steps = schedule(rng, left, right)
        got = multiset(run(op, engine, tmp_path / f"r{seed}", steps, restart_p=0.3, rng=rng))
        assert got == multiset(model(steps, how, None))
        assert seen is None or got == seen  # the same data in another interleaving
        seen = got


@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("seed", range(6))
def test_event_ttl_against_model_with_restarts(tmp_path: Path, how: str, seed: int) -> None:
    left, right = data(seed + 10)
    ttl = TTL(12, time="event", column="t")
    op = Join("k", left="a", right="b", how=how, ttl=ttl)
    rng = random.Random(seed)
    steps = schedule(rng, sorted(left, key=lambda r: r["t"]), sorted(right, key=lambda r: r["t"]),
                     wm_p=1.0)
    got = run(op, "lsm", tmp_path, steps, restart_p=0.4, rng=rng)
    assert multiset(got) == multiset(model(steps, how, ttl))


def test_processing_ttl_with_fake_clock(tmp_path: Path) -> None:
    left, right = data(3)
    ttl = TTL(2)
    op = Join("k", left="a", right="b", how="left", ttl=ttl)
    rng = random.Random(3)
    steps = schedule(rng, left, right)
    ticks = list(range(1, 200))
    clock = iter(ticks)
    now = [0]

    def setup(logic: JoinLogic) -> None:
        logic.clock = lambda: now[0] * 10**9  # type: ignore[attr-defined]

    got: list[dict[str, Any]] = []
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        setup(logic)
        for step in steps:
            if step[0] == "batch":
                logic.process(step[2], step[1])
            elif step[0] == "barrier":  # expires by the clock, then the clock ticks
                got += rows_of(logic.on_barrier(1))
                now[0] = next(clock)
        got += rows_of(logic.finish())
    assert multiset(got) == multiset(model(steps, "left", ttl, ticks))


@pytest.mark.parametrize("how", ["inner", "left"])
def test_rescale_into_two_shards(tmp_path: Path, how: str) -> None:
    left, right = data(5, n=80, keys=20)
    ttl = TTL(15, time="event", column="t")
    op = Join("k", left="a", right="b", how=how, ttl=ttl)
    rng = random.Random(5)
    steps = schedule(rng, sorted(left, key=lambda r: r["t"]),
                     sorted(right, key=lambda r: r["t"]), wm_p=1.0)
    at = barrier_positions(steps)[len(barrier_positions(steps)) // 2]
    got = run_rescaled(op, "hybridlog", tmp_path, steps, at)
    assert multiset(got) == multiset(model(steps, how, ttl))


def test_output_schema_and_collisions(tmp_path: Path) -> None:
    op = Join("user", left="a", right="b", left_key="uid", right_key="id")
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        assert logic.output_schema() is None
        logic.process(pa.record_batch({"uid": [1], "x": ["a"]}), 0)
        logic.process(pa.record_batch({"id": pa.array([1], pa.int64()), "x": [2.5],
                                       "x_r": [1]}), 1)
        out = logic.on_barrier(1)
        assert out is not None
        assert out.schema.names == ["user", "x", "x_right", "x_r"]
        assert out.to_pylist() == [{"user": 1, "x": "a", "x_right": 2.5, "x_r": 1}]


def test_bad_input(tmp_path: Path) -> None:
    op = Join("k", left="a", right="b")
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        with pytest.raises(ValueError, match="key column 'k' is missing from the left input"):
            logic.process(pa.record_batch({"j": [1]}), 0)
        logic.process(to_batch([{"k": 1, "t": 1, "lv": 1, "s": "a"}], 0), 0)
        with pytest.raises(ValueError, match="join keys must have one type"):
            logic.process(pa.record_batch({"k": ["1"], "v": [1]}), 1)
        with pytest.raises(ValueError, match="contains a null at row 1"):
            logic.process(pa.record_batch({"k": [1, None], "v": [1, 2]}), 1)
        with pytest.raises(TypeError, match="cannot keep in its state"):
            logic.process(pa.record_batch({"k": [1], "v": [[1, 2]]}), 1)
        with pytest.raises(ValueError, match="another schema"):
            logic.process(pa.record_batch({"k": [1]}), 0)
        with pytest.raises(TypeError, match="side must be 0"):
            logic.process(pa.record_batch({"k": [1]}), 2)
        with pytest.raises(TypeError, match="RecordBatch"):
            logic.process(pa.table({"k": [1]}), 1)  # type: ignore[arg-type]
        # a refused batch changed nothing: the right side is still unknown
        assert logic.schemas[1] is None and logic.output_schema() is None
    with pytest.raises(ValueError, match="how must be one of"):
        Join("k", left="a", right="b", how="outer")
    with pytest.raises(ValueError, match="left and right are both"):
        Join("k", left="a", right="a")
    bad = Join("k", left="a", right="b", ttl=TTL(5, time="event", column="ts"))
    assert bad.requires_watermark
    with MemOnly(tmp_path / "2") as store:
        logic = bad.build(store)
        with pytest.raises(ValueError, match="time column 'ts' is missing from the right"):
            logic.process(pa.record_batch({"k": [1], "t": [1]}), 1)


def test_restart_refuses_other_operator(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        Join("k", left="a", right="b").build(store).process(
            to_batch([{"k": 1, "t": 1, "lv": 1, "s": "a"}], 0), 0)
    with MemOnly(tmp_path) as store, pytest.raises(ValueError, match="configuration changed"):
        Join("k", left="a", right="b", how="left").build(store)


def test_left_rows_expired_before_any_right_row_wait_for_its_schema(tmp_path: Path) -> None:
    op = Join("k", left="a", right="b", how="left", ttl=TTL(5, time="event", column="t"))
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(to_batch([{"k": 1, "t": 1, "lv": 7, "s": "a"}], 0), 0)
        logic.advance_watermark(20)
        assert logic.on_barrier(1) is None  # expired, but the right columns are unknown
        logic.process(to_batch([{"k": 1, "t": 21, "rv": 3, "s": "b"}], 1), 1)
        out = logic.on_barrier(2)  # it no longer matches; now padded with right columns
        assert out is not None
        assert out.to_pylist() == [out_row(1, {"t": 1, "lv": 7, "s": "a"}, None)]
        assert logic.finish() is None


def test_left_join_without_right_input_at_finish(tmp_path: Path) -> None:
    op = Join("k", left="a", right="b", how="left")
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(to_batch([{"k": 1, "t": 1, "lv": 7, "s": "a"}], 0), 0)
        out = logic.finish()
        assert out is not None
        assert out.to_pylist() == [{"k": 1, "t": 1, "lv": 7, "s": "a"}]


def test_export_state_lists_the_stored_rows(tmp_path: Path) -> None:
    op = Join("k", left="a", right="b")
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        assert logic.export_state() is None  # type: ignore[attr-defined]
        logic.process(to_batch([{"k": 1, "t": 5, "lv": 7, "s": "a"},
                                {"k": 2, "t": 6, "lv": None, "s": None}], 0), 0)
        logic.process(to_batch([{"k": 1, "t": 9, "rv": 3, "s": "b"}], 1), 1)
        before = dict(store.items())
        out = logic.export_state()  # type: ignore[attr-defined]
        assert dict(store.items()) == before
        assert out is not None
        assert out.schema.names == ["k", "_side", "_time", "t", "lv", "s", "t_right", "rv",
                                    "s_right"]
        rows = {(r["k"], r["_side"]): r for r in out.to_pylist()}
        assert set(rows) == {(1, "left"), (2, "left"), (1, "right")}
        assert rows[(1, "right")]["rv"] == 3 and rows[(1, "right")]["lv"] is None
        assert rows[(2, "left")]["t"] == 6


@pytest.mark.parametrize("kind", ["str", "float", "dict", "bin", "ts", "bool"])
def test_key_types_and_canonical_keys(tmp_path: Path, kind: str) -> None:
    from tests.operators.helpers import key_values

    rng = random.Random(kind)
    lk = key_values(rng, kind, 40, 6)
    rk = key_values(rng, kind, 40, 6)
    if kind == "dict":  # a dictionary side joins a plain side of its value type
        rk = rk.dictionary_decode()
    left = pa.record_batch({"k": lk, "i": pa.array(range(40))})
    right = pa.record_batch({"k": rk, "j": pa.array(range(40))})
    op = Join("k", left="a", right="b", how="left")
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(left.slice(0, 25), 0)
        logic.process(right, 1)
        logic.process(left.slice(25), 0)
        got = rows_of_all(logic.on_barrier(1), logic.finish())

    def canon(v: Any) -> Any:
        return v + 0.0 if isinstance(v, float) else v

    want = []
    for lrow in left.to_pylist():
        hits = [r for r in right.to_pylist() if canon(r["k"]) == canon(lrow["k"])]
        want += [(canon(lrow["k"]), lrow["i"], r["j"]) for r in hits]
        if not hits:
            want.append((canon(lrow["k"]), lrow["i"], None))
    assert sorted(got, key=repr) == sorted(want, key=repr)


def rows_of_all(*batches: pa.RecordBatch | None) -> list[tuple[Any, ...]]:
    out = []
    for b in batches:
        if b is not None:
            out += [(r["k"], r["i"], r["j"]) for r in b.to_pylist()]
    return out
