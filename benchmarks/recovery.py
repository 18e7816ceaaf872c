"""Recovery time and the cost of a failure (issue 15 item 1: local recovery).

Two measurements, each with ``Pipeline.standby`` 0 (a dead actor's role goes to a new
actor), 1 and 2 (to an idle standby actor: the drill's kills come about 2 s apart, less
than a process start on the 2-core machine, so one standby is often still starting);
surviving actors are rolled back in place in all (``docs/recovery.md``, "Local
recovery"):

* ``drill``: ``raykv drill`` (3 shards, one reader, 60,000 events in 31 epochs) with 20
  SIGKILLs of a random shard or reader process at random moments; per kill the time from
  the kill to the driver noticing it (``detect``), to every actor being ready again
  (``ready``) and to the first epoch committed after it (``commit``: the outage as the
  output sees it). The moments are ``mid-batch`` and ``acked`` (between an epoch's
  acknowledgements and its commit): the drill's ``upload`` and ``recovery`` moments add
  artificial delays to every upload and restore to widen their windows (the drill's
  exactness checks use them; ``raykv drill`` with its defaults).
* ``added``: what a SIGKILL adds to a run: ``StatefulMap`` (one output row per event),
  3 shards, 0.25 s checkpoints, ``events`` events; the wall time of a run with ``kills``
  SIGKILLs of random shard processes at random times (each once the attempt it strikes
  started: one recovery per kill), minus the best of the runs without, divided by its
  restarts; runs with and without kills alternate, the mean of the killed runs' figures.

    python -m benchmarks.recovery            # 20 kills; 3,000,000 events with 6 kills
    python -m benchmarks.recovery --quick    # 2 kills; 200,000 events with 1 kill
"""

from __future__ import annotations

import math
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    loadavg,
    machine,
    machine_busy_seconds,
    machine_line,
    section_main,
    start_local_ray,
    tiny,
)


