"""The benchmark report runs end to end at the test suite's sizes; its figures say sane things.

``python -m benchmarks.report --quick --tiny --out <tmp>`` runs every section (sweeps, engine
comparison, snapshots, amplification, pipeline, data plane, recovery, ... on one local Ray)
in a subprocess; ``--tiny`` shrinks the quick sizes to the smallest that still run each
section's code paths (``benchmarks.common.tiny``). Then the CSV and JSON files are checked
for the invariants any correct measurement keeps.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

SWEEPS = ["lsm_max_runs_per_level", "lsm_density_factor", "lsm_memtable_bytes_limit",
          "hybridlog_mem_segment_len", "hybridlog_ro_lag_interval", "hybridlog_flush_interval",
          "hybridlog_compaction_enabled", "appendlog_threshold", "appendlog_max_runs_per_level",
          "hybridlog_compaction_rates"]
FIGURES = [*(f"sweep_{s}" for s in SWEEPS), "compare_latency_uniform", "compare_latency_zipf",
           "compare_fit", "compare_memory", "snapshots_inserts_file_quick",
           "snapshots_updates_file_quick", "amplification", "pipeline", "skew"]
CSVS = [*(f"sweep_{s}" for s in SWEEPS), "compare_latency", "compare_fit", "compare_memory",
        "snapshots_inserts_file_quick", "snapshots_updates_file_quick", "amplification",
        "pipeline_shards", "pipeline_intervals", "pipeline_resume", "pipeline_updates", "skew"]


def rows(out: Path, name: str) -> list[dict[str, Any]]:
    with open(out / f"{name}.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", "--quick", "--tiny", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"quick report: {time.monotonic() - t0:.0f} s")
    return out


pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_every_figure_and_csv_is_written(report: Path) -> None:
    for name in FIGURES:
        png = report / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 1000, png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in CSVS:
        assert rows(report, name), name


def test_report_markdown_shows_every_figure_and_the_machine(report: Path) -> None:
    md = (report / "REPORT.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {Path(i).stem for i in images} >= set(FIGURES)
    for image in images:
        assert (report / image).is_file(), image
    assert "cores" in md and "load average" in md.lower() and "Python" in md
    assert "open loop" in md.lower() and "scheduled time" in md
    for engine in ("memonly", "lsm", "hybridlog", "appendlog"):
        assert f"- **{engine}**:" in md
    assert "(not run yet" not in md


def test_latency_percentiles_are_ordered(report: Path) -> None:
    for r in rows(report, "compare_latency") + rows(report, "sweep_hybridlog_compaction_rates"):
        assert float(r["p95_us"]) >= float(r["p50_us"]) > 0
        assert float(r["achieved_ops_s"]) > 0
    for name in SWEEPS[:-1]:
        for r in rows(report, f"sweep_{name}"):
            for op in ("write", "read"):
                assert float(r[f"{op}_p95_us"]) >= float(r[f"{op}_p50_us"]) > 0
            assert float(r["memory_mib"]) > 0 and float(r["disk_mib"]) > 0
    stores = {r["store"] for r in rows(report, "compare_latency")}
    assert stores == {"rocksdb", "memonly", "lsm", "hybridlog", "appendlog"}


def test_amplification(report: Path) -> None:
    last: dict[str, dict[str, Any]] = {}
    for r in rows(report, "amplification"):
        last[r["config"]] = r
    wa = {c: float(r["write_amp"]) for c, r in last.items()}
    sa = {c: float(r["space_amp"]) for c, r in last.items()}
    # engines that rewrite data (merges, or the whole state at every seal) write more than
    # the application did
    for config in ("lsm tiering (R=4)", "lsm leveling (R=1)", "appendlog", "memonly"):
        assert wa[config] >= 1.0, (config, wa)
    assert wa["lsm leveling (R=1)"] > wa["lsm tiering (R=4)"]
    # leveling keeps one run per level: fewer stale versions on disk than tiering
    assert sa["lsm leveling (R=1)"] <= sa["lsm tiering (R=4)"]
    assert all(v >= 1.0 for v in sa.values()), sa  # files hold at least the live bytes


def test_snapshots_are_incremental(report: Path) -> None:
    for exp in ("inserts", "updates"):
        total: dict[str, int] = {}
        for r in rows(report, f"snapshots_{exp}_file_quick"):
            total[r["engine"]] = int(r["cumulative_uploaded"])
        assert set(total) == {"memonly", "lsm", "hybridlog", "appendlog"}
        assert total["memonly"] > max(total["hybridlog"], total["appendlog"])


def test_pipeline(report: Path) -> None:
    shards = rows(report, "pipeline_shards")
    assert [int(r["shards"]) for r in shards] == [1, 2, 4]
    intervals = rows(report, "pipeline_intervals")
    assert [r["interval"] for r in intervals] == ["off", "1s", "0.5s", "0.1s"]
    for r in shards + intervals:
        assert r["correct"] == "True" and float(r["events_per_s"]) > 0
    resume = rows(report, "pipeline_resume")
    assert {r["kind"] for r in resume} == {"cold", "warm"}
    assert all(float(r["restore_s"]) > 0 for r in resume)
    upd = rows(report, "pipeline_updates")
    per = [float(r["bytes_per_update_epoch"]) for r in upd]
    assert per == sorted(per) and per[0] > 0 and per[-1] > per[0]


def test_skew_rebalancing_evens_the_busiest_shard(report: Path) -> None:
    runs = {r["mode"]: r for r in rows(report, "skew")}
    assert set(runs) == {"hash", "rebalance"}
    assert int(runs["hash"]["moved_groups"]) == 0 < int(runs["rebalance"]["moved_groups"])
    hashed, balanced = (float(runs[m]["busiest_over_mean"]) for m in ("hash", "rebalance"))
    assert balanced < hashed and balanced <= 1.25
    assert all(float(r["write_amplification"]) >= 1.0 for r in runs.values())


def test_dataplane_runs_are_complete_and_readers_and_shards_did_the_work(report: Path) -> None:
    import json

    res = json.loads((report / "report_dataplane.json").read_text())
    for workload in ("aggregate", "statefulmap", "raydata"):
        runs = res["workloads"][workload]["runs"]
        for key, run in runs.items():
            events = res["large"] if key == "interval_0.1" else int(key)
            assert run["rows_in"] == events, (workload, key)
            if workload == "statefulmap":
                assert run["rows_out"] == events  # one output row per event
            # every row went through a reader and a shard: both used CPU after the start
            # (their process start-up is not counted; the driver's includes creating them)
            assert run["readers_cpu_s"] > 0 and run["shards_cpu_s"] > 0, (workload, key)
    assert {r["rows_in"] for r in res["parallelism"].values()} == {res["large"]}
    assert "Data plane" in (report / "REPORT.md").read_text()


def test_changelog_section_shows_the_retraction_is_right_and_its_cost(report: Path) -> None:
    import json

    res = json.loads((report / "report_changelog.json").read_text())
    assert res["changelog"]["second_stage_total"] == res["true_total"]
    assert res["append-only"]["second_stage_total"] > res["true_total"]  # the old double count
    assert res["changelog"]["rows_between"] > res["append-only"]["rows_between"]


def test_recovery_section_survives_its_kills_exactly(report: Path) -> None:
    import json

    res = json.loads((report / "report_recovery.json").read_text())
    for d in res["drill"]:
        assert d["exact"] and d["kills"] >= 1, d
        assert d["commit"]["n"] == 0 or d["commit"]["p50"] >= d["detect"]["p50"]
    for a in res["added"]:
        assert a["killed_rows_out"] == a["events"], a  # StatefulMap: one row per event
        assert a["killed_restarts"] >= 1, a
        assert a["base_cpu_s"] > 0 and a["added_cpu_per_kill_s"] is not None, a
    assert res["process_start_cpu_s"] > 0  # a process start is never free
    assert "Recovery: local rollback" in (report / "REPORT.md").read_text()


def test_manykeys_section_runs_every_mode_exactly(report: Path) -> None:
    import json

    res = json.loads((report / "report_manykeys.json").read_text())
    assert set(res["rows"]) == {"off", "1s", "0.1s"}
    assert all(r["correct"] and r["events_per_s"] > 0 for r in res["rows"].values())
    assert res["group_by_events_per_s"] > 0
    assert "Many distinct keys" in (report / "REPORT.md").read_text()


def test_index_ceiling_measures_a_table_that_agrees_with_the_dict() -> None:
    from benchmarks.index_ceiling import measure

    res = measure(20_000, 5_000, repeat=1)  # raises if U64Index and the dict disagree
    assert res["keys"] == 20_000
    assert set(res["keys_s"]) == {"dict_update", "dict_get", "table_upsert", "table_get",
                                  "words"}


def test_bulk_section_measures_both_kinds_of_key(report: Path) -> None:
    import json

    res = json.loads((report / "report_bulk.json").read_text())
    assert [r["key_len"] for r in res["runs"]] == ["8-16", "8"]
    for run, packed in zip(res["runs"], [set(), {"hybridlog-packed", "appendlog-packed"}],
                           strict=True):
        assert {r["store"] for r in run["rows"]} == {"dict", "hybridlog", "appendlog"} | packed
        assert all("error" not in r and r["update_keys_s"] > 0 for r in run["rows"]), run
    assert "Bulk writes" in (report / "REPORT.md").read_text()
