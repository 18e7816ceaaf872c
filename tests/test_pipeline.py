"""End-to-end pipelines on the session Ray: results against plain pyarrow/Python models.

Every run uses ``epoch_every_batches`` so its epochs are deterministic, and a
``CollectSink`` whose per-epoch output is checked: the changelog of epoch ``e`` must equal
the model over the input prefix that ends at barrier ``e``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import raykv
from raykv.checkpointing import CheckpointStore
from raykv.keys import encode_keys
from raykv.operators import Aggregate, Reduce, StatefulMap, TumblingWindow
from raykv.partitioning import Partitioning
from raykv.runtime.shard import ShardActor
from raykv.runtime.specs import RestorePlan, ShardSpec, StageSpec
from raykv.sources import TableSource
from raykv.testing import zipf_events

pytestmark = pytest.mark.ray

N = 12_000
KEYS = 300
BATCH = 1_500  # 8 batches


# ---------------------------------------------------------------------------- helpers


def events(n: int = N, keys: int = KEYS, seed: int = 1) -> pa.Table:
    return zipf_events(n, keys, seed=seed)


def group_model(table: pa.Table, key: str | list[str], aggs: list[tuple[str, str]]) -> pa.Table:
    """A plain pyarrow group_by in input order (first/last need use_threads=False)."""
    out = pa.TableGroupBy(table, key, use_threads=False).aggregate(aggs)
    keys = [key] if isinstance(key, str) else key
    return out.sort_by([(k, "ascending") for k in keys])


def assert_tables_close(got: pa.Table, expected: pa.Table, key: str) -> None:
    got = got.sort_by(key)
    expected = expected.select(got.column_names).sort_by(key)
    assert got.num_rows == expected.num_rows
    for name in got.column_names:
        g, e = got.column(name), expected.column(name)
        if pa.types.is_floating(g.type):
            np.testing.assert_allclose(g.to_numpy(), e.to_numpy(), rtol=1e-9, err_msg=name)
        else:
            assert g.to_pylist() == e.to_pylist(), name


def pipeline(tmp_path: Path, stages: list[Any], table: pa.Table, **kw: Any) -> raykv.Pipeline:
    kw.setdefault("engine", "memonly")
    kw.setdefault("num_shards", 2)
    kw.setdefault("epoch_every_batches", 2)
    kw.setdefault("checkpoint", str(tmp_path / "ckpt"))
    kw.setdefault("local_dir", str(tmp_path / "local"))
    # one reader: epochs are prefixes of the table, and first/last and StatefulMap see
    # the table's order (tests/test_readers.py runs several readers)
    kw.setdefault("source_parallelism", 1)
    return raykv.Pipeline(source=TableSource(table, batch_size=BATCH), stages=stages, **kw)


def final_epoch(summary: raykv.RunSummary) -> pa.Table:
    """The output of the final (finish) epoch."""
    assert summary.finished
    last = max(summary.output_by_epoch)
    assert last == summary.last_epoch
    return summary.output_by_epoch[last]


AGG_OPS = ["sum", "count", "mean", "min", "max", "first", "last"]


# ---------------------------------------------------------------------------- ordering


@dataclass(frozen=True)
class SeqLog:
    """Test operator: remembers (key, seq, epoch tag) of every row; emits them at barriers.

    Rows go out in the order they were processed, tagged with the epoch of the barrier
    that emitted them (``e<stage>``). Rows whose key equals ``slow_key`` make ``process``
    sleep ``delay`` seconds, so one shard lags behind the others.
    """

    key: str
    tag: str = "e1"
    slow_key: int | None = None
    delay: float = 0.0
    name: str | None = None
    engine: str | None = None
    engine_params: dict[str, Any] | None = None
    num_shards: int | None = None

    def build(self, store: Any) -> SeqLogLogic:
        return SeqLogLogic(self)


class SeqLogLogic:
    def __init__(self, op: SeqLog) -> None:
        self.op = op
        self.rows: list[dict[str, Any]] = []

    def process(self, batch: pa.RecordBatch) -> None:
        rows = batch.to_pylist()
        if self.op.slow_key is not None and any(r[self.op.key] == self.op.slow_key for r in rows):
            time.sleep(self.op.delay)
        self.rows.extend(rows)

    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        if not self.rows:
            return None
        out = pa.RecordBatch.from_pylist([{**r, self.op.tag: epoch} for r in self.rows])
        self.rows = []
        return out

    def finish(self) -> pa.RecordBatch | None:
        return self.on_barrier(-1)

    def output_schema(self) -> pa.Schema | None:
        return None


def test_actor_calls_from_one_caller_run_in_order(ray_session: Any, tmp_path: Path) -> None:
    """The ordering assumption of barriers (DESIGN invariant 2), on the real shard actor.

    One caller sends 600 ``process`` calls with barriers in between, and asks
    ``wait_uploaded(e)`` (the ``"io"`` group) *before* sending ``barrier(e)``: the io
    thread blocks, the default group must keep executing in submission order, and each
    epoch's output must be exactly the rows sent between its barriers, in order.
    """
    ray = ray_session
    stage = StageSpec(0, "seq", "k", SeqLog("k"), "memonly", {},
                      Partitioning(num_shards=1, num_key_groups=16), ("seq-0of1-g0",))
    spec = ShardSpec(stage, 0, str(tmp_path / "d"), 1, None, None, None)
    actor = ShardActor.options(num_cpus=0).remote(spec)
    ray.get(actor.setup.remote(RestorePlan()))
    sent: dict[int, list[int]] = defaultdict(list)
    acks = {}
    seq = 0
    for epoch in range(1, 13):
        acks[epoch] = actor.wait_uploaded.remote(epoch)  # io group, blocks until barrier
        for _ in range(50):
            actor.process.remote(pa.record_batch({"k": [seq % 7], "seq": [seq]}))
            sent[epoch].append(seq)
            seq += 1
        actor.barrier.remote(epoch)
    for epoch, ref in acks.items():
        out = ray.get(ref).output
        assert out.column("seq").to_pylist() == sent[epoch]
        assert set(out.column("e1").to_pylist()) == {epoch}
    # what a sender's Outbox sizes its calls in flight by: rows, seconds here, senders
    rows, seconds, senders = ray.get(actor.process.remote(pa.record_batch(
        {"k": [1, 2], "seq": [seq, seq + 1]})))
    assert (rows, senders) == (2, 1) and type(seconds) is float and seconds > 0
    ray.kill(actor)


def test_barriers_align_across_stages(ray_session: Any, tmp_path: Path) -> None:
    """Actor-to-actor calls keep their order and stage 2 aligns barriers from 3 inputs.

    Stage 1 (3 shards, one of them slow) tags rows with its epoch and sends them to stage
    2 (2 shards, another key), which tags them with its own epoch: every row must carry
    the same epoch from both stages (no row crossed a barrier), every row arrives exactly
    once, and rows from one stage-1 shard reach stage 2 in the order they were sent.
    """
    n = 300  # 15 epochs
    seqs = np.arange(n)
    table = pa.table({"k": seqs % 11, "k2": (seqs * 7) % 5, "seq": seqs})
    p = raykv.Pipeline(
        source=TableSource(table, batch_size=20),
        stages=[SeqLog("k", "e1", slow_key=3, delay=0.01, num_shards=3),
                SeqLog("k2", "e2", num_shards=2)],
        epoch_every_batches=1, checkpoint=None, engine="memonly",
        local_dir=str(tmp_path / "local"), max_inflight=2, source_parallelism=1,
    )
    s = p.run()
    out = s.output
    assert sorted(out.column("seq").to_pylist()) == list(range(n))
    e1 = out.column("e1").to_numpy()
    e2 = out.column("e2").to_numpy()
    assert (e1 == e2).all()  # no row crossed a barrier between the stages
    # epoch e holds exactly the source rows of batch e (20 rows, epoch_every_batches=1)
    for e in range(1, n // 20 + 1):
        got = sorted(out.filter(pc.equal(out.column("e2"), e)).column("seq").to_pylist())
        assert got == list(range((e - 1) * 20, e * 20)), e
    # per stage-1 shard, order preserved into stage 2
    part = Partitioning(num_shards=3)
    origin = part.shard_of_keys(encode_keys(out.column("k"), "k"))
    for shard_id in range(3):
        for e in set(e2.tolist()):
            mask = (origin == shard_id) & (e2 == e)
            for dest in set(out.column("k2").to_numpy()[mask].tolist()):
                m = mask & (out.column("k2").to_numpy() == dest)
                seq_order = out.column("seq").to_numpy()[m]
                assert (np.diff(seq_order) > 0).all()


# ---------------------------------------------------------------------------- operators


def test_aggregate_every_function_matches_group_by(ray_session: Any, tmp_path: Path) -> None:
    table = events()
    op = Aggregate(key="user", aggs={"amount": AGG_OPS, "qty": ["sum", "min", "max"]})
    s = pipeline(tmp_path, [op], table, num_shards=3).run()
    assert s.rows_in == N and s.restarts == 0
    assert s.epochs_committed == [1, 2, 3, 4, 5]  # 8 batches / 2 + finish
    model = group_model(table, "user", [("amount", o) for o in AGG_OPS]
                        + [("qty", "sum"), ("qty", "min"), ("qty", "max")])
    assert_tables_close(final_epoch(s), model, "user")
    # the changelog of epoch e: keys seen in its batches, values as of the end of e
    for e in (1, 2, 4):
        prefix = table.slice(0, 2 * BATCH * e)
        recent = table.slice(2 * BATCH * (e - 1), 2 * BATCH)
        expected = group_model(prefix, "user", [("amount", "sum"), ("amount", "last")])
        expected = expected.filter(pc.is_in(expected["user"], value_set=pc.unique(recent["user"])))
        got = s.output_by_epoch[e].select(["user", "amount_sum", "amount_last"])
        assert_tables_close(got, expected, "user")
    # the checkpoint holds every epoch, intact, with the partitioning in its metadata
    store = CheckpointStore(str(tmp_path / "ckpt"))
    store.verify()
    em = store.read_epoch(5)
    assert em.metadata["final"] is True and em.metadata["raykv"] == 2
    ends = {sp.id: sp.size for sp in TableSource(table, batch_size=BATCH).splits()}
    assert em.offsets == {"splits": ends} and sum(ends.values()) == N  # every slice read
    assert em.metadata["stages"][0]["num_shards"] == 3
    assert len(em.shards) == 3


def _max(acc: Any, value: Any) -> Any:
    return max(acc, value)


def test_reduce_matches_group_by(ray_session: Any, tmp_path: Path) -> None:
    table = events(seed=2)
    s = pipeline(tmp_path, [Reduce("user", _max, "qty")], table).run()
    model = group_model(table, "user", [("qty", "max")]).rename_columns(["user", "qty"])
    assert_tables_close(final_epoch(s), model, "user")


def _running(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
    n = (state or 0) + 1
    return n, {"n": n, "amount": row["amount"]}


def test_stateful_map_matches_python_model(ray_session: Any, tmp_path: Path) -> None:
    table = events(seed=3)
    s = pipeline(tmp_path, [StatefulMap("user", _running)], table, num_shards=3).run()
    out = s.output
    assert out.num_rows == N  # one output row per event, each exactly once
    counts: dict[int, int] = defaultdict(int)
    expected = []
    for row in table.select(["user", "amount"]).to_pylist():
        counts[row["user"]] += 1
        expected.append((row["user"], counts[row["user"]], row["amount"]))
    got = list(zip(out["user"].to_pylist(), out["n"].to_pylist(), out["amount"].to_pylist(),
                   strict=True))
    assert sorted(got) == sorted(expected)
    # per key, output order is input order
    per_key: dict[int, list[int]] = defaultdict(list)
    for u, n, _ in got:
        per_key[u].append(n)
    assert all(ns == list(range(1, len(ns) + 1)) for ns in per_key.values())


def test_tumbling_window_matches_group_by(ray_session: Any, tmp_path: Path) -> None:
    table = events(seed=4)
    op = TumblingWindow("user", "t", 5_000, {"amount": ["sum", "count"]})
    s = pipeline(tmp_path, [op], table).run()
    out = s.output  # every window is emitted exactly once (closed at a barrier or at finish)
    starts = pc.multiply(pc.divide(table["t"], 5_000), 5_000)
    model = group_model(table.append_column("window_start", starts),
                        ["user", "window_start"], [("amount", "sum"), ("amount", "count")])
    got = out.select(["user", "window_start", "amount_sum", "amount_count"])
    key = [("user", "ascending"), ("window_start", "ascending")]
    got, model = got.sort_by(key), model.select(got.column_names).sort_by(key)
    assert got["user"].equals(model["user"]) and got["window_start"].equals(model["window_start"])
    assert got["amount_count"].equals(model["amount_count"])
    np.testing.assert_allclose(got["amount_sum"].to_numpy(), model["amount_sum"].to_numpy())
    assert len(s.output_by_epoch) > 2  # windows closed at barriers, not only at finish


def _enrich(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
    n = (state or 0) + 1
    return n, {"country": row["country"], "amount": row["amount"], "nth": n}


def _passthrough(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
    return (state or 0) + 1, {k: v for k, v in row.items() if k != "country"}


def test_three_stages_repartition_and_use_every_engine(ray_session: Any, tmp_path: Path) -> None:
    """StatefulMap by user (3 shards, lsm) -> StatefulMap by country (1 shard, appendlog)
    -> Aggregate by country (2 shards, hybridlog): each stage re-partitions by its key."""
    table = events(seed=5)
    stages = [
        StatefulMap("user", _enrich, num_shards=3, engine="lsm"),
        StatefulMap("country", _passthrough, num_shards=1, engine="appendlog"),
        Aggregate("country", {"amount": ["sum", "count"], "nth": ["max"]}, num_shards=2,
                  engine="hybridlog"),
    ]
    s = pipeline(tmp_path, stages, table).run()
    counts = table.group_by("user").aggregate([("user", "count")])
    nth_max = dict(zip(counts["user"].to_pylist(), counts["user_count"].to_pylist(),
                       strict=True))
    model = group_model(table, "country", [("amount", "sum"), ("amount", "count")])
    got = final_epoch(s)
    assert_tables_close(got.select(["country", "amount_sum", "amount_count"]), model, "country")
    # the largest per-user counter seen by each country is that country's top user count
    by_country: dict[str, int] = defaultdict(int)
    for u, c in zip(table["user"].to_pylist(), table["country"].to_pylist(), strict=True):
        by_country[c] = max(by_country[c], nth_max[u])
    assert dict(zip(got["country"].to_pylist(), got["nth_max"].to_pylist(), strict=True)) == \
        by_country
    engines = {name.split("-")[0]: st["engine"]["name"] for name, st in s.shards.items()}
    assert engines == {"StatefulMap0": "lsm", "StatefulMap1": "appendlog",
                       "Aggregate2": "hybridlog"}
    assert len(s.shards) == 6 and s.bytes_uploaded > 0
    CheckpointStore(str(tmp_path / "ckpt")).verify()


def _slow_batch(table: pa.Table) -> Any:
    def batch(i: int) -> pa.RecordBatch | None:
        time.sleep(0.05)  # the input takes >= 0.4 s to read: several checkpoint intervals
        return table.slice(i * BATCH, BATCH).to_batches()[0] if i * BATCH < N else None

    return batch


def test_time_based_epochs_and_progress_events(ray_session: Any, tmp_path: Path) -> None:
    """checkpoint_interval on the driver's clock: a frozen clock ends no epoch before the
    input does; a running one ends epochs while the readers read."""
    from raykv.testing import FakeClock

    kinds: list[tuple[str, int | None]] = []

    def on_progress(ev: raykv.ProgressEvent) -> None:
        kinds.append((ev.kind, ev.epoch))
        if ev.kind == "started":
            assert set(ev.shards) == {"Aggregate0-0of2-g0", "Aggregate0-1of2-g0"}
            assert set(ev.actors) == {*ev.shards, "reader-0of1"}

    table = events(seed=7)
    model = group_model(table, "user", [("qty", "sum")])

    def make(name: str, **kw: Any) -> raykv.Pipeline:
        return raykv.Pipeline(
            source=raykv.sources.GeneratorSource(_slow_batch(table)),
            stages=[Aggregate("user", {"qty": "sum"})], engine="memonly",
            checkpoint=str(tmp_path / name), on_progress=on_progress,
            local_dir=str(tmp_path / "local"), **kw)

    frozen = make("frozen", checkpoint_interval=0.01, clock=FakeClock()).run()
    assert frozen.epochs_committed == [1]  # no time passed: only the final epoch
    assert_tables_close(final_epoch(frozen), model, "user")
    single = make("single", checkpoint_interval=None).run()  # None: only the final epoch
    assert single.epochs_committed == [1]  # (it ended an epoch per poll once)
    assert_tables_close(final_epoch(single), model, "user")
    kinds.clear()
    s = make("running", checkpoint_interval=0.1).run()
    assert len(s.epochs_committed) > 1 and s.rows_in == N
    assert ("committed", s.last_epoch) in kinds and kinds[-1] == ("finished", None)
    assert kinds.index(("acked", 1)) < kinds.index(("committed", 1))
    assert_tables_close(final_epoch(s), model, "user")


def test_stop_then_resume_continues_the_stream(ray_session: Any, tmp_path: Path) -> None:
    """Pipeline.stop() commits the current epoch without finish(); resume goes on."""
    table = events(seed=8)
    holder: dict[str, raykv.Pipeline] = {}

    def on_progress(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "committed" and ev.epoch == 2:
            holder["p"].stop()

    p = pipeline(tmp_path, [Aggregate("user", {"amount": ["sum"]})], table,
                 on_progress=on_progress, max_pending_epochs=1)
    holder["p"] = p
    first = p.run()
    assert first.stopped and not first.finished
    store = CheckpointStore(str(tmp_path / "ckpt"))
    assert store.read_epoch(first.last_epoch).metadata["final"] is False
    p.on_progress = None
    second = p.run(resume=True)
    assert second.finished and second.restored_from == first.last_epoch
    assert first.rows_in + second.rows_in == N
    model = group_model(table, "user", [("amount", "sum")])
    assert_tables_close(final_epoch(second), model, "user")
    again = p.run(resume=True)  # nothing left to do
    assert again.finished and again.rows_in == 0 and again.epochs_committed == []
    with pytest.raises(ValueError, match="already holds committed epochs"):
        p.run()  # a new run does not clobber a used checkpoint


# ---------------------------------------------------------------------------- bad input


def _batches(table: pa.Table) -> list[pa.RecordBatch]:
    return [table.slice(i, BATCH).to_batches()[0] for i in range(0, table.num_rows, BATCH)]


def _source(batches: list[pa.RecordBatch]) -> raykv.sources.GeneratorSource:
    return raykv.sources.GeneratorSource(lambda i: batches[i] if i < len(batches) else None)


def _bad_run(tmp_path: Path, batches: list[pa.RecordBatch], **kw: Any) -> raykv.Pipeline:
    p = pipeline(tmp_path, [Aggregate("user", {"amount": ["sum"]})], events(n=10), **kw)
    p.source = _source(batches)
    return p


def _assert_still_restorable(tmp_path: Path, p: raykv.Pipeline, good: pa.Table) -> None:
    """The last committed epoch verifies, and resuming with the fixed input is exact."""
    store = CheckpointStore(str(tmp_path / "ckpt"))
    latest = store.latest_epoch()
    assert latest is not None
    store.verify(latest)
    p.source = _source(_batches(good))
    s = p.run(resume=True)
    assert s.restored_from == latest
    assert_tables_close(final_epoch(s), group_model(good, "user", [("amount", "sum")]), "user")


def test_missing_key_column_is_a_clear_error(ray_session: Any, tmp_path: Path) -> None:
    good = events(n=6_000)
    batches = _batches(good)
    batches[3] = batches[3].drop_columns(["user"])
    p = _bad_run(tmp_path, batches)
    with pytest.raises(ValueError, match=r"key column 'user' is missing") as info:
        p.run()
    assert "last committed epoch is 1" in "\n".join(getattr(info.value, "__notes__", []))
    CheckpointStore(str(tmp_path / "ckpt")).verify(1)


def test_schema_change_is_a_clear_error(ray_session: Any, tmp_path: Path) -> None:
    good = events(n=6_000)
    batches = _batches(good)
    batches[3] = batches[3].set_column(1, "amount", pc.cast(batches[3]["amount"], pa.string()))
    p = _bad_run(tmp_path, batches)
    with pytest.raises(ValueError, match=r"'amount' is string \(was double\)"):
        p.run()
    assert CheckpointStore(str(tmp_path / "ckpt")).epochs() == [1]


def test_null_key_is_a_clear_error(ray_session: Any, tmp_path: Path) -> None:
    good = events(n=6_000)
    batches = _batches(good)
    users = batches[3]["user"].to_pylist()
    users[100] = None
    batches[3] = batches[3].set_column(0, "user", pa.array(users, pa.int64()))
    p = _bad_run(tmp_path, batches)
    with pytest.raises(ValueError, match=r"key column 'user' contains a null at row 100"):
        p.run()
    _assert_still_restorable(tmp_path, p, good)


def test_key_too_long_is_a_clear_error(ray_session: Any, tmp_path: Path) -> None:
    """Detected inside the shard (the engine's max_key_len): error names value and column."""
    good = zipf_events(6_000, KEYS, key_type="string")
    batches = _batches(good)
    users = batches[3]["user"].to_pylist()
    users[7] = "x" * 100
    batches[3] = batches[3].set_column(0, "user", pa.array(users))
    p = _bad_run(tmp_path, batches, engine_params={"max_key_len": 32})
    with pytest.raises(ValueError, match=r"'xxxx.*column 'user'.*max_key_len=32") as info:
        p.run()
    assert "Aggregate0" in str(info.value)  # the stage and shard are named too
    # the committed epochs stay intact (resuming after a bad-input error with the input
    # fixed: test_null_key_is_a_clear_error, the same code)
    store = CheckpointStore(str(tmp_path / "ckpt"))
    latest = store.latest_epoch()
    assert latest is not None
    store.verify(latest)


@pytest.mark.parametrize("bad", [0, -0.5, "0.1", True, float("nan"), float("inf")])
def test_inflight_seconds_must_be_a_positive_number_or_none(bad: Any) -> None:
    def make(**kw: Any) -> raykv.Pipeline:
        return raykv.Pipeline(source=TableSource({"k": [1], "v": [2]}),
                              stages=[Aggregate("k", {"v": "sum"})],
                              checkpoint=None, **kw)

    with pytest.raises(ValueError, match=r"inflight_seconds must be a number > 0 .* or None"):
        make(inflight_seconds=bad)
    assert make(inflight_seconds=None).inflight_seconds is None
    assert make(inflight_seconds=0.5).inflight_seconds == 0.5
