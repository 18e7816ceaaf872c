"""Thesis 4.1: one engine parameter at a time, its effect on latency, memory and disk.

For every value of a parameter a fresh engine (thesis 4.2 parameters otherwise,
``benchmarks.engines.THESIS_PARAMS``) takes ``n_ops`` single ``set`` calls, then ``n_ops``
single ``get`` calls (5-byte keys and values, ``n_keys`` uniform keys, the engines
benchmark's workload). Every call is timed on its own (``time.perf_counter_ns``, closed
loop: the next call starts when the previous returns); the figures show p50 and p95, the
CSV also p99, max and the mean (the mean includes the rare flushes and merges that the
percentiles step over). Memory is the engine's ``__sizeof__`` after the writes; disk is the
data directory after ``seal()``.

Sweeps (thesis figures): LSM ``max_runs_per_level`` (4.1), ``density_factor`` (4.2, 4.3),
``memtable_bytes_limit`` (4.4, 4.5); HybridLog ``mem_segment_len`` (4.6, 4.7),
``ro_lag_interval`` (4.8), ``flush_interval`` (4.9), compaction off/on (4.10, 4.11, also as
latency vs offered throughput, open loop, see ``latency.py``); AppendLog ``threshold``
(4.12) and ``max_runs_per_level`` (4.13).

    python -m benchmarks.report --only sweeps

Outputs: ``sweep_<engine>_<param>.csv`` and ``.png``, ``sweep_hybridlog_compaction_rates``.
"""

from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import engines, latency
from benchmarks.common import MIB, dir_bytes, percentiles, pyplot, save, tiny, write_csv

# HybridLog sweeps of the intervals keep the thesis' 210,000-record segment; the compaction
# runs use a 40,000-record segment so that 100,000 keys spill to runs that compaction can
# rewrite (with 210,000 every key stays in memory and compaction has nothing to do).
SPILL = {"mem_segment_len": 40_000}


@dataclass(frozen=True)
class Sweep:
    """One parameter of one engine, the values tried, and what else changes."""

    engine: str
    param: str
    values: list[Any]
    base: dict[str, Any] = field(default_factory=dict)
    figure: str = ""

    @property
    def name(self) -> str:
        return f"{self.engine}_{self.param}"

    def params(self, value: Any) -> dict[str, Any]:
        p = {**engines.THESIS_PARAMS[self.engine], **self.base, self.param: value}
        if self.engine == "hybridlog":  # the segment must hold both intervals
            need = p["ro_lag_interval"] + p["flush_interval"]
            p["mem_segment_len"] = max(p["mem_segment_len"], need)
        return p


SWEEPS = [
    Sweep("lsm", "max_runs_per_level", [1, 2, 3, 5, 10, 20], figure="4.1"),
    Sweep("lsm", "density_factor", [1, 4, 10, 32, 128, 256], figure="4.2, 4.3"),
    Sweep("lsm", "memtable_bytes_limit", [3_000, 10_000, 100_000, 1_000_000, 10_000_000],
          figure="4.4, 4.5"),
    Sweep("hybridlog", "mem_segment_len", [20_000, 50_000, 100_000, 210_000, 400_000],
          figure="4.6, 4.7"),
    Sweep("hybridlog", "ro_lag_interval", [1_000, 3_000, 10_000, 30_000, 100_000],
          figure="4.8"),
    Sweep("hybridlog", "flush_interval", [1_000, 3_000, 10_000, 30_000, 100_000],
          figure="4.9"),
    Sweep("hybridlog", "compaction_enabled", [False, True], base=SPILL, figure="4.10, 4.11"),
    Sweep("appendlog", "threshold", [10_000, 100_000, 1_000_000, 4_000_000, 16_000_000],
          figure="4.12"),
    Sweep("appendlog", "max_runs_per_level", [2, 3, 5, 10, 20], figure="4.13"),
]


