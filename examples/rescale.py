"""Rescaling: run with 2 shards, stop, resume with 3 from the same checkpoint, check exactness.

    python examples/rescale.py                          # 2 shards -> 3 shards
    python examples/rescale.py --from-shards 4 --to-shards 2 --to-engine lsm
    python examples/rescale.py --checkpoint file:///tmp/c --resume   # rescale an existing run

Keys hash into a fixed number of key groups (chosen when the pipeline is first created);
shards own contiguous ranges of them. Resuming with another shard count (or engine) makes
each new shard rebuild its state from the old shards whose key-group ranges overlap its
own, at the committed epoch; the source replays from that epoch's offset. The example
checks that the final aggregates equal a ``pyarrow`` ``group_by`` over the whole input,
that the resumed run used the new shard count, and that the checkpoint records it.

Exit codes: 0 exact, 1 wrong result or corrupt checkpoint, 2 bad input (no checkpoints,
a location already in use), 3 the checkpoint store cannot be reached.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
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
from raykv.checkpointing import CheckpointStore
from raykv.operators import Aggregate
from raykv.sources import GeneratorSource
from raykv.tools.demo import ZipfEvents

AGGS = {"amount": ["sum", "count", "min", "max"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000, help="events in the stream")
    p.add_argument("--keys", type=int, default=5_000, help="distinct users")
    p.add_argument("--batch-size", type=int, default=5_000, help="events per batch")
    p.add_argument("--every", type=int, default=2, help="batches per epoch")
    p.add_argument("--stop-after", type=int, default=3, help="stop the first run after epoch")
    p.add_argument("--from-shards", type=int, default=2, help="shards of the first run")
    p.add_argument("--to-shards", type=int, default=3, help="shards after the resume")
    p.add_argument("--engine", default="hybridlog", help="engine of the first run")
    p.add_argument("--to-engine", default=None, help="engine after the resume (default: same)")
    p.add_argument("--checkpoint", help="checkpoint URL (default: a temporary folder)")
    p.add_argument("--resume", action="store_true",
                   help="skip the first run: rescale the run already in --checkpoint")
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    if args.resume:
        if not args.checkpoint:
            msg = "--resume needs --checkpoint URL of an earlier run"
            raise ValueError(msg)
        require_checkpoints(args.checkpoint)  # writes nothing; names a corrupt file
    if min(args.from_shards, args.to_shards) < 1:
        msg = "--from-shards and --to-shards must be >= 1"
        raise ValueError(msg)
    tmp = tempfile.mkdtemp(prefix="raykv-rescale-")
    ckpt = args.checkpoint or f"file://{Path(tmp) / 'checkpoints'}"
    gen = ZipfEvents(events=args.events, keys=args.keys, batch_size=args.batch_size)
    started = connect_ray(args.address)
    try:
        holder: dict[str, Any] = {}

        def stop_after(ev: raykv.ProgressEvent) -> None:
            if ev.kind == "committed" and ev.epoch == args.stop_after:
                holder["p"].stop()

        def pipeline(shards: int, engine: str, on_progress: Any = None) -> raykv.Pipeline:
            return raykv.Pipeline(
                source=GeneratorSource(gen, limit=gen.num_batches),
                stages=[Aggregate("user", AGGS)],
                num_shards=shards, engine=engine, checkpoint=ckpt,
                checkpoint_interval=None, epoch_every_batches=args.every,
                max_pending_epochs=1, local_dir=str(Path(tmp) / "state"),
                on_progress=on_progress,
            )

        if not args.resume:
            holder["p"] = pipeline(args.from_shards, args.engine, stop_after)
            first = holder["p"].run()
            print(f"{args.from_shards} shards: {first}")
            if not first.stopped:
                print("the first run was not stopped (too few events for --stop-after)",
                      file=sys.stderr)
                return EXIT_CHECK_FAILED
        engine = args.to_engine or args.engine
        second = pipeline(args.to_shards, engine).run(resume=True)
        print(f"{args.to_shards} shards, resumed from epoch {second.restored_from}: {second}")
        if not second.epochs_committed:
            msg = (f"the run in {ckpt} had already finished (epoch {second.last_epoch} is "
                   "final): nothing to rescale")
            raise ValueError(msg)
        for name, st in sorted(second.shards.items()):
            print(f"  {name}: {int(st['rows_in']):>8,} rows in, engine {st['engine']['name']}")
        problems = []
        if len(second.shards) != args.to_shards:
            problems.append(f"the resumed run had {len(second.shards)} shards, "
                            f"expected {args.to_shards}")
        meta = CheckpointStore(ckpt).read_epoch(second.last_epoch).metadata["stages"][0]
        if meta["num_shards"] != args.to_shards or meta["engine"] != engine:
            problems.append(f"epoch {second.last_epoch} records {meta['num_shards']} shards "
                            f"on {meta['engine']}, expected {args.to_shards} on {engine}")
        final = second.output_by_epoch.get(second.last_epoch) if second.last_epoch else None
        aggs = [(c, op) for c, ops in AGGS.items() for op in ops]
        want = pa.TableGroupBy(gen.table(), "user", use_threads=False).aggregate(aggs)
        problem = table_diff(final, want, "user")
        if problem is not None:
            problems.append(f"final state: {problem}")
        if problems:
            for p in problems:
                print(f"MISMATCH: {p}", file=sys.stderr)
            return EXIT_CHECK_FAILED
        print(f"exact: {want.num_rows:,} users after rescaling {args.from_shards} -> "
              f"{args.to_shards} shards match pyarrow group_by over {args.events:,} events")
        return EXIT_OK
    finally:
        disconnect_ray(started)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the example; return the exit code."""
    args = parse_args(argv)
    return guarded("rescale", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
