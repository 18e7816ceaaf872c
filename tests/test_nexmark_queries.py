"""Nexmark queries as raykv pipelines on the session Ray, each equal to its batch model.

Small runs: 30,000 events at 500 events/s of event time (a minute: six 10 s windows,
thirty hops), two splits per source read by two readers, two shards per stage, an epoch
every three source batches so that windows close at barriers, not only at the end.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import raykv
from benchmarks.nexmark.models import MODELS, Config, canonical, run_model
from benchmarks.nexmark.queries import MODEL_ONLY, QUERIES, DiscardSink, pipeline, result

pytestmark = pytest.mark.ray

CONFIG = Config(events=30_000, rate=500, seed=5)
BATCH = 2_000


def _run(name: str, tmp_path: Path, **kwargs: Any) -> Any:
    batch = BATCH if "bid" in QUERIES[name].kinds else BATCH // 10  # 600 persons, 1800 auctions
    return pipeline(name, CONFIG, num_splits=2, batch_size=batch, num_shards=2,
                    checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
                    epoch_every_batches=3, **kwargs).run()


def _same(got: pa.Table, want: pa.Table) -> None:
    got, want = canonical(got), canonical(want)
    assert got.schema.names == want.schema.names
    assert got.num_rows == want.num_rows
    for name in want.schema.names:
        g, w = got.column(name), want.column(name)
        if pa.types.is_floating(w.type):
            assert g.to_pylist() == pytest.approx(w.to_pylist(), rel=1e-12), name
        else:
            assert g.cast(w.type).equals(w), name


def test_every_query_has_a_model_or_a_pipeline() -> None:
    assert set(QUERIES) | set(MODEL_ONLY) == set(MODELS)
    assert not set(QUERIES) & set(MODEL_ONLY)


KILLS = {"q5": "top_auctions", "q17": "Aggregate1", "q4": "winners"}
"""Queries run with a SIGKILL: the stage whose first shard dies after epoch 2. Their output
is compared with the model there, so they are not run a second time without the kill."""


@pytest.mark.parametrize(
    "name", sorted((n for n in QUERIES if n not in KILLS), key=lambda n: int(n[1:])))
def test_query_pipeline_equals_its_model(ray_session: Any, tmp_path: Path, name: str) -> None:
    summary = _run(name, tmp_path)
    want = run_model(name, CONFIG)
    assert want.num_rows > 0
    _same(result(name, summary), want)
    assert len(summary.epochs_committed) >= 3


@pytest.mark.parametrize("name", [n for n in KILLS if n in QUERIES])
def test_query_through_a_sigkilled_shard(ray_session: Any, tmp_path: Path, name: str) -> None:
    """q5 (sliding windows, a TopN and a Map), q17 (final values of an Aggregate) and q4
    (a join, then aggregates over its changelog) with a shard SIGKILLed after epoch 2:
    the restored run's output is still exactly the model's."""
    killed: list[int] = []

    def kill(ev: raykv.ProgressEvent) -> None:
        if not killed and ev.kind == "committed" and ev.epoch == 2:
            import ray

            shard = sorted(n for n in ev.shards if n.startswith(KILLS[name]))[0]
            killed.append(ray.get(ev.shards[shard].ping.remote()))
            os.kill(killed[0], signal.SIGKILL)

    summary = _run(name, tmp_path, on_progress=kill)
    assert killed and summary.restarts == 1
    want = run_model(name, CONFIG)
    assert want.num_rows > 0
    _same(result(name, summary), want)
    assert len(summary.epochs_committed) >= 3


def test_discard_sink_runs_a_query(ray_session: Any, tmp_path: Path) -> None:
    summary = _run("q2", tmp_path, sink=DiscardSink())
    assert summary.finished and summary.rows_in == CONFIG.events * 46 // 50
