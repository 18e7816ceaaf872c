"""raykv's Ray metrics: the definitions, and a pipeline's values scraped from Prometheus.

The session Ray (``ray_session``) serves every process's metrics (the driver's and each
shard actor's) through its node's metrics agent on ``ray_metrics_port``. Ray exports a
process's metrics every ``metrics_report_interval_ms`` (10 s by default) and when the
process exits, so the scrape is polled until the expected values appear, within a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

import raykv
from raykv.metrics import COUNTER, HISTOGRAM, METRICS, DriverMetrics, metric, pipeline_tag
from raykv.operators import Aggregate, TumblingWindow
from raykv.sources import TableSource
from raykv.testing import zipf_events

ROOT = Path(__file__).resolve().parent.parent
SCRAPE_DEADLINE = 90.0  # seconds; exports arrive within ~10 s (the report interval)

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ---------------------------------------------------------------------------- definitions


def test_every_metric_follows_the_prometheus_conventions() -> None:
    names = [m.name for m in METRICS]
    assert len(set(names)) == len(names)
    assert len({m.key for m in METRICS}) == len(METRICS)
    for m in METRICS:
        assert m.name.startswith("raykv_") and not m.name.endswith("_total"), m.name
        assert m.exported.startswith("ray_raykv_")
        assert m.exported.endswith("_total") == (m.kind == COUNTER), m.exported
        assert (m.kind == HISTOGRAM) == m.name.endswith("_seconds"), m.name
        assert m.tags[0] == "pipeline" and set(m.tags) <= {"pipeline", "stage", "shard"}
        assert m.side in ("shard", "driver", "both") and m.description.endswith(".")
    assert metric("rows_in").exported == "ray_raykv_rows_in_total"
    with pytest.raises(KeyError, match="rows_in"):
        metric("nope")


def test_pipeline_tag_is_the_normalized_checkpoint_url(tmp_path: Path) -> None:
    assert pipeline_tag(str(tmp_path / "ckpt"), "x") == f"file://{tmp_path}/ckpt"
    assert pipeline_tag(f"file://{tmp_path}/ckpt/", "x") == f"file://{tmp_path}/ckpt"
    assert pipeline_tag("s3://key:secret@bucket/prefix?region=x", "x") == "s3://bucket/prefix"
    assert pipeline_tag("memory://m1", "x") == "memory://m1"
    assert pipeline_tag(None, "nockpt-1234") == "nockpt-1234"


def test_a_shard_without_ray_works_and_records_nothing(tmp_path: Path) -> None:
    """In a fresh process without Ray: the plain ShardWorker runs; its metrics stay off."""
    code = f"""
import pyarrow as pa, ray
from raykv.operators import Aggregate
from raykv.partitioning import Partitioning
from raykv.runtime.shard import ShardWorker
from raykv.runtime.specs import RestorePlan, ShardSpec, StageSpec
stage = StageSpec(0, "agg", "user", Aggregate("user", {{"qty": "sum"}}), "memonly", {{}},
                  Partitioning(num_shards=1, num_key_groups=16), ("agg-0of1-g0",))
w = ShardWorker(ShardSpec(stage, 0, {str(tmp_path / "agg" / "agg-0of1-g0")!r}, 1, None, None, None,
                          hot_keys=4, pipeline="p"))
w.setup(RestorePlan())
w.process(pa.record_batch({{"user": [1, 2, 1], "qty": [1, 2, 3]}}))
w.finish(1)
assert w.wait_uploaded(1).output.num_rows == 2
assert w.engine.live_keys() == 3  # two users + the operator's metadata key
assert w._metrics._m is None and w._metrics._resolved and not ray.is_initialized()
w.close()
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------------------- scraping


