"""Operator throughput on one core, without Ray (not collected by pytest).

Usage::

    python -m tests.operators.bench_operators [--engine memonly] [--batches 60]
        [--rows 65536] [--keys 100000] [--zipf 1.2] [--only aggregate,stateful_map,window]
        [--max-buffered-rows 1000000]

Workloads (events = input rows):

* ``aggregate``: ``Aggregate(key, {"v": ["sum", "count"]})`` (the end-to-end benchmark's
  operator) over zipf-distributed int64 keys (``--zipf`` s > 1: numpy's unbounded zipf
  modulo ``--keys``; s <= 1: the bounded zipf law over ``--keys`` keys, as
  ``raykv.testing.zipf_events`` and the pipeline benchmark), ``process`` per batch plus one
  barrier every ~1,000,000 events (the fold and the changelog are included in the total;
  ``--max-buffered-rows 0`` folds every batch, the behaviour before partial combining).
* ``stateful_map``: a running count per key with a dict output per event (JSON state).
* ``window``: ``TumblingWindow`` sum+count with increasing event time.

Prints events/s over the whole run (barriers included) by wall clock and by the process's
CPU time (robust when other jobs share the cores), and the median/best CPU time per
``process`` call after a warm-up quarter.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from raykv.engines import open_engine
from raykv.operators import Aggregate, KeyedOperator, StatefulMap, TumblingWindow
from raykv.operators.aggregate import DEFAULT_MAX_BUFFERED_ROWS


def count_events(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
    n = (state or 0) + 1
    return n, {"n": n}


def make_batches(args: argparse.Namespace, rows: int) -> list[pa.RecordBatch]:
    rng = np.random.default_rng(42)
    probs = None
    if args.zipf <= 1:  # numpy's zipf needs s > 1: draw from the bounded law (as zipf_events)
        probs = np.arange(1, args.keys + 1, dtype=np.float64) ** -args.zipf
        probs /= probs.sum()
    out = []
    for i in range(args.batches):
        if probs is None:
            keys = (rng.zipf(args.zipf, rows) - 1) % args.keys
        else:
            keys = rng.choice(args.keys, size=rows, p=probs)
        out.append(pa.record_batch({
            "k": pa.array(keys, pa.int64()),
            "v": pa.array(rng.integers(0, 1000, rows), pa.int64()),
            "t": pa.array(np.arange(i * rows, (i + 1) * rows), pa.int64()),
        }))
    return out


def run(name: str, op: KeyedOperator, batches: list[pa.RecordBatch], engine: str,
        barrier_every: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_engine(engine, tmp)
        engine_cpu = _time_engine_calls(store)
        logic = op.build(store)
        per_call: list[float] = []
        events = since_barrier = 0
        epoch = 0
        t0 = time.perf_counter()
        c0 = time.process_time()
        for b in batches:
            t = time.process_time()
            logic.process(b)
            per_call.append(time.process_time() - t)
            events += b.num_rows
            since_barrier += b.num_rows
            if since_barrier >= barrier_every:
                epoch += 1
                logic.on_barrier(epoch)
                since_barrier = 0
        epoch += 1
        logic.on_barrier(epoch)
        total = time.perf_counter() - t0
        cpu = time.process_time() - c0
        store.close()
    rows = batches[0].num_rows
    steady = per_call[len(per_call) // 4:]  # skip the warm-up (state still growing)
    print(
        f"{name:13s} engine={engine:9s} rows/batch={rows:6d} events={events:9d}\n"
        f"    wall={events / total:11,.0f} ev/s   cpu={events / cpu:11,.0f} ev/s   "
        f"process (cpu) median={rows / statistics.median(steady):11,.0f} ev/s "
        f"best={rows / min(steady):11,.0f} ev/s\n"
        f"    cpu in engine multi_get/multi_set: {engine_cpu[0] / cpu:.0%}; operator alone: "
        f"{events / (cpu - engine_cpu[0]):11,.0f} ev/s"
    )


def _time_engine_calls(store: Any) -> list[float]:
    """Wrap the store's batch calls to add their CPU time to the returned cell."""
    spent = [0.0]
    for attr in ("multi_get", "multi_set"):
        inner = getattr(store, attr)

        def timed(arg: Any, _inner: Any = inner) -> Any:
            t = time.process_time()
            try:
                return _inner(arg)
            finally:
                spent[0] += time.process_time() - t

        setattr(store, attr, timed)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="memonly")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--rows", type=int, default=65_536)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--zipf", type=float, default=1.2)
    parser.add_argument("--only", default="aggregate,stateful_map,window")
    parser.add_argument("--max-buffered-rows", type=int, default=DEFAULT_MAX_BUFFERED_ROWS,
                        help="Aggregate's bound on buffered partial rows (0: fold every batch)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    work: dict[str, Callable[[], tuple[KeyedOperator, int, int]]] = {
        "aggregate": lambda: (Aggregate("k", {"v": ["sum", "count"]},
                                        max_buffered_rows=args.max_buffered_rows),
                              args.rows, 1_000_000),
        "stateful_map": lambda: (StatefulMap("k", count_events), 10_000, 200_000),
        "window": lambda: (TumblingWindow("k", "t", 100_000, {"v": ["sum", "count"]}),
                           args.rows, 1_000_000),
    }
    for name, make in work.items():
        if name in only:
            op, rows, barrier_every = make()
            run(name, op, make_batches(args, rows), args.engine, barrier_every)


if __name__ == "__main__":
    main()
