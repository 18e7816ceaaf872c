"""A Ray Data ``Dataset`` as the source of a keyed stage, with a shard killed mid-run.

    python examples/ray_data_pipeline.py
    python examples/ray_data_pipeline.py --events 1000000 --no-kill

The dataset is ``ray.data.range(events)`` mapped (``map_batches``, pyarrow batches) into
click events: ``user = id * 7919 % keys``, ``item = id % 97``, ``price = id % 100 + 1``.
``raykv.sources.RayDataSource`` iterates it in a fixed order (``preserve_order``), so an
offset (rows consumed) identifies a position and a recovery replays exactly the rows after
the last committed epoch. One keyed stage, ``Aggregate(user: revenue, clicks, top
price, last item)``, keeps per-user state in 2 shard actors; by default one shard actor is killed
right after epoch 2 is acknowledged, so the run recovers and replays the dataset.

The final aggregates are checked against a ``pyarrow`` ``group_by`` over the same rows
(computed from ``ds.to_arrow_refs()``). Exit codes: 0 exact, 1 mismatch, 2 bad input
(or Ray Data missing: it needs pandas, ``pip install 'ray[data]'``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from _common import (
    connect_ray,
    disconnect_ray,
    guarded,
    kill_and_wait,
    table_diff,
    verdict,
)

import raykv
from raykv.operators import Aggregate
from raykv.sources import RayDataSource

AGGS = {"price": ["sum", "count", "max"], "item": ["last"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000, help="rows in the dataset")
    p.add_argument("--keys", type=int, default=2_000, help="distinct users")
    p.add_argument("--blocks", type=int, default=4, help="dataset blocks")
    p.add_argument("--batch-size", type=int, default=10_000, help="rows per source batch")
    p.add_argument("--every", type=int, default=2, help="batches per epoch")
    p.add_argument("--shards", type=int, default=2, help="shard actors")
    p.add_argument("--engine", default="lsm", help="hybridlog, lsm, appendlog, memonly")
    p.add_argument("--no-kill", action="store_true", help="do not kill a shard")
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    return p.parse_args(argv)


def to_events(batch: pa.Table, keys: int) -> pa.Table:
    """Turn a batch of ``id``s into click events (a pure function of the ids)."""
    ids = batch["id"].to_numpy().astype(np.int64)
    return pa.table({"user": ids * 7919 % keys, "item": ids % 97, "price": ids % 100 + 1})


def run(args: argparse.Namespace) -> int:
    import ray

    if args.events < 1 or args.keys < 1 or args.blocks < 1:
        msg = "--events, --keys and --blocks must be >= 1"
        raise ValueError(msg)
    try:
        import ray.data  # Ray Data needs pandas (the ray[data] extra)
    except ImportError as err:
        msg = (f"this example needs Ray Data, which failed to import ({err}); install it with "
               "pip install 'ray[data]'")
        raise ValueError(msg) from None
    started = connect_ray(args.address)
    tmp = tempfile.mkdtemp(prefix="raykv-raydata-")
    try:
        ds = ray.data.range(args.events, override_num_blocks=args.blocks).map_batches(
            to_events, fn_kwargs={"keys": args.keys}, batch_format="pyarrow")
        killed: list[str] = []

        def kill_once(ev: raykv.ProgressEvent) -> None:
            if not args.no_kill and ev.kind == "barrier" and ev.epoch == 2 and not killed:
                name = sorted(ev.shards)[0]
                killed.append(name)
                kill_and_wait(ev.shards[name])

        pipeline = raykv.Pipeline(
            source=RayDataSource(ds, batch_size=args.batch_size),
            stages=[Aggregate("user", AGGS)],
            num_shards=args.shards, engine=args.engine,
            checkpoint=f"file://{Path(tmp) / 'checkpoints'}", local_dir=str(Path(tmp) / "state"),
            checkpoint_interval=None, epoch_every_batches=args.every, on_progress=kill_once,
        )
        summary = pipeline.run()
        print(summary)
        if killed:
            print(f"killed {killed[0]} right after barrier 2; "
                  f"{summary.restarts} recovery, the dataset replayed from the last commit")
        final = summary.output_by_epoch.get(summary.last_epoch) if summary.last_epoch else None
        rows = pa.concat_tables(ray.get(ds.to_arrow_refs()))
        aggs = [(c, op) for c, ops in AGGS.items() for op in ops]
        want = pa.TableGroupBy(rows, "user", use_threads=False).aggregate(aggs)
        problem = table_diff(final, want, "user")
        exact = (f"{want.num_rows:,} users match pyarrow group_by over the dataset's "
                 f"{rows.num_rows:,} rows")
        return verdict(problem, exact, killed=bool(killed),
                       restarts=summary.restarts)
    finally:
        disconnect_ray(started)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the example; return the exit code."""
    args = parse_args(argv)
    return guarded("ray_data_pipeline", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
