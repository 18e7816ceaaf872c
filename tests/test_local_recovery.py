"""Local recovery (docs/recovery.md, "Local recovery"): survivors are rolled back, not replaced.

The in-process tests drive a :class:`ShardWorker` through ``quiesce``/``reset`` against a
real ``file://`` store: the rolled-back state equals the committed epoch, and calls of
the failed attempt are dropped. The Ray tests SIGKILL real shard and reader processes and
check, besides the exact output (the model of ``tests/test_recovery.py``), which
processes lived on: every actor that was not killed keeps its pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import raykv
from raykv.checkpointing import CheckpointStore
from raykv.operators import Aggregate
from raykv.partitioning import Partitioning
from raykv.runtime.shard import ShardWorker
from raykv.runtime.specs import RestorePlan, RestoreSource, ShardSpec, StageSpec
from raykv.testing import Faults, zipf_events
from tests.test_recovery import Events, assert_exact, make, table

# ---------------------------------------------------------------------------- in process


def _worker(tmp_path: Path, attempt: int) -> ShardWorker:
    stage = StageSpec(0, "agg", "user", Aggregate("user", {"qty": "sum"}), "hybridlog", {},
                      Partitioning(num_shards=1, num_key_groups=16), ("agg-0of1-g0",))
    spec = ShardSpec(stage, 0, str(tmp_path / "local" / "agg-0of1-g0"), 1, None,
                     f"file://{tmp_path / 'ckpt'}", None, attempt=attempt, kept_epochs=2)
    return ShardWorker(spec)


def _totals(w: ShardWorker) -> dict[int, int]:
    """The shard's per-user totals, read from its operator state (a final emission)."""
    w.finish(99, 0, attempt=w.spec.attempt)
    out = w.wait_uploaded(99).output
    assert out is not None
    return dict(zip(out["user"].to_pylist(), out["qty_sum"].to_pylist(), strict=True))


def test_reset_rolls_back_to_the_committed_epoch_and_fences_old_calls(tmp_path: Path) -> None:
    w = _worker(tmp_path, attempt=0)
    w.setup(RestorePlan())
    w.process(pa.record_batch({"user": [1, 2, 1], "qty": [1, 2, 3]}), 0, attempt=0)
    w.barrier(1, 0, attempt=0)
    ack = w.wait_uploaded(1)
    store = CheckpointStore(f"file://{tmp_path / 'ckpt'}")
    assert ack.manifest is not None
    store.commit_epoch(1, {w.name: ack.manifest})
    # epoch 2 is sealed and uploaded but never committed; more rows are not even sealed
    w.process(pa.record_batch({"user": [1, 3], "qty": [10, 30]}), 0, attempt=0)
    w.barrier(2, 0, attempt=0)
    w.wait_uploaded(2)  # the engine manifest of epoch 1 is no longer in data_dir
    w.process(pa.record_batch({"user": [2], "qty": [100]}), 0, attempt=0)

    w.quiesce()
    assert w.process(pa.record_batch({"user": [9], "qty": [9]}), 0, attempt=0)[0] == 0
    with pytest.raises(RuntimeError, match="rolled back by a recovery"):
        w.wait_uploaded(3)  # a waiter of the failed attempt is released, not left hanging

    info = w.reset(replace(w.spec, attempt=1),
                   RestorePlan(epoch=1, direct=RestoreSource(w.name, "hybridlog", {})))
    assert info["pid"] == os.getpid()
    assert info["downloaded_files"] == 0  # data_dir and the kept links held them all
    # queued calls of attempt 0 that run after the reset are dropped
    assert w.process(pa.record_batch({"user": [1], "qty": [1000]}), 0, attempt=0)[0] == 0
    w.barrier(2, 0, attempt=0)
    # an old commit thread's wait for epoch 2 must not take the replayed epoch 2's ack
    with pytest.raises(RuntimeError, match="of attempt 0 reached attempt 1"):
        w.wait_uploaded(2, 0)
    assert w.process(pa.record_batch({"user": [4], "qty": [4]}), 0, attempt=1)[0] == 1
    assert _totals(w) == {1: 4, 2: 2, 4: 4}  # epoch 1 plus attempt 1's row, nothing else
    w.close()
    store.close()