def scrape(port: int) -> Series:
    """Every sample of the endpoint: (sample name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("ray_raykv_"):
                out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def total(seen: Series, name: str, pipeline: str, **labels: str) -> float:
    """Sum of ``name`` over the series of ``pipeline`` that carry ``labels``."""
    want = {"pipeline": pipeline, **labels}
    return sum(v for (n, lab), v in seen.items()
               if n == name and want.items() <= dict(lab).items())


def per_shard(seen: Series, name: str, pipeline: str) -> dict[str, float]:
    """``name`` summed per ``shard`` label (over senders / worker processes)."""
    out: dict[str, float] = {}
    for (n, lab), v in seen.items():
        d = dict(lab)
        if n == name and d.get("pipeline") == pipeline:
            out[d["shard"]] = out.get(d["shard"], 0.0) + v
    return out


@pytest.mark.ray
def test_a_pipeline_exports_its_metrics_to_prometheus(
    ray_session: Any, ray_metrics_port: int, tmp_path: Path
) -> None:
    table = zipf_events(3_000, 150, seed=3)
    ckpt = str(tmp_path / "ckpt")
    summary = raykv.Pipeline(
        source=TableSource(table, batch_size=500),
        stages=[Aggregate("user", {"qty": "sum"}, name="agg")],
        num_shards=2, engine="memonly", epoch_every_batches=2,
        checkpoint=ckpt, local_dir=str(tmp_path / "local"),
    ).run()
    assert summary.finished and summary.restarts == 0
    epochs = len(summary.epochs_committed)
    shards = set(summary.load)
    distinct = len(set(table.column("user").to_pylist()))
    p = pipeline_tag(ckpt, "")
    # an event-time window with late rows (out of order by more than max_delay)
    ckpt2 = str(tmp_path / "ckpt-window")
    times = [t if i % 7 else t - 500 for i, t in enumerate(range(0, 3_000, 3))]
    windowed = raykv.Pipeline(
        source=TableSource({"user": [i % 5 for i in range(1_000)], "t": times,
                            "qty": [1] * 1_000}, batch_size=100),
        stages=[TumblingWindow("user", "t", 50, {"qty": "sum"}, name="win")],
        num_shards=2, engine="memonly", epoch_every_batches=1, source_parallelism=1,
        checkpoint=ckpt2, local_dir=str(tmp_path / "local2"),
        watermark=raykv.Watermark("t", max_delay=10),
    ).run()
    late = sum(st["late_events"] for st in windowed.shards.values())
    assert late > 0
    # a recovery's events, as the coordinator emits them (failure, then the new attempt's
    # shards started), for a driver of its own pipeline tag
    recovered = f"test-recovery-{uuid.uuid4().hex[:8]}"
    dm = DriverMetrics(recovered)
    dm.event("failure", 3, {})
    dm.event("started", None, {})

    def m(key: str, suffix: str = "") -> str:
        return metric(key).exported + suffix

    expected = {
        "rows in": (lambda s: total(s, m("rows_in"), p), float(table.num_rows)),
        "rows out": (lambda s: total(s, m("rows_out"), p), float(summary.rows_out)),
        "epochs": (lambda s: total(s, m("epochs_committed"), p), float(epochs)),
        "bytes": (lambda s: total(s, m("uploaded_bytes"), p), float(summary.bytes_uploaded)),
        "files": (lambda s: total(s, m("uploaded_files"), p), float(summary.files_uploaded)),
        "live keys": (lambda s: total(s, m("live_keys"), p), float(distinct)),
        "seals": (lambda s: total(s, m("seal_seconds", "_count"), p), 2.0 * epochs),
        "uploads": (lambda s: total(s, m("upload_seconds", "_count"), p), 2.0 * epochs),
        "shards with state": (lambda s: float(sum(v > 0 for v in per_shard(
            s, m("state_bytes"), p).values())), 2.0),
        "shards with a hot key": (lambda s: float(sum(0 < v <= 1 for v in per_shard(
            s, m("hot_key_share"), p).values())), 2.0),
        "late events": (lambda s: total(s, m("late_events"), pipeline_tag(ckpt2, "")),
                        float(late)),
        "restarts (recovery)": (lambda s: total(s, m("restarts"), recovered), 1.0),
        "recoveries timed": (lambda s: total(s, m("recovery_seconds", "_count"), recovered), 1.0),
    }
    # the latest value of every series seen: shard gauges leave the endpoint a few report
    # intervals after their actor exits, the driver's arrive with its next report
    seen: Series = {}
    deadline = time.monotonic() + SCRAPE_DEADLINE
    while True:
        seen.update(scrape(ray_metrics_port))
        got = {what: fn(seen) for what, (fn, _) in expected.items()}
        if all(got[what] == want for what, (_, want) in expected.items()):
            break
        if time.monotonic() > deadline:
            want = {what: want for what, (_, want) in expected.items()}
            pytest.fail(f"metrics of {p} after {SCRAPE_DEADLINE:.0f}s: {got}, expected {want}")
        time.sleep(0.5)

    assert summary.bytes_uploaded > 0
    assert total(seen, m("restarts"), p) == 0  # no series: never incremented
    assert total(seen, m("recovery_seconds", "_count"), p) == 0
    assert set(per_shard(seen, m("rows_in"), p)) == shards
    rows = per_shard(seen, m("rows_in"), p)
    assert all(rows[s] == summary.load[s]["updates"] for s in shards)
    assert 0 < total(seen, m("epoch_seconds", "_count"), p) <= epochs
    assert all(dict(lab)["stage"] == "agg" for (n, lab) in seen
               if n == m("rows_in") and dict(lab)["pipeline"] == p)
    # one endpoint serves the driver and both shard actors (each its own WorkerId)
    workers = {dict(lab).get("WorkerId") for (_, lab) in seen if dict(lab)["pipeline"] == p}
    assert len(workers) >= 3
