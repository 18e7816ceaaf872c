"""The outbox sends compact parts: never a slice dragging its parent table's buffers."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pyarrow as pa

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
