"""Source readers: read assigned splits, route rows to the first stage, inject barriers.

This is the data-plane half of a source (DESIGN: "source splits -> reader actors
(hash-split by key group) -> shard actors"); it is written without Ray so that it can be
tested in-process, and a reader actor wraps it.

* :func:`assign_splits` deals a source's splits to ``n`` readers, balanced by size.
* :class:`SplitCursor` reads one reader's splits and knows each split's offset.
* :class:`SourceReaderLoop` reads batches from a cursor, splits each by the first stage's
  partitioning and sends the parts to the shards through an
  :class:`~raykv.runtime.outbox.Outbox` (at most ``max_inflight`` calls in flight per
  shard, fewer by ``inflight_seconds``: backpressure), and injects barriers between two
  batches when asked (:meth:`SourceReaderLoop.request_barrier`): ``barrier(e)`` goes
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
from typing import NoReturn

import pyarrow as pa

from raykv.errors import add_context, failure_context, mark_user_code
from raykv.operators.schemas import describe_schema_change
from raykv.partitioning import Partitioning, split_batch
from raykv.runtime.failures import ReaderFailed
from raykv.runtime.outbox import Channel, Outbox
from raykv.sources import Offset, Source, SourceReader, Split, StopSource
from raykv.sources.base import WHOLE
from raykv.watermarks import ReaderClock


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
        self._current: str | None = None

    @property
    def source(self) -> Source:
        """The source read."""
        return self._source

    @property
    def current(self) -> str | None:
        """The split of the last batch returned (or being read)."""
        return self._current

    @property
    def exhausted(self) -> bool:
        """Every split returned its end."""
        return len(self._done) == len(self._ids)

    def offsets(self) -> dict[str, Offset]:
        """Each split's offset after the last batch returned (JSON-able)."""
        return dict(self._offsets)

    @property
    def done(self) -> set[str]:
        """The splits that returned their end."""
        return set(self._done)

    def active(self) -> list[str]:
        """The splits being read; they hold the reader's watermark.

        The current split of a bounded source; every unfinished one of an unbounded
        source (read in turn).
        """
        if self._round_robin:
            return [s for s in self._ids if s not in self._done]
        current = self._current
        return [current] if current is not None and current not in self._done else []

    def _reader(self, split_id: str) -> SourceReader:
        reader = self._readers.get(split_id)
        if reader is None:
            offset = self._offsets[split_id]
            # WHOLE is the source read as one stream: a source without splits, or a
            # checkpoint written before splits existed (metadata version 1)
            reader = (self._source.open(offset) if split_id == WHOLE
                      else self._source.open_split(split_id, offset))
            self._readers[split_id] = reader
        return reader

    def read(self) -> pa.RecordBatch | None:
        """The next batch of the current split (see the class docstring).

        An error of the source is marked as one (``failure_context``: ``phase``
        ``"source"``, the split, ``user_code`` naming split and offset), so that the
        driver names them and does not retry it; ``StopSource`` passes unchanged, with
        the split's offset past the marker recorded first.
        """
        try:
            return self._read()
        except StopSource:
            self._record_offsets()
            raise
        except Exception as err:
            split_id = self._current
            if split_id is not None and "split" not in failure_context(err):
                where = f"split {split_id!r} at offset {self._offsets.get(split_id)!r}"
                mark_user_code(err, f"source {type(self._source).__name__}.read of {where}")
                add_context(err, split=split_id, phase="source")
            raise

    def _record_offsets(self) -> None:
        for split_id, reader in self._readers.items():
            self._offsets[split_id] = reader.offset

    def _read(self) -> pa.RecordBatch | None:
        idle: pa.RecordBatch | None = None
        for _ in range(len(self._ids)):
            split_id = self._current = self._ids[self._next % len(self._ids)]
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


@dataclass(frozen=True)
class Cut:
    """A reader's answer to a barrier request: where its splits stand at the cut.

    Attributes:
        offsets: every split's offset after the reader's last batch of the epoch.
        rows: rows the reader sent in the epoch.
        batches: batches the reader sent in the epoch.
        exhausted: every split of the reader ended (bounded input).
        stopped: the source raised :class:`~raykv.sources.StopSource` (pause the run).
        event_maxes: the largest event time of each split so far (``Pipeline.watermark``;
            empty without one), stored in the epoch with the offsets.
    """

    offsets: dict[str, Offset]
    rows: int
    batches: int
    exhausted: bool
    stopped: bool
    event_maxes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    """What a reader is doing, for the coordinator's barrier decisions.

    Attributes:
        batches: batches sent in the current epoch.
        exhausted: every split ended.
        stopped: the source raised ``StopSource``.
        failed: the loop failed (its ``run`` raises the error).
    """

    batches: int
    exhausted: bool
    stopped: bool
    failed: bool

    @property
    def idle(self) -> bool:
        """Nothing more will be read: ended, stopped or failed."""
        return self.exhausted or self.stopped or self.failed


