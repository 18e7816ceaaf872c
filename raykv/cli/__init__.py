"""The ``raykv`` command line.

    raykv demo [--events N] [--keys K] [--engine E] [--shards S] [--checkpoint URL]
    raykv checkpoints {list,show,verify,gc,export,restore-local} URL ...

Exit codes: 0 success, 1 a check failed (wrong result, corrupt store), 2 bad usage or
input (no checkpoints, unknown epoch), 3 the store cannot be reached.
"""

from __future__ import annotations

import argparse
import sys

from raykv.cli import checkpoints, drill
from raykv.cli.common import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``raykv`` command."""
    parser = argparse.ArgumentParser(prog="raykv", description="raykv: keyed state on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run the demo job (keyed aggregation on a local Ray) and check its result",
        description="Aggregate a generated zipf event stream per user on a local Ray with "
        "checkpoints, show progress, print the top users, and check the result against a "
        "plain pyarrow group_by. Exit 1 if it does not match.",
    )
    demo.add_argument("--events", type=int, default=3_000_000, help="events to generate")
    demo.add_argument("--keys", type=int, default=100_000, help="distinct users")
    demo.add_argument("--engine", default="hybridlog",
                      help="state engine: hybridlog, lsm, appendlog, memonly")
    demo.add_argument("--shards", type=int, default=2, help="shard actors")
    demo.add_argument("--checkpoint", default=None,
                      help="checkpoint URL (default: a temporary local folder)")
    demo.add_argument("--interval", type=float, default=1.0, help="seconds between checkpoints")
    demo.add_argument("--batch-size", type=int, default=65_536, help="events per batch")
    demo.add_argument("--rebalance", action="store_true",
                      help="move key groups off the busiest shard at epoch boundaries")
    demo.add_argument("--engines-only", metavar="ENGINES", default=None,
                      help="instead, run the engine-only demo (no Ray) on these comma-separated "
                      "engines")
    checkpoints.add_parser(sub)
    drill.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from raykv.tools.demo import engine_demo, pipeline_demo

        try:
            if args.engines_only:
                ok = engine_demo(engines=args.engines_only.split(","), events=args.events,
                                 keys=args.keys, batch_size=args.batch_size)
            else:
                ok = pipeline_demo(
                    events=args.events, keys=args.keys, engine=args.engine,
                    num_shards=args.shards, checkpoint=args.checkpoint,
                    checkpoint_interval=args.interval, batch_size=args.batch_size,
                    rebalance=args.rebalance,
                )
        except (ValueError, TypeError) as err:
            print(f"raykv demo: {err}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK if ok else EXIT_CHECK_FAILED
    if args.command == "checkpoints":
        return checkpoints.run(args)
    if args.command == "drill":
        return drill.run(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
