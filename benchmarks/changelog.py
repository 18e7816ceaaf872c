"""The cost of changelogs between stages (issue 17): row kinds and retraction.

Two ``Aggregate`` stages run in one process on ``MemOnly`` engines (no Ray: the
operators' own cost), epoch by epoch: ``Aggregate(user: amount sum, count)`` then a
second stage over its output. Two ways of passing the first stage's output on:

* ``append-only`` (what raykv did before issue 17, and wrong): the new values of the
  changed keys (``on_barrier``), added up by ``Aggregate(user: amount_sum sum)``;
* ``changelog``: the epoch's changes with their kinds (``changelog``: -U/+U pairs, +I),
  retracted and added by the same second stage;
* ``changelog min/max``: the same with ``min`` and ``max`` of ``amount_sum`` next to the
  sum (a multiset per group; one value per user here, so it measures the bookkeeping);
* ``changelog min/max re-keyed``: the second stage keyed on the first's ``amount_count``
  (users per number of events) with sum, min and max of ``amount_sum``: few groups, the
  largest holding most users' distinct sums, so each fold rewrites big multisets (the
  worst case of the encoding).

Reported: events/s of both stages together (first-stage input events over the time of
both), the rows passed between the stages, and the ratio. Best of ``repeat`` runs. Then
the price of keeping a group's multiset in its engine value: the time of an epoch that
retracts one group's max and inserts a new one, against the distinct values the group
holds (each fold rewrites the whole multiset).

    python -m benchmarks.changelog            # 2,000,000 events, 100,000 keys, 10 epochs
    python -m benchmarks.changelog --quick    # 200,000 events
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.common import loadavg, machine, section_main, tiny


def events(n: int, keys: int) -> pa.Table:
    rng = np.random.default_rng(17)
    return pa.table({"user": (rng.zipf(1.2, n) % keys).astype(np.int64),
                     "amount": rng.integers(1, 100, n)})


def one(mode: str, table: pa.Table, epochs: int) -> dict[str, Any]:
    """Both stages over ``table`` in ``epochs`` epochs; seconds and rows between stages."""
    from raykv.engines import MemOnly
    from raykv.operators import Aggregate

    first = Aggregate("user", {"amount": ["sum", "count"]})
    second = {
        "changelog min/max": Aggregate("user", {"amount_sum": ["sum", "min", "max"]}),
        "changelog min/max re-keyed": Aggregate(
            "amount_count", {"amount_sum": ["sum", "min", "max"]}),
    }.get(mode, Aggregate("user", {"amount_sum": ["sum"]}))
    per = -(-table.num_rows // epochs)
    with MemOnly(tempfile.mkdtemp()) as s1, MemOnly(tempfile.mkdtemp()) as s2:
        a, b = first.build(s1), second.build(s2)
        log = mode.startswith("changelog")
        a.keep_before_images = log
        between = 0
        t0 = time.perf_counter()
        for e in range(epochs):
            for batch in table.slice(e * per, per).to_batches(max_chunksize=65_536):
                a.process(batch)
            out = a.changelog(e + 1) if log else a.on_barrier(e + 1)
            if out is not None:
                between += out.num_rows
                b.process(out)
            b.on_barrier(e + 1)
        seconds = time.perf_counter() - t0
        final = b.finish()
    total = int(pa.compute.sum(final.column("amount_sum_sum")).as_py()) if final else 0
    return {"seconds": seconds, "events_per_s": table.num_rows / seconds,
            "rows_between": between, "second_stage_total": total,
            "second_stage_keys": final.num_rows if final else 0}


MODES = {
    "append-only": "new values per epoch (before issue 17)",
    "changelog": "changelog with row kinds, retracted",
    "changelog min/max": "changelog, second stage also min/max (same key)",
    "changelog min/max re-keyed": "changelog, min/max re-keyed on amount_count",
}


def big_group(distinct: int, epochs: int = 5) -> dict[str, Any]:
    """ms per epoch that retracts one group's max and adds a value, the group holding
    ``distinct`` values (a -U/+U pair into ``Aggregate(g: min, max)`` on ``MemOnly``)."""
    from raykv.engines import MemOnly
    from raykv.operators import Aggregate
    from raykv.operators.changelog import CHANGE

    def log(values: list[int], kinds: list[int]) -> pa.RecordBatch:
        return pa.record_batch({"g": np.zeros(len(values), np.int64),
                                "v": np.asarray(values, np.int64),
                                CHANGE: pa.array(kinds, pa.int8())})

    op = Aggregate("g", {"v": ["min", "max"]})
    with MemOnly(tempfile.mkdtemp(), max_value_len=64 * 1024 * 1024) as store:
        logic = op.build(store)
        logic.process(log(list(range(distinct)), [0] * distinct))
        logic.on_barrier(0)
        top = distinct - 1
        t0 = time.perf_counter()
        for e in range(epochs):
            logic.process(log([top, top + 1 + e], [1, 2]))  # -U the max, +U a new one
            logic.on_barrier(e + 1)
            top = top + 1 + e
        seconds = time.perf_counter() - t0
        size = len(store.get(b"\x80" + bytes(7)))
    return {"distinct": distinct, "ms_per_epoch": 1e3 * seconds / epochs, "value_bytes": size}


def measure(n: int, keys: int, epochs: int, repeat: int = 3,
            groups: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Both modes, best of ``repeat``; the true total is the sum of all amounts.
    ``groups``: the distinct values of :func:`big_group` (default by ``n``)."""
    table = events(n, keys)
    out: dict[str, Any] = {"machine": machine(), "load_start": loadavg(), "events": n,
                           "keys": keys, "epochs": epochs,
                           "true_total": int(pa.compute.sum(table["amount"]).as_py())}
    for mode in MODES:
        runs = [one(mode, table, epochs) for _ in range(repeat)]
        out[mode] = min(runs, key=lambda r: r["seconds"])
    out["ratio"] = out["changelog"]["events_per_s"] / out["append-only"]["events_per_s"]
    sizes = groups or ((1_000, 10_000, 100_000) if n < 1_000_000
                       else (1_000, 10_000, 100_000, 1_000_000))
    out["big_group"] = [big_group(d) for d in sizes]
    out["load_end"] = loadavg()
    return out


