"""The cost of changelogs between stages (issue 17): row kinds and retraction.

Two ``Aggregate`` stages run in one process on ``MemOnly`` engines (no Ray: the
operators' own cost), epoch by epoch: ``Aggregate(user: amount sum, count)`` then a
second stage over its output. Two ways of passing the first stage's output on:

* ``append-only`` (what raykv did before issue 17, and wrong): the new values of the
  changed keys (``on_barrier``), added up by ``Aggregate(user: amount_sum sum)``;
* ``changelog``: the epoch's changes with their kinds (``changelog``: -U/+U pairs, +I),
  retracted and added by the same second stage.

Reported: events/s of both stages together (first-stage input events over the time of
both), the rows passed between the stages, and the ratio. Best of ``repeat`` runs.

    python -m benchmarks.changelog            # 2,000,000 events, 100,000 keys, 10 epochs
    python -m benchmarks.changelog --quick    # 200,000 events
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.common import RESULTS, loadavg, machine


def events(n: int, keys: int) -> pa.Table:
    rng = np.random.default_rng(17)
    return pa.table({"user": (rng.zipf(1.2, n) % keys).astype(np.int64),
                     "amount": rng.integers(1, 100, n)})


def one(mode: str, table: pa.Table, epochs: int) -> dict[str, Any]:
    """Both stages over ``table`` in ``epochs`` epochs; seconds and rows between stages."""
    from raykv.engines import MemOnly
    from raykv.operators import Aggregate

    first = Aggregate("user", {"amount": ["sum", "count"]})
    second = Aggregate("user", {"amount_sum": ["sum"]})
    per = -(-table.num_rows // epochs)
    with MemOnly(tempfile.mkdtemp()) as s1, MemOnly(tempfile.mkdtemp()) as s2:
        a, b = first.build(s1), second.build(s2)
        a.keep_before_images = mode == "changelog"
        between = 0
        t0 = time.perf_counter()
        for e in range(epochs):
            for batch in table.slice(e * per, per).to_batches(max_chunksize=65_536):
                a.process(batch)
            out = a.changelog(e + 1) if mode == "changelog" else a.on_barrier(e + 1)
            if out is not None:
                between += out.num_rows
                b.process(out)
            b.on_barrier(e + 1)
        seconds = time.perf_counter() - t0
        final = b.finish()
    total = int(pa.compute.sum(final.column("amount_sum_sum")).as_py()) if final else 0
    return {"seconds": seconds, "events_per_s": table.num_rows / seconds,
            "rows_between": between, "second_stage_total": total}


def measure(n: int, keys: int, epochs: int, repeat: int = 3) -> dict[str, Any]:
    """Both modes, best of ``repeat``; the true total is the sum of all amounts."""
    table = events(n, keys)
    out: dict[str, Any] = {"machine": machine(), "load_start": loadavg(), "events": n,
                           "keys": keys, "epochs": epochs,
                           "true_total": int(pa.compute.sum(table["amount"]).as_py())}
    for mode in ("append-only", "changelog"):
        runs = [one(mode, table, epochs) for _ in range(repeat)]
        out[mode] = min(runs, key=lambda r: r["seconds"])
    out["ratio"] = out["changelog"]["events_per_s"] / out["append-only"]["events_per_s"]
    out["load_end"] = loadavg()
    return out


def report_run(quick: bool, out: Path) -> dict[str, Any]:
    """The report's section."""
    del out
    return measure(200_000, 20_000, 10) if quick else measure(2_000_000, 100_000, 10)


def report_render(res: dict[str, Any], prefix: str) -> list[str]:
    """Markdown: both modes, their cost and whether the second stage's total is right."""
    del prefix
    lines = [
        f"Two `Aggregate` stages in one process (`MemOnly`, no Ray: the operators' own "
        f"cost), {res['events']:,} zipf events over {res['keys']:,} keys in "
        f"{res['epochs']} epochs; the second stage sums the first stage's `amount_sum` per "
        f"user. Best of 3 (load average {res['load_start']:.1f} -> {res['load_end']:.1f}). "
        "`python -m benchmarks.changelog`", "",
        "| passed between the stages | events/s (both stages) | rows between the stages "
        "| second stage's total | right? |",
        "|---|---:|---:|---:|---|",
    ]
    for mode, what in (("append-only", "new values per epoch (before issue 17)"),
                       ("changelog", "changelog with row kinds, retracted")):
        r = res[mode]
        right = "yes" if r["second_stage_total"] == res["true_total"] else (
            f"no ({r['second_stage_total'] / res['true_total']:.2f}x the true total)")
        lines.append(f"| {what} | {r['events_per_s']:,.0f} | {r['rows_between']:,} "
                     f"| {r['second_stage_total']:,} | {right} |")
    lines += ["", f"The changelog costs {1 - res['ratio']:.0%} of the events/s "
              f"({res['ratio']:.2f}x) for results that are right: each update is sent as "
              "a -U/+U pair and the second stage retracts the old value.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "report_changelog.json")
    args = parser.parse_args()
    res = report_run(args.quick, args.out.parent)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print("\n".join(report_render(res, "")))


if __name__ == "__main__":
    main()