def test_reset_without_a_commit_starts_empty(tmp_path: Path) -> None:
    w = _worker(tmp_path, attempt=0)
    w.setup(RestorePlan())
    w.process(pa.record_batch({"user": [1], "qty": [5]}), 0, attempt=0)
    w.barrier(1, 0, attempt=0)
    w.quiesce()
    w.reset(replace(w.spec, attempt=1), RestorePlan())
    w.process(pa.record_batch({"user": [2], "qty": [7]}), 0, attempt=1)
    assert _totals(w) == {2: 7}
    w.close()


# ---------------------------------------------------------------------------- through Ray


def test_warm_readies_a_standby_without_touching_the_template_shards_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """``warm`` opens an engine and the operator's logic in a scratch folder it removes,
    and probes the store; the template shard's ``data_dir`` (a live shard's on this node)
    is never created. A store it cannot open is logged, not raised (the reset meets it)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    preloads: list[None] = []
    monkeypatch.setattr("raykv.runtime.shard_rollback.preload_lazy_imports",
                        lambda: preloads.append(None))
    w = _worker(tmp_path, attempt=0)
    w.warm()
    assert preloads == [None]  # what pyarrow imports lazily (the next test)
    assert not Path(w.spec.data_dir).exists()
    assert list(scratch.iterdir()) == []
    assert (tmp_path / "ckpt").is_dir()  # the store was opened (a file:// store is made)
    bad = ShardWorker(replace(w.spec, checkpoint="nosuchscheme://bucket/x"))
    with caplog.at_level("WARNING", logger="raykv"):
        bad.warm()
    assert "could not warm up" in caplog.text and "nosuchscheme" in caplog.text
    assert list(scratch.iterdir()) == []


def test_the_preload_pays_the_import_a_fresh_shards_first_batch_would_wait_for() -> None:
    """A fresh shard process has not imported pandas; pyarrow does on its first
    conversion, in the first ``process`` call (measured: most of a standby's first
    call after it took a killed shard's role, 0.65-0.88 s against 0.1 s later, while the
    readers feeding it waited). ``preload_lazy_imports`` (a standby's ``warm``) pays
    it ahead. Checked in a fresh interpreter: this one imported pandas long ago."""
    pytest.importorskip("pandas")
    code = ("import sys\n"
            "import raykv.runtime.shard\n"
            "assert 'pandas' not in sys.modules, 'a shard process imports pandas already'\n"
            "from raykv.runtime.shard_rollback import preload_lazy_imports\n"
            "preload_lazy_imports()\n"
            "assert 'pandas' in sys.modules, 'the preload did not import it'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr


class Pids:
    """on_progress hook: the pid of every actor when each attempt has started."""

    def __init__(self) -> None:
        self.by_attempt: list[dict[str, int]] = []

    def __call__(self, ev: raykv.ProgressEvent) -> None:
        if ev.kind == "started":
            import ray

            names = sorted(ev.actors)
            pids = ray.get([ev.actors[n].ping.remote() for n in names], timeout=30)
            self.by_attempt.append(dict(zip(names, pids, strict=True)))


class SigKill:
    """on_progress hook: SIGKILL the process of actor ``name`` at event ``kind`` of ``epoch``."""

    def __init__(self, name_prefix: str, kind: str, epoch: int | None) -> None:
        self.prefix, self.kind, self.epoch = name_prefix, kind, epoch
        self.killed: list[int] = []

    def __call__(self, ev: raykv.ProgressEvent) -> None:
        if self.killed or ev.kind != self.kind or (self.epoch is not None
                                                   and ev.epoch != self.epoch):
            return
        import ray

        (name,) = [n for n in ev.actors if n.startswith(self.prefix)]
        pid = ray.get(ev.actors[name].ping.remote(), timeout=30)
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)
        time.sleep(0.05)  # let the process go before the driver moves on


@pytest.mark.ray
@pytest.mark.parametrize("victim", ["Aggregate0-1of3", "reader-0of1"])
def test_only_the_killed_actor_is_replaced(ray_session: Any, tmp_path: Path,
                                           victim: str) -> None:
    t = table(21)
    pids, kill = Pids(), SigKill(victim, "barrier", 2)
    events = Events(lambda ev: (pids(ev), kill(ev)))
    s = make(tmp_path, t, num_shards=3, on_progress=events).run()
    assert kill.killed and s.restarts == 1
    before, after = pids.by_attempt
    assert set(before) == set(after)
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {next(n for n in before if n.startswith(victim))}
    assert kill.killed == [before[next(iter(changed))]]
    assert_exact(s.output_by_epoch, t)


@pytest.mark.ray
def test_a_survivor_killed_while_it_rolls_back(ray_session: Any, tmp_path: Path) -> None:
    """The second kill strikes a survivor inside ``reset``: the next attempt replaces it."""
    t = table(22)
    # after a commit: a rollback to no epoch skips the restore delay, and the survivor's
    # reset then finished before the second kill (seen once, under load, at "barrier" 3)
    first = SigKill("Aggregate0-0of2", "committed", 2)
    second = SigKill("Aggregate0-1of2", "starting", None)  # the survivor, restoring
    pids = Pids()

    def on_progress(ev: raykv.ProgressEvent) -> None:
        pids(ev)
        first(ev)
        if first.killed and ev.kind == "starting" and ev.detail["attempt"] == 1:
            second(ev)

    events = Events(on_progress)
    s = make(tmp_path, t, faults=Faults(restore_delay=0.5), on_progress=events).run()
    assert first.killed and second.killed
    assert s.restarts == 2 and events.attempts() == [0, 1, 2]
    assert not events.started(1)
    assert events.restored_from(2) == events.last_commit_before_failure()
    kept = [d["kept"] for k, _, d in events.seen if k == "starting"]
    assert kept[1] == 2  # attempt 1 kept the reader and shard 1
    assert pids.by_attempt[-1]["reader-0of1"] == pids.by_attempt[0]["reader-0of1"]
    assert_exact(s.output_by_epoch, t)


@pytest.mark.ray
def test_a_standby_takes_the_dead_shards_place(ray_session: Any, tmp_path: Path) -> None:
    """``standby=1``: the killed shard's role goes to the standby, no actor is started."""
    t = table(23)
    # the standbys start beside the first attempt's actors: kill after the second commit
    pids, kill = Pids(), SigKill("Aggregate0-0of2", "committed", 2)
    events = Events(lambda ev: (pids(ev), kill(ev)))
    # max_pending_epochs=1: the next barrier waits for this commit, so the dead shard is
    # always asked for more work (with 4, its last epochs could all be acked already)
    s = make(tmp_path, t, standby=1, on_progress=events, max_pending_epochs=1).run()
    assert kill.killed and s.restarts == 1
    kept = [d["kept"] for k, _, d in events.seen if k == "starting"]
    assert kept == [0, 3]  # attempt 1: the reader, shard 1 and the standby as shard 0
    before, after = pids.by_attempt
    assert after["Aggregate0-0of2-g0"] not in before.values()
    assert {n: p for n, p in after.items() if n != "Aggregate0-0of2-g0"} == {
        n: p for n, p in before.items() if n != "Aggregate0-0of2-g0"}
    assert_exact(s.output_by_epoch, t)


class _Idle:
    """A stand-in standby: answers ``ping`` once its ``__init__`` (``delay`` s) is over."""

    def __init__(self, delay: float) -> None:
        time.sleep(delay)

    def ping(self) -> int:
        return os.getpid()


def _wait_until_dead(actor: Any) -> None:
    """Return once a call to ``actor`` fails (at most 60 s)."""
    import ray

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ping.remote(), timeout=60)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError(f"{actor} still answers 60 s after its SIGKILL")