def measure(engine: str, params: dict[str, Any], keys: list[bytes], values: list[bytes],
            get_keys: list[bytes]) -> dict[str, Any]:
    """Per-call write then read latencies of a fresh engine; memory and disk."""
    from raykv.engines import open_engine

    with tempfile.TemporaryDirectory() as tmp:
        store = open_engine(engine, Path(tmp, "db"), **params)
        try:
            gc.collect()
            w = latency.closed_loop(store.set, keys, values)
            mem = store.__sizeof__()
            gc.collect()
            r = latency.closed_loop(store.get, get_keys)
            store.seal()
            disk = dir_bytes(Path(tmp, "db"))
            write_amp = store.stats.write_amplification
        finally:
            store.close()
    row: dict[str, Any] = {}
    for op, lat in (("write", w), ("read", r)):
        row.update({f"{op}_{k}": v for k, v in percentiles(lat).items()})
    row.update(memory_mib=mem / MIB, disk_mib=disk / MIB, write_amp=write_amp)
    return row


def sizes(quick: bool) -> dict[str, Any]:
    if quick and tiny():  # the test suite's: fewer calls, and only the ends of each sweep
        return {"n_keys": 2_000, "n_ops": 2_000, "rates": [20_000.0, 200_000.0],
                "seconds": 0.02, "points": 2}
    if quick:
        return {"n_keys": 5_000, "n_ops": 5_000, "rates": [20_000.0, 200_000.0],
                "seconds": 0.05}
    return {"n_keys": 100_000, "n_ops": 300_000,
            "rates": [25_000.0, 50_000.0, 100_000.0, 200_000.0, 400_000.0], "seconds": 0.3}


