"""Skew-aware rebalancing end to end (docs/runtime.md, "Skew"): exact results, kills, restore.

The workload: ``Aggregate(user: sum, count)`` over zipf(1.3) events in batches, an epoch
every 2 batches, 4 shards. With plain hashing one shard carries about 40 % of the
updates, so the rebalancer moves key groups after the first epochs. Every run must
publish exactly the per-epoch output of a plain pyarrow model (the same as a run
without rebalancing), also when a shard dies during or right after a rebalance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import raykv
from raykv.checkpointing import CheckpointStore
from raykv.cli import main
from raykv.operators import Aggregate, StatefulMap, TumblingWindow
from raykv.partitioning import Partitioning
from raykv.rebalance import Rebalance
from raykv.sources import TableSource
from raykv.testing import Faults, memory_checkpoint_url, zipf_events
from tests.test_pipeline import assert_tables_close, group_model
from tests.test_recovery import Events, Killer
from tests.test_recovery import assert_exact as assert_exact_epochs

pytestmark = pytest.mark.ray

N, KEYS, BATCH, EVERY = 24_000, 2_000, 2_000, 2
AGGS = [("amount", "sum"), ("amount", "count")]
REBALANCE = Rebalance(min_rows=4_000, cooldown_epochs=0)


def table(seed: int = 31) -> pa.Table:
    return zipf_events(N, KEYS, s=1.3, seed=seed)


def assert_exact(by_epoch: dict[int, pa.Table], t: pa.Table) -> None:
    assert_exact_epochs(by_epoch, t, rows=BATCH * EVERY)


def make(tmp_path: Path, t: pa.Table, **kw: Any) -> raykv.Pipeline:
    kw.setdefault("num_shards", 4)
    kw.setdefault("checkpoint", str(tmp_path / "ckpt"))
    kw.setdefault("local_dir", str(tmp_path / "local"))
    kw.setdefault("retain", 20)
    kw.setdefault("rebalance", REBALANCE)
    kw.setdefault("max_pending_epochs", 1)  # rebalance soon after the first loads are in
    kw.setdefault("source_parallelism", 1)  # one reader: epoch e = the first e*EVERY batches
    return raykv.Pipeline(
        source=TableSource(t, batch_size=BATCH),
        stages=[Aggregate("user", {"amount": ["sum", "count"]})],
        epoch_every_batches=EVERY, **kw,
    )


def moved_in(store: CheckpointStore, epoch: int, stage: int = 0) -> Partitioning:
    meta = store.read_epoch(epoch).metadata
    return Partitioning.from_dict(meta["stages"][stage]["partitioning"])


def busiest_over_mean(store: CheckpointStore, epochs: list[int]) -> float:
    """The busiest shard's updates over the mean in ``epochs``, from the manifests' loads."""
    totals: dict[str, int] = {}
    for e in epochs:
        for name, v in store.read_epoch(e).metadata["load"]["Aggregate0"].items():
            totals[name] = totals.get(name, 0) + v["updates"]
    return max(totals.values()) / (sum(totals.values()) / len(totals))


def test_rebalanced_run_is_exact_records_the_assignment_and_evens_the_load(
    ray_session: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = table()
    events: list[raykv.ProgressEvent] = []
    s = make(tmp_path, t, on_progress=events.append).run()
    assert s.finished and s.restarts == 0
    assert_exact(s.output_by_epoch, t)
    assert s.rebalances, "zipf(1.3) over 4 shards must trigger a rebalance"
    first = s.rebalances[0]
    assert first["moved_groups"] > 0 and first["copied_keys"] > 0
    assert max(first["after"]) < max(first["before"])
    assert any(e.kind == "rebalanced" for e in events)
    # the new assignment is in every manifest after the rebalance, not in the one before
    store = CheckpointStore(str(tmp_path / "ckpt"))
    assert not moved_in(store, first["epoch"]).moved
    assert moved_in(store, s.last_epoch).moved
    # measured by the trackers, not planned: the epochs before the rebalance ran on plain
    # hashing, the ones after it on the new assignment
    data = [e for e in store.epochs() if e < s.last_epoch]  # the last one is finish()
    before = busiest_over_mean(store, [e for e in data if e <= first["epoch"]])
    after = busiest_over_mean(store, [e for e in data if e > s.rebalances[-1]["epoch"]])
    assert after < before and after <= 1.3
    # load metrics: per shard updates add up to the input; write amplification and hot keys
    assert sum(e["updates"] for e in s.load.values()) == N
    hottest = pc.mode(t["user"])[0]["mode"].as_py()
    assert str(hottest) in {e["hot_keys"][0][0] for e in s.load.values()}
    meta = store.read_epoch(s.last_epoch).metadata["load"]["Aggregate0"]
    assert set(meta) == set(s.load) and all(v["write_amplification"] > 0 for v in meta.values())
    assert "rebalances moved" in str(s)
    # and `raykv checkpoints show` prints them
    capsys.readouterr()
    assert main(["checkpoints", "show", str(tmp_path / "ckpt"), str(s.last_epoch)]) == 0
    out = capsys.readouterr().out
    assert "key groups moved" in out and "write amp" in out and f"hot keys: {hottest} ~" in out


def test_kill_during_rebalance_restores_the_old_assignment(
    ray_session: Any, tmp_path: Path
) -> None:
    t = table(33)
    s = make(tmp_path, t, faults=Faults(crash_at=("Aggregate0-", "rebalance", 1))).run()
    # every shard exits at its first move; one that still answered quiesce before it
    # exited is kept by local recovery, fails in reset, and one more recovery follows
    assert s.restarts in (1, 2) and s.rebalances  # the retried rebalance went through
    assert_exact(s.output_by_epoch, t)
    CheckpointStore(str(tmp_path / "ckpt")).verify()


def test_kill_right_after_rebalance(ray_session: Any, tmp_path: Path) -> None:
    t = table(34)
    kill = Killer("rebalanced", None, index=1, wait_dead=True)
    s = make(tmp_path, t, on_progress=kill).run()
    assert kill.killed and s.restarts == 1
    assert s.rebalances[0].get("undone")  # the kill struck before the next commit
    assert_exact(s.output_by_epoch, t)


def test_kill_after_the_new_assignment_is_committed(ray_session: Any, tmp_path: Path) -> None:
    t = table(35)
    seen: dict[str, int] = {}
    kill = Killer("committed", None, index=2, wait_dead=True)

    def hook(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "rebalanced":
            seen["epoch"] = int(ev.epoch or 0)
        if ev.kind == "committed" and "epoch" in seen and ev.epoch == seen["epoch"] + 1:
            kill(ev)

    events = Events(hook)
    # max_pending_epochs=1 (make): the next barrier goes out only after this commit, hence
    # after the kill, so the dead shard is always asked for more work
    s = make(tmp_path, t, on_progress=events).run()
    assert kill.killed and s.restarts == 1
    # it struck right after the commit of the new assignment, which the recovery restores
    assert events.last_commit_before_failure() == seen["epoch"] + 1 == events.restored_from(1)
    assert not s.rebalances[0].get("undone")
    assert_exact(s.output_by_epoch, t)


def test_resume_and_rescale_keep_the_rebalanced_assignment(
    ray_session: Any, tmp_path: Path
) -> None:
    t = table(36)
    holder: dict[str, raykv.Pipeline] = {}

    def stop_after_rebalance(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "committed" and holder.get("rebalanced") and ev.epoch is not None:
            holder["p"].stop()
        if ev.kind == "rebalanced":
            holder["rebalanced"] = True  # type: ignore[assignment]

    holder["p"] = make(tmp_path, t, on_progress=stop_after_rebalance)
    first = holder["p"].run()
    assert first.stopped and first.rebalances
    store = CheckpointStore(str(tmp_path / "ckpt"))
    assigned = moved_in(store, first.last_epoch)
    assert assigned.moved
    # resume with the same shard count: the shards come back with the moved groups
    holder2: dict[str, raykv.Pipeline] = {}
    # (stopped as soon as it starts: the reader holds after EVERY batches, so input is left)
    holder2["p"] = make(tmp_path, t, rebalance=None,
                        on_progress=lambda ev: ev.kind == "started" and holder2["p"].stop())
    second = holder2["p"].run(resume=True)
    assert second.stopped and second.epochs_committed
    assert moved_in(store, second.last_epoch) == assigned
    # rescale 4 -> 3 from a rebalanced epoch: contiguous ranges again, nothing lost
    third = make(tmp_path, t, num_shards=3, rebalance=None).run(resume=True)
    assert third.finished
    assert not moved_in(store, third.last_epoch).moved
    final = third.output_by_epoch[third.last_epoch].select(["user", "amount_sum", "amount_count"])
    assert_tables_close(final, group_model(t, "user", AGGS).rename_columns(final.column_names),
                        "user")


def test_statefulmap_rebalanced_on_a_memory_store(ray_session: Any, tmp_path: Path) -> None:
    """StatefulMap (no pre-combining) with driver-side checkpoint I/O (memory://)."""
    t = table(37)

    def running(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
        n = (state or 0) + 1
        return n, n

    op = StatefulMap("user", running)
    s = raykv.Pipeline(
        source=TableSource(t, batch_size=BATCH), stages=[op], num_shards=4,
        checkpoint=memory_checkpoint_url(), local_dir=str(tmp_path / "local"),
        epoch_every_batches=EVERY, rebalance=REBALANCE, source_parallelism=1,
    ).run()
    assert s.rebalances
    out = s.output
    last = pa.TableGroupBy(out, "user").aggregate([("value", "max")]).sort_by("user")
    model = group_model(t, "user", [("amount", "count")])
    assert last["value_max"].to_pylist() == model["amount_count"].to_pylist()
    assert out.num_rows == N


def test_windows_are_never_rebalanced(ray_session: Any, tmp_path: Path) -> None:
    t = table(38)
    s = raykv.Pipeline(
        source=TableSource(t, batch_size=BATCH),
        stages=[TumblingWindow("user", "t", 5_000, {"amount": ["sum"]})], num_shards=4,
        checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
        epoch_every_batches=EVERY, rebalance=REBALANCE, source_parallelism=1,
    ).run()
    assert s.finished and not s.rebalances and s.load


def test_rebalance_needs_a_checkpoint() -> None:
    with pytest.raises(ValueError, match="rebalance needs checkpoint"):
        raykv.Pipeline(source=TableSource(table(), batch_size=BATCH),
                       stages=[Aggregate("user", {"amount": ["sum"]})], rebalance=Rebalance())
    with pytest.raises(TypeError, match=r"raykv\.rebalance\.Rebalance"):
        raykv.Pipeline(source=TableSource(table(), batch_size=BATCH),
                       stages=[Aggregate("user", {"amount": ["sum"]})], checkpoint="/tmp/x",
                       rebalance={"threshold": 1.2})
