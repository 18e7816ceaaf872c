"""Nexmark queries as raykv pipelines on the session Ray, each equal to its batch model.

Small runs: 12,000 events at 200 events/s of event time (a minute: six 10 s windows,
thirty hops), two splits per source read by one reader (its watermark is the minimum of
the two splits'; several readers: tests/test_readers.py and tests/test_watermarks.py),
two shards per stage, an epoch every four source batches (about 14 batches of bids: 800
bids, 80 persons or auctions a batch, seven a split) so that windows close at barriers,
not only at the end.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest

import raykv
from benchmarks.nexmark.models import MODELS, Config, canonical, inputs, run_model
from benchmarks.nexmark.queries import MODEL_ONLY, QUERIES, DiscardSink, pipeline, result
from raykv.engines import MemOnly
from raykv.operators import Map

pytestmark = pytest.mark.ray

CONFIG = Config(events=12_000, rate=200, seed=5)
BATCH = 800


def _run(name: str, tmp_path: Path, **kwargs: Any) -> Any:
    batch = BATCH if "bid" in QUERIES[name].kinds else BATCH // 10  # 240 persons, 720 auctions
    return pipeline(name, CONFIG, num_splits=2, batch_size=batch, num_shards=2,
                    checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
                    epoch_every_batches=4, source_parallelism=1, **kwargs).run()


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

IN_PROCESS = ("q1", "q2", "q14")
"""Stateless queries (one ``Map`` stage, like q0) whose stage logic is run here, in the
test process, over the bids in source batches: the ``Map`` stage on shard actors is what
q0's pipeline run (and q2's with a ``DiscardSink``) already checks."""


@pytest.mark.parametrize("name", IN_PROCESS)
def test_stateless_query_logic_equals_its_model(tmp_path: Path, name: str) -> None:
    (stage,) = QUERIES[name].stages(CONFIG)
    assert isinstance(stage, Map) and QUERIES[name].kinds == ("bid",)
    with MemOnly(str(tmp_path / "state")) as store:
        logic = stage.build(store)
        for batch in inputs(CONFIG).bid.to_batches(max_chunksize=BATCH):
            logic.process(batch)
        out = logic.on_barrier(1)
    assert out is not None
    got = result(name, SimpleNamespace(output_by_epoch={1: pa.Table.from_batches([out])}))
    want = run_model(name, CONFIG)
    assert want.num_rows > 0
    _same(got, want)


@pytest.mark.parametrize("name", sorted(set(QUERIES) - set(KILLS) - set(IN_PROCESS),
                                        key=lambda n: int(n[1:])))
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

    # max_pending_epochs=1: epoch 3's barrier waits for this commit, so the dead shard is
    # always asked for more work (with 4, it could have acked every epoch already)
    summary = _run(name, tmp_path, on_progress=kill, max_pending_epochs=1)
    assert killed and summary.restarts == 1
    want = run_model(name, CONFIG)
    assert want.num_rows > 0
    _same(result(name, summary), want)
    assert len(summary.epochs_committed) >= 3


def test_discard_sink_runs_a_query(ray_session: Any, tmp_path: Path) -> None:
    summary = _run("q2", tmp_path, sink=DiscardSink())
    assert summary.finished and summary.rows_in == CONFIG.events * 46 // 50
