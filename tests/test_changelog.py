"""Stages fed by another stage's updates stay exact (issue 17): the changelog between
stages in real pipelines, against pyarrow models over the whole input, with SIGKILLs."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import raykv
from raykv.operators import Aggregate, Reduce
from raykv.sources import TableSource

pytestmark = pytest.mark.ray


def final_of(s: raykv.RunSummary) -> pa.Table:
    return s.output_by_epoch[s.last_epoch]


def as_dict(t: pa.Table, key: str, col: str) -> dict[Any, Any]:
    return dict(zip(t[key].to_pylist(), t[col].to_pylist(), strict=True))


def test_an_aggregate_of_an_aggregate_counts_each_event_once(
        ray_session: Any, tmp_path: Path) -> None:
    """The issue's case: 200,000 events of amount 1 over 100 users, six epochs; the second
    stage's total per user is 2,000 (it was 8,000: every epoch's running total added)."""
    n = 200_000
    t = pa.table({"user": np.arange(n) % 100, "amount": np.ones(n, dtype=np.int64)})
    s = raykv.Pipeline(
        source=TableSource(t, batch_size=n // 6 + 1),
        stages=[Aggregate("user", {"amount": "sum"}),
                Aggregate("user", {"amount_sum": ["sum", "count"]})],
        engine="memonly", epoch_every_batches=1, source_parallelism=1,
        checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
    ).run()
    assert s.epochs_committed == [1, 2, 3, 4, 5, 6, 7]  # six with events, then the end
    final = final_of(s)
    assert set(final["amount_sum_sum"].to_pylist()) == {2_000}
    assert set(final["amount_sum_count"].to_pylist()) == {1}  # one live row per user


def _kill_once(kills: list[str], epoch: int, prefix: str) -> Any:
    import ray

    def on_progress(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "committed" and ev.epoch == epoch and prefix not in kills:
            kills.append(prefix)
            name = sorted(n for n in ev.shards if n.startswith(prefix))[0]
            os.kill(ray.get(ev.shards[name].ping.remote()), signal.SIGKILL)

    return on_progress


@pytest.mark.parametrize(("killed", "standby"), [("count", 0), ("hist", 0), ("hist", 1)])
def test_three_stage_histogram_with_a_kill(ray_session: Any, tmp_path: Path,
                                           killed: str, standby: int) -> None:
    """events -> per-user count -> users per count (re-keyed) -> buckets per user count
    (re-keyed again), 2 readers, 2 shards a stage; a shard of one stage SIGKILLed. With
    ``standby=1`` the standby (built from the first stage's template) takes the role of
    the second stage's dead shard."""
    rng = np.random.default_rng(3)
    n = 60_000
    t = pa.table({"user": rng.zipf(1.5, n) % 2_000, "amount": rng.integers(1, 9, n)})
    kills: list[str] = []
    killer = _kill_once(kills, 3, killed)
    kept: list[int] = []

    def on_progress(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "starting":
            kept.append(ev.detail["kept"])
        killer(ev)

    s = raykv.Pipeline(
        source=TableSource(t, batch_size=2_500),
        stages=[Aggregate("user", {"amount": ["count"]}, name="count"),
                Aggregate("amount_count", {"user": ["count"]}, name="hist"),
                Aggregate("user_count", {"amount_count": ["count"]}, name="buckets")],
        engine="hybridlog", num_shards=2, source_parallelism=2, epoch_every_batches=2,
        checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
        on_progress=on_progress, max_pending_epochs=1, standby=standby,
    ).run()
    assert s.finished and s.restarts == 1 and kills == [killed]
    assert kept == [0, 8 - 1 + standby]  # 6 shards, 2 readers: all but the dead one kept
    per_user = t.group_by("user").aggregate([("amount", "count")])
    hist = per_user.group_by("amount_count").aggregate([("user", "count")])
    buckets = hist.group_by("user_count").aggregate([("amount_count", "count")])
    assert as_dict(final_of(s), "user_count", "amount_count_count") == as_dict(
        buckets, "user_count", "amount_count_count")


def test_a_row_moving_between_groups_is_retracted_where_it_was(
        ray_session: Any, tmp_path: Path) -> None:
    """Users change country; users per country counts each user in their last country."""
    rng = np.random.default_rng(5)
    n = 20_000
    t = pa.table({"user": rng.integers(0, 500, n),
                  "country": rng.choice(["de", "fr", "it", "nl"], n)})
    s = raykv.Pipeline(
        source=TableSource(t, batch_size=1_000),
        stages=[Aggregate("user", {"country": ["last"]}),
                Aggregate("country_last", {"user": ["count"]})],
        engine="lsm", num_shards=2, epoch_every_batches=3,
        source_parallelism=1,  # "last" is by arrival: one reader keeps the table's order
        checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
        on_progress=_kill_once([], 2, "Aggregate1"),
    ).run()
    assert s.restarts == 1
    last = {u: c for u, c in zip(t["user"].to_pylist(), t["country"].to_pylist(), strict=True)}
    want: dict[str, int] = {}
    for c in last.values():
        want[c] = want.get(c, 0) + 1
    assert as_dict(final_of(s), "country_last", "user_count") == want
    # every epoch's output of the second stage is the users per country at that epoch:
    # the per-epoch values never exceed the number of users
    for table in s.output_by_epoch.values():
        assert sum(table["user_count"].to_pylist()) <= 500


def test_a_sink_keeps_the_row_kinds_when_asked(ray_session: Any, tmp_path: Path) -> None:
    """ParquetSink(changelog=True): every change with its kind; replaying the changelog
    (add +I/+U, remove -U/-D) gives the final values, exactly once after a kill."""
    from raykv.operators.changelog import CHANGE, DELETE, INSERT, UPDATE_AFTER, UPDATE_BEFORE
    from raykv.sinks import ParquetSink

    rng = np.random.default_rng(9)
    n = 30_000
    t = pa.table({"user": rng.integers(0, 300, n), "amount": rng.integers(1, 9, n)})
    out = tmp_path / "out"
    s = raykv.Pipeline(
        source=TableSource(t, batch_size=2_000),
        stages=[Aggregate("user", {"amount": ["sum"]})],
        sink=ParquetSink(str(out), changelog=True), engine="appendlog", num_shards=2,
        epoch_every_batches=2, source_parallelism=1, checkpoint=str(tmp_path / "ckpt"),
        local_dir=str(tmp_path / "local"), on_progress=_kill_once([], 3, "Aggregate0"),
    ).run()
    assert s.finished and s.restarts == 1
    log = ParquetSink(str(out)).read()
    state: dict[int, int] = {}
    for r in log.to_pylist():  # published in epoch order; -U before +U within a key
        kind = r[CHANGE]
        if kind in (UPDATE_BEFORE, DELETE):
            assert state.pop(r["user"]) == r["amount_sum"]  # retracts exactly what was there
        else:
            assert kind in (INSERT, UPDATE_AFTER) and r["user"] not in state
            state[r["user"]] = r["amount_sum"]
    want = t.group_by("user").aggregate([("amount", "sum")])
    assert state == as_dict(want, "user", "amount_sum")


def _max(a: Any, b: Any) -> Any:
    return max(a, b)


def test_users_per_maximum_after_a_reduce(ray_session: Any, tmp_path: Path) -> None:
    """Reduce(user: max amount) -> Aggregate(users per max): old maxima are retracted."""
    rng = np.random.default_rng(8)
    n = 20_000
    t = pa.table({"user": rng.integers(0, 400, n), "amount": rng.integers(0, 1_000, n)})
    s = raykv.Pipeline(
        source=TableSource(t, batch_size=1_000),
        stages=[Reduce("user", _max, "amount"), Aggregate("amount", {"user": ["count"]})],
        engine="hybridlog", num_shards=2, epoch_every_batches=4, source_parallelism=1,
        checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
    ).run()
    per_user = t.group_by("user").aggregate([("amount", "max")])
    want = per_user.group_by("amount_max").aggregate([("user", "count")])
    assert as_dict(final_of(s), "amount", "user_count") == as_dict(
        want, "amount_max", "user_count")
