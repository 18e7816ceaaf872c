"""min/max over a changelog in real pipelines (issue 17): three re-keyed stages with
updates and deletes, random epoch boundaries, a SIGKILLed shard of the min/max stage, a
rescale of its state, and the sink's upsert view replayed; results equal pyarrow models
over the whole input."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raykv
from raykv.operators import Aggregate
from raykv.sinks import ParquetSink, parse_part_file_name
from raykv.sources import TableSource

pytestmark = pytest.mark.ray

PER_USER = {"amount": ["sum"], "price": ["mean"], "name": ["max"], "country": ["last"]}
PER_COUNTRY = {"amount_sum": ["min", "max"], "user": ["count", "min", "max"],
               "name_max": ["min", "max"], "price_mean": ["max"]}
PER_SIZE = {"amount_sum_max": ["min", "max", "count"], "name_max_min": ["max"]}


def events(n: int, seed: int) -> pa.Table:
    """Users moving between many countries (some empty out: deletes downstream)."""
    rng = np.random.default_rng(seed)
    return pa.table({
        "user": rng.integers(0, 60, n),
        "amount": rng.integers(-50, 100, n),
        "price": pa.array(rng.integers(0, 40, n).astype(np.float64), mask=rng.random(n) < .1),
        "name": pa.array([f"n{x:02d}" for x in rng.integers(0, 50, n)]),
        "country": pa.array([f"c{x:02d}" for x in rng.integers(0, 40, n)]),
    })


def model(t: pa.Table, levels: int) -> pa.Table:
    per_user = t.group_by("user", use_threads=False).aggregate(
        [(c, op) for c, ops in PER_USER.items() for op in ops])
    out = per_user.group_by("country_last").aggregate(
        [(c, op) for c, ops in PER_COUNTRY.items() for op in ops])
    if levels == 3:
        out = out.group_by("user_count").aggregate(
            [(c, op) for c, ops in PER_SIZE.items() for op in ops])
    return out


def rows(t: pa.Table | None, key: str) -> dict[Any, dict[str, Any]]:
    return {} if t is None else {r.pop(key): r for r in t.to_pylist()}


def stages(levels: int) -> list[Aggregate]:
    out = [Aggregate("user", PER_USER, name="user"),
           Aggregate("country_last", PER_COUNTRY, name="country")]
    if levels == 3:
        out.append(Aggregate("user_count", PER_SIZE, name="size"))
    return out


def pipeline(tmp_path: Path, t: pa.Table, levels: int, **kw: Any) -> raykv.Pipeline:
    kw.setdefault("num_shards", 2)
    return raykv.Pipeline(
        source=TableSource(t, batch_size=400), stages=stages(levels),
        engine="hybridlog", source_parallelism=1,  # "last": one reader keeps the order
        checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"), **kw)


def _kill_once(kills: list[str], epoch: int, prefix: str) -> Any:
    import ray

    def on_progress(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "committed" and ev.epoch == epoch and not kills:
            name = sorted(n for n in ev.shards if n.startswith(prefix))[0]
            kills.append(name)
            os.kill(ray.get(ev.shards[name].ping.remote()), signal.SIGKILL)

    return on_progress


def test_three_stages_of_min_max_with_a_sigkill(ray_session: Any, tmp_path: Path) -> None:
    """user -> country (min/max, re-keyed) -> users-per-country buckets (min/max,
    re-keyed); an epoch every 3 batches (10 epochs); a shard of the country stage SIGKILLed
    after a commit: it restores its multisets from the checkpoint and the replay is exact.
    (One seed: a second one, with epochs every 2 batches, ran the same code.)"""
    seed = 2
    t = events(12_000, seed)
    every = int(np.random.default_rng(seed).integers(1, 4))
    assert every == 3
    kills: list[str] = []
    s = pipeline(tmp_path, t, 3, epoch_every_batches=every, max_pending_epochs=1,
                 on_progress=_kill_once(kills, 3, "country")).run()
    assert s.finished and s.restarts == 1 and kills[0].startswith("country")
    final = s.output_by_epoch[s.last_epoch]
    assert rows(final, "user_count") == rows(model(t, 3), "user_count")


def test_the_min_max_state_rescales_and_the_sink_gets_upserts_and_tombstones(
        ray_session: Any, tmp_path: Path) -> None:
    """Stop after epoch 2 with 2 shards a stage, resume with 3: the multisets move with
    their groups and the final values equal the model. ParquetSink's default upsert view
    has one row per changed country and epoch, a tombstone (count 0) for a country that
    emptied, and the complete final values in the last epoch."""
    t = events(10_000, 3)
    out = tmp_path / "out"
    holder: dict[str, raykv.Pipeline] = {}

    def stop_after_2(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "committed" and ev.epoch == 2:
            holder["p"].stop()

    holder["p"] = pipeline(tmp_path, t, 2, epoch_every_batches=2, max_pending_epochs=1,
                           sink=ParquetSink(str(out)), on_progress=stop_after_2)
    first = holder["p"].run()
    assert first.stopped
    second = pipeline(tmp_path, t, 2, num_shards=3, epoch_every_batches=2,
                      sink=ParquetSink(str(out))).run(resume=True)
    assert second.finished and second.restored_from == first.last_epoch
    assert any(n.startswith("country-") and "of3" in n for n in second.shards)
    files = sorted((parse_part_file_name(p.name), p) for p in out.glob("part-*.parquet"))
    by_epoch: dict[int, list[pa.Table]] = {}
    for (epoch, _part), path in files:
        by_epoch.setdefault(epoch, []).append(pq.read_table(path))
    tombstones = 0
    for epoch, tables in by_epoch.items():
        keys = pa.concat_tables(tables)["country_last"].to_pylist()
        assert len(keys) == len(set(keys))  # one row per country and epoch
        if epoch != second.last_epoch:
            counts = pa.concat_tables(tables)["user_count"].to_pylist()
            tombstones += counts.count(0)
    assert tombstones > 0  # countries emptied and said so
    final = pa.concat_tables(by_epoch[second.last_epoch])
    assert rows(final, "country_last") == rows(model(t, 2), "country_last")
