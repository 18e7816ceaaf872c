"""Thesis 4.2: the engines compared, plus the per-operation latency loops the sweeps reuse.

Three measurements, thesis 4.2 workload (5-byte keys and values, 100,000 keys, uniform or
zipf s=0.99 keys; thesis parameters for every engine), RocksDB (rocksdict) as the
reference:

* latency vs offered throughput (figures 4.13/4.15): **open loop**. Operation ``i`` is
  scheduled at ``start + i / rate``; its latency runs from that scheduled time to its
  return, so when a store falls behind the offered rate, the queueing delay counts (as a
  client with a fixed arrival rate sees it). At each rate: a write phase, then a read
  phase, on a store preloaded with 300,000 writes.
* write throughput when the data fits in memory (figure 4.14): 5,000 keys, single ``set``
  calls and batched ``multi_set``, best of 3 (``benchmarks.engines.run_one``).
* memory (figure 4.16): resident-memory growth and the engine's own ``__sizeof__`` after the
  thesis workload, each store in a fresh process (``benchmarks.engines.run_one``).

    python -m benchmarks.report --only compare     # runs this section

Outputs: ``compare_latency.csv``, ``compare_latency_<dist>.png``, ``compare_fit.csv``,
``compare_fit.png``, ``compare_memory.csv``, ``compare_memory.png``.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import engines
from benchmarks.common import percentiles, pyplot, save, tiny, write_csv

LATENCY_STORES = ["rocksdb", "memonly", "lsm", "hybridlog", "appendlog"]
ALL_STORES = engines.STORES  # dict and RocksDB next to the four engines
DISTS = ["uniform", "zipf"]
COLORS = {"dict": "0.6", "rocksdb": "black", "memonly": "tab:purple", "lsm": "tab:blue",
          "hybridlog": "tab:orange", "appendlog": "tab:green"}
P95_BUDGET_US = 1000.0  # "sustained": achieved >= 95 % of offered with p95 under this


def closed_loop(op: Callable[..., Any], xs: Sequence[Any],
                ys: Sequence[Any] | None = None) -> np.ndarray:
    """Call ``op(x)`` (or ``op(x, y)``) for each item back to back; latencies in ns."""
    ns = time.perf_counter_ns
    out = [0] * len(xs)
    if ys is None:
        for i, x in enumerate(xs):
            t = ns()
            op(x)
            out[i] = ns() - t
    else:
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            t = ns()
            op(x, y)
            out[i] = ns() - t
    return np.array(out, dtype=np.int64)


def open_loop(op: Callable[..., Any], xs: Sequence[Any], ys: Sequence[Any] | None,
              rate: float) -> tuple[np.ndarray, float]:
    """Offer ``op`` calls at ``rate`` per second; latency from each call's scheduled time.

    Returns the latencies (ns) and the achieved rate (calls per second of wall time). The
    loop waits (sleeping, then spinning for the last millisecond) until a call is due;
    a call that is late starts at once and its lateness is part of its latency.
    """
    ns = time.perf_counter_ns
    sleep = time.sleep
    gap = 1e9 / rate
    n = len(xs)
    out = [0] * n
    start = ns() + 1_000_000
    for i in range(n):
        due = start + int(i * gap)
        now = ns()
        if now < due:
            if due - now > 2_000_000:
                sleep((due - now - 1_000_000) / 1e9)
            while ns() < due:
                pass
        if ys is None:
            op(xs[i])
        else:
            op(xs[i], ys[i])
        out[i] = ns() - due
    elapsed = (ns() - start) / 1e9
    return np.array(out, dtype=np.int64), n / elapsed if elapsed > 0 else 0.0


def setter_getter(store: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The single-call write and read of a store (a dict, an Rdict or a KVStore)."""
    if isinstance(store, dict) or type(store).__name__ == "Rdict":
        return store.__setitem__, store.get
    return store.set, store.get


def close(store: Any) -> None:
    if hasattr(store, "close"):
        store.close()


# ---------------------------------------------------------------------- latency vs throughput


