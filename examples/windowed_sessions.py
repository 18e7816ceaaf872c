"""Event-time tumbling windows per user: activity per user and minute, exactly once.

    python examples/windowed_sessions.py
    python examples/windowed_sessions.py --events 500000 --window-s 300 --no-kill

Events (``user``, ``ts`` a millisecond timestamp, ``amount``) arrive roughly in time
order, each up to ``--disorder-ms`` late. ``TumblingWindow(user, ts, 1 minute,
amount: sum/count/max, allowed_lateness=disorder)`` keeps one state record per (user,
open window) in the shard's engine; each shard's watermark is the largest timestamp it
has seen minus the allowed lateness, and at every epoch barrier the windows whose end is
at or before the watermark are emitted once and dropped from state. The end of input
emits the windows still open. With lateness equal to the disorder no event is late.

By default one shard actor is killed in the middle of the run: the open windows and the
watermark are restored from the last committed epoch, and no window is emitted twice
or lost. The union of all epochs' output must equal a ``pyarrow`` ``group_by`` over
(user, window start) of all events. Exit codes: 0 exact, 1 mismatch, 2 bad input.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from _common import (
    connect_ray,
    disconnect_ray,
    guarded,
    kill_and_wait,
    table_diff,
    verdict,
)

import raykv
from raykv.operators import TumblingWindow
from raykv.sources import TableSource

AGGS = {"amount": ["sum", "count", "max"]}
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000, help="events")
    p.add_argument("--users", type=int, default=300, help="distinct users (zipf)")
    p.add_argument("--step-ms", type=int, default=40, help="mean time between events (ms)")
    p.add_argument("--disorder-ms", type=int, default=5_000, help="max lateness of an event")
    p.add_argument("--window-s", type=int, default=60, help="window length in seconds")
    p.add_argument("--batch-size", type=int, default=5_000, help="events per batch")
    p.add_argument("--every", type=int, default=2, help="batches per epoch")
    p.add_argument("--shards", type=int, default=2, help="shard actors")
    p.add_argument("--engine", default="hybridlog", help="hybridlog, lsm, appendlog, memonly")
    p.add_argument("--no-kill", action="store_true", help="do not kill a shard")
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    return p.parse_args(argv)


def make_events(n: int, users: int, step_ms: int, disorder_ms: int, seed: int = 5) -> pa.Table:
    """``n`` events in arrival order: ``ts`` = arrival slot + a random delay < disorder."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, users + 1) ** 1.05
    user = rng.choice(users, size=n, p=p / p.sum()).astype(np.int64)
    ts = START_MS + np.arange(n, dtype=np.int64) * step_ms - rng.integers(0, disorder_ms, n)
    amount = rng.integers(1, 500, n).astype(np.int64)
    return pa.table({"user": user, "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
                     "amount": amount})


def model(events: pa.Table, window_ms: int) -> pa.Table:
    """Aggregates per (user, window start) of every event (none is late)."""
    ms = pc.cast(events["ts"], pa.int64())
    start = pc.multiply(pc.divide(ms, window_ms), window_ms)  # ts >= 0: divide floors
    t = events.append_column("window_start", pc.cast(start, events["ts"].type))
    aggs = [(c, op) for c, ops in AGGS.items() for op in ops]
    return pa.TableGroupBy(t, ["user", "window_start"], use_threads=False).aggregate(aggs)


def run(args: argparse.Namespace) -> int:
    if args.events < 1 or args.users < 1 or args.step_ms < 1 or args.window_s < 1:
        msg = "--events, --users, --step-ms and --window-s must be >= 1"
        raise ValueError(msg)
    if args.disorder_ms < 1:
        msg = "--disorder-ms must be >= 1"
        raise ValueError(msg)
    events = make_events(args.events, args.users, args.step_ms, args.disorder_ms)
    window = timedelta(seconds=args.window_s)
    started = connect_ray(args.address)
    tmp = tempfile.mkdtemp(prefix="raykv-windows-")
    try:
        killed: list[str] = []
        kill_at = max(2, (args.events // args.batch_size) // args.every // 2)

        def kill_once(ev: raykv.ProgressEvent) -> None:
            if not args.no_kill and ev.kind == "barrier" and ev.epoch == kill_at and not killed:
                name = sorted(ev.shards)[0]
                killed.append(name)
                kill_and_wait(ev.shards[name])

        pipeline = raykv.Pipeline(
            source=TableSource(events, batch_size=args.batch_size),
            stages=[TumblingWindow("user", "ts", window, AGGS,
                                   allowed_lateness=timedelta(milliseconds=args.disorder_ms))],
            num_shards=args.shards, engine=args.engine,
            checkpoint=f"file://{Path(tmp) / 'checkpoints'}", local_dir=str(Path(tmp) / "state"),
            checkpoint_interval=None, epoch_every_batches=args.every, on_progress=kill_once,
            # one reader: each shard sees the events in table order, which the model's
            # per-shard watermarks assume (several readers interleave their splits)
            source_parallelism=1,
        )
        summary = pipeline.run()
        print(summary)
        if killed:
            print(f"killed {killed[0]} at barrier {kill_at}: {summary.restarts} recovery; open "
                  "windows and watermarks restored from the last committed epoch")
        by_epoch = summary.output_by_epoch
        closed = sum(t.num_rows for e, t in by_epoch.items() if e != summary.last_epoch)
        final = by_epoch.get(summary.last_epoch) if summary.last_epoch else None
        print(f"{closed:,} windows emitted at barriers as the watermark passed them, "
              f"{final.num_rows if final is not None else 0:,} still open at the end")
        got = summary.output
        want = model(events, args.window_s * 1000)
        problem = table_diff(got, want, ["user", "window_start"])
        if problem is None and got is not None:
            ends = pc.subtract(pc.cast(got["window_end"], pa.int64()),
                               pc.cast(got["window_start"], pa.int64()))
            lengths = {pc.min(ends).as_py(), pc.max(ends).as_py()}
            if lengths != {args.window_s * 1000}:
                problem = "window_end - window_start is not the window length"
        exact = (f"{want.num_rows:,} (user, {args.window_s} s window) rows, each emitted once, "
                 f"match pyarrow group_by over {args.events:,} events")
        return verdict(problem, exact, killed=bool(killed),
                       restarts=summary.restarts)
    finally:
        disconnect_ray(started)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the example; return the exit code."""
    args = parse_args(argv)
    return guarded("windowed_sessions", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
