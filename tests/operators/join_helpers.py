"""Shared test helpers for the joins: random inputs, schedules, drivers, restarts, rescale."""

from __future__ import annotations

import random
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.keys import encode_keys
from raykv.operators.joins.common import JoinLogic
from raykv.operators.joins.config import JoinOperator
from tests.operators.helpers import open_engine_or_skip

#: A schedule step: ("batch", side, batch) | ("wm", watermark) | ("barrier",)
Step = tuple[Any, ...]
ENGINES_TESTED = ("memonly", "lsm", "hybridlog", "appendlog")


def side_rows(rng: random.Random, n: int, *, keys: int, times: int, side: int
              ) -> list[dict[str, Any]]:
    """``n`` random rows of one side: ``k``, ``t``, a value, a shared name ``s``."""
    value = "lv" if side == 0 else "rv"
    return [
        {"k": rng.randrange(keys), "t": rng.randrange(times),
         value: rng.choice([None, rng.randrange(1000)]),
         "s": rng.choice([None, "", "x", "yz" * rng.randrange(4)])}
        for _ in range(n)
    ]


SCHEMAS = (
    pa.schema([("k", pa.int64()), ("t", pa.int64()), ("lv", pa.int32()), ("s", pa.string())]),
    pa.schema([("k", pa.int64()), ("t", pa.int64()), ("rv", pa.int64()), ("s", pa.string())]),
)


def to_batch(rows: Sequence[dict[str, Any]], side: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(list(rows), schema=SCHEMAS[side])


def schedule(rng: random.Random, left: list[dict[str, Any]], right: list[dict[str, Any]], *,
             max_batch: int = 7, barrier_p: float = 0.3,
             safe_watermarks: bool = False, wm_p: float = 0.0,
             ) -> list[Step]:
    """Interleave the two sides' rows (each side in its order) in random batches.

    Barriers come at random. ``safe_watermarks``: before each barrier a watermark equal to
    the smallest time of the rows still to come (so no row is ever late). ``wm_p``: the
    probability of a watermark near that one (up to 8 ahead: later rows may be late).
    """
    queues = [list(left), list(right)]
    steps: list[Step] = []
    while queues[0] or queues[1]:
        side = rng.choice([s for s in (0, 1) if queues[s]])
        take = rng.randint(1, max_batch)
        rows, queues[side] = queues[side][:take], queues[side][take:]
        steps.append(("batch", side, to_batch(rows, side)))
        if rng.random() < barrier_p:
            rest = [r["t"] for q in queues for r in q]
            if safe_watermarks and rest:
                steps.append(("wm", min(rest)))
            elif wm_p and rng.random() < wm_p and rest:
                steps.append(("wm", min(rest) + rng.randint(-5, 8)))
            steps.append(("barrier",))
    steps.append(("barrier",))
    return steps


def rows_of(batch: pa.RecordBatch | None) -> list[dict[str, Any]]:
    return [] if batch is None else batch.to_pylist()


def multiset(rows: Sequence[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(sorted(r.items())) for r in rows)


def open_store(engine: str, path: Path) -> KVStore:
    return open_engine_or_skip(engine, path)


def run(op: JoinOperator, engine: str, path: Path, steps: Sequence[Step], *,
        restart_p: float = 0.0, rng: random.Random | None = None,
        setup: Callable[[JoinLogic], None] | None = None) -> list[dict[str, Any]]:
    """Drive ``op`` through ``steps`` then ``finish``; with ``restart_p``, after a barrier
    seal, close and reopen the engine and build a new logic (a restart). Returns the rows.
    """
    store = open_store(engine, path)
    logic = op.build(store)
    assert isinstance(logic, JoinLogic)
    if setup:
        setup(logic)
    out: list[dict[str, Any]] = []
    epoch = 0
    try:
        for step in steps:
            if step[0] == "batch":
                logic.process(step[2], step[1])
            elif step[0] == "wm":
                logic.advance_watermark(step[1])
            else:
                epoch += 1
                out += rows_of(logic.on_barrier(epoch))
                if restart_p and rng is not None and rng.random() < restart_p:
                    store.seal()
                    store.close()
                    store = open_store(engine, path)
                    logic = op.build(store)
                    assert isinstance(logic, JoinLogic)
                    if setup:
                        setup(logic)
        out += rows_of(logic.finish())
    finally:
        store.close()
    return out


def shard_of(routing: bytes, n: int = 2) -> int:
    return zlib.crc32(routing) % n


def split_batch(batch: pa.RecordBatch, key: str, n: int = 2) -> list[pa.RecordBatch]:
    shards = [shard_of(k, n) for k in encode_keys(batch.column(key), key)]
    return [batch.filter(pa.array([s == i for s in shards])) for i in range(n)]


def run_rescaled(op: JoinOperator, engine: str, path: Path, steps: Sequence[Step], at: int,
                 setup: Callable[[JoinLogic], None] | None = None) -> list[dict[str, Any]]:
    """Run ``steps[:at]`` (``at`` right after a barrier) on one shard, copy its state by
    ``routing_key`` into two shards (metadata merged), run the rest on both."""
    old = open_store(engine, path / "old")
    logic = op.build(old)
    if setup:
        setup(logic)  # type: ignore[arg-type]
    out: list[dict[str, Any]] = []
    epoch = 0

    def step_on(lg: Any, step: Step, batch: pa.RecordBatch | None = None) -> list[Any]:
        if step[0] == "batch":
            lg.process(step[2] if batch is None else batch, step[1])
        elif step[0] == "wm":
            lg.advance_watermark(step[1])
        else:
            return rows_of(lg.on_barrier(epoch))
        return []

    for step in steps[:at]:
        epoch += step[0] == "barrier"
        out += step_on(logic, step)
    new = [open_store(engine, path / f"new{i}") for i in range(2)]
    meta: dict[bytes, list[bytes]] = {}
    for k, v in old.items():
        r = op.routing_key(k)
        if r is None:
            meta.setdefault(k, []).append(v)
        else:
            new[shard_of(r)].set(k, v)
    for k, vs in meta.items():
        for s in new:
            s.set(k, op.merge_metadata(k, vs))
    old.close()
    logics = [op.build(s) for s in new]
    for lg in logics:
        if setup:
            setup(lg)  # type: ignore[arg-type]
    keys = op.input_keys()
    for step in steps[at:]:
        epoch += step[0] == "barrier"
        if step[0] == "batch":
            parts = split_batch(step[2], keys[step[1]])
            for lg, part in zip(logics, parts, strict=True):
                if part.num_rows:
                    step_on(lg, step, part)
        else:
            for lg in logics:
                out += step_on(lg, step)
    for lg in logics:
        out += rows_of(lg.finish())
    for s in new:
        s.close()
    return out


def barrier_positions(steps: Sequence[Step]) -> list[int]:
    """Indexes just after each barrier step (places to rescale)."""
    return [i + 1 for i, s in enumerate(steps) if s[0] == "barrier"]