@pytest.mark.ray
def test_a_recovery_takes_a_ready_standby_before_one_still_starting(ray_session: Any) -> None:
    """``Standby.check`` drops a dead standby and orders the ready ones first, whatever
    their order in the pool; ``Survivors.take`` gives a dead role the first. (Before,
    the newest standby was taken: after two kills in a row, one still starting.)"""
    import ray

    from raykv.runtime.survivors import Standby, Survivors

    idle = ray.remote(num_cpus=0)(_Idle)
    starting, ready, dead, newest = (idle.remote(d) for d in (60.0, 0.0, 0.0, 60.0))
    ray.get(ready.ping.remote(), timeout=60)
    os.kill(ray.get(dead.ping.remote(), timeout=60), signal.SIGKILL)
    _wait_until_dead(dead)  # else its next ping may be sent before Ray knows it died
    pool = Standby(shards=[starting, dead, ready, newest])
    pool.check(pool.ping(), timeout=1.0)
    assert pool.shards == [ready, starting, newest]
    kept = Survivors().take(["shard-0"], [], pool)
    assert kept.shards == {"shard-0": ready} and pool.shards == [starting, newest]
    pool.drop()


@pytest.mark.ray
def test_a_recovery_waits_only_for_the_standbys_it_needs(ray_session: Any) -> None:
    """``need=(1, 0)``: the check ends once one shard standby answered; one still
    starting keeps its place behind it and is not waited for (without ``need`` the
    check waits for every answer until the timeout, and keeps the pool's order)."""
    import ray

    from raykv.runtime.survivors import Standby

    idle = ray.remote(num_cpus=0)(_Idle)
    late, ready = idle.remote(5.0), idle.remote(0.0)
    ray.get(ready.ping.remote(), timeout=60)
    pool = Standby(shards=[late, ready])
    pool.check(pool.ping(), timeout=60.0, need=(1, 0))
    assert pool.shards == [ready, late]
    pool.check(pool.ping(), timeout=60.0)  # no need: both answer, the order stays
    assert pool.shards == [ready, late]
    pool.drop()


