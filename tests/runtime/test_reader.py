"""Source readers without Ray: split assignment, split cursors, and the read-route-barrier
loop of several readers feeding real barrier aligners, against a model of the input.

The invariant checked: at every aligned epoch ``e``, the rows the shards processed
before ``Aligned(e)`` plus the rows that reopening every split at the offsets reported
for ``barrier(e)`` yields are exactly the input, each row once (a consistent cut).
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.partitioning import Partitioning
from raykv.runtime.aligner import BARRIER, DATA, FINISH, Aligned, BarrierAligner, Data
from raykv.runtime.reader import SourceReaderLoop, SplitCursor, assign_splits
from raykv.sources import GeneratorSource, Source, Split, TableSource


def test_assign_splits_balances_by_size_and_keeps_source_order() -> None:
    splits = [Split("a", 10), Split("b", 70), Split("c", 30), Split("d", 30), Split("e", 20)]
    got = assign_splits(splits, 2)
    assert [[s.id for s in r] for r in got] == [["a", "b"], ["c", "d", "e"]]  # 80 and 80
    assert sorted(s.id for r in got for s in r) == ["a", "b", "c", "d", "e"]
    assert assign_splits(splits, 2) == got  # deterministic
    unknown = [Split(f"p{i}") for i in range(5)]
    assert [len(r) for r in assign_splits(unknown, 3)] == [2, 2, 1]
    assert assign_splits([], 2) == [[], []]
    with pytest.raises(ValueError, match="source_parallelism must be >= 1"):
        assign_splits(splits, 0)


@given(sizes=st.lists(st.integers(0, 1000), max_size=30), readers=st.integers(1, 6))
def test_assign_splits_is_within_the_greedy_bound(sizes: list[int], readers: int) -> None:
    splits = [Split(f"s{i}", n) for i, n in enumerate(sizes)]
    got = assign_splits(splits, readers)
    assert sorted(s.id for r in got for s in r) == sorted(s.id for s in splits)
    loads = [sum(s.size or 0 for s in r) for r in got]
    # largest-first greedy: the busiest reader holds at most the mean plus one split
    assert max(loads) <= sum(sizes) / readers + max(sizes, default=0)


def _partition(p: int, i: int) -> pa.RecordBatch | None:
    return pa.record_batch({"k": [p, p + 10], "v": [i, i]}) if i < 3 else None


def test_split_cursor_reads_bounded_splits_in_order_and_reports_offsets() -> None:
    src = TableSource({"k": list(range(100)), "v": list(range(100))}, batch_size=10)
    splits = src.splits()
    cursor = SplitCursor(src, [(s.id, None) for s in splits])
    got = []
    while (b := cursor.read()) is not None:
        got += b.column("v").to_pylist()
    assert got == list(range(100)) and cursor.exhausted
    assert cursor.offsets() == {s.id: s.size for s in splits}
    # an unbounded source is read round-robin, one batch per split in turn
    gen = GeneratorSource(_partition, partitions=2)
    cursor = SplitCursor(gen, [("partition 0", 1), ("partition 1", None)])
    order = [b.column("k")[0].as_py() for b in iter(cursor.read, None)]
    assert order == [0, 1, 0, 1, 1]
    assert cursor.offsets() == {"partition 0": 3, "partition 1": 3}


class FakeShards:
    """Shards that align barriers with the real aligner and log what they processed."""

    def __init__(self, num_shards: int, num_inputs: int, max_inflight: int) -> None:
        self.aligners = [BarrierAligner(num_inputs, f"shard {i}") for i in range(num_shards)]
        self.lock = threading.Lock()
        self.processed: list[list[tuple[int, Any]]] = [[] for _ in range(num_shards)]
        self.aligned: list[list[tuple[int, bool, int]]] = [[] for _ in range(num_shards)]
        self.outstanding = Counter[tuple[int, int]]()
        self.max_outstanding = 0
        self.max_inflight = max_inflight

    def channel(self, reader: int) -> Any:
        shards = self

        class _Channel:
            def send(self, shard: int, method: str, *args: Any) -> Any:
                kind = {"process": DATA, "barrier": BARRIER, "finish": FINISH}[method]
                with shards.lock:
                    for out in shards.aligners[shard].receive(kind, args[1], args[0]):
                        if isinstance(out, Data):
                            shards.processed[shard].append((reader, out.batch))
                        else:
                            assert isinstance(out, Aligned)
                            shards.aligned[shard].append(
                                (out.epoch, out.final, len(shards.processed[shard])))
                    if method == "process":
                        shards.outstanding[(reader, shard)] += 1
                        shards.max_outstanding = max(shards.max_outstanding,
                                                     shards.outstanding[(reader, shard)])
                return (reader, shard)

            def wait(self, ref: Any) -> Any:
                with shards.lock:
                    shards.outstanding[ref] -= 1
                return None

            def done(self, ref: Any) -> bool:
                return True

        return _Channel()


def rows_of(batches: list[pa.RecordBatch]) -> Counter[str]:
    return Counter(json.dumps(r, sort_keys=True) for b in batches for r in b.to_pylist())


def rest_after(source: Source, offsets: dict[str, Any]) -> list[pa.RecordBatch]:
    out = []
    for split_id, offset in offsets.items():
        reader = source.open_split(split_id, json.loads(json.dumps(offset)))
        out += [b for b in iter(reader.read, None) if b.num_rows]
    return out


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(0, 400), batch=st.integers(1, 50), readers=st.integers(1, 4),
       shards=st.integers(1, 3), max_inflight=st.integers(1, 4), barriers=st.integers(0, 6),
       seed=st.integers(0, 2**31))
def test_readers_cut_consistent_epochs(rows: int, batch: int, readers: int, shards: int,
                                       max_inflight: int, barriers: int, seed: int) -> None:
    rnd = random.Random(seed)
    table = pa.table({"k": [rnd.randrange(20) for _ in range(rows)], "v": list(range(rows))})
    src = TableSource(table, batch_size=batch)
    part = Partitioning(num_key_groups=64, num_shards=shards)
    fake = FakeShards(shards, readers, max_inflight)
    loops = [
        SourceReaderLoop(SplitCursor(src, [(s.id, None) for s in mine]), "k", part,
                         fake.channel(r), input_id=r, max_inflight=max_inflight)
        for r, mine in enumerate(assign_splits(src.splits(), readers))
    ]
    threads = [threading.Thread(target=loop.run) for loop in loops]
    for t in threads:
        t.start()
    cuts: dict[int, dict[str, Any]] = {}
    for epoch in range(1, barriers + 1):
        cuts[epoch] = {}
        for loop in loops:  # like the coordinator: ask every reader, in turn
            cuts[epoch].update(loop.request_barrier(epoch, timeout=60).offsets)
    final = barriers + 1
    for loop in loops:
        cut = loop.request_barrier(final, final=True, timeout=60)
        cuts[final] = {**cuts.get(final, {}), **cut.offsets}
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    everything = rows_of(table.to_batches())
    for shard in range(shards):
        assert [(e, f) for e, f, _ in fake.aligned[shard]] == [
            (e, e == final) for e in range(1, final + 1)]
    for epoch, offsets in cuts.items():
        before = [b for shard in range(shards)
                  for _, b in fake.processed[shard][:fake.aligned[shard][epoch - 1][2]]]
        assert rows_of(before) + rows_of(rest_after(src, offsets)) == everything, epoch
    assert sum(loop.rows for loop in loops) == rows
    assert fake.max_outstanding <= max_inflight + 1


class _Boom(Source):
    """A source whose second batch fails."""

    def open(self, offset: Any = None) -> Any:
        base = TableSource({"k": [1, 2, 3, 4]}, batch_size=2).open(offset)

        class _Reader:
            def read(self) -> pa.RecordBatch | None:
                if base.offset >= 2:
                    raise ZeroDivisionError("bad row")
                return base.read()

            offset = property(lambda self: base.offset)

            def close(self) -> None:
                pass

        return _Reader()


def test_a_failing_reader_fails_its_barrier_requests_instead_of_hanging() -> None:
    fake = FakeShards(1, 1, 4)
    loop = SourceReaderLoop(SplitCursor(_Boom(), [("all", None)]), "k",
                            Partitioning(num_key_groups=8, num_shards=1), fake.channel(0), 0)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run()
        except ZeroDivisionError as err:
            errors.append(err)

    t = threading.Thread(target=run)
    t.start()
    with pytest.raises(RuntimeError, match="reader 0 failed before barrier") as info:
        loop.request_barrier(1, final=True, timeout=60)
    t.join(timeout=60)
    assert isinstance(info.value.__cause__, ZeroDivisionError) and errors
    with pytest.raises(RuntimeError, match="failed before barrier"):
        loop.request_barrier(2, timeout=60)
    assert len(fake.processed[0]) == 1  # the first batch went out, nothing after


class _DeadShard:
    """A channel to a shard that was SIGKILLed: every wait meets Ray's ``ActorDiedError``."""

    def send(self, shard: int, method: str, *args: Any) -> Any:
        return shard

    def wait(self, ref: Any) -> Any:
        import ray

        raise ray.exceptions.ActorDiedError()

    def done(self, ref: Any) -> bool:
        return True