def _pct(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``values``; ``None`` when empty."""
    v = sorted(values)
    return v[max(1, math.ceil(len(v) * q / 100)) - 1] if v else None


def drill(kills: int, standby: int, seed: int = 1, events: int = 60_000) -> dict[str, Any]:
    """``raykv drill`` with ``kills`` kills; percentiles of detect, ready and commit."""
    from raykv.tools.drill import DrillConfig, run_drill

    with tempfile.TemporaryDirectory() as work:
        cfg = DrillConfig(kills=kills, num_shards=3, seed=seed, standby=standby,
                          moments=("mid-batch", "acked"), work_dir=work, events=events)
        t0, load = time.perf_counter(), loadavg()
        res = run_drill(cfg)
    out: dict[str, Any] = {"standby": standby, "kills": len(res.kills), "exact": res.ok,
                           "seconds": time.perf_counter() - t0, "load": load}
    for what, attr in (("detect", "detect_s"), ("ready", "recovery_s"), ("commit", "commit_s")):
        values = [getattr(k, attr) for k in res.kills if getattr(k, attr) is not None]
        out[what] = {"n": len(values), "p50": _pct(values, 50), "p95": _pct(values, 95),
                     "max": max(values, default=None)}
    return out


def _running_count(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
    n = (state or 0) + 1
    return n, {"n": n}


def one_run(events: int, kills: int, standby: int, seed: int, expected: float = 0.0,
             max_inflight: int | None = None, **pipeline: Any) -> dict[str, Any]:
    """One ``StatefulMap`` run; ``kills`` SIGKILLs of random shards at random times.

    The kills are spread over ``expected`` seconds (a kill-free run's processing time)
    from the first attempt's start on; each waits until the attempt it strikes started,
    so that every kill is a recovery of its own (two kills in one outage would count as
    one restart). Also returns the epochs committed and the median and largest time
    from an epoch's barrier (the driver asking for it) to its commit; ``max_inflight``:
    ``Pipeline.max_inflight`` (its default when ``None``); ``pipeline``: more
    ``Pipeline`` arguments.
    """
    import ray

    import raykv
    from raykv.operators import StatefulMap
    from raykv.sinks import ParquetSink
    from raykv.sources import TableSource
    from raykv.testing import zipf_events

    rng = random.Random(seed)
    table = zipf_events(events, 100_000, seed=5)
    shards: dict[str, Any] = {}
    steady = threading.Event()  # an attempt started and was not struck yet
    killed: list[float] = []

    asked: dict[int, float] = {}
    lags: list[float] = []

    def on_progress(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "barrier" and ev.epoch is not None:
            asked[ev.epoch] = time.perf_counter()
        elif ev.kind == "committed" and ev.epoch in asked:
            lags.append(time.perf_counter() - asked.pop(ev.epoch))
        if ev.kind == "started":
            shards.clear()
            shards.update(ev.shards)
            steady.set()

    def steady_or_stop(stop: threading.Event) -> bool:
        """Wait until an attempt stands unstruck; ``False``: the run ended first."""
        while not steady.wait(0.05):
            if stop.is_set():
                return False
        return True

    def killer(stop: threading.Event) -> None:
        if not steady_or_stop(stop):
            return
        for _ in range(kills):
            if stop.wait(rng.uniform(0.5, 1.0) * expected / (kills + 1)):
                return
            if not steady_or_stop(stop):
                return
            try:
                handle = shards[rng.choice(sorted(shards))]
                pid = ray.get(handle.ping.remote(), timeout=10)
            except Exception:  # an actor between attempts: try the next one
                continue
            steady.clear()
            os.kill(pid, signal.SIGKILL)
            killed.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as work:
        p = raykv.Pipeline(
            source=TableSource(table, batch_size=50_000),
            stages=[StatefulMap("user", _running_count)], sink=ParquetSink(f"{work}/out"),
            num_shards=3, checkpoint=f"{work}/ckpt", local_dir=f"{work}/local",
            checkpoint_interval=0.25, on_progress=on_progress, standby=standby,
            max_restarts=3 * kills + 3,
            **({} if max_inflight is None else {"max_inflight": max_inflight}), **pipeline)
        stop = threading.Event()
        thread = threading.Thread(target=killer, args=(stop,), daemon=True)
        t0, busy0 = time.perf_counter(), machine_busy_seconds()
        if kills:
            thread.start()
        summary = p.run()
        seconds, busy1 = time.perf_counter() - t0, machine_busy_seconds()
        stop.set()
    cpu = None if busy0 is None or busy1 is None else busy1 - busy0
    return {"seconds": seconds, "cpu_s": cpu, "kills": len(killed), "restarts": summary.restarts,
            "rows_out": summary.rows_out, "processing": summary.processing_time,
            "epochs": len(lags), "commit_lag_p50": _pct(lags, 50), "commit_lag_max":
            max(lags, default=None)}


def added(events: int, kills: int, standby: int, repeat: int = 2) -> dict[str, Any]:
    """Seconds a SIGKILL adds to a ``StatefulMap`` run (see the module docstring).

    Runs without and with kills alternate ``repeat`` times (this machine's speed drifts);
    each run with kills is compared with the best run without, per restart, and the
    figure is their mean (``killed_*``: the killed runs' means).
    """
    bases, runs = [], []
    for i in range(repeat):
        bases.append(one_run(events, 0, standby, seed=0))
        expected = min(b["processing"] for b in bases)
        runs.append(one_run(events, kills, standby, seed=7 + i, expected=expected))
    base = min(b["seconds"] for b in bases)
    per_kill = _per_kill(runs, "seconds", base)
    base_cpu = min((b["cpu_s"] for b in bases if b["cpu_s"] is not None), default=None)
    cpu_per_kill = None if base_cpu is None else _per_kill(runs, "cpu_s", base_cpu)
    with_kills = {k: sum(r[k] for r in runs) / len(runs)
                  for k in ("seconds", "kills", "restarts", "rows_out", "processing")}
    return {"standby": standby, "events": events, "base_s": base, "load": loadavg(),
            **{f"killed_{k}": v for k, v in with_kills.items()}, "added_per_kill_s": per_kill,
            "base_cpu_s": base_cpu, "added_cpu_per_kill_s": cpu_per_kill}


def _per_kill(runs: list[dict[str, Any]], key: str, base: float) -> float | None:
    """The mean over the killed runs of ``(run[key] - base) / restarts``."""
    per_run = [(r[key] - base) / r["restarts"] for r in runs
               if r["restarts"] and r[key] is not None]
    return sum(per_run) / len(per_run) if per_run else None


def process_start_cpu(repeat: int = 3) -> float | None:
    """Machine CPU seconds from creating an actor process to its first answer (median).

    The actor imports the shard's modules and pays pyarrow's lazy imports, as a standby
    does before it can take a role. Run it alone on the machine: anything else that runs
    meanwhile counts too. ``None`` without ``/proc/stat``.
    """
    import ray

    @ray.remote(num_cpus=0)
    class Starter:
        def __init__(self) -> None:  # what a standby does before it can take a role
            import raykv.runtime.actors  # noqa: F401  (the shard's modules)
            from raykv.runtime.shard_rollback import preload_lazy_imports

            preload_lazy_imports()

        def ready(self) -> int:
            return os.getpid()

    costs = []
    for _ in range(repeat):
        time.sleep(1.0)  # let Ray's own work after the last kill settle
        busy0 = machine_busy_seconds()
        actor = Starter.remote()  # type: ignore[attr-defined]
        ray.get(actor.ready.remote())
        busy1 = machine_busy_seconds()
        ray.kill(actor)
        if busy0 is None or busy1 is None:
            return None
        costs.append(busy1 - busy0)
    return sorted(costs)[len(costs) // 2]


def report_run(quick: bool, out_dir: Path) -> dict[str, Any]:
    """Both measurements with standby 0, 1 and 2 (the report's ``recovery`` section)."""
    del out_dir  # tables only
    kills = 2 if quick else 20
    events, run_kills = (200_000, 1) if quick else (3_000_000, 6)
    drill_events = 60_000
    if quick and tiny():  # the test suite's size: one kill, 12 epochs of drill input
        kills, events, drill_events = 1, 100_000, 24_000
    owned = start_local_ray()
    try:
        # 2 standbys: a drill's kills come about 2 s apart, less than a standby's
        # process start on the 2-core machine
        standbys = (1,) if quick else (0, 1, 2)
        res = {"machine": machine(),
               "drill": [drill(kills, s, events=drill_events) for s in standbys],
               "added": [added(events, run_kills, s, repeat=1 if quick else 2)
                         for s in standbys],
               "process_start_cpu_s": process_start_cpu(1 if quick else 3)}
    finally:
        if owned:
            import ray

            ray.shutdown()
    return res


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def report_render(res: dict[str, Any], image_prefix: str) -> list[str]:
    """Markdown: the drill percentiles and the time added per kill, per standby setting."""
    del image_prefix
    lines = [
        "Command: `python -m benchmarks.recovery` (or `python -m benchmarks.report --only "
        "recovery`). Surviving actors roll back in place in every row; `standby` is "
        "`Pipeline.standby`. Before local recovery (the issue's figures): a median of "
        "3.9-4.1 s per recovery in `raykv drill`, 1.7 s added per SIGKILL.",
        f"Machine: {machine_line(res['machine'])}.",
        "",
        "| standby | kills | kill -> detected p50 | kill -> ready p50 / p95 | "
        "kill -> next commit p50 / p95 / max | exact | load |",
        "|---:|---:|---:|---:|---:|---|---:|",
    ]
    for d in res["drill"]:
        lines.append(
            f"| {d['standby']} | {d['kills']} | {_s(d['detect']['p50'])} s | "
            f"{_s(d['ready']['p50'])} / {_s(d['ready']['p95'])} s | "
            f"{_s(d['commit']['p50'])} / {_s(d['commit']['p95'])} / {_s(d['commit']['max'])} s"
            f" | {'yes' if d['exact'] else 'NO'} | {d['load']:.1f} |")
    lines += [
        "",
        "| standby | events | run without kills | with kills (restarts) | added per kill | "
        "machine CPU added per kill | load |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in res["added"]:
        lines.append(
            f"| {a['standby']} | {a['events']:,} | {a['base_s']:.2f} s | "
            f"{a['killed_seconds']:.2f} s ({a['killed_restarts']:g}) | "
            f"{_s(a['added_per_kill_s'])} s | {_s(a.get('added_cpu_per_kill_s'))} s | "
            f"{a['load']:.1f} |")
    start = res.get("process_start_cpu_s")
    if start is not None:
        lines += ["", f"One replacement process, from its creation to its first answer: "
                      f"{start:.2f} CPU-s of the machine (`process_start_cpu`)."]
    lines.append("")
    return lines


def main() -> None:
    section_main("recovery", __doc__, report_run, report_render)


if __name__ == "__main__":
    main()
