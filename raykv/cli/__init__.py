"""The ``raykv`` command line.

    raykv demo [--engines lsm,hybridlog,appendlog,memonly] [--events N] [--keys K]
    raykv checkpoints {list,show,verify,gc,export,restore-local} URL ...

Exit codes: 0 success, 1 a check failed (wrong result, corrupt store), 2 bad usage or
input (no checkpoints, unknown epoch), 3 the store cannot be reached.
"""

from __future__ import annotations

import argparse
import sys

from raykv.cli import checkpoints
from raykv.cli.common import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``raykv`` command."""
    parser = argparse.ArgumentParser(prog="raykv", description="raykv: keyed state on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run the demo job and check its result",
        description="Count zipf-distributed events per key in every engine, seal every "
        "epoch, reopen, and check the result against a plain dict.",
    )
    demo.add_argument("--engines", default="memonly,lsm,hybridlog,appendlog",
                      help="comma-separated engine names (default: all)")
    demo.add_argument("--events", type=int, default=1_000_000, help="events to process")
    demo.add_argument("--keys", type=int, default=100_000, help="distinct keys")
    demo.add_argument("--batch-size", type=int, default=65_536, help="events per batch")
    demo.add_argument("--dir", default=None, help="data directory (default: a temp dir)")
    checkpoints.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from raykv.demo import engine_demo

        try:
            ok = engine_demo(
                engines=args.engines.split(","), events=args.events, keys=args.keys,
                batch_size=args.batch_size, data_dir=args.dir,
            )
        except (ValueError, TypeError) as err:
            print(f"raykv demo: {err}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK if ok else EXIT_CHECK_FAILED
    if args.command == "checkpoints":
        return checkpoints.run(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
