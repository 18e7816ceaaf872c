"""Failures, recovery, driver restart, rescaling and rollback (docs/runtime.md, "Recovery").

The workload: ``Aggregate(user: sum, count)`` over 12,000 zipf events in 8 batches, an
epoch every 2 batches, so every run commits epochs 1-4 (changelogs) and 5 (final values).
:func:`expected_epochs` is that output computed with plain pyarrow; a run with failures
must publish exactly it: each epoch once, with the same content as without failures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import raykv
from raykv.checkpointing import CheckpointStore
from raykv.operators import Aggregate, TumblingWindow
from raykv.sinks import ParquetSink, parse_part_file_name
from raykv.sources import TableSource
from raykv.testing import Faults, memory_checkpoint_url, zipf_events
from tests.test_pipeline import assert_tables_close, group_model

pytestmark = pytest.mark.ray

N, KEYS, BATCH, EVERY = 12_000, 300, 1_500, 2
AGGS = [("amount", "sum"), ("amount", "count")]


def table(seed: int = 11) -> pa.Table:
    return zipf_events(N, KEYS, seed=seed)


def expected_epochs(t: pa.Table, rows: int = BATCH * EVERY) -> dict[int, pa.Table]:
    """Per-epoch output of the workload (``rows`` input rows an epoch): changelogs, then
    the final values in the last epoch (here epochs 1-4, then 5)."""
    out = {}
    n = t.num_rows
    for e in range(1, n // rows + 1):
        model = group_model(t.slice(0, rows * e), "user", AGGS)
        recent = pc.unique(t.slice(rows * (e - 1), rows)["user"])
        out[e] = model.filter(pc.is_in(model["user"], value_set=recent))
    out[n // rows + 1] = group_model(t, "user", AGGS)
    return out


def assert_exact(by_epoch: dict[int, pa.Table], t: pa.Table, shift: int = 0,
                 rows: int = BATCH * EVERY) -> None:
    """``by_epoch`` (epoch -> output) is exactly the failure-free output (epochs + shift)."""
    expected = expected_epochs(t, rows)
    assert sorted(by_epoch) == [e + shift for e in sorted(expected)]
    for e, model in expected.items():
        got = by_epoch[e + shift].select(["user", "amount_sum", "amount_count"])
        assert_tables_close(got, model.rename_columns(got.column_names), "user")


def make(tmp_path: Path, t: pa.Table, **kw: Any) -> raykv.Pipeline:
    kw.setdefault("engine", "hybridlog")
    kw.setdefault("num_shards", 2)
    kw.setdefault("checkpoint", str(tmp_path / "ckpt"))
    kw.setdefault("local_dir", str(tmp_path / "local"))
    kw.setdefault("retain", 10)
    kw.setdefault("source_parallelism", 1)  # one reader: epoch e = the first e*EVERY batches
    return raykv.Pipeline(
        source=TableSource(t, batch_size=BATCH),
        stages=[Aggregate("user", {"amount": ["sum", "count"]})],
        epoch_every_batches=EVERY, **kw,
    )


class Killer:
    """on_progress hook: kill shard ``index`` at the first event ``kind`` of ``epoch``.

    The kill is synchronous with the event (no timer): the driver goes on only after the
    hook returns, so with ``wait_dead`` every later call to that shard meets a dead actor.
    ``ray.kill`` reaches the actor through Ray's control plane, which can take longer than
    the call it should interrupt on a busy machine; ``sigkill`` kills its process by pid
    (asked with ``ping``, which a shard answers while it restores) at once.
    """

    def __init__(self, kind: str, epoch: int | None, index: int = 0,
                 times: int = 1, wait_dead: bool = False, sigkill: bool = False) -> None:
        self.kind, self.epoch, self.index = kind, epoch, index
        self.left = times
        self.wait_dead = wait_dead  # return only once Ray reports the actor dead
        self.sigkill = sigkill
        self.killed: list[str] = []

    def __call__(self, ev: raykv.ProgressEvent) -> None:
        if self.left and ev.kind == self.kind and (self.epoch is None or ev.epoch == self.epoch):
            self.left -= 1
            import ray

            name = sorted(ev.shards)[self.index]
            self.killed.append(name)
            handle = ev.shards[name]
            if self.sigkill:
                os.kill(ray.get(handle.ping.remote(), timeout=60), signal.SIGKILL)
            else:
                ray.kill(handle)
            if self.wait_dead:
                with contextlib.suppress(ray.exceptions.RayActorError):
                    while True:
                        ray.get(handle.__ray_ready__.remote(), timeout=10)
                        time.sleep(0.01)


class Events:
    """on_progress hook: records ``(kind, epoch, detail)`` of every event, then calls ``then``.

    Tells where a failure struck: the epoch each attempt restored (``restored_from``) and
    what the driver saw before the first failure (``before_failure``).
    """

    def __init__(self, then: Callable[[raykv.ProgressEvent], None] | None = None) -> None:
        self.seen: list[tuple[str, int | None, dict[str, Any]]] = []
        self.then = then

    def __call__(self, ev: raykv.ProgressEvent) -> None:
        self.seen.append((ev.kind, ev.epoch, dict(ev.detail)))
        if self.then is not None:
            self.then(ev)

    def attempts(self) -> list[int]:
        return [d["attempt"] for k, _, d in self.seen if k == "starting"]

    def started(self, attempt: int) -> bool:
        return any(k == "started" and d["attempt"] == attempt for k, _, d in self.seen)

    def restored_from(self, attempt: int) -> int | None:
        """The committed epoch the shards of ``attempt`` were restored from."""
        starts: list[int | None] = [d["restored_from"] for k, _, d in self.seen
                                    if k == "started" and d["attempt"] == attempt]
        (epoch,) = starts
        return epoch

    def before_failure(self) -> list[tuple[str, int | None]]:
        """``(kind, epoch)`` of the events before the first failure."""
        kinds = [(k, e) for k, e, _ in self.seen]
        first = next((i for i, (k, _) in enumerate(kinds) if k == "failure"), len(kinds))
        return kinds[:first]

    def last_commit_before_failure(self) -> int | None:
        """The epoch a recovery from the first failure restores (commits stop before it)."""
        return max((e for k, e in self.before_failure() if k == "committed" and e), default=None)


# ---------------------------------------------------------------------------- kills


@pytest.mark.parametrize("overlap", [False, True])
def test_kill_mid_batch(ray_session: Any, tmp_path: Path, overlap: bool) -> None:
    """Shard 0 dies as its 4th batch (the 2nd of epoch 2) arrives: epoch 2 never commits.

    ``overlap``: epochs end on the shards' epoch thread (``overlap_epochs``), so epoch 1
    may still be folding and sealing there when the process dies.
    """
    t = table()
    events = Events()
    faults = Faults(crash_at=("Aggregate0-0", "process", 4))
    s = make(tmp_path, t, faults=faults, on_progress=events, overlap_epochs=overlap).run()
    assert s.restarts == 1
    assert ("acked", 2) not in events.before_failure()
    assert events.last_commit_before_failure() in (None, 1)  # 1 unless still being committed
    assert events.restored_from(1) == events.last_commit_before_failure()
    assert_exact(s.output_by_epoch, t)
    CheckpointStore(str(tmp_path / "ckpt")).verify()


@pytest.mark.parametrize("point", ["upload", "barrier"])
@pytest.mark.parametrize("overlap", [False, True])
def test_kill_mid_upload(ray_session: Any, tmp_path: Path, overlap: bool, point: str) -> None:
    """Shard 1 dies inside its upload of epoch 2 (its 2nd), or as it completes epoch 2
    (``"barrier"``: on the epoch thread with ``overlap``): epoch 2 is never acknowledged."""
    t = table(12)
    events = Events()
    faults = Faults(crash_at=("Aggregate0-1", point, 2))
    s = make(tmp_path, t, engine="lsm", faults=faults, on_progress=events,
             overlap_epochs=overlap).run()
    assert s.restarts == 1
    assert ("barrier", 2) in events.before_failure()
    assert ("acked", 2) not in events.before_failure()
    assert events.last_commit_before_failure() in (None, 1)
    assert events.restored_from(1) == events.last_commit_before_failure()
    assert_exact(s.output_by_epoch, t)


def test_kill_between_upload_and_commit(ray_session: Any, tmp_path: Path) -> None:
    """All shard manifests of epoch 2 are durable; a shard dies before the epoch manifest."""
    t = table(13)
    kill = Killer("acked", 2, wait_dead=True)
    events = Events(kill)
    # one pending epoch: barrier 3 goes out only after epoch 2 is committed, hence after
    # the kill, so the dead shard is always asked for more work
    s = make(tmp_path, t, max_pending_epochs=1, on_progress=events).run()
    assert kill.killed and s.restarts == 1
    # the kill after the acks did not stop that commit, and nothing later was committed
    assert events.last_commit_before_failure() == 2 and events.restored_from(1) == 2
    assert_exact(s.output_by_epoch, t)


def test_kill_during_recovery(ray_session: Any, tmp_path: Path) -> None:
    """A replacement shard dies while restoring; the next attempt finishes the run."""
    t = table(14)
    first = Killer("barrier", 3, wait_dead=True)
    # "starting": the replacements are created and restoring (restore_delay holds them
    # there); the kill is synchronous, so it lands before they report ready (a SIGKILL:
    # in one CI run a ray.kill landed after the 0.5 s restore, and attempt 1 started)
    second = Killer("starting", None, index=1, wait_dead=True, sigkill=True)

    def on_progress(ev: raykv.ProgressEvent) -> None:
        first(ev)
        if ev.kind == "starting" and ev.detail["attempt"] == 1:
            second(ev)

    events = Events(on_progress)
    # max_pending_epochs=1: barrier 3 goes out after epoch 2's commit, so attempt 1
    # restores an epoch and every shard of it (survivors too) sleeps in its restore;
    # with nothing committed yet it restored empty at once, and a busy CI machine let it
    # start before the second kill (one CI run of many)
    s = make(tmp_path, t, faults=Faults(restore_delay=1.0), max_pending_epochs=1,
             on_progress=events).run()
    assert first.killed and second.killed
    assert events.last_commit_before_failure() == 2  # attempt 1 had an epoch to restore
    assert s.restarts == 2 and events.attempts() == [0, 1, 2]
    assert not events.started(1)  # attempt 1 died during its restore, committing nothing
    assert events.restored_from(2) == events.last_commit_before_failure()
    assert_exact(s.output_by_epoch, t)


def test_shard_process_exits_mid_upload(ray_session: Any, tmp_path: Path) -> None:
    """A shard process dies on its own (os._exit) in its 3rd upload (a ray.kill-free death)."""
    t = table(15)
    faults = Faults(crash_at=("Aggregate0-1", "upload", 3))
    s = make(tmp_path, t, engine="memonly", faults=faults).run()
    assert s.restarts == 1
    assert_exact(s.output_by_epoch, t)


def test_failure_before_the_first_commit_restarts_from_scratch(
    ray_session: Any, tmp_path: Path
) -> None:
    t = table(16)
    events = Events()
    faults = Faults(crash_at=("Aggregate0-0", "upload", 1))  # epoch 1 can never commit
    s = make(tmp_path, t, faults=faults, on_progress=events).run()
    assert s.restarts == 1 and events.restored_from(1) is None
    assert ("committed", 1) not in events.before_failure()
    assert_exact(s.output_by_epoch, t)


# giving up after max_restarts: test_gave_up_keeps_the_last_failure_as_its_cause in
# tests/test_errors.py (the same run, with its cause and fatal event checked too)


def test_memory_checkpoint_runs_io_in_the_driver(ray_session: Any, tmp_path: Path) -> None:
    t = table(18)
    url = memory_checkpoint_url()
    kill = Killer("barrier", 3, wait_dead=True)
    s = make(tmp_path, t, checkpoint=url, on_progress=kill).run()
    assert s.restarts == 1
    assert_exact(s.output_by_epoch, t)
    store = CheckpointStore(url)
    assert store.latest_epoch() == 5
    store.verify()


@pytest.mark.s3
def test_s3_checkpoint_with_a_kill(ray_session: Any, tmp_path: Path,
                                   s3_bucket: tuple[str, dict[str, Any]]) -> None:
    url, options = s3_bucket
    t = table(19)
    # right after barrier 2, waiting for the death: later batches must meet the dead actor
    # (a kill after a commit can land when the shard has no work left: no recovery)
    kill = Killer("barrier", 2, wait_dead=True)
    s = make(tmp_path, t, checkpoint=f"{url}/ckpt", storage_options=options,
             on_progress=kill).run()
    assert s.restarts == 1
    assert_exact(s.output_by_epoch, t)
    CheckpointStore(f"{url}/ckpt", options).verify()


# ---------------------------------------------------------------------------- driver restart


DRIVER = textwrap.dedent("""
    import sys, time
    import ray
    import raykv
    from raykv.operators import Aggregate
    from raykv.sinks import ParquetSink
    from raykv.sources import GeneratorSource
    from raykv.testing import zipf_events

    address, ckpt, out, local = sys.argv[1:5]
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    table = zipf_events({n}, {keys}, seed=20)

    def batch(i):
        time.sleep(0.4)  # slow source: the test kills this driver mid-run
        while i >= {held}:  # and it cannot end before: the last batches never come
            time.sleep(0.05)
        return table.slice(i * {batch}, {batch}).to_batches()[0] if i * {batch} < {n} else None

    p = raykv.Pipeline(
        source=GeneratorSource(batch), stages=[Aggregate("user", {{"amount": ["sum", "count"]}})],
        sink=ParquetSink(out), engine="lsm", checkpoint=ckpt, local_dir=local,
        epoch_every_batches={every}, retain=10,
    )
    p.run(resume=True)
    print("finished")
