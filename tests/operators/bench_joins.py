"""Operator-level throughput of the joins (one process, no Ray).

``python -m tests.operators.bench_joins [--rows N] [--keys K] [--engine NAME] [--only a,b]``

Both inputs get ``N / 2`` rows (int64 key uniform over ``K`` keys, an int64 time in ms
increasing by about 1 per row per side with up to 2 s of disorder, an int64 and a float
value and a short string), in 65,536-row batches that alternate between the sides; every
8 batches the watermark (the smallest time still to come) and a barrier. Reports events/s
by the process's CPU time (input rows over CPU seconds, ``finish`` included), the output
rows, and the share of CPU inside the engine's ``multi_get``/``multi_set``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from raykv.engines import engine_class
from raykv.engines.base import KVStore
from raykv.operators import TTL, IntervalJoin, Join, LookupJoin, WindowJoin
from raykv.operators.joins.config import JoinOperator

BATCH = 65_536


def side(rng: np.random.Generator, n: int, keys: int, which: int) -> pa.Table:
    t = np.arange(n, dtype=np.int64) * 2 + rng.integers(0, 2000, n)
    return pa.table({
        "k": rng.integers(0, keys, n),
        "t": t,
        "v" if which == 0 else "w": rng.integers(0, 1 << 40, n),
        "x" if which == 0 else "y": rng.random(n),
        "s": pa.array(np.char.add("s", (rng.integers(0, 1000, n)).astype(str))),
    })


def steps(rows: int, keys: int) -> Iterator[tuple[str, Any, int]]:
    rng = np.random.default_rng(0)
    half = rows // 2
    sides = [side(rng, half, keys, 0), side(rng, half, keys, 1)]
    mins = [s.column("t").to_numpy()[::-1] for s in sides]
    rest = [np.minimum.accumulate(m)[::-1] for m in mins]  # smallest time from row i on
    n_batches = (half + BATCH - 1) // BATCH
    i = 0
    for b in range(n_batches):
        for s in (0, 1):
            yield "batch", sides[s].slice(b * BATCH, BATCH).to_batches()[0], s
            i += 1
            if i % 8 == 0:
                nxt = (b + 1) * BATCH
                wm = min(int(r[nxt]) if nxt < half else 1 << 60 for r in rest)
                yield "barrier", wm, 0


def joins() -> dict[str, JoinOperator]:
    return {
        "join": Join("k", left="a", right="b", ttl=TTL(10_000, time="event", column="t")),
        "join_left": Join("k", left="a", right="b", how="left",
                          ttl=TTL(10_000, time="event", column="t")),
        "interval": IntervalJoin("k", left="a", right="b", time_column="t", lower=-5_000,
                                 upper=5_000),
        "interval_left": IntervalJoin("k", left="a", right="b", time_column="t",
                                      lower=-5_000, upper=5_000, how="left"),
        "window": WindowJoin("k", left="a", right="b", time_column="t", size=10_000),
        "window_sliding": WindowJoin("k", left="a", right="b", time_column="t",
                                     size=10_000, slide=5_000),
        "lookup": LookupJoin("k", left="a", right="b", time_column="t"),
        "lookup_latest": LookupJoin("k", left="a", right="b", version="latest"),
    }


def timed(store: KVStore) -> list[float]:
    """Wrap the engine's multi_get/multi_set to add their CPU time to the returned cell."""
    spent = [0.0]
    for name in ("multi_get", "multi_set"):
        fn: Callable[..., Any] = getattr(store, name)

        def wrapper(*a: Any, _fn: Callable[..., Any] = fn, **kw: Any) -> Any:
            t0 = time.process_time()
            try:
                return _fn(*a, **kw)
            finally:
                spent[0] += time.process_time() - t0

        setattr(store, name, wrapper)
    return spent


def bench(op: JoinOperator, engine: str, rows: int, keys: int) -> dict[str, float]:
    work = list(steps(rows, keys))
    with tempfile.TemporaryDirectory() as tmp:
        store = engine_class(engine)(Path(tmp))
        spent = timed(store)
        logic = op.build(store)
        out = 0
        epoch = 0
        t0 = time.process_time()
        for kind, x, s in work:
            if kind == "batch":
                logic.process(x, s)
            else:
                epoch += 1
                logic.advance_watermark(x)  # type: ignore[attr-defined]
                res = logic.on_barrier(epoch)
                out += 0 if res is None else res.num_rows
        res = logic.finish()
        out += 0 if res is None else res.num_rows
        cpu = time.process_time() - t0
        store.close()
    return {"events_per_s": rows / cpu, "cpu_s": cpu, "out_rows": out,
            "engine_share": spent[0] / cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--engine", default="memonly")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    print(f"{args.rows:,} rows, {args.keys:,} keys, engine {args.engine}")
    for name, op in joins().items():
        if only and name not in only:
            continue
        r = bench(op, args.engine, args.rows, args.keys)
        print(f"{name:15s} {r['events_per_s'] / 1e3:8.0f} K events/s (CPU)  "
              f"cpu {r['cpu_s']:6.2f} s  out {int(r['out_rows']):>10,}  "
              f"engine {r['engine_share']:4.0%}", flush=True)


if __name__ == "__main__":
    main()
