"""``Aggregate`` over many distinct keys: events/s with 1,000,000 zipf keys (issue 15).

Workload (issue 15, "many distinct keys are slow"): keyed sum+count (``Aggregate``) over
4,000,000 events whose ``user`` is drawn zipf (s=0.99) from 1,000,000 keys, 2 HybridLog
shards, batches of 262,144, checkpoints off / every 1 s / every 0.1 s: the throughput rows
of ``benchmarks.pipeline`` with ``--keys 1000000``. Next to them, a plain pyarrow
``group_by`` of the same table in this process (the issue's yardstick: it ran 12x faster
than the pipeline). Target: >= 2,000,000 events/s with 1 s checkpoints.

    python -m benchmarks.manykeys            # results/manykeys.json
    python -m benchmarks.manykeys --quick    # 400,000 events, 100,000 keys
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, loadavg, machine, machine_line, start_local_ray, tiny

TARGET = 2_000_000  # events/s with 1 s checkpoints (issue 15)
MODES = ("off", "1s", "0.1s")


def run(events: int, keys: int, repeat: int) -> dict[str, Any]:
    """The pipeline rows (best of ``repeat``) and the in-process group_by, one local Ray."""
    from benchmarks.pipeline import Bench, make_parser, model
    from raykv.testing import zipf_events

    table = zipf_events(events, keys, seed=0)
    t = time.perf_counter()
    model(table)
    group_by_s = time.perf_counter() - t
    args = make_parser().parse_args(["--events", str(events), "--keys", str(keys),
                                     "--repeat", str(repeat), "--modes", ",".join(MODES)])
    owned = start_local_ray()
    try:
        load = loadavg()
        rows = Bench(args).throughput(table)
    finally:
        if owned:
            import ray

            ray.shutdown()
    return {"machine": machine(), "loadavg_start": load, "events": events, "keys": keys,
            "repeat": repeat, "group_by_events_per_s": events / group_by_s, "rows": rows,
            "target": TARGET}


def report_run(quick: bool, out_dir: Path) -> dict[str, Any]:
    """The report's ``manykeys`` section: the full sizes, or 400,000 events over 100,000
    keys (quick; the test suite's size, ``RAYKV_BENCH_TINY=1``: 100,000 over 20,000)."""
    del out_dir  # a table only
    if quick:
        return run(100_000, 20_000, 1) if tiny() else run(400_000, 100_000, 1)
    return run(4_000_000, 1_000_000, 2)


def report_render(res: dict[str, Any], image_prefix: str) -> list[str]:
    """Markdown: events/s per checkpoint interval against the target and a group_by."""
    del image_prefix
    gb = res["group_by_events_per_s"]
    lines = [
        "Command: `python -m benchmarks.manykeys` (or `python -m benchmarks.report --only "
        f"manykeys`). `Aggregate` sum+count over {res['events']:,} events with "
        f"{res['keys']:,} zipf (s=0.99) keys, 2 HybridLog shards, batches of 262,144, best "
        f"of {res['repeat']}; load average {res['loadavg_start']:.1f} at the start. Target "
        f"(issue 15): >= {res['target']:,} events/s with 1 s checkpoints. A plain pyarrow "
        f"group_by of the same table in one process: {gb:,.0f} events/s.",
        f"Machine: {machine_line(res['machine'])}.",
        "",
        "| checkpoints | events/s | x group_by | overhead | epochs | correct |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label in MODES:
        r = res["rows"].get(label)
        if r is None:
            continue
        ov = r.get("overhead")
        lines.append(
            f"| {label} | {r['events_per_s']:,.0f} | {r['events_per_s'] / gb:.2f} | "
            f"{'-' if ov is None else f'{ov:.0%}'} | {r['epochs']} | {r['correct']} |")
    one = res["rows"].get("1s")
    if one is not None:
        met = "met" if one["events_per_s"] >= res["target"] else "missed"
        lines += ["", f"With 1 s checkpoints: {one['events_per_s']:,.0f} events/s, "
                  f"{one['events_per_s'] / res['target']:.2f}x the target ({met})."]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="400,000 events, 100,000 keys")
    ap.add_argument("--repeat", type=int, default=2, help="runs per mode (best)")
    ap.add_argument("--out", type=Path, default=RESULTS / "manykeys.json")
    args = ap.parse_args(argv)
    events, keys = (400_000, 100_000) if args.quick else (4_000_000, 1_000_000)
    res = run(events, keys, args.repeat)
    print("\n".join(report_render(res, "")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0 if all(r["correct"] for r in res["rows"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