""").format(n=N, keys=KEYS, batch=BATCH, every=EVERY, held=N // BATCH - 1)


def published_by_epoch(out: Path) -> dict[int, pa.Table]:
    import pyarrow.parquet as pq

    parts: dict[int, list[pa.Table]] = {}
    for f in sorted(out.glob("part-*.parquet")):
        parsed = parse_part_file_name(f.name)
        assert parsed is not None
        parts.setdefault(parsed[0], []).append(pq.read_table(f))
    return {e: pa.concat_tables(ts) for e, ts in parts.items()}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_driver_killed_then_resume(ray_session: Any, tmp_path: Path, sig: int) -> None:
    """SIGKILL (or Ctrl-C: SIGINT) a real driver process after 2 commits; resume here.

    Output exactly once either way. Interrupted, the driver must stop by itself, soon,
    with the ``KeyboardInterrupt`` (an interrupt is not a failure to recover from). Its
    source never delivers the last batch, so the run cannot end before the signal (in CI
    it once did: the commit lag under load outlasted the rest of the input).
    """
    ray = ray_session
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    ckpt, out, local = tmp_path / "ckpt", tmp_path / "out", tmp_path / "local"
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, str(script), address, str(ckpt), str(out), str(local)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # a terminal's Ctrl-C: SIGINT not ignored, even where this process inherited it
        # ignored (CI starts the suite in the background of a non-interactive shell)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            # committed epoch manifests only (a commit in progress has a hidden temp file)
            if (ckpt / "epochs").is_dir() and len(list((ckpt / "epochs").glob("[0-9]*.json"))) >= 2:
                break
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            time.sleep(0.05)
        else:
            pytest.fail("the driver committed nothing in 120 s")
        proc.send_signal(sig)
        if sig == signal.SIGINT:
            try:
                stdout, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail("the interrupted driver did not stop within 60 s")
            assert proc.returncode != 0 and b"finished" not in stdout
            assert "KeyboardInterrupt" in err.decode(), err.decode()[-3000:]
    finally:
        proc.kill()
        proc.wait()
    store = CheckpointStore(str(ckpt))
    committed = store.epochs()
    assert 2 <= len(committed) < 5  # killed mid-run
    assert not store.read_epoch(committed[-1]).metadata["final"]
    t = zipf_events(N, KEYS, seed=20)
    p = raykv.Pipeline(  # the same pipeline, without the sleep (same batches and offsets)
        source=raykv.sources.GeneratorSource(
            lambda i: t.slice(i * BATCH, BATCH).to_batches()[0] if i * BATCH < N else None),
        stages=[Aggregate("user", {"amount": ["sum", "count"]})], sink=ParquetSink(out),
        engine="lsm", checkpoint=str(ckpt), local_dir=str(local), epoch_every_batches=EVERY,
        retain=10,
    )
    s = p.run(resume=True)
    assert s.finished and s.restored_from == committed[-1]
    assert_exact(published_by_epoch(out), t)
    assert not list((out / "_staging").glob("*"))


# ---------------------------------------------------------------------------- rescaling


def _stop_after(epoch: int, holder: dict[str, raykv.Pipeline]) -> Any:
    def on_progress(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "committed" and ev.epoch == epoch:
            holder["p"].stop()
    return on_progress


def test_rescale_2_to_3_with_windows(ray_session: Any, tmp_path: Path) -> None:
    """TumblingWindow state (key + window suffix, watermark metadata) split over 3 shards."""
    t = table(21)
    op = TumblingWindow("user", "t", 5_000, {"amount": ["sum", "count"]})
    holder: dict[str, raykv.Pipeline] = {}

    def make_w(n: int, **kw: Any) -> raykv.Pipeline:
        return raykv.Pipeline(
            source=TableSource(t, batch_size=BATCH), stages=[op], num_shards=n,
            engine="hybridlog", checkpoint=str(tmp_path / "ckpt"),
            local_dir=str(tmp_path / "local"), epoch_every_batches=EVERY, max_pending_epochs=1,
            source_parallelism=1, **kw,
        )

    holder["p"] = make_w(2, on_progress=_stop_after(2, holder))
    first = holder["p"].run()
    assert first.stopped
    second = make_w(3).run(resume=True)
    assert second.finished and second.restored_from == first.last_epoch
    assert sorted(second.shards) == [f"TumblingWindow0-{i}of3-g1" for i in range(3)]
    out = pa.concat_tables([x for x in (first.output, second.output) if x is not None])
    starts = pc.multiply(pc.divide(t["t"], 5_000), 5_000)
    model = group_model(t.append_column("window_start", starts), ["user", "window_start"], AGGS)
    key = [("user", "ascending"), ("window_start", "ascending")]
    got = out.select(["user", "window_start", "amount_sum", "amount_count"]).sort_by(key)
    assert got["user"].equals(model["user"]) and got["window_start"].equals(model["window_start"])
    assert got["amount_count"].equals(model["amount_count"])


def test_rescale_4_to_2_and_change_engine(ray_session: Any, tmp_path: Path) -> None:
    t = table(22)
    holder: dict[str, raykv.Pipeline] = {}
    holder["p"] = make(tmp_path, t, num_shards=4, engine="memonly",
                       on_progress=_stop_after(2, holder), max_pending_epochs=1)
    first = holder["p"].run()
    assert first.stopped
    second = make(tmp_path, t, num_shards=2, engine="lsm").run(resume=True)
    assert sorted(second.shards) == [f"Aggregate0-{i}of2-g1" for i in range(2)]
    assert all(st["engine"]["name"] == "lsm" for st in second.shards.values())
    final = second.output_by_epoch[second.last_epoch]
    assert_tables_close(final.select(["user", "amount_sum", "amount_count"]),
                        group_model(t, "user", AGGS).rename_columns(final.column_names), "user")
    store = CheckpointStore(str(tmp_path / "ckpt"))
    meta = store.read_epoch(second.last_epoch).metadata["stages"][0]
    assert meta["num_shards"] == 2 and meta["engine"] == "lsm" and meta["generation"] == 1
    store.verify()


# ---------------------------------------------------------------------------- rollback


def test_restore_an_older_epoch(ray_session: Any, tmp_path: Path) -> None:
    """Roll back to epoch 2: epochs 3-5 are abandoned, their published files removed.

    With slow uploads (0.4 s each) the rollback's first commit (the one that tells the
    sink what is abandoned) comes late; the replayed epochs' output, staged by the shards,
    must survive it (it was deleted when the input ran ahead of that commit). The same
    checks without the delay ran the same code with less waiting, so only this case runs.
    """
    upload_delay = 0.4
    t = table(23)
    out = tmp_path / "out"
    p = make(tmp_path, t, sink=ParquetSink(out), faults=Faults(upload_delay=upload_delay))
    s1 = p.run()
    assert s1.epochs_committed == [1, 2, 3, 4, 5]
    assert_exact(published_by_epoch(out), t)
    s2 = p.run(restore_epoch=2)
    assert s2.restored_from == 2
    # epoch 6 makes the rollback durable (no input); 7-9 replay epochs 3-5 of the first run
    assert s2.epochs_committed == [6, 7, 8, 9]
    published = published_by_epoch(out)
    assert sorted(published) == [1, 2, 7, 8, 9]
    assert_exact({e if e < 3 else e - 4: tb for e, tb in published.items()}, t)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    assert store.read_epoch(9).metadata["abandoned"] == [[3, 5]]
    with pytest.raises(raykv.errors.CheckpointNotFoundError, match="committed epochs"):
        p.run(restore_epoch=42)
    s3 = p.run(resume=True)
    assert s3.finished and s3.epochs_committed == []
    assert sorted(published_by_epoch(out)) == [1, 2, 7, 8, 9]