def latency_curve(name: str, dist: str, n_keys: int, rates: list[float], seconds: float,
                  params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Open-loop write then read latency of store ``name`` at each offered rate.

    ``params`` overrides ``engines.THESIS_PARAMS`` for a raykv engine. The store is
    preloaded with ``3 * n_keys`` writes (closed loop), then the rates run from low to high
    on the same store.
    """
    per_rate = [max(200, int(r * seconds)) for r in rates]
    total = 3 * n_keys + sum(per_rate)
    keys, values, get_keys = engines.make_workload(dist, n_keys, total)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if name in ("dict", "rocksdb"):
            store = engines.open_store(name, str(Path(tmp, "db")))
        else:
            from raykv.engines import open_engine

            store = open_engine(name, Path(tmp, "db"),
                                **{**engines.THESIS_PARAMS[name], **(params or {})})
        try:
            put, get = setter_getter(store)
            pre = 3 * n_keys
            closed_loop(put, keys[:pre], values[:pre])
            pos = pre
            for rate, n in zip(rates, per_rate, strict=True):
                ks, vs, gs = keys[pos:pos + n], values[pos:pos + n], get_keys[pos:pos + n]
                pos += n
                for op, lat_rate in (("write", (put, ks, vs)), ("read", (get, gs, None))):
                    gc.collect()
                    lat, achieved = open_loop(*lat_rate, rate)
                    rows.append({"store": name, "dist": dist, "op": op, "offered_ops_s": rate,
                                 "achieved_ops_s": achieved, "ops": n, **percentiles(lat)})
        finally:
            close(store)
    return rows


def sustained(rows: list[dict[str, Any]], store: str, dist: str, op: str) -> float:
    """Highest offered rate the store kept up with (>= 95 % achieved, p95 <= 1 ms)."""
    ok = [r["offered_ops_s"] for r in rows if r["store"] == store and r["dist"] == dist
          and r["op"] == op and r["achieved_ops_s"] >= 0.95 * r["offered_ops_s"]
          and r["p95_us"] <= P95_BUDGET_US]
    return max(ok, default=0.0)


def plot_latency(path: Path, rows: list[dict[str, Any]], title: str, series: str = "store",
                 ) -> None:
    """Write and read panels: p50 (solid) and p95 (dashed) vs offered rate, log-log."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, op in zip(axes, ("write", "read"), strict=True):
        for i, label in enumerate(dict.fromkeys(r[series] for r in rows)):
            rs = sorted((r for r in rows if r[series] == label and r["op"] == op),
                        key=lambda r: r["offered_ops_s"])
            x = [r["offered_ops_s"] for r in rs]
            color = COLORS.get(str(label), f"C{i}")
            ax.plot(x, [r["p50_us"] for r in rs], "-o", color=color, ms=3, label=f"{label} p50")
            ax.plot(x, [r["p95_us"] for r in rs], "--", color=color, label=f"{label} p95")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        rates = sorted({r["offered_ops_s"] for r in rows})
        ax.set_xticks(rates, [f"{r / 1000:g}k" for r in rates])
        ax.set_xlabel("offered throughput (ops/s, open loop)")
        ax.set_ylabel(f"{op} latency (µs, from the scheduled time)")
        ax.axhline(P95_BUDGET_US, color="red", lw=0.6, ls=":")
        ax.grid(alpha=0.3, which="both")
        ax.set_title(op)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    save(fig, path)


# ---------------------------------------------------------------------- the section


def sizes(quick: bool) -> dict[str, Any]:
    if quick and tiny():  # the test suite's: every store and rate, fewer keys and calls
        return {"n_keys": 2_000, "rates": [20_000.0, 100_000.0, 400_000.0], "seconds": 0.02,
                "fit_keys": 1_000, "fit_ops": 4_000, "fit_repeat": 1,
                "mem_keys": 1_000, "mem_ops": 4_000, "mem_dists": ["uniform"]}
    if quick:
        return {"n_keys": 5_000, "rates": [20_000.0, 100_000.0, 400_000.0], "seconds": 0.05,
                "fit_keys": 2_000, "fit_ops": 10_000, "fit_repeat": 1,
                "mem_keys": 2_000, "mem_ops": 10_000, "mem_dists": ["uniform"]}
    return {"n_keys": 100_000,
            "rates": [25_000.0, 50_000.0, 100_000.0, 200_000.0, 400_000.0, 800_000.0],
            "seconds": 0.3, "fit_keys": 5_000, "fit_ops": 300_000, "fit_repeat": 3,
            "mem_keys": 100_000, "mem_ops": 300_000, "mem_dists": DISTS}


def run(quick: bool, out: Path) -> dict[str, Any]:
    """The comparison section: latency curves, in-memory write throughput, memory."""
    s = sizes(quick)
    rows: list[dict[str, Any]] = []
    for dist in DISTS:
        for name in LATENCY_STORES:
            print(f"  compare: {name} {dist} latency vs throughput", flush=True)
            rows += latency_curve(name, dist, s["n_keys"], s["rates"], s["seconds"])
        plot_latency(out / f"compare_latency_{dist}.png", [r for r in rows if r["dist"] == dist],
                     f"thesis 4.13/4.15: latency vs offered throughput, {dist} keys, "
                     f"{s['n_keys']:,} keys")
    write_csv(out / "compare_latency.csv", rows)

    print("  compare: memory", flush=True)
    mem = engines.run_all(ALL_STORES, s["mem_dists"], s["mem_keys"], s["mem_ops"], 1)
    if quick:  # one set of processes for both (the quick sizes fit in memory anyway)
        fit = {"rows": [r for r in mem["rows"] if r["dist"] == "uniform"]}
    else:
        print("  compare: write throughput, data fits in memory", flush=True)
        fit = engines.run_all(ALL_STORES, ["uniform"], s["fit_keys"], s["fit_ops"],
                              s["fit_repeat"])
    fit_rows = [{k: r.get(k) for k in ("store", "dist", "set_ops_s", "multi_set_keys_s",
                                       "error")} for r in fit["rows"]]
    write_csv(out / "compare_fit.csv", fit_rows)
    plot_bars(out / "compare_fit.png", fit_rows, [("set_ops_s", "set() calls per s"),
                                                   ("multi_set_keys_s", "multi_set keys per s")],
              f"thesis 4.14: write throughput when the data fits in memory "
              f"({s['fit_keys']:,} keys, {s['fit_ops']:,} writes)")

    mem_rows = [{k: r.get(k) for k in ("store", "dist", "rss_growth_mib", "sizeof_mib",
                                       "disk_mib", "set_ops_s", "get_ops_s", "error")}
                for r in mem["rows"]]
    write_csv(out / "compare_memory.csv", mem_rows)
    plot_bars(out / "compare_memory.png", mem_rows,
              [("rss_growth_mib", "resident memory growth (MiB)"),
               ("sizeof_mib", "engine __sizeof__ (MiB)"), ("disk_mib", "disk after seal (MiB)")],
              f"thesis 4.16: memory after {s['mem_ops']:,} writes and reads of "
              f"{s['mem_keys']:,} keys")
    return {"sizes": s, "latency": rows, "fit": fit_rows, "memory": mem_rows}


def plot_bars(path: Path, rows: list[dict[str, Any]], metrics: list[tuple[str, str]],
              title: str) -> None:
    """One panel per metric: a bar per store (grouped by distribution when there are two)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 4))
    axes = np.atleast_1d(axes)
    dists = list(dict.fromkeys(r["dist"] for r in rows))
    stores = list(dict.fromkeys(r["store"] for r in rows))
    width = 0.8 / len(dists)
    for ax, (key, label) in zip(axes, metrics, strict=True):
        for j, dist in enumerate(dists):
            vals = [next((r.get(key) or 0 for r in rows
                          if r["store"] == st and r["dist"] == dist), 0) for st in stores]
            ax.bar(np.arange(len(stores)) + j * width, vals, width,
                   label=dist, color=[COLORS.get(st, "C0") for st in stores],
                   alpha=1.0 if j == 0 else 0.55, edgecolor="black", lw=0.3)
        ax.set_xticks(np.arange(len(stores)) + width * (len(dists) - 1) / 2, stores,
                      rotation=30)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        if len(dists) > 1:
            ax.legend(title="solid: " + dists[0], fontsize=7)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


def _best(rows: list[dict[str, Any]], key: str, *, low: bool,
          stores: list[str] | None = None) -> dict[str, Any]:
    rs = [r for r in rows if r.get(key) is not None and (stores is None or r["store"] in stores)]
    return (min if low else max)(rs, key=lambda r: r[key])


def render(res: dict[str, Any], img: str) -> list[str]:
    """Markdown for the comparison section (every figure quoted comes from ``res``)."""
    s, rows = res["sizes"], res["latency"]
    out = [
        f"Thesis 4.2 workload: {s['n_keys']:,} keys, 5-byte keys and values, thesis parameters "
        f"(`benchmarks/engines.py` `THESIS_PARAMS`), RocksDB (rocksdict, defaults) as the "
        "reference. **Open loop:** operations are scheduled at a fixed offered rate and each "
        "latency is measured from the operation's scheduled time, so once a store cannot keep "
        "up, the queueing delay is part of the latency (the curves bend up). Each rate runs "
        f"{s['seconds']} s of writes, then as long of reads, on a store preloaded with "
        f"{3 * s['n_keys']:,} writes. Solid lines p50, dashed p95; the red line is 1 ms.",
        "",
    ]
    low = min(s["rates"])
    for dist in DISTS:
        rs = [r for r in rows if r["dist"] == dist]
        if not rs:
            continue
        out += [f"![latency vs throughput, {dist}]({img}compare_latency_{dist}.png)", ""]
        bw = _best([r for r in rs if r["op"] == "write" and r["offered_ops_s"] == low],
                   "p50_us", low=True, stores=engines.ENGINES_ONLY)
        br = _best([r for r in rs if r["op"] == "read" and r["offered_ops_s"] == low],
                   "p50_us", low=True, stores=engines.ENGINES_ONLY)
        sus = {st: (sustained(rows, st, dist, "write"), sustained(rows, st, dist, "read"))
               for st in LATENCY_STORES}
        sus_txt = "; ".join(f"{st} {w:,.0f} / {r:,.0f}" for st, (w, r) in sus.items())
        top_w = max(sus, key=lambda st: sus[st][0])
        top_r = max(sus, key=lambda st: sus[st][1])
        out += [
            f"*{dist.capitalize()} keys.* At {low:,.0f} offered ops/s the raykv engine with "
            f"the lowest p50 write latency is {bw['store']} ({bw['p50_us']:.1f} µs) and "
            f"with the lowest p50 read latency {br['store']} ({br['p50_us']:.1f} µs). "
            f"Highest offered rate sustained (>= 95 % achieved, p95 <= 1 ms), writes / "
            f"reads in ops/s: {sus_txt}. Highest for writes: {top_w}; for reads: {top_r}.",
            "",
        ]
    fit = [r for r in res["fit"] if r.get("set_ops_s")]
    if fit:
        bs = _best(fit, "set_ops_s", low=False, stores=engines.ENGINES_ONLY)
        rocks = next((r for r in fit if r["store"] == "rocksdb"), None)
        rtxt = (f"; RocksDB does {rocks['set_ops_s']:,.0f}" if rocks else "")
        out += [
            f"![write throughput in memory]({img}compare_fit.png)", "",
            f"Write throughput when the data fits in memory ({s['fit_keys']:,} keys, "
            f"{s['fit_ops']:,} uniform writes, best of {s['fit_repeat']}; nothing but the "
            f"AppendLog's log has to reach a file before the seal). Among the raykv engines "
            f"{bs['store']} takes the most single `set` calls per second "
            f"({bs['set_ops_s']:,.0f}){rtxt}. A plain dict is the ceiling for any Python-level "
            "store.",
            "",
        ]
    mem = [r for r in res["memory"] if r.get("rss_growth_mib") is not None]
    if mem:
        uni = [r for r in mem if r["dist"] == "uniform"]
        eng = [r for r in uni if r["store"] in engines.ENGINES_ONLY]
        lo, hi = _best(eng, "sizeof_mib", low=True), _best(eng, "sizeof_mib", low=False)
        out += [
            f"![memory]({img}compare_memory.png)", "",
            f"Memory after {s['mem_ops']:,} writes and reads of {s['mem_keys']:,} keys, each "
            "store in a fresh process: resident-memory growth (noisy: the allocator keeps "
            "freed pages) and the engine's own estimate (`__sizeof__`: indexes, buffers, "
            f"filters). With uniform keys the smallest estimate is {lo['store']}'s "
            f"({lo['sizeof_mib']:.1f} MiB) and the largest {hi['store']}'s "
            f"({hi['sizeof_mib']:.1f} MiB).",
            "",
        ]
    return out
