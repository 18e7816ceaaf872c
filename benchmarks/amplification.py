"""Write and space amplification per engine and compaction strategy, under updates.

Definitions (the LSM references in ``shared/seeds/003`` and ``004``):

* **write amplification** = bytes the engine wrote to its files (runs, indexes,
  manifests; ``EngineStats.disk_bytes``) / key + value bytes the application wrote
  (``EngineStats.app_bytes``). Above 1 when data is rewritten by flushes, merges or
  compaction; below 1 when updates are absorbed in memory before they reach a file.
* **space amplification** = bytes of the engine's data directory / live logical bytes
  (key + value bytes of the live keys). Above 1 while stale versions wait for a merge.

Workload: load ``n_keys`` keys (8-byte keys, 24-byte values), then rounds of ``n_keys / 2``
updates of uniform random existing keys, one ``seal()`` after the load and after every
round (one checkpoint per round, as a pipeline epoch does). After every seal: cumulative
write amplification and the space amplification at that moment. The x axis is the
update/insert ratio: updates written so far / keys inserted.

Configurations: LSMTree tiering (``max_runs_per_level=4``) and leveling (``=1``), both
with a 64 KiB memtable so that the levels fill at this size; HybridLog with compaction off
and on; AppendLog; MemOnly (its seal writes the whole state: the naive baseline). Other
parameters are each engine's defaults.

    python -m benchmarks.report --only amplification
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import dir_bytes, pyplot, save, write_csv

KEY_LEN, VALUE_LEN = 8, 24
MEMTABLE = 64 * 1024
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "lsm tiering (R=4)": ("lsm", {"max_runs_per_level": 4, "memtable_bytes_limit": MEMTABLE}),
    "lsm leveling (R=1)": ("lsm", {"max_runs_per_level": 1, "memtable_bytes_limit": MEMTABLE}),
    "hybridlog compaction off": ("hybridlog", {"compaction_enabled": False}),
    "hybridlog compaction on": ("hybridlog", {"compaction_enabled": True}),
    "appendlog": ("appendlog", {}),
    "memonly": ("memonly", {}),
}


def run_config(label: str, n_keys: int, rounds: int, seed: int = 7) -> list[dict[str, Any]]:
    """Load, then ``rounds`` rounds of updates; a row per seal."""
    from raykv.engines import open_engine

    engine, params = CONFIGS[label]
    rng = random.Random(seed)
    live_bytes = n_keys * (KEY_LEN + VALUE_LEN)
    per_round = max(1, n_keys // 2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = open_engine(engine, Path(tmp, "db"), **params)
        try:
            keys = [i.to_bytes(KEY_LEN, "big") for i in range(n_keys)]
            for lo in range(0, n_keys, 10_000):
                store.multi_set([(k, rng.randbytes(VALUE_LEN)) for k in keys[lo:lo + 10_000]])
            for r in range(rounds + 1):
                if r:
                    upd = [(keys[rng.randrange(n_keys)], rng.randbytes(VALUE_LEN))
                           for _ in range(per_round)]
                    for lo in range(0, per_round, 10_000):
                        store.multi_set(upd[lo:lo + 10_000])
                store.seal()
                st = store.stats
                disk = dir_bytes(Path(tmp, "db"))
                rows.append({
                    "config": label, "engine": engine, "round": r,
                    "updates": r * per_round, "update_ratio": r * per_round / n_keys,
                    "app_bytes": st.app_bytes, "disk_bytes_written": st.disk_bytes,
                    "write_amp": st.write_amplification, "disk_bytes": disk,
                    "live_bytes": live_bytes, "space_amp": disk / live_bytes,
                    "merges": st.merges, "seals": st.seals,
                })
        finally:
            store.close()
    return rows


def sizes(quick: bool) -> dict[str, int]:
    return {"n_keys": 10_000, "rounds": 10} if quick else {"n_keys": 100_000, "rounds": 20}


def run(quick: bool, out: Path) -> dict[str, Any]:
    """Every configuration; CSV and the two-panel figure."""
    s = sizes(quick)
    rows: list[dict[str, Any]] = []
    for label in CONFIGS:
        print(f"  amplification: {label}", flush=True)
        rows += run_config(label, s["n_keys"], s["rounds"])
    write_csv(out / "amplification.csv", rows)
    plot(out / "amplification.png", rows, s)
    return {"sizes": s, "rows": rows}


def plot(path: Path, rows: list[dict[str, Any]], s: dict[str, int]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in CONFIGS:
        rs = [r for r in rows if r["config"] == label]
        style = "--" if label.endswith(("on", "(R=1)")) else "-"
        for ax, key in zip(axes, ("write_amp", "space_amp"), strict=True):
            ax.plot([r["update_ratio"] for r in rs], [r[key] for r in rs], style, marker=".",
                    label=label)
    axes[0].set_ylabel("write amplification (disk bytes written / app bytes written)")
    axes[1].set_ylabel("space amplification (disk bytes / live bytes)")
    for ax in axes:
        ax.set_xlabel("updates written / keys inserted")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{s['n_keys']:,} keys ({KEY_LEN}-byte keys, {VALUE_LEN}-byte values), "
                 f"{s['n_keys'] // 2:,} uniform updates per round, a seal after each round",
                 fontsize=10)
    save(fig, path)


def final(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last row (after every round) of each configuration."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out[r["config"]] = r
    return out


def render(res: dict[str, Any], img: str) -> list[str]:
    """Markdown: the figure and the final amplification of each configuration, ranked."""
    s, last = res["sizes"], final(res["rows"])
    ratio = next(iter(last.values()))["update_ratio"]
    by_w = sorted(last.values(), key=lambda r: r["write_amp"])
    by_s = sorted(last.values(), key=lambda r: r["space_amp"])
    lev, tier = last.get("lsm leveling (R=1)"), last.get("lsm tiering (R=4)")
    out = [
        f"Write amplification = bytes written to the engine's files / key + value bytes "
        f"written by the application; space amplification = bytes in the data directory / "
        f"live key + value bytes. {s['n_keys']:,} keys are loaded, then {s['rounds']} rounds "
        f"of {s['n_keys'] // 2:,} uniform updates, with a `seal()` after the load and after "
        "each round (one checkpoint per round). LSM runs use a 64 KiB memtable; the other "
        "parameters are the engines' defaults.",
        "",
        f"![amplification]({img}amplification.png)",
        "",
        f"After {ratio:.0f} updates per key, write amplification from lowest to highest: "
        + ", ".join(f"{r['config']} {r['write_amp']:.2f}" for r in by_w)
        + "; space amplification: "
        + ", ".join(f"{r['config']} {r['space_amp']:.2f}" for r in by_s) + ".",
    ]
    if lev and tier:
        rel = "more" if lev["write_amp"] > tier["write_amp"] else "no more"
        out.append(
            f"Leveling rewrote {lev['write_amp'] / tier['write_amp']:.1f}x the bytes tiering "
            f"did ({rel} write amplification) and holds {lev['space_amp']:.2f}x the live "
            f"data on disk against tiering's {tier['space_amp']:.2f}x.")
    out.append("")
    return out
