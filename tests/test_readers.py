"""Source reader actors in real pipelines: the splits are read by several readers, each
split's offset is in every epoch, and readers, shards and sink writers die by SIGKILL.

Every result is compared with a model computed over the whole input with pyarrow.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raykv
from raykv.checkpointing import CheckpointStore
from raykv.operators import Aggregate, StatefulMap
from raykv.sinks import ParquetSink
from raykv.sources import ParquetSource, TableSource
from raykv.testing import Faults

pytestmark = pytest.mark.ray

KEYS = 300


def write_files(folder: Path, files: int = 6, rows: int = 2_000, seed: int = 0) -> pa.Table:
    """``files`` Parquet files of ``rows`` events (``seq`` numbers them all); the table."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    parts = []
    for f in range(files):
        seq = np.arange(f * rows, (f + 1) * rows)
        t = pa.table({"user": rng.zipf(1.3, rows) % KEYS, "amount": rng.integers(1, 100, rows),
                      "seq": seq})
        pq.write_table(t, folder / f"part-{f:03d}.parquet")
        parts.append(t)
    return pa.concat_tables(parts)


def model(table: pa.Table) -> dict[int, tuple[int, int]]:
    g = table.group_by("user").aggregate([("amount", "sum"), ("amount", "count")])
    return {u: (s, c) for u, s, c in zip(g["user"].to_pylist(), g["amount_sum"].to_pylist(),
                                          g["amount_count"].to_pylist(), strict=True)}


def latest(changelog: pa.Table) -> dict[int, tuple[int, int]]:
    """The last value of every key in an ``Aggregate`` changelog (rows in epoch order)."""
    return {r["user"]: (r["amount_sum"], r["amount_count"]) for r in changelog.to_pylist()}


def sigkill(handle: Any) -> None:
    import ray

    os.kill(ray.get(handle.ping.remote()), signal.SIGKILL)


def aggregate(tmp_path: Path, source: Any, **kw: Any) -> raykv.Pipeline:
    opts: dict[str, Any] = {
        "engine": "memonly", "num_shards": 2, "epoch_every_batches": 2,
        "checkpoint": str(tmp_path / "ckpt"), "local_dir": str(tmp_path / "local"),
    }
    opts.update(kw)
    return raykv.Pipeline(source=source, stages=[Aggregate("user", {"amount": ["sum", "count"]})],
                          **opts)


@pytest.mark.parametrize("parallelism", [1, 3])
def test_readers_split_the_input_and_the_result_is_exact(
        ray_session: Any, tmp_path: Path, parallelism: int) -> None:
    table = write_files(tmp_path / "in")
    readers: set[str] = set()

    def on_progress(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "started":
            readers.update(n for n in ev.actors if n.startswith("reader-"))
            assert set(ev.shards) <= set(ev.actors)

    s = aggregate(tmp_path, ParquetSource(str(tmp_path / "in"), batch_size=500),
                  source_parallelism=parallelism, on_progress=on_progress).run()
    assert s.finished and s.rows_in == table.num_rows
    assert readers == {f"reader-{i}of{parallelism}" for i in range(parallelism)}
    assert latest(s.output) == model(table)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    offsets = store.read_epoch(store.latest_epoch()).offsets
    split_ids = [sp.id for sp in ParquetSource(str(tmp_path / "in")).splits()]
    assert sorted(offsets["splits"]) == sorted(split_ids) and len(split_ids) == 6


@dataclass(frozen=True, eq=False)
class SlowToStart(TableSource):
    """A ``TableSource`` that takes 1 s to unpickle (in each reader's process, before its
    constructor runs), then appends the time (``time.time()``) to the file ``marks``."""

    marks: str = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_slow_to_start, (self.data, self.batch_size, self.marks))


def _slow_to_start(data: pa.Table, batch_size: int, marks: str) -> SlowToStart:
    time.sleep(1.0)
    with open(marks, "a") as f:
        f.write(f"{time.time()!r}\n")
    return SlowToStart(data, batch_size, marks)


