"""``raykv drill``: kill shard actors at random moments and prove the output is exact.

    raykv drill [--kills 20] [--events N] [--shards S] [--standby N] [--engine E]
                [--seed X] [--moments mid-batch,upload,acked,recovery]
                [--checkpoint URL] [--json]

Exit codes: 0 every kill survived and every output exact, 1 a mismatch (listed), 2 bad
arguments or a checkpoint location already in use, 3 the checkpoint store cannot be
reached (endpoint down, bucket missing, credentials refused).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from raykv.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_store_options,
    fail,
    run_guarded,
    storage_options,
)

if TYPE_CHECKING:
    from raykv.tools.drill import DrillConfig, KillRecord


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``drill`` on the ``raykv`` subcommand parser ``sub``."""
    from raykv.tools.drill import MOMENTS, TARGETS

    p = sub.add_parser(
        "drill",
        help="recovery drill: kill actors N times, check the output is exact",
        description="Run a keyed aggregation with checkpoints on a local Ray (or --address), "
        "SIGKILL a random shard or source reader actor at a random moment (mid-batch, during "
        "upload, between ack and commit, during recovery) N times in a row, and check that "
        "the published Parquet output and the final state equal a failure-free run (itself "
        "checked against pyarrow group_by). Prints one line per kill. Exit 1 on any mismatch.",
    )
    p.add_argument("--kills", type=int, default=20, help="kills to survive (default 20)")
    p.add_argument("--events", type=int, default=60_000, help="events in the input stream")
    p.add_argument("--keys", type=int, default=2_000, help="distinct users (zipf)")
    p.add_argument("--batch-size", type=int, default=1_000, help="events per source batch")
    p.add_argument("--every", type=int, default=2, help="source batches per epoch")
    p.add_argument("--shards", type=int, default=2, help="shard actors")
    p.add_argument("--standby", type=int, default=0,
                   help="idle actors of each kind ready to replace a killed one "
                        "(Pipeline.standby)")
    p.add_argument("--engine", default="hybridlog",
                   help="state engine: hybridlog, lsm, appendlog, memonly")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
    p.add_argument("--moments", default=",".join(MOMENTS),
                   help=f"comma-separated kill moments (default: {','.join(MOMENTS)})")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated kinds of actors to kill (default: {','.join(TARGETS)})")
    p.add_argument("--checkpoint", dest="url", default=None, metavar="URL",
                   help="base checkpoint URL (s3://bucket/prefix, file://...; default: a "
                   "temporary folder); the drill writes under <URL>/reference and "
                   "<URL>/round-NNN")
    p.add_argument("--work-dir", default=None,
                   help="where outputs and engine state go (default: system temp dir)")
    p.add_argument("--address", default=None,
                   help="Ray address to connect to (default: start a local Ray)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="show raykv's recovery log")
    add_store_options(p)


def run(args: argparse.Namespace) -> int:
    """Run the drill described by ``args``; return the exit code."""
    from raykv.tools.drill import DrillConfig

    moments = tuple(m.strip() for m in args.moments.split(",") if m.strip())
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    try:
        cfg = DrillConfig(
            kills=args.kills, events=args.events, keys=args.keys, batch_size=args.batch_size,
            epoch_every=args.every, num_shards=args.shards, engine=args.engine,
            seed=args.seed, moments=moments, targets=targets, checkpoint=args.url,
            standby=args.standby,
            storage_options=storage_options(args) or None, work_dir=args.work_dir,
        )
    except (ValueError, TypeError) as err:
        return fail(EXIT_USAGE, f"drill: {err}")
    return run_guarded(lambda: _run(cfg, args))


def _run(cfg: DrillConfig, args: argparse.Namespace) -> int:
    import ray

    from raykv.tools.drill import format_table, run_drill, summarize

    logger = logging.getLogger("raykv")
    level = logger.level
    if not args.verbose:
        logger.setLevel(logging.ERROR)  # one warning per kill is expected
    started = False
    if args.address and not ray.is_initialized():
        ray.init(address=args.address, configure_logging=False, log_to_driver=False)
        started = True
    print(f"raykv drill: {cfg.kills} kills, {cfg.events:,} events over {cfg.keys:,} zipf users "
          f"in batches of {cfg.batch_size:,}, an epoch every {cfg.epoch_every} batches "
          f"({cfg.final_epoch} epochs), {cfg.num_shards} shards, engine {cfg.engine}, "
          f"moments {','.join(cfg.moments)}, seed {cfg.seed}", flush=True)

    def on_round(number: int, kills: list[KillRecord]) -> None:
        print(f"round {number}: {len(kills)} kill(s) survived, output exact so far",
              file=sys.stderr, flush=True)

    try:
        result = run_drill(cfg, on_round=on_round)
    finally:
        logger.setLevel(level)
        if started:
            ray.shutdown()
    if args.json:
        doc = {
            "ok": result.ok, "kills": [_record(k) for k in result.kills],
            "undetected": [_record(k) for k in result.undetected], "rounds": result.rounds,
            "epochs": result.epochs, "rows_out": result.rows_out,
            "problems": result.problems, "wall_time": result.wall_time,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(format_table(result.kills))
        print(summarize(result))
    return EXIT_OK if result.ok else EXIT_CHECK_FAILED


def _record(k: KillRecord) -> dict[str, Any]:
    d = asdict(k)
    for internal in ("killed_at", "failure_pos", "next_open"):
        d.pop(internal, None)
    return d
