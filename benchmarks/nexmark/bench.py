"""Nexmark throughput: the generator alone, and each query as a raykv pipeline.

Events/s counts every event of the stream (persons, auctions and bids: the ``events``
of the config), as the nexmark project does, although a bid query's source generates only
the bids among them. A query's time is the pipeline's ``processing_time`` (first batch to
last commit; Ray start-up and actor creation excluded), with a ``DiscardSink`` (Flink's
blackhole): no row reaches the driver.

Per core, two ways (the 2-core machine is shared with other work, so wall time is noisy):

* **CPU**: events / CPU seconds used by this process and every process it started (the
  local Ray's raylet, GCS and workers: shards, readers), sampled from ``/proc`` every
  0.2 s, from the ``started`` progress event (actors created) to ``finished``. That is
  the nexmark project's method too (throughput over the average number of cores in use).
* **÷ cores**: events/s divided by the cores Ray was given (2): a lower bound.

Flink's published figures (nexmark README, events/s per core, other hardware: 8 workers
of 8 cores, Flink 1.13) are shown beside, for scale only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import loadavg, machine, machine_line, tiny
from benchmarks.nexmark.models import Config
from benchmarks.nexmark.queries import QUERIES, DiscardSink, pipeline
from raykv.sources.nexmark import KINDS, NexmarkSource

FLINK_PER_CORE = {"q0": 155_000, "q5": 22_100, "q7": 12_300, "q11": 39_700}
"""Events/s per core from the nexmark project's README (Flink, other hardware)."""
QUICK_QUERIES = ["q0", "q5", "q7", "q11"]
_TICK = os.sysconf("SC_CLK_TCK")


def generator_throughput(events: int, repeat: int = 3) -> dict[str, Any]:
    """Events/s of one reader generating each stream (best of ``repeat``), and all three.

    ``all``: the events of the three streams over the sum of their times (every event
    generated once). Cost: ``repeat`` times the generation of ``events`` events.
    """
    out: dict[str, Any] = {"events": events}
    for kind in KINDS:
        src = NexmarkSource(kind, events=events, seed=0, num_splits=1)
        src.open().read()  # the seed's text pools and URL table, outside the timing
        best = min(_timed(src) for _ in range(repeat))
        out[kind] = {"seconds": best, "events_per_s": events / best}
    out["all"] = {"events_per_s": events / sum(out[k]["seconds"] for k in KINDS)}
    return out


def _timed(src: NexmarkSource) -> float:
    t = time.perf_counter()
    reader = src.open()
    while reader.read() is not None:
        pass
    return time.perf_counter() - t


