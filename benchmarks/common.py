"""Helpers shared by the benchmark scripts: the machine, memory, latency percentiles, CSV, plots.

Every script describes the machine the same way (``machine()``), measures resident memory
the same way (``rss_bytes()``) and turns per-operation latencies into the same percentiles
(``percentiles()``), so figures from different scripts can be compared.
"""

from __future__ import annotations

import contextlib
import csv
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
TINY_ENV = "RAYKV_BENCH_TINY"


def tiny() -> bool:
    """Whether the quick sizes shrink to the test suite's (``RAYKV_BENCH_TINY=1``).

    ``python -m benchmarks.report --quick --tiny`` sets it (``tests/test_benchmarks.py``):
    every section then runs each of its code paths once at the smallest size that still
    gives the results the tests check. Its figures measure nothing; ``--quick`` alone
    keeps its documented sizes.
    """
    return os.environ.get(TINY_ENV) == "1"


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc``: this machine only)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU seconds every core of this machine spent busy since boot (``/proc/stat``).

    The difference over a run is the CPU the whole machine spent on it (and on anything
    else running then), whichever processes did the work: what a run on saturated cores
    pays in wall time. ``None`` where ``/proc/stat`` is missing.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle, iowait
    # user, nice, system, irq, softirq (guest time is in user; steal is not ours)
    return (sum(fields[:7]) - idle) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo ("unknown CPU" elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine() -> dict[str, Any]:
    """Cores, CPU model, RAM, Python, OS and the load averages (1, 5, 15 minutes), now."""
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "ram_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
    }


def machine_line(m: dict[str, Any] | None = None) -> str:
    """One line: "2 cores, <CPU>, 24 GiB, Python 3.11.7" (the load is reported apart)."""
    m = m or machine()
    return f"{m['cores']} cores, {m['cpu']}, {m['ram_gib']:.0f} GiB, Python {m['python']}"


def percentiles(ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """p50, p95, p99, max and mean of latencies given in nanoseconds, in microseconds."""
    a = np.asarray(ns, dtype=np.float64) / 1e3
    if a.size == 0:
        return {"p50_us": 0.0, "p95_us": 0.0, "p99_us": 0.0, "max_us": 0.0, "mean_us": 0.0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50_us": float(p50), "p95_us": float(p95), "p99_us": float(p99),
            "max_us": float(a.max()), "mean_us": float(a.mean())}


def dir_bytes(path: Path) -> int:
    """Bytes of the regular files directly in ``path`` (an engine's data dir)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write dict rows as CSV (columns: the union of the keys, in first-seen order)."""
    rows = list(rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def start_local_ray() -> bool:
    """Start a local Ray with 2 CPUs whose workers import this checkout, unless one runs.

    Returns True when it was started here (the caller shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {}
    if tiny():
        # the test suite's size: the workers inherit PYTHONPATH from this process instead
        # of a runtime_env, which starts every worker through a setup process first
        # (most of a tiny pipeline run is its actors' start)
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    else:
        options["runtime_env"] = {"env_vars": {"PYTHONPATH": str(REPO)}}
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             log_to_driver=False, **options)
    return True


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> None:
    """Save a figure as PNG and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def section_main(name: str, doc: str | None, run: Callable[[bool, Path], dict[str, Any]],
                 render: Callable[[dict[str, Any], str], list[str]]) -> None:
    """The command line of a report section module (``python -m benchmarks.<name>``).

    ``--quick`` for small sizes, ``--out`` for the results file (default
    ``results/report_<name>.json``, the file ``benchmarks.report`` renders); prints the
    section's markdown.
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(description=(doc or name).split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / f"report_{name}.json")
    args = parser.parse_args()
    res = run(args.quick, args.out.parent)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print("\n".join(render(res, "")))