@dataclass
class _BarrierRequest:
    epoch: int
    final: bool
    pause: bool
    cut: Cut | None = None
    done: threading.Event = field(default_factory=threading.Event)


class SourceReaderLoop:
    """One reader's loop (see the module docstring); thread-safe control calls.

    Args:
        cursor: the reader's splits.
        key: the first stage's key column.
        partitioning: the first stage's key-group assignment.
        channel: the way to the shards.
        input_id: this reader's input number at the shards.
        max_inflight: calls in flight per shard before the loop waits for the oldest.
        inflight_seconds: the seconds of a shard's work its senders keep in flight (the
            outbox's target; ``None``: always ``max_inflight`` calls).
        idle: called when the source has nothing right now (e.g. sleep a little).
        epoch_batches: when set, the loop reads at most this many batches per epoch and
            then waits for the barrier (``Pipeline(epoch_every_batches=...)``: epochs
            of a fixed number of batches per reader, whatever the timing).
        on_batch: called before each batch is sent (fault injection in tests).
        paused: read nothing until the first barrier request (or :meth:`resume`).
        first_epoch: the epoch the first rows belong to (named in errors).
        clock: the reader's watermark over its splits (``None``: no ``Pipeline.watermark``;
            barriers then carry none).
    """

    def __init__(self, cursor: SplitCursor, key: str, partitioning: Partitioning,
                 channel: Channel, input_id: int, max_inflight: int = 4,
                 inflight_seconds: float | None = None,
                 idle: Callable[[], None] = lambda: None, epoch_batches: int | None = None,
                 on_batch: Callable[[], None] = lambda: None, paused: bool = False,
                 first_epoch: int | None = None, clock: ReaderClock | None = None) -> None:
        self.cursor = cursor
        self._key = key
        self._partitioning = partitioning
        self._outbox = Outbox(channel, partitioning.num_shards, max_inflight,
                              inflight_seconds)
        self._input_id = input_id
        self._idle = idle
        self._epoch_batches = epoch_batches
        self._on_batch = on_batch
        self._requests: deque[_BarrierRequest] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._paused = paused
        self.epoch = first_epoch
        self._source_stopped = False
        self._schema: pa.Schema | None = None
        self.error: BaseException | None = None
        self.rows = 0
        self.batches = 0
        self._rows_epoch = 0
        self._batches_epoch = 0
        self._clock = clock

    # ------------------------------------------------------------------ control (any thread)

    def request_barrier(self, epoch: int, *, final: bool = False, pause: bool = False,
                        timeout: float | None = None) -> Cut:
        """Ask for ``barrier(epoch)`` (``finish`` when ``final``) after the current batch.

        The current batch's send waits for room at the shards first (backpressure), so
        a slow shard delays the barrier by up to one of its calls.

        Blocks until the loop sent it into every channel; returns the :class:`Cut`. A
        final barrier is sent only once the cursor is exhausted. With ``pause`` the loop
        then waits for every call in flight and reads nothing until :meth:`resume`.

        Raises:
            TimeoutError: not sent within ``timeout`` seconds.
            ReaderFailed: (a ``RuntimeError``) the loop failed (its error is ``err`` and
                the ``__cause__``) or stopped before it sent the barrier.
        """
        req = _BarrierRequest(epoch, final, pause)
        with self._cond:
            if self.error is not None or self._stopped:
                self._refuse(req)
            self._requests.append(req)
            self._cond.notify_all()
        if not req.done.wait(timeout):
            msg = f"reader {self._input_id}: barrier({epoch}) not sent within {timeout} s"
            raise TimeoutError(msg)
        if req.cut is None:
            self._refuse(req)
        return req.cut

    def _refuse(self, req: _BarrierRequest) -> NoReturn:
        why = "failed" if self.error is not None else "stopped"
        msg = f"reader {self._input_id} {why} before barrier({req.epoch})"
        raise ReaderFailed(msg, self.error) from self.error

    def status(self, timeout: float = 0.0) -> Status:
        """The loop's :class:`Status`, waiting up to ``timeout`` s for it to become ready.

        Ready: nothing more will be read (:attr:`Status.idle`), or ``epoch_batches``
        batches were sent in the epoch.
        """
        with self._cond:
            self._cond.wait_for(self._ready, timeout)
            return Status(self._batches_epoch, self.cursor.exhausted, self._source_stopped,
                          self.error is not None)

    def _ready(self) -> bool:
        return (self.cursor.exhausted or self._source_stopped or self.error is not None
                or self._stopped or (self._epoch_batches is not None
                                     and self._batches_epoch >= self._epoch_batches))

    def resume(self, partitioning: Partitioning | None = None) -> None:
        """End a pause; route by ``partitioning`` from now on when given (a rebalance)."""
        with self._cond:
            if partitioning is not None:
                self._partitioning = partitioning
            self._paused = False
            self._cond.notify_all()

    def stop(self) -> None:
        """Make :meth:`run` return after the current batch."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ the loop (one thread)

    def run(self) -> None:
        """Read, route and send until stopped; barriers are injected between batches.

        After the last split ends the loop keeps answering barrier requests (other readers
        may still be reading) until it sent a final barrier or is stopped; it then waits
        for every call in flight. A failure (of the source, the split, a shard call) is
        raised, and every waiting or later barrier request fails with it as the cause.
        """
        try:
            self._loop()
            self.drain()
        except BaseException as err:
            with self._cond:
                self.error = err
                self._cond.notify_all()
            raise
        finally:
            with self._cond:
                self._stopped = True
                for req in self._requests:
                    req.done.set()  # no cut: request_barrier raises
                self._requests.clear()
                self._cond.notify_all()
            self.cursor.close()

    def _wait_for_work(self) -> bool:
        """Block while nothing may be read and no barrier is due; False once stopped."""
        with self._cond:
            while not self._stopped and not self._due() and (
                    self._paused or self.cursor.exhausted or self._source_stopped
                    or (self._epoch_batches is not None
                        and self._batches_epoch >= self._epoch_batches)):
                self._cond.wait()
            return not self._stopped

    def _due(self) -> bool:
        """A barrier request can be served now (a final one once the splits ended)."""
        return bool(self._requests) and (not self._requests[0].final or self.cursor.exhausted)

    def _loop(self) -> None:
        while True:
            if self._serve_barriers():
                return
            if not self._wait_for_work():
                return
            with self._cond:
                if self._due():
                    continue
            try:
                batch = self.cursor.read()
            except StopSource:
                with self._cond:
                    self._source_stopped = True
                    self._cond.notify_all()
                continue
            except Exception as err:
                add_context(err, epoch=self.epoch)
                ctx = failure_context(err)
                if "user_code" in ctx:
                    err.add_note(f"raykv: {ctx['user_code']} raised {type(err).__name__} "
                                 f"in reader {self._input_id}, epoch {self.epoch}")
                raise
            if batch is None:
                with self._cond:
                    self._cond.notify_all()  # exhausted: status() waiters
                continue
            if batch.num_rows == 0:
                self._idle()
                continue
            self._on_batch()
            self._send(batch)

    def _send(self, batch: pa.RecordBatch) -> None:
        try:
            parts = split_batch(batch, self._key, self._partitioning)  # key checks first
            self._check_schema(batch)
            if self._clock is not None:
                self._clock.observe(self.cursor.current or "", batch)
        except (ValueError, TypeError) as err:
            split = self.cursor.current
            add_context(err, split=split)
            err.add_note(f"raykv: in a batch of split {split!r} of "
                         f"{type(self.cursor.source).__name__}")
            raise
        self._outbox.send_parts(parts, self._input_id)
        with self._cond:
            self.rows += batch.num_rows
            self.batches += 1
            self._rows_epoch += batch.num_rows
            self._batches_epoch += 1
            if self._epoch_batches is not None and self._batches_epoch >= self._epoch_batches:
                self._cond.notify_all()

    def _check_schema(self, batch: pa.RecordBatch) -> None:
        """Raise ``ValueError`` if ``batch``'s schema differs from this reader's first."""
        if self._schema is None:
            self._schema = batch.schema
        elif not batch.schema.equals(self._schema):
            msg = (
                f"a source batch changed schema: "
                f"{describe_schema_change(self._schema, batch.schema)} (expected "
                f"{self._schema.names} as in the first batch); every batch must have one schema"
            )
            raise ValueError(msg)

    def _serve_barriers(self) -> bool:
        """Send the requested barriers that are due; True after a final one."""
        while True:
            with self._cond:
                if not self._requests:
                    return False
                if not self._due():
                    return False
                req = self._requests.popleft()
            method = "finish" if req.final else "barrier"
            wm, idle = (self._clock.mark(self.cursor.active(), self.cursor.done)
                        if self._clock is not None else (None, False))
            self._outbox.broadcast(method, req.epoch, self._input_id, wm, idle)
            with self._cond:
                req.cut = Cut(self.cursor.offsets(), self._rows_epoch, self._batches_epoch,
                              self.cursor.exhausted, self._source_stopped,
                              self._clock.maxes() if self._clock is not None else {})
                self.epoch = req.epoch + 1
                self._rows_epoch = self._batches_epoch = 0
                self._paused = req.pause
                self._cond.notify_all()
            if req.pause:
                self.drain()
            req.done.set()
            if req.final:
                return True

    def drain(self) -> None:
        """Wait for every call in flight (raises the first failure)."""
        self._outbox.drain()


__all__ = ["Cut", "SourceReaderLoop", "SplitCursor", "Status", "assign_splits"]