def report_run(quick: bool, out: Path) -> dict[str, Any]:
    """The report's section."""
    del out
    if quick and tiny():  # the test suite's size
        return measure(50_000, 5_000, 10, repeat=1, groups=(1_000, 10_000))
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
    for mode, what in MODES.items():
        if mode not in res:  # results from before the min/max rows
            continue
        r = res[mode]
        right = "yes" if r["second_stage_total"] == res["true_total"] else (
            f"no ({r['second_stage_total'] / res['true_total']:.2f}x the true total)")
        lines.append(f"| {what} | {r['events_per_s']:,.0f} | {r['rows_between']:,} "
                     f"| {r['second_stage_total']:,} | {right} |")
    lines += ["", f"The changelog costs {1 - res['ratio']:.0%} of the events/s "
              f"({res['ratio']:.2f}x) for results that are right: each update is sent as "
              "a -U/+U pair and the second stage retracts the old value."]
    if "changelog min/max" in res:
        mm, rk = res["changelog min/max"], res["changelog min/max re-keyed"]
        base = res["changelog"]["events_per_s"]
        lines += ["", f"min and max over the changelog (a multiset of values per group) run "
                  f"at {mm['events_per_s'] / base:.2f}x the sum-only changelog with one value "
                  f"per group (the multisets' bookkeeping), and at "
                  f"{rk['events_per_s'] / base:.2f}x re-keyed onto "
                  f"{rk['second_stage_keys']:,} groups of many users each (fewer engine "
                  "writes than 100,000 user keys, although each fold rewrites the touched "
                  "groups' whole multisets, 16 bytes per distinct value)."]
    if "big_group" in res:
        lines += ["", "One group's multiset is rewritten at each fold that touches it: an "
                  "epoch retracting the max of a group holding n distinct values and "
                  "adding one (`Aggregate(g: min, max)`, `MemOnly`):", "",
                  "| distinct values in the group | ms per epoch | state value |",
                  "|---:|---:|---:|"]
        lines += [f"| {r['distinct']:,} | {r['ms_per_epoch']:.2f} | "
                  f"{r['value_bytes'] / 1024:,.0f} KiB |" for r in res["big_group"]]
    lines.append("")
    return lines


def main() -> None:
    section_main("changelog", __doc__, report_run, report_render)


if __name__ == "__main__":
    main()