class CpuMeter:
    """CPU seconds of this process and its descendants, sampled from ``/proc``.

    A process that exits between samples loses at most one interval of its CPU time.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self._interval = interval
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuMeter:
        self._first = self._sample()
        self._last = dict(self._first)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._last.update(self._sample())

    @property
    def seconds(self) -> float:
        """CPU seconds used since ``__enter__`` (user + system), as of the last sample."""
        return sum(t - self._first.get(p, 0) for p, t in self._last.items()) / _TICK

    def now(self) -> float:
        """:attr:`seconds` after a fresh sample (call it to mark a point of the run)."""
        self._last.update(self._sample())
        return self.seconds

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._last.update(self._sample())

    @staticmethod
    def _sample() -> dict[int, int]:
        parents: dict[int, int] = {}
        ticks: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            parents[int(entry)] = int(fields[1])
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
        me = os.getpid()
        mine = {me}
        changed = True
        while changed:
            changed = False
            for pid, parent in parents.items():
                if parent in mine and pid not in mine:
                    mine.add(pid)
                    changed = True
        return {p: ticks[p] for p in mine if p in ticks}


def run_query(name: str, config: Config, *, shards: int = 2, splits: int = 2,
              checkpoint_interval: float = 1.0) -> dict[str, Any]:
    """One query over ``config``'s events: events/s, CPU seconds, per core (both ways)."""
    import ray

    work = Path(tempfile.mkdtemp(prefix=f"nexmark-{name}-"))
    try:
        marks: dict[str, float] = {}

        def mark(ev: Any) -> None:  # CPU from the actors' start to the end of the run
            if ev.kind in ("started", "finished") and ev.kind not in marks:
                marks[ev.kind] = cpu.now()

        p = pipeline(name, config, num_splits=splits, num_shards=shards, sink=DiscardSink(),
                     checkpoint=str(work / "ckpt"), local_dir=str(work / "local"),
                     checkpoint_interval=checkpoint_interval, on_progress=mark)
        with CpuMeter() as cpu:
            summary = p.run()
        busy = marks.get("finished", cpu.seconds) - marks.get("started", 0.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = summary.processing_time
    cores = int(ray.cluster_resources().get("CPU", 0)) or os.cpu_count() or 1
    return {"query": name, "events": config.events, "rows_in": summary.rows_in,
            "seconds": seconds, "events_per_s": config.events / seconds,
            "cpu_seconds": busy, "cpu_seconds_with_startup": cpu.seconds,
            "per_core_cpu": config.events / busy,
            "cores": cores, "per_core_split": config.events / seconds / cores,
            "epochs": len(summary.epochs_committed), "stages": len(QUERIES[name].stages(config)),
            "restarts": summary.restarts,
            "failures": [str(f.get("error", f)) if isinstance(f, dict) else str(f)
                         for f in summary.failures],
            "loadavg": loadavg()}


def measure(events: int, queries: list[str], generator_events: int,
            out: Path | None = None) -> dict[str, Any]:
    """The generator and every query in ``queries`` over ``events`` events (seed 0);
    the results so far are written to ``out`` (JSON) after each query."""
    config = Config(events=events, seed=0)
    res: dict[str, Any] = {"machine": machine(), "generator": generator_throughput(
        generator_events), "queries": []}
    for name in queries:
        res["queries"].append(run_query(name, config))
        print(_line(res["queries"][-1]), flush=True)
        if out is not None:
            out.write_text(json.dumps(res, indent=1) + "\n")
    return res


def _line(r: dict[str, Any]) -> str:
    flink = FLINK_PER_CORE.get(r["query"])
    return (f"{r['query']:>4}: {r['events_per_s']:>10,.0f} events/s  "
            f"{r['per_core_cpu']:>9,.0f}/core (CPU {r['cpu_seconds']:.1f} s)  "
            f"{r['per_core_split']:>9,.0f}/core (÷{r['cores']})"
            + (f"  Flink {flink:,}/core" if flink else "")
            + (f"  ({r['restarts']} recoveries: {r['failures']})" if r.get("restarts") else ""))


def report_run(quick: bool, out: Path) -> dict[str, Any]:
    """The report's section: quick, q0/q5/q7/q11 over 30,000 events; else every query
    over 500,000 events. The test suite's size (``RAYKV_BENCH_TINY=1``): q0 over 5,000
    (``tests/test_nexmark_queries.py`` runs every query against its model)."""
    del out
    if quick and tiny():
        return measure(5_000, ["q0"], 20_000)
    if quick:
        return measure(30_000, QUICK_QUERIES, 200_000)
    return measure(500_000, sorted(QUERIES, key=lambda n: int(n[1:])), 2_000_000)


def report_render(res: dict[str, Any], prefix: str) -> list[str]:
    """Markdown: the generator's events/s and a table of the queries."""
    del prefix
    g = res["generator"]
    q = res["queries"]
    lines = [
        f"Generator, one reader in one process: {g['bid']['events_per_s']:,.0f} events/s "
        f"for the bid stream, {g['auction']['events_per_s']:,.0f} for auctions, "
        f"{g['person']['events_per_s']:,.0f} for persons, {g['all']['events_per_s']:,.0f} "
        f"for all three ({g['events']:,} events each, best of 3). "
        f"Queries: {q[0]['events'] if q else 0:,} events (all kinds) each, 2 splits, 2 "
        "shards per stage, an epoch every second, a sink that discards (no row reaches "
        "the driver); events/s over the pipeline's processing time; per core by CPU time "
        "of every process of the run, and by the 2 cores Ray has. Flink's figures are the "
        "nexmark project's (8 x 8-core workers, other hardware): for scale only. "
        f"{machine_line(res['machine'])}. `python -m benchmarks.nexmark`", "",
        "| query | stages | events/s | CPU s | events/s per core (CPU) | "
        "events/s per core (÷ cores) | Flink per core |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in q:
        flink = FLINK_PER_CORE.get(r["query"])
        lines.append(f"| {r['query']} | {r['stages']} | {r['events_per_s']:,.0f} | "
                     f"{r['cpu_seconds']:.1f} | {r['per_core_cpu']:,.0f} | "
                     f"{r['per_core_split']:,.0f} | {f'{flink:,}' if flink else '-'} |")
    return lines
