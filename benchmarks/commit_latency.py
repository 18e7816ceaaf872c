"""How long an epoch takes to commit, against the calls in flight to a shard.

A reader puts an epoch's barrier after the last batch it sent, and the barrier reaches
the shard behind every call queued before it: ``Pipeline.max_inflight`` calls per
reader, or with ``Pipeline.inflight_seconds`` (buffer debloating, the default 0.1 s) as
many as make that many seconds of the shard's work. So the queue sets how long a barrier
takes to become a commit, which is the latency of exactly-once output (a sink publishes
an epoch at its commit) and, with the epochs' length, how much work a failure throws
away.

The run is ``benchmarks.recovery``'s ``StatefulMap`` without kills (one output row per
event, 3 shards, one reader per shard, 50,000-row batches, 0.25 s checkpoints), once
per configuration, the configurations alternated ``--repeat`` times. A configuration is
``M`` (``max_inflight=M``, a fixed count: ``inflight_seconds=None``) or ``M@T``
(``max_inflight=M, inflight_seconds=T``). Reported per run: processing time, epochs
committed, and the median and largest time from the driver asking for an epoch's
barrier to its commit.

    python -m benchmarks.commit_latency                       # 3,000,000 events: 1, 4, 4@0.1
    python -m benchmarks.commit_latency --values 4,4@0.1 --events 500000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, loadavg, machine, machine_line, start_local_ray
from benchmarks.recovery import one_run


def parse(value: str) -> tuple[int, float | None]:
    """``"M"`` -> ``(M, None)``; ``"M@T"`` -> ``(M, T)`` (module docstring)."""
    m, _, t = value.partition("@")
    return int(m), float(t) if t else None


def measure(events: int, values: list[str], repeat: int) -> dict[str, Any]:
    """One kill-free run per configuration, alternated ``repeat`` times."""
    owned = start_local_ray()
    try:
        configs = [(v, *parse(v)) for v in values]
        runs = [{"config": v, "load": loadavg(),
                 **one_run(events, 0, 0, seed=0, max_inflight=m, inflight_seconds=t)}
                for _ in range(repeat) for v, m, t in configs]
    finally:
        if owned:
            import ray

            ray.shutdown()
    return {"events": events, "machine": machine(), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--events", type=int, default=3_000_000)
    ap.add_argument("--values", default="1,4,4@0.1",
                    help="configurations to compare: M or M@T (module docstring)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "commit_latency.json")
    args = ap.parse_args(argv)
    res = measure(args.events, args.values.split(","), args.repeat)
    print(f"{machine_line(res['machine'])}; StatefulMap, {args.events:,} events, 3 shards, "
          "0.25 s checkpoints")
    print("| max_inflight[@inflight_seconds] | processing | epochs | "
          "barrier -> commit p50 / max | load |")
    print("|---|---:|---:|---:|---:|")
    for r in res["runs"]:
        print(f"| {r['config']} | {r['processing']:.2f} s | {r['epochs']} | "
              f"{r['commit_lag_p50']:.2f} / {r['commit_lag_max']:.2f} s | {r['load']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
