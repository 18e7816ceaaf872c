"""Keyed aggregation: Parquet files in, per-user aggregates out, checkpoints, resume.

    python examples/keyed_aggregation.py                       # generate input, run, stop, resume
    python examples/keyed_aggregation.py --work /tmp/agg       # keep everything in /tmp/agg
    python examples/keyed_aggregation.py --work /tmp/agg --resume            # continue that run
    python examples/keyed_aggregation.py --work /tmp/agg --restore-epoch 2   # roll back to 2

What it does:

1. writes ``--events`` zipf events (user, amount, qty, country, t) as ``--files`` Parquet
   files (unless ``--input`` names a folder of Parquet files with those columns);
2. runs ``ParquetSource -> Aggregate(user: amount sum/count/mean, qty sum/max) ->
   ParquetSink`` on Ray with 2 shards, committing an epoch every ``--every`` batches to
   the checkpoint store, and *stops* after epoch ``--stop-after`` (like a job being
   shut down);
3. resumes from the latest committed epoch (``run(resume=True)``) until the input ends;
4. reads the published Parquet output back with pyarrow and checks the final epoch
   (every user's final aggregates) against ``pyarrow`` ``group_by`` over the input files.

Exit codes: 0 exact, 1 wrong result or corrupt checkpoint (names the file), 2 bad input
(no checkpoints to resume, an epoch that does not exist, output folder in use),
3 the checkpoint store cannot be reached.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from _common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    connect_ray,
    disconnect_ray,
    guarded,
    require_checkpoints,
    table_diff,
)

import raykv
from raykv.operators import Aggregate
from raykv.sinks import ParquetSink
from raykv.sources import ParquetSource
from raykv.testing import zipf_events
from raykv.tools.drill import read_published

AGGS = {"amount": ["sum", "count", "mean"], "qty": ["sum", "max"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", help="folder for input, checkpoints, output (default: temporary)")
    p.add_argument("--input", help="folder of Parquet files (default: generate <work>/events)")
    p.add_argument("--checkpoint", help="checkpoint URL (default: file://<work>/checkpoints)")
    p.add_argument("--output", help="output folder (default: <work>/output)")
    p.add_argument("--events", type=int, default=200_000, help="events to generate")
    p.add_argument("--keys", type=int, default=5_000, help="distinct users to generate")
    p.add_argument("--files", type=int, default=4, help="Parquet files to generate")
    p.add_argument("--batch-size", type=int, default=10_000, help="rows per source batch")
    p.add_argument("--every", type=int, default=2, help="source batches per epoch")
    p.add_argument("--shards", type=int, default=2, help="shard actors")
    p.add_argument("--engine", default="hybridlog", help="hybridlog, lsm, appendlog, memonly")
    p.add_argument("--stop-after", type=int, default=2,
                   help="stop the first run after this epoch commits, then resume (0: no stop)")
    p.add_argument("--resume", action="store_true",
                   help="only resume the run in --work/--checkpoint from its latest epoch")
    p.add_argument("--restore-epoch", type=int, default=None,
                   help="only resume from this committed epoch (later epochs are abandoned)")
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    return p.parse_args(argv)


def make_input(folder: Path, events: int, keys: int, files: int) -> None:
    """Write ``events`` zipf events as ``files`` Parquet files in ``folder``."""
    table = zipf_events(events, keys, seed=3)
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-events // files)
    for i in range(files):
        pq.write_table(table.slice(i * per, per), folder / f"events-{i:03d}.parquet",
                       row_group_size=25_000)


def model(input_dir: Path) -> pa.Table:
    """Every user's final aggregates, from a plain pyarrow group_by over the input."""
    table = pq.read_table(input_dir)
    aggs = [(col, op) for col, ops in AGGS.items() for op in ops]
    return pa.TableGroupBy(table, "user", use_threads=False).aggregate(aggs)


def run(args: argparse.Namespace) -> int:
    resuming = args.resume or args.restore_epoch is not None
    if resuming:
        if not (args.work or (args.checkpoint and args.input and args.output)):
            msg = ("--resume/--restore-epoch need the --work folder of a run (or its "
                   "--checkpoint, --input and --output)")
            raise ValueError(msg)
        work = Path(args.work) if args.work else None
        ckpt = args.checkpoint or f"file://{Path(args.work).resolve() / 'checkpoints'}"
        start = require_checkpoints(ckpt, epoch=args.restore_epoch)  # writes nothing
        input_dir = Path(args.input) if args.input else Path(args.work or ".") / "events"
        if not input_dir.is_dir():
            msg = f"input folder {input_dir} does not exist: resume needs the run's input"
            raise ValueError(msg)
        print(f"resuming {ckpt} from epoch {start}")
    else:
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="raykv-agg-"))
        ckpt = args.checkpoint or f"file://{work.resolve() / 'checkpoints'}"
        input_dir = Path(args.input) if args.input else work / "events"
        if not args.input:
            make_input(input_dir, args.events, args.keys, args.files)
    out = Path(args.output) if args.output else Path(args.work or work or ".") / "output"
    local = str(work / "state") if work is not None else None
    started = connect_ray(args.address)
    try:
        holder: dict[str, Any] = {}

        def stop_after(ev: raykv.ProgressEvent) -> None:
            if ev.kind == "committed" and ev.epoch == args.stop_after:
                holder["p"].stop()  # graceful: commits the current epoch, then returns

        def pipeline(on_progress: Any = None) -> raykv.Pipeline:
            return raykv.Pipeline(
                source=ParquetSource(input_dir, batch_size=args.batch_size),
                stages=[Aggregate("user", AGGS)],
                sink=ParquetSink(out),
                num_shards=args.shards, engine=args.engine, checkpoint=ckpt,
                checkpoint_interval=None, epoch_every_batches=args.every,
                local_dir=local, on_progress=on_progress,
                max_pending_epochs=1,  # commit each epoch before the next: stop lands early
            )

        if resuming:
            summary = pipeline().run(resume=args.resume, restore_epoch=args.restore_epoch)
            print(summary)
        else:
            holder["p"] = pipeline(stop_after if args.stop_after > 0 else None)
            first = holder["p"].run()
            print(f"first run:  {first}")
            if first.stopped:
                second = pipeline().run(resume=True)
                print(f"resumed from epoch {second.restored_from}: {second}")
        published = read_published(out)
        if not published:
            print(f"no published output in {out}", file=sys.stderr)
            return EXIT_CHECK_FAILED
        last = max(published)
        want = model(input_dir)
        problem = table_diff(published[last], want, "user")
        if problem is not None:
            print(f"MISMATCH in the final epoch {last} of {out}: {problem}", file=sys.stderr)
            return EXIT_CHECK_FAILED
        top = published[last].sort_by([("amount_sum", "descending")]).slice(0, 5)
        print("top users by amount:")
        for r in top.to_pylist():
            print(f"  user {r['user']:>6}  sum {r['amount_sum']:>10.2f}  "
                  f"count {r['amount_count']:>6}  qty max {r['qty_max']}")
        print(f"exact: {want.num_rows:,} users in epoch {last} match pyarrow group_by over "
              f"{input_dir} ({len(published)} epochs published in {out})")
        return EXIT_OK
    finally:
        disconnect_ray(started)
        if not args.work and not resuming and work is not None:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the example; return the exit code."""
    args = parse_args(argv)
    return guarded("keyed_aggregation", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
