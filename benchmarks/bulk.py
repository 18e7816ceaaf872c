"""Bulk writes: ``multi_set`` of 1,000,000 distinct keys, both kinds of key (issue 15).

The report section of ``benchmarks.engines --bulk`` (the workload is described there):
insert, update and mixed phases in batches of 10,000 and 100,000 pairs, on HybridLog and
AppendLog next to ``dict.update`` of the same batches, once with keys of 8-16 random bytes
(a ``dict`` index) and once with keys of 8 bytes (what an operator keyed by an integer or
time column writes: HybridLog and AppendLog then index them in a ``KeyIndex``,
``raykv/engines/keyindex.py``; ``hybridlog-packed`` and ``appendlog-packed`` write the
same batches as arrays with ``multi_set_packed``, as an ``Aggregate`` fold does). Each
(store, batch) runs in a fresh subprocess. Target (issue 15): ``multi_set`` >= 1M keys/s.

    python -m benchmarks.report --only bulk     # results/report_bulk.json, REPORT.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import tiny
from benchmarks.engines import run_bulk

TARGET = 1_000_000  # keys/s (issue 15)
STORES = ["dict", "hybridlog", "appendlog"]
PACKED_STORES = ["hybridlog-packed", "appendlog-packed"]  # 8-byte keys only
PHASES = ("insert", "update", "mixed")


def report_run(quick: bool, out_dir: Path) -> dict[str, Any]:
    """Both key kinds: 1,000,000 keys (quick: 100,000; tiny: 20,000 in batches of 5,000)."""
    del out_dir  # a table only
    n, batches, repeat = 1_000_000, [10_000, 100_000], 2
    if quick:
        n, batches, repeat = (20_000, [5_000], 1) if tiny() else (100_000, [10_000], 1)
    return {"target": TARGET, "runs": [
        run_bulk(STORES + (PACKED_STORES if eight else []), n, batches, repeat, eight)
        for eight in (False, True)]}


def report_render(res: dict[str, Any], image_prefix: str) -> list[str]:
    """Markdown: keys/s per phase, store, batch size and kind of key."""
    del image_prefix
    first = res["runs"][0]
    loads = ", ".join(f"{r['loadavg']:.1f}" for r in res["runs"])
    lines = [
        "Command: `python -m benchmarks.report --only bulk` (`python -m benchmarks.engines "
        "--bulk [--bulk-8]` measures the same). `multi_set` of "
        f"{first['n_keys']:,} distinct keys with {first['value_len']}-byte values: every key "
        "new (insert), every key again in another order (update), half new and half existing "
        f"(mixed); best of {first['rows'][0].get('repeat', 1)} fresh stores, each in its own "
        "process; `dict` is `dict.update` of the same batches. Target (issue 15): "
        f">= {res['target']:,} keys/s. 8-byte keys are indexed in a table "
        "(`raykv/engines/keyindex.py`), other keys of up to 16 bytes in a two-word table "
        "(`wideindex.py`, stop 36), longer keys in a dict.",
        f"Machine: {first['machine']}; load average "
        f"{loads} at the end of each run.",
        "",
        "| keys | store | batch | insert keys/s | update keys/s | mixed keys/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for run in res["runs"]:
        for r in run["rows"]:
            rates = (" | ".join("error" if "error" in r else f"{r[f'{p}_keys_s']:,.0f}"
                                for p in PHASES))
            lines.append(f"| {run.get('key_len', '8-16')} bytes | {r['store']} | "
                         f"{r['batch']:,} | {rates} |")
    return lines
