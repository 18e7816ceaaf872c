"""Peak resident memory of each shard with many distinct keys (issue 15, item 4).

Workload: ``N`` distinct int64 keys (each key once, spread by a bijective multiply so
neighbouring keys land on different shards) with an ``amount`` column, generated on the
reader actors (``GeneratorSource``: no table in the driver), through
``Aggregate(key, {"amount": ["sum", "count"]})`` on ``LSMTree``, 2 shards, checkpoints
every 2 s, output to a ``ParquetSink``. The final epoch emits every key's final value,
so the last stage writes ``N`` rows at the end of input on top of the per-epoch upserts.

A thread in the driver samples every shard actor's resident memory (``VmRSS`` from
``/proc/<pid>/status``; the pid from the actor's ``ping()``) every 0.2 s from the
``"started"`` progress event to the end of the run, and reports per shard the peak over
the whole run and the peak before the final epoch began (the end of input).

    python -m benchmarks.memory                 # N = 20,000,000 and 40,000,000
    python -m benchmarks.memory --quick         # N = 300,000
    python -m benchmarks.memory --keys 20000000 # one size
    python -m benchmarks.report --only memory   # the report section (REPORT.md)

Target (issue 15): peak RSS of each shard <= 512 MiB for 20M keys, and the same for 40M
keys (memory must not grow with the state). Before the streaming finish: 0.6-1.0 GiB
during the run and 3.7 GiB at the end for 20M keys (2.1 GiB for 10M).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.common import (
    MIB,
    RESULTS,
    loadavg,
    machine,
    machine_line,
    start_local_ray,
    tiny,
)

TARGET_MIB = 512
BATCH_ROWS = 200_000
_MULT = 0x9E3779B97F4A7C15 & ((1 << 63) - 1) | 1  # odd: a bijection modulo 2**63


def make_batch(rows: int, total: int, i: int) -> pa.RecordBatch | None:
    """Batch ``i``: keys ``i*rows .. min((i+1)*rows, total) - 1``, scrambled; ``None`` past."""
    lo = i * rows
    if lo >= total:
        return None
    n = np.arange(lo, min(lo + rows, total), dtype=np.uint64)
    keys = ((n * np.uint64(_MULT)) & np.uint64((1 << 63) - 1)).astype(np.int64)
    return pa.record_batch({"user": keys, "amount": (n % 1000).astype(np.int64)})


RSS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
"""``VmRSS`` (all resident pages) = ``RssAnon`` (the process's own memory) + ``RssFile``
(pages of mapped files: libraries, LSM runs read through ``mmap``; page cache the kernel
can drop) + ``RssShmem`` (shared memory it touched: Ray's object store, where the batches
it receives live)."""


def rss_parts(pid: int) -> dict[str, int] | None:
    """The :data:`RSS_FIELDS` of process ``pid`` in bytes (``None`` once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name = line.split(":", 1)[0]
                if name in RSS_FIELDS:
                    out[name] = int(line.split()[1]) * 1024
    except OSError:
        return None
    return out if "VmRSS" in out else None


class RssSampler:
    """Samples the RSS of the shard actors every ``interval`` s in a driver thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.peak_before_end: dict[str, int] = {}
        self.peak_anon: dict[str, int] = {}
        self.peak_parts: dict[str, dict[str, float]] = {}  # each peak RSS sample, and when
        self.series: list[tuple[float, dict[str, int]]] = []
        self.final_started: float | None = None  # when the final epoch's barrier went out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._t0 = time.monotonic()

    def on_progress(self, ev: Any) -> None:
        """Progress hook: learn the shards' pids when the actors are ready."""
        if ev.kind == "started":
            import ray

            names = list(ev.shards)
            pids = ray.get([ev.shards[n].ping.remote() for n in names])
            self.pids = dict(zip(names, pids, strict=True))
            if not self._thread.is_alive():
                self._thread.start()

    def mark_end_of_input(self) -> None:
        """From now on samples count as the end of input (the final epoch)."""
        if self.final_started is None:
            self.final_started = time.monotonic() - self._t0

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic() - self._t0
            sample = {}
            for name, pid in self.pids.items():
                parts = rss_parts(pid)
                if parts is None:
                    continue
                rss = sample[name] = parts["VmRSS"]
                anon = parts.get("RssAnon", 0)
                self.peak_anon[name] = max(self.peak_anon.get(name, 0), anon)
                if rss > self.peak.get(name, 0):
                    self.peak[name] = rss
                    self.peak_parts[name] = {**parts, "t": round(now, 2)}
                if self.final_started is None:
                    self.peak_before_end[name] = max(self.peak_before_end.get(name, 0), rss)
            self.series.append((now, sample))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling (one last sample is taken first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def run_one(keys: int, *, interval: float = 2.0, shards: int = 2, engine: str = "lsm",
            rows: int = BATCH_ROWS, sample_every: float = 0.2) -> dict[str, Any]:
    """One run of ``keys`` distinct keys; peak RSS per shard (bytes) and the run's figures."""
    import raykv
    from raykv.operators import Aggregate
    from raykv.sinks import ParquetSink
    from raykv.sources import GeneratorSource

    tmp = Path(tempfile.mkdtemp(prefix="raykv-memory-"))
    try:
        sampler = RssSampler(sample_every)
        batches = -(-keys // rows)
        committed: list[int] = []

        def on_progress(ev: Any) -> None:
            sampler.on_progress(ev)
            if ev.kind == "committed" and ev.epoch is not None:
                committed.append(ev.epoch)
            if ev.kind == "barrier" and ev.detail.get("final"):
                sampler.mark_end_of_input()

        src = GeneratorSource(functools.partial(make_batch, rows, keys), limit=batches)
        p = raykv.Pipeline(
            source=src, stages=[Aggregate("user", {"amount": ["sum", "count"]})],
            engine=engine, num_shards=shards, checkpoint=str(tmp / "ckpt"),
            checkpoint_interval=interval, local_dir=str(tmp / "local"),
            sink=ParquetSink(tmp / "out"), on_progress=on_progress,
        )
        t0 = time.perf_counter()
        s = p.run()
        wall = time.perf_counter() - t0
        sampler.stop()
        final = _final_rows(tmp / "out", s.last_epoch)
        peaks = {n: sampler.peak.get(n, 0) for n in sorted(sampler.pids)}
        before = {n: sampler.peak_before_end.get(n, 0) for n in sorted(sampler.pids)}
        return {
            "keys": keys, "shards": shards, "engine": engine, "interval": interval,
            "batch_rows": rows, "wall_s": wall, "events_per_s": s.events_per_s,
            "epochs": len(s.epochs_committed), "rows_out": s.rows_out,
            "final_rows": final, "correct": final == keys,
            "peak_rss": peaks, "peak_rss_before_end": before,
            "peak_anon": {n: sampler.peak_anon.get(n, 0) for n in sorted(sampler.pids)},
            "peak_parts": {n: sampler.peak_parts.get(n, {}) for n in sorted(sampler.pids)},
            "peak_rss_max_mib": max(peaks.values(), default=0) / MIB,
            "samples": len(sampler.series), "loadavg": loadavg(),
            "end_of_input_marked": sampler.final_started is not None,
            "series_mib": [(round(t, 2), {n: round(v / MIB, 1) for n, v in smp.items()})
                           for t, smp in sampler.series[:: max(1, len(sampler.series) // 400)]],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _final_rows(out: Path, epoch: int | None) -> int:
    """Rows of the published output of the final ``epoch`` (every key once)."""
    import pyarrow.parquet as pq

    from raykv.sinks import parse_part_file_name

    if epoch is None:
        return 0
    n = 0
    for f in out.iterdir():
        parsed = parse_part_file_name(f.name)
        if parsed is not None and parsed[0] == epoch:
            n += pq.ParquetFile(f).metadata.num_rows
    return n


def _line(r: dict[str, Any]) -> str:
    peaks = ", ".join(f"{n}: {v / MIB:,.0f} MiB" for n, v in r["peak_rss"].items())
    before = max(r["peak_rss_before_end"].values(), default=0) / MIB
    anon = max(r["peak_anon"].values(), default=0) / MIB
    return (f"{r['keys']:>11,} keys: peak RSS {peaks} (before the end of input <= "
            f"{before:,.0f} MiB; anonymous <= {anon:,.0f} MiB; the peaks: {_parts(r)}); "
            f"{r['events_per_s']:,.0f} events/s, {r['epochs']} epochs, "
            f"wall {r['wall_s']:.0f} s, final rows {r['final_rows']:,} "
            f"({'correct' if r['correct'] else 'WRONG'})")


def run(sizes: list[int], **kw: Any) -> dict[str, Any]:
    """Every size in ``sizes`` on one local Ray; results with the machine."""
    owned = start_local_ray()
    try:
        runs = []
        for n in sizes:
            r = run_one(n, **kw)
            print(" ", _line(r), flush=True)
            runs.append(r)
    finally:
        if owned:
            import ray

            ray.shutdown()
    return {"machine": machine(), "runs": runs, "target_mib": TARGET_MIB}


def report_run(quick: bool, out_dir: Path) -> dict[str, Any]:
    """The report's ``memory`` section: 300,000 keys (quick; the test suite's size,
    ``RAYKV_BENCH_TINY=1``: 50,000) or 20M and 40M keys."""
    del out_dir  # a table only
    if quick and tiny():
        return run([50_000])
    return run([300_000] if quick else [20_000_000, 40_000_000])


def report_render(res: dict[str, Any], image_prefix: str) -> list[str]:
    """Markdown: peak RSS per shard per size against the target."""
    del image_prefix
    lines = [
        "Command: `python -m benchmarks.memory` (or `python -m benchmarks.report --only "
        "memory`). Distinct int64 keys through `Aggregate` (sum, count) on `LSMTree`, 2 "
        "shards, 2 s checkpoints, `ParquetSink`; each shard's `VmRSS` sampled every 0.2 s. "
        f"Target: every shard <= {res.get('target_mib', TARGET_MIB)} MiB for the whole run, "
        "end of input included, not growing with the keys. Before the streaming finish "
        "(issue 15): 0.6-1.0 GiB during the run and 3.7 GiB at the end with 20M keys.",
        f"Machine: {machine_line(res['machine'])}.",
        "",
        "| keys | peak RSS per shard | peak before the end of input | peak anonymous "
        "(no mapped files) | events/s | epochs | wall | final rows exact |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for b in res.get("before", []):  # earlier runs kept for comparison (same command)
        lines.append(
            f"| {b['keys']:,} (before: {b['commit']}) | {b['peak_rss_max_mib']:,.0f} MiB | "
            f"- | {b['peak_anon_max_mib']:,.0f} MiB | - | - | - | - |")
    for r in res["runs"]:
        peaks = " / ".join(f"{v / MIB:,.0f}" for v in r["peak_rss"].values())
        before = max(r["peak_rss_before_end"].values(), default=0) / MIB
        anon = max(r.get("peak_anon", {}).values(), default=0) / MIB
        lines.append(
            f"| {r['keys']:,} | {peaks} MiB | {before:,.0f} MiB | {anon:,.0f} MiB | "
            f"{r['events_per_s']:,.0f} | "
            f"{r['epochs']} | {r['wall_s']:.0f} s | {'yes' if r['correct'] else 'NO'} |")
    lines.append("")
    for r in res["runs"]:  # what the peak sample was made of (runs since 2026-12-03)
        if any(r.get("peak_parts", {}).values()):
            lines.append(f"- {r['keys']:,} keys, each shard's peak sample: {_parts(r)}.")
    return [*lines, ""]


def _parts(r: dict[str, Any]) -> str:
    """``"<shard> at <t> s: anon A + file F + shmem S"`` for each shard's peak sample."""
    return "; ".join(
        f"{n} at {p['t']:.0f} s: " + " + ".join(f"{k[3:].lower()} {p.get(k, 0) / MIB:,.0f}"
                                               for k in RSS_FIELDS[1:]) + " MiB"
        for n, p in r.get("peak_parts", {}).items() if p)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="300,000 keys")
    ap.add_argument("--keys", type=int, action="append", help="a size (repeatable)")
    ap.add_argument("--interval", type=float, default=2.0, help="checkpoint interval (s)")
    ap.add_argument("--engine", default="lsm")
    ap.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    args = ap.parse_args(argv)
    sizes = args.keys or ([300_000] if args.quick else [20_000_000, 40_000_000])
    res = run(sizes, interval=args.interval, engine=args.engine)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0 if all(r["correct"] for r in res["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
