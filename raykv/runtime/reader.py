"""Source readers: read assigned splits, route rows to the first stage, inject barriers.

This is the data-plane half of a source (DESIGN: "source splits -> reader actors
(hash-split by key group) -> shard actors"); it is written without Ray so that it can be
tested in-process, and a reader actor wraps it.

* :func:`assign_splits` deals a source's splits to ``n`` readers, balanced by size.
* :class:`SplitCursor` reads one reader's splits and knows each split's offset.
* :class:`SourceReaderLoop` reads batches from a cursor, splits each by the first stage's
  partitioning and sends the parts to the shards through a :class:`Channel` (at most
  ``max_inflight`` calls in flight per shard: backpressure), and injects barriers between
  two batches when asked (:meth:`SourceReaderLoop.request_barrier`): ``barrier(e)`` goes
  into every channel after the reader's last batch of epoch ``e``, and the request is
  answered with every split's offset at that cut. Shards align that barrier over all
  readers, so each epoch is a consistent cut across splits (DESIGN invariant 2).

Ordering: one reader's calls to one shard go through one channel in order (Ray keeps
the order of one caller's calls to one actor), so everything a reader sent before
``barrier(e)`` reaches every shard before it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import pyarrow as pa

from raykv.partitioning import Partitioning, split_batch
from raykv.sources import Offset, Source, SourceReader, Split


def assign_splits(splits: Sequence[Split], readers: int) -> list[list[Split]]:
    """Deal ``splits`` to ``readers`` so that the largest total size is small.

    Greedy, largest first, each to the reader with the least assigned so far (ties: the
    lower index); a split of unknown size counts as the mean known size (1 if none is
    known). Each reader's list keeps the source's order, so a reader that reads its splits
    one after the other reads them in source order. Deterministic for equal inputs.

    Raises:
        ValueError: ``readers < 1``.
    """
    if readers < 1:
        msg = f"source_parallelism must be >= 1, got {readers}"
        raise ValueError(msg)
    known = [s.size for s in splits if s.size is not None]
    default = max(1, sum(known) // len(known)) if known else 1
    sizes = [s.size if s.size is not None else default for s in splits]
    load = [0] * readers
    owned: list[list[int]] = [[] for _ in range(readers)]
    for i in sorted(range(len(splits)), key=lambda i: (-sizes[i], i)):
        r = min(range(readers), key=lambda j: (load[j], j))
        owned[r].append(i)
        load[r] += sizes[i]
    return [[splits[i] for i in sorted(idx)] for idx in owned]


class SplitCursor:
    """Reads a list of splits of one source, each from its offset.

    Bounded sources are read one split after the other (in the given order); unbounded
    ones round-robin, one batch per split in turn, since an unbounded split never ends.
    ``read()`` follows the :class:`~raykv.sources.SourceReader` contract: a batch, an
    empty batch while an unbounded source has nothing, ``None`` when every split is done.
    """

    def __init__(self, source: Source, splits: Sequence[tuple[str, Offset]]) -> None:
        self._source = source
        self._ids = [s for s, _ in splits]
        self._offsets: dict[str, Offset] = dict(splits)
        self._readers: dict[str, SourceReader] = {}
        self._done: set[str] = set()
        self._next = 0
        self._round_robin = not source.bounded

    @property
    def exhausted(self) -> bool:
        """Every split returned its end."""
        return len(self._done) == len(self._ids)

    def offsets(self) -> dict[str, Offset]:
        """Each split's offset after the last batch returned (JSON-able)."""
        return dict(self._offsets)

    def _reader(self, split_id: str) -> SourceReader:
        reader = self._readers.get(split_id)
        if reader is None:
            reader = self._source.open_split(split_id, self._offsets[split_id])
            self._readers[split_id] = reader
        return reader

    def read(self) -> pa.RecordBatch | None:
        """The next batch of the current split (see the class docstring)."""
        idle: pa.RecordBatch | None = None
        for _ in range(len(self._ids)):
            split_id = self._ids[self._next % len(self._ids)]
            if split_id in self._done:
                self._next += 1
                continue
            reader = self._reader(split_id)
            batch = reader.read()
            self._offsets[split_id] = reader.offset
            if batch is None:
                self._done.add(split_id)
                reader.close()
                del self._readers[split_id]
                self._next += 1
                continue
            if not self._round_robin:
                return batch
            self._next += 1
            if batch.num_rows:
                return batch
            idle = batch  # this split has nothing now; ask the next one
        return idle

    def close(self) -> None:
        """Close every open split reader; idempotent."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


class Channel(Protocol):
    """How a reader reaches the first-stage shards (Ray handles, or a test's fakes)."""

    def send(self, shard: int, method: str, *args: Any) -> Any:
        """Call ``method(*args)`` on shard ``shard``; return a waitable reference."""

    def wait(self, ref: Any) -> Any:
        """Block until ``ref`` is done; raise its error."""


@dataclass
class _BarrierRequest:
    epoch: int
    final: bool
    offsets: dict[str, Offset] | None = None
    done: threading.Event = field(default_factory=threading.Event)


class SourceReaderLoop:
    """One reader's loop (see the module docstring); thread-safe barrier requests.

    Args:
        cursor: the reader's splits.
        key: the first stage's key column.
        partitioning: the first stage's key-group assignment.
        channel: the way to the shards.
        input_id: this reader's input number at the shards.
        max_inflight: calls in flight per shard before the loop waits for the oldest.
        idle: called when the source has nothing right now (e.g. sleep a little).
    """

    def __init__(self, cursor: SplitCursor, key: str, partitioning: Partitioning,
                 channel: Channel, input_id: int, max_inflight: int = 4,
                 idle: Callable[[], None] = lambda: None) -> None:
        self.cursor = cursor
        self._key = key
        self._partitioning = partitioning
        self._channel = channel
        self._input_id = input_id
        self._max_inflight = max_inflight
        self._idle = idle
        self._inflight: list[deque[Any]] = [deque() for _ in range(partitioning.num_shards)]
        self._requests: deque[_BarrierRequest] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self.error: BaseException | None = None
        self.rows = 0
        self.batches = 0

    def request_barrier(self, epoch: int, *, final: bool = False,
                        timeout: float | None = None) -> dict[str, Offset]:
        """Ask for ``barrier(epoch)`` (``finish`` when ``final``) after the current batch.

        Blocks until the loop sent it into every channel; returns each split's offset at
        that cut. A final barrier is sent only once the cursor is exhausted.

        Raises:
            TimeoutError: not sent within ``timeout`` seconds.
            RuntimeError: the loop failed (its error is the ``__cause__``) or stopped
                before it sent the barrier.
        """
        req = _BarrierRequest(epoch, final)
        with self._cond:
            if self.error is not None or self._stopped:
                self._refuse(req)
            self._requests.append(req)
            self._cond.notify_all()
        if not req.done.wait(timeout):
            msg = f"reader {self._input_id}: barrier({epoch}) not sent within {timeout} s"
            raise TimeoutError(msg)
        if req.offsets is None:
            self._refuse(req)
        return req.offsets or {}

    def _refuse(self, req: _BarrierRequest) -> NoReturn:
        why = "failed" if self.error is not None else "stopped"
        msg = f"reader {self._input_id} {why} before barrier({req.epoch})"
        raise RuntimeError(msg) from self.error

    def stop(self) -> None:
        """Make :meth:`run` return after the current batch."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def run(self) -> None:
        """Read, route and send until stopped; barriers are injected between batches.

        After the last split ends the loop keeps answering barrier requests (other readers
        may still be reading) until it sent a final barrier or is stopped. A failure (of
        the source, the split, a shard call) is raised, and every waiting or later barrier
        request fails with it as the cause.
        """
        try:
            self._loop()
        except BaseException as err:
            self.error = err
            raise
        finally:
            with self._cond:
                self._stopped = True
                for req in self._requests:
                    req.done.set()  # offsets stay None: request_barrier raises
                self._requests.clear()
            self.cursor.close()

    def _loop(self) -> None:
        while True:
            if self._serve_barriers():
                return
            with self._cond:
                if self._stopped:
                    return
            if self.cursor.exhausted:
                with self._cond:
                    while not self._requests and not self._stopped:
                        self._cond.wait()
                continue
            batch = self.cursor.read()
            if batch is None:
                continue
            if batch.num_rows == 0:
                self._idle()
                continue
            self._send(batch)

    def _send(self, batch: pa.RecordBatch) -> None:
        for shard, part in split_batch(batch, self._key, self._partitioning).items():
            q = self._inflight[shard]
            q.append(self._channel.send(shard, "process", part, self._input_id))
            if len(q) > self._max_inflight:
                self._channel.wait(q.popleft())
        self.rows += batch.num_rows
        self.batches += 1

    def _serve_barriers(self) -> bool:
        """Send the requested barriers that are due; True after a final one."""
        while True:
            with self._cond:
                if not self._requests:
                    return False
                req = self._requests[0]
                if req.final and not self.cursor.exhausted:
                    return False
                self._requests.popleft()
            method = "finish" if req.final else "barrier"
            for shard in range(self._partitioning.num_shards):
                self._channel.send(shard, method, req.epoch, self._input_id)
            req.offsets = self.cursor.offsets()
            req.done.set()
            if req.final:
                return True

    def drain(self) -> None:
        """Wait for every call in flight (raises the first failure)."""
        for q in self._inflight:
            while q:
                self._channel.wait(q.popleft())


__all__ = ["Channel", "SourceReaderLoop", "SplitCursor", "assign_splits"]