def test_the_run_clock_starts_once_every_reader_is_up(ray_session: Any, tmp_path: Path) -> None:
    """``processing_time`` counts from the first batch: the readers' process start-up is
    not in it (it was: new readers were created after the shards' restore and not waited
    for, so the clock and the ``started`` event came before they could read)."""
    table = write_files(tmp_path / "in", files=2, rows=500)
    marks = tmp_path / "constructed"
    started: list[float] = []

    def on_progress(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "started":
            started.append(time.time())

    source = SlowToStart(pq.read_table(tmp_path / "in"), batch_size=250, marks=str(marks))
    s = aggregate(tmp_path, source, source_parallelism=2, on_progress=on_progress).run()
    assert s.finished and latest(s.output) == model(table)
    ends = [float(v) for v in marks.read_text().split()]
    assert len(ends) == 2  # one per reader
    assert started and started[0] >= max(ends)
    assert s.processing_time <= s.wall_time


def assert_one_row_per_event(got: pa.Table, table: pa.Table) -> None:
    """``_seq_log``'s output: each event once, and per user the running count ``n``
    numbers that user's events 1..count."""
    assert sorted(got["seq"].to_pylist()) == list(range(table.num_rows))
    by_user: dict[int, list[int]] = {}
    for r in got.to_pylist():
        by_user.setdefault(r["user"], []).append(r["n"])
    assert {u: sorted(ns) for u, ns in by_user.items()} == {
        u: list(range(1, c + 1)) for u, (_, c) in model(table).items()}


def seq_log_pipeline(tmp_path: Path, batch_size: int, on_progress: Any,
                     **kw: Any) -> raykv.Pipeline:
    """``tmp_path/in`` -> 2 readers -> ``StatefulMap(_seq_log)`` on 2 shards ->
    ``ParquetSink(tmp_path/out)``, written by the shards."""
    return raykv.Pipeline(
        source=ParquetSource(str(tmp_path / "in"), batch_size=batch_size),
        stages=[StatefulMap("user", _seq_log)], sink=ParquetSink(str(tmp_path / "out")),
        engine="hybridlog", num_shards=2, source_parallelism=2,
        checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
        on_progress=on_progress, **kw)


def _seq_log(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
    return (state or 0) + 1, {"seq": row["seq"], "n": (state or 0) + 1}


def test_sigkill_of_a_reader_and_of_a_sink_writer_loses_and_repeats_nothing(
        ray_session: Any, tmp_path: Path) -> None:
    """StatefulMap with one output row per event, written by the shards into a ParquetSink."""
    table = write_files(tmp_path / "in", files=4, rows=1_500)
    kills: list[str] = []

    def on_progress(ev: raykv.ProgressEvent) -> None:
        if ev.kind != "committed" or ev.restarts != len(kills) or len(kills) == 2:
            return
        if ev.epoch == 2 or (kills and ev.epoch is not None and ev.epoch >= 4):
            kind = "reader-" if not kills else "StatefulMap"
            name = sorted(n for n in ev.actors if n.startswith(kind))[-1]
            kills.append(name)
            sigkill(ev.actors[name])

    out = tmp_path / "out"
    s = seq_log_pipeline(tmp_path, 300, on_progress, epoch_every_batches=1,
                         max_pending_epochs=1).run()
    assert s.finished and s.restarts == 2 and len(kills) == 2
    assert kills[0].startswith("reader-") and kills[1].startswith("StatefulMap")
    assert_one_row_per_event(ParquetSink(str(out)).read(), table)
    assert not list((out / "_staging").rglob("*"))  # every writer's staging is gone


def test_random_sigkills_with_time_based_checkpoints(ray_session: Any, tmp_path: Path) -> None:
    """SIGKILLs of random actors (readers, shards that write the sink) at random moments of
    three attempts, with 0.2 s checkpoints: still exactly one output row per event."""
    rng = random.Random(12)
    table = write_files(tmp_path / "in", files=4, rows=2_000)
    kills: list[str] = []

    def kill_later(handle: Any) -> None:
        with contextlib.suppress(Exception):  # the run may have ended or recovered already
            sigkill(handle)

    def on_progress(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "started" and len(kills) < 3:
            name = rng.choice(sorted(ev.actors))
            kills.append(name)
            timer = threading.Timer(rng.uniform(0.1, 0.6), kill_later, [ev.actors[name]])
            timer.daemon = True
            timer.start()

    out = tmp_path / "out"
    s = seq_log_pipeline(tmp_path, 200, on_progress, checkpoint_interval=0.2,
                         faults=Faults(process_delay=0.02)).run()
    assert s.finished and s.restarts >= 1, (kills, s.failures)
    assert_one_row_per_event(ParquetSink(str(out)).read(), table)


def test_resume_with_another_source_parallelism(ray_session: Any, tmp_path: Path) -> None:
    table = write_files(tmp_path / "in", files=5, rows=1_000)
    holder: dict[str, raykv.Pipeline] = {}

    def stop_at_2(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "committed" and ev.epoch == 2:
            holder["p"].stop()

    out = tmp_path / "out"
    source = ParquetSource(str(tmp_path / "in"), batch_size=250)
    holder["p"] = first = aggregate(tmp_path, source, sink=ParquetSink(str(out)),
                                    source_parallelism=2, on_progress=stop_at_2,
                                    max_pending_epochs=1)
    s1 = first.run()
    assert s1.stopped and 0 < s1.rows_in < table.num_rows
    s2 = aggregate(tmp_path, source, sink=ParquetSink(str(out)), source_parallelism=3).run(
        resume=True)  # 5 files on 3 readers: split assignment changes and is uneven
    assert s2.finished and s1.rows_in + s2.rows_in == table.num_rows
    assert latest(ParquetSink(str(out)).read()) == model(table)


def _rewrite_as_version_1(store_dir: Path, epoch: int, stream_offset: int) -> None:
    """Make epoch ``epoch``'s manifest what raykv wrote before splits (metadata version 1)."""
    from raykv.checkpointing.manifests import decode_manifest, encode_manifest

    path = store_dir / "epochs" / f"{epoch:012d}.json"
    doc = decode_manifest("epoch", path.read_bytes(), str(path))
    body = {k: v for k, v in doc.items() if k not in ("format", "kind")}
    body["offsets"] = {"source": stream_offset}
    body["metadata"] = {**body["metadata"], "raykv": 1}
    path.write_bytes(encode_manifest("epoch", body))


def test_a_checkpoint_from_before_splits_resumes_as_one_stream(
        ray_session: Any, tmp_path: Path) -> None:
    table = write_files(tmp_path / "in", files=1, rows=4_000).drop_columns(["seq"])
    holder: dict[str, raykv.Pipeline] = {}

    def stop_at_3(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "committed" and ev.epoch == 3:
            holder["p"].stop()

    source = TableSource(table, batch_size=250)
    holder["p"] = p = aggregate(tmp_path, source, source_parallelism=1, on_progress=stop_at_3,
                                epoch_every_batches=1, max_pending_epochs=1)
    s1 = p.run()
    assert s1.stopped
    store = CheckpointStore(str(tmp_path / "ckpt"))
    last = store.latest_epoch()
    assert last is not None
    # one reader reads the slices in order: the whole-stream offset is their sum
    splits = store.read_epoch(last).offsets["splits"]
    _rewrite_as_version_1(tmp_path / "ckpt", last, sum(v or 0 for v in splits.values()))
    s2 = aggregate(tmp_path, source, source_parallelism=3).run(resume=True)
    assert s2.finished and s1.rows_in + s2.rows_in == table.num_rows
    after = CheckpointStore(str(tmp_path / "ckpt"))
    assert after.read_epoch(after.latest_epoch()).offsets == {"splits": {"all": table.num_rows}}
    changelog = pa.concat_tables([*s1.output_by_epoch.values(), *s2.output_by_epoch.values()])
    assert latest(changelog) == model(table)


def test_parquet_in_and_out_on_s3_with_the_shards_writing(
        ray_session: Any, tmp_path: Path, s3_bucket: tuple[str, dict[str, Any]]) -> None:
    """ParquetSource and ParquetSink on the moto S3 server: readers read the objects,
    the shards stage their output there, the driver only renames at commit."""
    import s3fs

    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    table = write_files(tmp_path / "in", files=3, rows=1_000)
    for f in sorted((tmp_path / "in").iterdir()):
        fs.put(str(f), f"{bucket}/in/{f.name}")
    sink = ParquetSink(f"{bucket}/out", storage_options=options)
    s = aggregate(tmp_path, ParquetSource(f"{bucket}/in", batch_size=250,
                                          storage_options=options),
                  sink=sink, checkpoint=f"{bucket}/ckpt", storage_options=options).run()
    assert s.finished and s.rows_in == table.num_rows and s.output is None
    assert latest(ParquetSink(f"{bucket}/out", storage_options=options).read()) == model(table)
    fs.invalidate_cache()
    assert not fs.find(f"{bucket}/out/_staging")  # no staged file of any writer is left


@pytest.mark.parametrize("damage", ["no key column", "truncated", "vanished"])
def test_a_bad_file_fails_naming_it_and_the_committed_epochs_stay(
        ray_session: Any, tmp_path: Path, damage: str) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    table = write_files(folder, files=4, rows=1_000)
    bad = folder / "part-003.parquet"
    good = bad.read_bytes()
    if damage == "no key column":
        pq.write_table(pq.read_table(bad).drop_columns(["user"]), bad)
    elif damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])

    def vanish(ev: raykv.ProgressEvent) -> None:  # after the driver listed the splits
        if damage == "vanished" and ev.kind == "started":
            bad.unlink()

    source = ParquetSource(str(folder), batch_size=250)
    with pytest.raises(Exception) as info:
        aggregate(tmp_path, source, sink=ParquetSink(str(out)), source_parallelism=1,
                  on_progress=vanish).run()
    text = str(info.value) + "\n".join(getattr(info.value, "__notes__", []))
    assert "part-003.parquet" in text, text
    store = CheckpointStore(str(tmp_path / "ckpt"))
    committed = store.epochs()
    assert store.intact_epochs(committed) == committed
    if damage != "truncated":
        return  # the resume below is the same for every damage: it runs once
    bad.write_bytes(good)  # the file repaired: the run goes on from the last commit
    s = aggregate(tmp_path, source, sink=ParquetSink(str(out)), source_parallelism=2).run(
        resume=bool(committed))
    assert s.finished
    assert latest(ParquetSink(str(out)).read()) == model(table)


class _Shard:
    """A stand-in shard (its methods only need to exist: it is SIGKILLed before any call)."""

    def ping(self) -> int:
        return os.getpid()

    def process(self, *args: Any, **kw: Any) -> int:
        return 0

    def barrier(self, *args: Any, **kw: Any) -> None:
        return None

    def finish(self, *args: Any, **kw: Any) -> None:
        return None


def test_a_reader_feeding_a_dead_shard_fails_transiently_however_often(
        ray_session: Any) -> None:
    """A reader actor whose shard's process was SIGKILLed: its ``run`` and the barrier it
    then refuses both reach the driver as the shard's death (transient), so the same
    failure at the same epoch in every attempt is still recovered from. (The refusal
    arrived as a bare ``RuntimeError``, pickling having dropped its cause: two SIGKILLs
    before the first commit stopped a run as a "repeated" failure; benchmarks.recovery.)"""
    import ray

    from raykv.partitioning import Partitioning
    from raykv.runtime.failures import FailurePolicy, ShardFailure, shard_get
    from raykv.runtime.reader_actor import create_readers, plan_readers

    shard = ray.remote(num_cpus=0)(_Shard).remote()
    os.kill(ray.get(shard.ping.remote(), timeout=60), signal.SIGKILL)
    source = TableSource(pa.table({"user": list(range(40))}), batch_size=5)
    (spec,) = plan_readers(source, None, 1, key="user",
                           partitioning=Partitioning(num_key_groups=8, num_shards=1))
    (reader,), _ = create_readers([spec], source, [shard], None)
    policy = FailurePolicy()
    verdicts = []
    for attempt in range(3):
        for call in ("run", "barrier"):  # the barrier once the loop failed
            with pytest.raises(ShardFailure) as info:
                shard_get(getattr(reader, call).remote(*([1] if call == "barrier" else [])))
            verdicts.append(policy.judge(info.value, attempt))
        if attempt < 2:
            ray.kill(reader)  # the next attempt's reader meets the same dead shard
            (reader,), _ = create_readers([spec], source, [shard], None)
    assert {(v.action, v.reason) for v in verdicts} == {("recover", "transient")}
    ray.kill(reader)