@pytest.mark.ray
def test_a_failure_after_the_final_commit_does_not_replay_the_end(ray_session: Any,
                                                                  tmp_path: Path) -> None:
    """The reader dies after it sent the final barrier, while it still waits for its
    calls in flight (slow shards): the final epoch commits, then the reader's ``run``
    fails. The run is complete; a replay would publish ``finish()`` output again."""
    t = table(24)
    killed: list[int] = []

    def on_progress(ev: raykv.ProgressEvent) -> None:
        if not killed and ev.kind == "barrier" and ev.detail.get("final"):
            import ray

            (name,) = [n for n in ev.actors if n.startswith("reader-")]
            killed.append(ray.get(ev.actors[name].ping.remote(), timeout=30))
            os.kill(killed[0], signal.SIGKILL)

    events = Events(on_progress)
    s = make(tmp_path, t, on_progress=events, faults=Faults(process_delay=0.3)).run()
    assert killed and s.finished and s.restarts == 1  # the failure was seen, and survived
    assert_exact(s.output_by_epoch, t)


@pytest.mark.ray
@pytest.mark.parametrize("engine", ["hybridlog", "appendlog"])
def test_a_kill_with_many_integer_keys_is_exact(ray_session: Any, tmp_path: Path,
                                                engine: str) -> None:
    """Epochs of 6,000+ distinct integer keys a shard: the engines index them in a
    ``KeyIndex`` (``raykv/engines/keyindex.py``), so the survivor rolls back, and the
    replacement reopens, an engine whose keys come from its runs into the table."""
    from raykv.engines.keyindex import PROMOTE_MIN_KEYS
    from raykv.sources import TableSource

    rows = 30_000  # an epoch: two batches of 15,000
    t = zipf_events(120_000, 1_000_000, seed=31)
    fewest = min(pc.count_distinct(t.slice(a, rows)["user"]).as_py()
                 for a in range(0, t.num_rows, rows))
    assert fewest > 2.5 * PROMOTE_MIN_KEYS  # every epoch's fold promotes (two shards)
    # after the second commit, and max_pending_epochs=1 (the next barrier waits for it):
    # both shards restore two epochs of runs, whatever the timing
    kill = SigKill("Aggregate0-0of2", "committed", 2)
    events = Events(kill)
    s = raykv.Pipeline(source=TableSource(t, batch_size=15_000),
                       stages=[Aggregate("user", {"amount": ["sum", "count"]})],
                       engine=engine, num_shards=2, checkpoint=str(tmp_path / "ckpt"),
                       local_dir=str(tmp_path / "local"), source_parallelism=1,
                       epoch_every_batches=2, max_pending_epochs=1, on_progress=events).run()
    assert kill.killed and s.restarts == 1
    assert events.restored_from(1) == 2
    assert_exact(s.output_by_epoch, t, rows=rows)
