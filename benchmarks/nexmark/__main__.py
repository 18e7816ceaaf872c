"""``python -m benchmarks.nexmark [--quick] [--queries q0,q1] [--events N]``.

Prints the generator's events/s (one reader) and, per query, events/s and events/s per
core (``benchmarks/nexmark/bench.py`` says how each is computed); ``--out`` also writes
the results as the report section ``nexmark`` renders them (``python -m benchmarks.report
--only nexmark`` runs the same section).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import start_local_ray
from benchmarks.nexmark.bench import QUICK_QUERIES, measure, report_render
from benchmarks.nexmark.queries import MODEL_ONLY, QUERIES


def main() -> None:
    """Parse the arguments, run, print the table (and write ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{', '.join(QUICK_QUERIES)} over 30,000 events")
    parser.add_argument("--queries", help="comma-separated, e.g. q0,q5 (default: every "
                        f"query with a pipeline: {', '.join(QUERIES)})")
    parser.add_argument("--events", type=int, help="events per query (default 500,000)")
    parser.add_argument("--out", type=Path, help="write the results (JSON) here")
    args = parser.parse_args()
    names = (args.queries.split(",") if args.queries else
             QUICK_QUERIES if args.quick else sorted(QUERIES, key=lambda n: int(n[1:])))
    for n in names:
        if n not in QUERIES:
            why = MODEL_ONLY.get(n, "not a Nexmark query of this suite")
            parser.error(f"{n} has no raykv pipeline yet: {why}")
    events = args.events or (30_000 if args.quick else 500_000)
    started = start_local_ray()
    try:
        res = measure(events, names, 200_000 if args.quick else 2_000_000, args.out)
    finally:
        if started:
            import ray

            ray.shutdown()
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    print("\n".join(report_render(res, "")))


if __name__ == "__main__":
    main()
