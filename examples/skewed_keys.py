"""Skewed keys: hot-key metrics, key-group rebalancing, and a kill right after a rebalance.

    python examples/skewed_keys.py                       # zipf(1.2), 4 shards, one kill
    python examples/skewed_keys.py --zipf 1.5 --no-kill  # a hotter key, no failure

What it does:

1. draws ``--events`` events whose ``user`` is zipf(``--zipf``) over ``--keys`` users;
2. runs ``StatefulMap(user: running count)`` on 4 shards with
   ``rebalance=Rebalance(...)``: every shard tracks its hot keys (Space-Saving) and
   per-key-group load; when the busiest shard carries more than 1.25x the mean, the
   coordinator moves key groups off it at an epoch boundary, through the checkpoint;
3. kills a shard actor as soon as the first rebalance is done (before the new assignment
   is committed), so recovery must restore the old assignment and rebalance again;
4. prints the per-shard load before and after (``str(summary)``) and checks every
   user's final count against ``pyarrow`` ``group_by``.

Exit codes: 0 exact, 1 wrong result, 2 bad arguments, 3 the checkpoint store cannot be
reached.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
from _common import connect_ray, disconnect_ray, guarded, kill_and_wait, table_diff, verdict

import raykv
from raykv.operators import StatefulMap
from raykv.rebalance import Rebalance
from raykv.sources import TableSource
from raykv.testing import zipf_events


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=400_000, help="events to generate")
    p.add_argument("--keys", type=int, default=50_000, help="distinct users")
    p.add_argument("--zipf", type=float, default=1.2, help="zipf exponent s of the users")
    p.add_argument("--shards", type=int, default=4, help="shard actors")
    p.add_argument("--batch-size", type=int, default=10_000, help="events per batch")
    p.add_argument("--no-kill", action="store_true", help="do not kill a shard")
    p.add_argument("--checkpoint", help="checkpoint URL (default: a temporary folder)")
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    return p.parse_args(argv)


def running_count(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
    n = (state or 0) + 1
    return n, {"n": n}


def run(args: argparse.Namespace) -> int:
    if args.events <= 0 or args.keys <= 0 or args.shards < 2 or args.zipf <= 0:
        msg = "--events and --keys must be positive, --shards >= 2, --zipf > 0"
        raise ValueError(msg)
    table = zipf_events(args.events, args.keys, s=args.zipf, seed=1)
    killed: list[str] = []

    def on_progress(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "rebalanced":
            print(f"rebalanced at epoch {ev.epoch}: {ev.detail['moved_groups']} key groups "
                  f"moved, {ev.detail['copied_keys']:,} keys copied, planned shares "
                  f"{ev.detail['before']} -> {ev.detail['after']}", flush=True)
            if not args.no_kill and not killed:
                name = sorted(ev.shards)[0]
                killed.append(name)
                print(f"killing {name} before the new assignment is committed", flush=True)
                kill_and_wait(ev.shards[name])

    started = connect_ray(args.address)
    try:
        with tempfile.TemporaryDirectory(prefix="raykv-skew-") as tmp:
            summary = raykv.Pipeline(
                source=TableSource(table, batch_size=args.batch_size),
                stages=[StatefulMap("user", running_count)], num_shards=args.shards,
                checkpoint=args.checkpoint or str(Path(tmp) / "ckpt"),
                local_dir=str(Path(tmp) / "state"), epoch_every_batches=2,
                max_pending_epochs=1,
                rebalance=Rebalance(min_rows=args.events // 20, cooldown_epochs=0),
                on_progress=on_progress,
            ).run()
    finally:
        disconnect_ray(started)
    print(summary)
    out = summary.output
    assert out is not None
    final = pa.TableGroupBy(out, "user").aggregate([("n", "max")]).rename_columns(
        ["user", "count"])
    model = table.group_by("user").aggregate([("user", "count")]).rename_columns(
        ["user", "count"])
    problem = table_diff(final, model, "user")
    if problem is None and out.num_rows != args.events:
        problem = f"{out.num_rows:,} output rows for {args.events:,} events (one per event)"
    if problem is None and not summary.rebalances:
        problem = "no rebalance happened (is the input skewed enough?)"
    return verdict(problem, f"{final.num_rows:,} users' counts equal pyarrow group_by",
                   killed=bool(killed), restarts=summary.restarts)


def main(argv: list[str] | None = None) -> int:
    """Run the example; return the exit code."""
    args = parse_args(argv)
    return guarded("skewed_keys", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
