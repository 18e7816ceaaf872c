"""Driver CPU per event: how much of the data plane still runs in the driver (issue 12).

For each workload, two runs that differ only in size (a Parquet folder -> one keyed stage
-> ``ParquetSink``, 2 shards, 1 s checkpoints, HybridLog): the driver's CPU time
(``resource.getrusage(RUSAGE_SELF)``, user + system, all driver threads) of the larger
minus the smaller, over the difference in events, after one discarded warm-up run (first
imports and worker start-up). Fixed start-up costs cancel, so the
figure is the driver's work per event: reading, splitting and sending the input, and
for ``StatefulMap`` (one output row per event) receiving and staging the output. The
target of issue 12 is <= 0.02 us per event (per-epoch work only); the ceiling it implies
for one driver core is ``1 / cpu_per_event`` events/s whatever the cluster size.

    python -m benchmarks.dataplane            # 1M and 4M events, results/dataplane.json
    python -m benchmarks.dataplane --quick    # 100k and 400k events
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import RESULTS, loadavg, machine, start_local_ray
from benchmarks.pipeline import running_count

KEYS = 100_000
FILE_ROWS = 250_000


def driver_cpu() -> float:
    """User + system CPU seconds of this process so far (every thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write_events(folder: Path, events: int) -> None:
    """``events`` rows of (user, amount) in Parquet files of ``FILE_ROWS`` rows."""
    import numpy as np

    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    for start in range(0, events, FILE_ROWS):
        n = min(FILE_ROWS, events - start)
        users = (rng.zipf(1.2, n) % KEYS).astype("int64")
        pq.write_table(pa.table({"user": users, "amount": rng.integers(1, 100, n)}),
                       folder / f"part-{start // FILE_ROWS:05d}.parquet")


def one_run(workload: str, src: Path, work: Path) -> dict[str, Any]:
    """Run ``workload`` over the folder ``src``; driver CPU, wall time and rows."""
    import raykv
    from raykv.operators import Aggregate, StatefulMap
    from raykv.sinks import ParquetSink
    from raykv.sources import ParquetSource

    stage = (Aggregate("user", {"amount": ["sum", "count"]}) if workload == "aggregate"
             else StatefulMap("user", running_count))
    shutil.rmtree(work, ignore_errors=True)
    p = raykv.Pipeline(
        source=ParquetSource(str(src), batch_size=65_536), stages=[stage],
        sink=ParquetSink(str(work / "out")), num_shards=2, engine="hybridlog",
        checkpoint=str(work / "ckpt"), local_dir=str(work / "local"), checkpoint_interval=1.0,
    )
    cpu0, t0 = driver_cpu(), time.perf_counter()
    s = p.run()
    return {"cpu_s": driver_cpu() - cpu0, "wall_s": time.perf_counter() - t0,
            "rows_in": s.rows_in, "rows_out": s.rows_out, "events_per_s": s.events_per_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k and 400k events")
    parser.add_argument("--out", type=Path, default=RESULTS / "dataplane.json")
    args = parser.parse_args()
    small, large = (100_000, 400_000) if args.quick else (1_000_000, 4_000_000)
    started = start_local_ray()
    tmp = Path(tempfile.mkdtemp(prefix="raykv-dataplane-"))
    results: dict[str, Any] = {"machine": machine(), "load_start": loadavg(),
                               "small": small, "large": large, "workloads": {}}
    try:
        for n in (small, large):
            write_events(tmp / f"in-{n}", n)
        for workload in ("aggregate", "statefulmap"):
            one_run(workload, tmp / f"in-{small}", tmp / "work")  # warm-up: imports, workers
            runs = {n: one_run(workload, tmp / f"in-{n}", tmp / "work") for n in (small, large)}
            per_event = (runs[large]["cpu_s"] - runs[small]["cpu_s"]) / (large - small)
            results["workloads"][workload] = {
                "runs": {str(n): r for n, r in runs.items()},
                "driver_us_per_event": per_event * 1e6,
                "driver_ceiling_events_per_s": 1 / per_event if per_event > 0 else None,
            }
            print(f"{workload:>12}: driver {per_event * 1e6:.3f} us/event "
                  f"(ceiling {1 / per_event / 1e6 if per_event > 0 else float('inf'):.1f}M "
                  f"events/s on one driver core); {large:,} events at "
                  f"{runs[large]['events_per_s']:,.0f} events/s", flush=True)
        results["load_end"] = loadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if started:
            import ray

            ray.shutdown()


if __name__ == "__main__":
    main()
