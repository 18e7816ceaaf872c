"""The outbox sends compact parts: never a slice dragging its parent table's buffers."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from raykv.runtime.outbox import Outbox, compact


class _Recorder:
    """A channel that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, tuple[Any, ...]]] = []

    def send(self, dest: int, method: str, *args: Any) -> Any:
        self.sent.append((dest, method, args))
        return None

    def wait(self, ref: Any) -> Any:
        return ref

    def done(self, ref: Any) -> bool:
        return True


def _table(n: int) -> pa.Table:
    words = pa.array([f"w{i % 97}" for i in range(n)])
    return pa.table({"user": np.arange(n), "amount": np.ones(n), "word": words,
                     "tag": words.dictionary_encode()})


def test_a_slice_of_a_large_table_is_sent_as_its_own_rows() -> None:
    """A source's batch (a slice of its table) sent whole to one shard: Ray pickles what
    the outbox hands it, and a slice pickled with its parent's buffers is the whole
    table again (the one-shard pipelines ran at a fifth of the two-shard ones)."""
    big = _table(2_000_000)
    part = big.slice(500_000, 10_000).to_batches()[0]
    assert len(pickle.dumps(part, protocol=5)) > 50 * part.nbytes  # what went out before
    channel = _Recorder()
    Outbox(channel, 1, max_inflight=2).send_parts({0: part}, 7)
    ((dest, method, (sent, input_id)),) = channel.sent
    assert (dest, method, input_id) == (0, "process", 7)
    assert sent.equals(part) and sent.schema == part.schema
    assert len(pickle.dumps(sent, protocol=5)) < 2 * part.nbytes + 10_000


def test_compact_keeps_batches_that_own_their_buffers() -> None:
    whole = _table(10_000).to_batches()[0]
    assert compact(whole) is whole
    small_slice = whole.slice(10, 9_000)  # most of its parent: not worth a copy
    assert compact(small_slice) is small_slice
    empty = pa.RecordBatch.from_pydict({})
    assert compact(empty) is empty
    tail = _table(1_000_000).to_batches()[0].slice(999_990)
    got = compact(tail)
    assert got.equals(tail) and got.num_rows == 10
    assert got.get_total_buffer_size() < 10_000


class _Timed(_Recorder):
    """A channel whose ``process`` calls answer ``answers[dest]`` when collected."""

    def __init__(self, answers: list[Any]) -> None:
        super().__init__()
        self.answers = answers

    def send(self, dest: int, method: str, *args: Any) -> Any:
        super().send(dest, method, *args)
        return dest

    def wait(self, ref: Any) -> Any:
        return self.answers[ref]


@pytest.mark.parametrize(("answer", "max_inflight", "limit"), [
    ((1, 0.2, 1), 4, 2),     # slow, a sole sender: one call running, one queued
    ((1, 0.04, 1), 4, 3),    # ceil(0.1 / 0.04) = 3
    ((1, 0.03, 1), 8, 4),    # ceil(0.1 / 0.03) = 4
    ((1, 0.01, 2), 8, 5),    # two senders share the queue: ceil(0.1 / (0.01 * 2)) = 5
    ((1, 0.1, 3), 4, 1),     # three senders keep the other calls queued
    ((1, 0.001, 1), 4, 4),   # fast: never above max_inflight
    ((1, 0.2, 1), 1, 1),     # never above max_inflight either
    (7, 4, 1),            # an answer that is not (rows, seconds, senders): no change
])
def test_calls_in_flight_follow_the_seconds_a_call_takes(answer: Any, max_inflight: int,
                                                         limit: int) -> None:
    """Buffer debloating: a barrier waits behind the calls in flight, so the senders keep
    about ``target_seconds`` of the destination's work queued, not a fixed count."""
    channel = _Timed([answer, (1, 0.001, 1)])
    box = Outbox(channel, 2, max_inflight, target_seconds=0.1)
    assert box.limits == [1, 1]  # until the first answer: the speed is unknown
    part = _table(10).to_batches()[0]
    for _ in range(20):
        box.send_parts({0: part, 1: part}, 0)
    assert box.limits == [limit, max_inflight]
    assert len(box.queues[0]) == limit
    box.drain()
    assert not box.queues[0] and box.limits == [limit, max_inflight]
    fixed = Outbox(_Timed([(1, 0.2, 1)]), 1, max_inflight)  # no target: always max_inflight
    for _ in range(20):
        fixed.send_parts({0: part}, 0)
    assert fixed.limits == [max_inflight] and len(fixed.queues[0]) == max_inflight
