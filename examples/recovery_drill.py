"""Recovery drill: kill random shard actors at random moments N times, prove exactness.

    python examples/recovery_drill.py                 # 10 kills
    python examples/recovery_drill.py --kills 20 --seed 7 --engine lsm --shards 3
    raykv drill --kills 20                            # the same from the command line

The drill (``raykv.tools.drill``) runs ``Aggregate(user: amount sum/count/min/max)`` over a
deterministic zipf event stream with checkpoints and a ``ParquetSink``, and kills a
random shard actor (``ray.kill``), one kill at a time, at one of these moments:

* ``mid-batch``: while the shards process batches (just after an epoch commits);
* ``upload``: while the shards seal and upload an epoch (just after its barrier);
* ``acked``: after every shard acknowledged an epoch, before the driver commits it;
* ``recovery``: while the replacement shards of the previous kill restore their state.

After each kill the run restores every shard to the last committed epoch and replays the
source. The published Parquet output (read back with pyarrow, epoch by epoch) and the
final state must equal a failure-free run, itself checked against ``pyarrow`` ``group_by``;
every checkpoint store must verify. Prints one line per kill: when it struck, the epoch
restored, the events replayed and the recovery time.

Exit codes: 0 every kill survived and every output exact, 1 a mismatch, 2 bad arguments,
3 the checkpoint store cannot be reached.
"""

from __future__ import annotations

import argparse
import sys

from _common import EXIT_CHECK_FAILED, EXIT_OK, connect_ray, disconnect_ray, guarded

from raykv.tools.drill import MOMENTS, DrillConfig, format_table, run_drill, summarize


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10, help="kills to survive")
    p.add_argument("--events", type=int, default=40_000, help="events in the stream")
    p.add_argument("--keys", type=int, default=2_000, help="distinct users")
    p.add_argument("--batch-size", type=int, default=1_000, help="events per batch")
    p.add_argument("--every", type=int, default=2, help="batches per epoch")
    p.add_argument("--shards", type=int, default=2, help="shard actors")
    p.add_argument("--engine", default="hybridlog", help="hybridlog, lsm, appendlog, memonly")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
    p.add_argument("--moments", default=",".join(MOMENTS), help="comma-separated kill moments")
    p.add_argument("--checkpoint", default=None, help="base checkpoint URL (default: temporary)")
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    cfg = DrillConfig(
        kills=args.kills, events=args.events, keys=args.keys, batch_size=args.batch_size,
        epoch_every=args.every, num_shards=args.shards, engine=args.engine, seed=args.seed,
        moments=tuple(m.strip() for m in args.moments.split(",") if m.strip()),
        checkpoint=args.checkpoint,
    )
    print(f"recovery drill: {cfg.kills} kills over {cfg.final_epoch} epochs of "
          f"{cfg.events:,} events, {cfg.num_shards} shards on {cfg.engine}", flush=True)
    started = connect_ray(args.address)
    try:
        result = run_drill(cfg, on_round=lambda n, kills: print(
            f"round {n}: {len(kills)} kill(s) survived", flush=True))
    finally:
        disconnect_ray(started)
    print(format_table(result.kills))
    print(summarize(result))
    return EXIT_OK if result.ok else EXIT_CHECK_FAILED


def main(argv: list[str] | None = None) -> int:
    """Run the example; return the exit code."""
    args = parse_args(argv)
    return guarded("recovery_drill", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