def test_a_refused_barrier_is_judged_by_the_failure_of_its_loop() -> None:
    """The reader's sends to a dead shard failed: its refused barrier carries that failure
    through pickling (as Ray sends it to the driver) and is judged transient, however often
    it repeats at one epoch. (It was a ``RuntimeError`` whose ``__cause__`` pickling drops,
    so two SIGKILLs before the first commit stopped a run as a "repeated" failure.)"""
    import ray
    from ray import cloudpickle

    from raykv.runtime.failures import FailurePolicy, ReaderFailed, ShardFailure, root_cause

    loop = SourceReaderLoop(SplitCursor(TableSource({"k": list(range(8))}, batch_size=2),
                                        [("all", None)]), "k",
                            Partitioning(num_key_groups=8, num_shards=1), _DeadShard(), 0,
                            max_inflight=1)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run()
        except ray.exceptions.ActorDiedError as err:
            errors.append(err)

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=60)  # the loop failed (a barrier asked before could still be sent)
    assert errors
    with pytest.raises(ReaderFailed, match="reader 0 failed before barrier") as info:
        loop.request_barrier(1, timeout=60)
    sent = cloudpickle.loads(cloudpickle.dumps(info.value))
    assert sent.__cause__ is None  # what pickling keeps: not the cause, the attribute
    got = ShardFailure(ray.exceptions.RayTaskError("barrier", "", sent))  # as ray.get gives it
    assert isinstance(root_cause(got), ray.exceptions.ActorDiedError)
    policy = FailurePolicy()
    verdicts = [policy.judge(got, attempt) for attempt in range(3)]
    assert [(v.action, v.reason) for v in verdicts] == [("recover", "transient")] * 3