def run(quick: bool, out: Path) -> dict[str, Any]:
    """Every sweep; then HybridLog compaction off/on as latency vs offered throughput."""
    s = sizes(quick)
    keys, values, get_keys = engines.make_workload("uniform", s["n_keys"], s["n_ops"])
    results: dict[str, Any] = {"sizes": s, "sweeps": {}}
    for sw in SWEEPS:
        rows = []
        tried = sw.values
        if quick and len(tried) > 3:  # the ends and the middle
            tried = [tried[0], tried[len(tried) // 2], tried[-1]]
        if s.get("points") == 2:
            tried = [tried[0], tried[-1]]
        for v in tried:
            print(f"  sweep {sw.engine} {sw.param}={v}", flush=True)
            rows.append({"engine": sw.engine, "param": sw.param, "value": v,
                         **measure(sw.engine, sw.params(v), keys, values, get_keys)})
        write_csv(out / f"sweep_{sw.name}.csv", rows)
        plot_sweep(out / f"sweep_{sw.name}.png", sw, rows)
        results["sweeps"][sw.name] = {"figure": sw.figure, "base": sw.base, "rows": rows}
    rate_rows = []
    for on in (False, True):
        print(f"  sweep hybridlog compaction={on}: latency vs offered throughput", flush=True)
        for r in latency.latency_curve("hybridlog", "uniform", s["n_keys"], s["rates"],
                                       s["seconds"], {**SPILL, "compaction_enabled": on}):
            rate_rows.append({**r, "compaction": "on" if on else "off"})
    write_csv(out / "sweep_hybridlog_compaction_rates.csv", rate_rows)
    latency.plot_latency(out / "sweep_hybridlog_compaction_rates.png", rate_rows,
                         "thesis 4.10/4.11: HybridLog, compaction off vs on (open loop, "
                         f"{s['n_keys']:,} uniform keys, mem_segment_len "
                         f"{SPILL['mem_segment_len']:,})", series="compaction")
    results["compaction_rates"] = rate_rows
    return results


def plot_sweep(path: Path, sw: Sweep, rows: list[dict[str, Any]]) -> None:
    """Write latency, read latency (p50 solid, p95 dashed) and memory/disk vs the value."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    numeric = not isinstance(sw.values[0], bool)
    x = [r["value"] for r in rows] if numeric else [str(r["value"]) for r in rows]
    for ax, op in zip(axes[:2], ("write", "read"), strict=True):
        ax.plot(x, [r[f"{op}_p50_us"] for r in rows], "-o", ms=4, label="p50")
        ax.plot(x, [r[f"{op}_p95_us"] for r in rows], "--s", ms=4, label="p95")
        ax.plot(x, [r[f"{op}_mean_us"] for r in rows], ":", color="0.5", label="mean")
        ax.set_ylabel(f"{op} latency per call (µs)")
        ax.set_title(op)
    axes[2].plot(x, [r["memory_mib"] for r in rows], "-o", ms=4, label="memory (__sizeof__)")
    axes[2].plot(x, [r["disk_mib"] for r in rows], "--s", ms=4, label="disk after seal")
    axes[2].set_ylabel("MiB")
    axes[2].set_title("memory and disk")
    for ax in axes:
        if numeric and max(sw.values) / max(min(sw.values), 1) >= 20:
            ax.set_xscale("log")
        ax.set_xlabel(sw.param)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"thesis {sw.figure}: {sw.engine} {sw.param}", fontsize=10)
    save(fig, path)


def _span(rows: list[dict[str, Any]], key: str, unit: str) -> str:
    lo, hi = min(rows, key=lambda r: r[key]), max(rows, key=lambda r: r[key])
    if lo[key] == hi[key]:
        return f"{lo[key]:,.2f} {unit} at every value"
    return (f"lowest {lo[key]:,.2f} {unit} (at {lo['value']:,}), highest {hi[key]:,.2f} {unit} "
            f"(at {hi['value']:,})")


def render(res: dict[str, Any], img: str) -> list[str]:
    """Markdown for the sweeps: one figure per parameter, its ranges quoted from the data."""
    s = res["sizes"]
    out = [
        f"Every point is a fresh engine with the thesis 4.2 parameters except the one swept: "
        f"{s['n_ops']:,} single `set` calls then {s['n_ops']:,} single `get` calls over "
        f"{s['n_keys']:,} uniform 5-byte keys (5-byte values), each call timed on its own "
        "(closed loop). Left and middle: p50 (solid) and p95 (dashed) per call, and the "
        "mean (dotted; it carries the flushes and merges that happen too rarely to move the "
        "percentiles). Right: the engine's memory estimate after the writes and its data "
        "directory after `seal()`. The sentence under each figure quotes the lowest and "
        "highest value measured and the setting where it occurred.",
        "",
    ]
    for name, sw in res["sweeps"].items():
        rows = sw["rows"]
        engine, param = rows[0]["engine"], rows[0]["param"]
        base = f" (with {sw['base']})" if sw["base"] else ""
        out += [f"**{engine} `{param}`** (thesis figure {sw['figure']}){base}", "",
                f"![{name}]({img}sweep_{name}.png)", ""]
        if isinstance(rows[0]["value"], bool):
            txt = "; ".join(
                f"{param}={r['value']}: write p50/p95/mean {r['write_p50_us']:.1f} / "
                f"{r['write_p95_us']:.1f} / {r['write_mean_us']:.1f} µs, read p50/p95 "
                f"{r['read_p50_us']:.1f} / {r['read_p95_us']:.1f} µs, disk "
                f"{r['disk_mib']:.2f} MiB, write amplification {r['write_amp']:.2f}"
                for r in rows)
        else:
            txt = (f"Mean write latency: {_span(rows, 'write_mean_us', 'µs')}; p95 write: "
                   f"{_span(rows, 'write_p95_us', 'µs')}; p95 read: "
                   f"{_span(rows, 'read_p95_us', 'µs')}; memory: "
                   f"{_span(rows, 'memory_mib', 'MiB')}; disk: "
                   f"{_span(rows, 'disk_mib', 'MiB')}.")
        out += [txt, ""]
    rr = res.get("compaction_rates") or []
    if rr:
        out += ["**HybridLog compaction off vs on, latency vs offered throughput** (thesis "
                "4.10, 4.11; open loop as in the comparison below)", "",
                f"![compaction]({img}sweep_hybridlog_compaction_rates.png)", ""]
        for op in ("write", "read"):
            per = {c: latency.sustained([{**r, "store": c} for r in rr if r["compaction"] == c],
                                        c, "uniform", op) for c in ("off", "on")}
            out.append(f"Highest offered {op} rate sustained (>= 95 % achieved, p95 <= 1 ms): "
                       f"compaction off {per['off']:,.0f} ops/s, on {per['on']:,.0f} ops/s.")
        out.append("")
    return out
