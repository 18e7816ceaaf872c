"""Sending rows to a row of actors with backpressure: the outbox of a reader or a shard.

Contract: an :class:`Outbox` sends through a :class:`Channel` (Ray actor handles in a
run, :class:`RayChannel`; fakes in tests) to ``n`` destinations, indexed ``0..n-1``.
``send_parts`` calls ``process(part, input_id)`` on each destination that gets a part
and keeps at most ``max_inflight`` calls in flight per destination: one more and it
waits for that destination's oldest (backpressure; where a failed or dead destination
first surfaces, as the error of that wait). ``broadcast`` sends a control call (a
barrier) to every destination without waiting. Calls from one caller to one actor run in
the order they were made (Ray's guarantee), so a barrier sent after a destination's
parts arrives after them.

Buffer debloating (``target_seconds``): a barrier queues behind the calls in flight, so
their number bounds the time from a barrier to its commit when the destinations are the
bottleneck. A ``process`` call answers with ``(rows, seconds, senders)``: the seconds
the destination spent on it and the number of senders that share its queue; each sender
keeps its share of about ``target_seconds`` of the destination's work in flight: at most
``max_inflight`` calls, at least 1 (2 for a sole sender: one call running, one queued,
so the destination never waits for the sender). Until a destination's first answer the
bound is 1 call: senders that start together would otherwise queue ``max_inflight``
calls each at a destination of unknown speed, with the first barrier behind all of them
(measured: a ``StatefulMap`` fed by 3 readers at 0.25 s checkpoints got its first
barrier 1.4 s after it was sent).

Used by source readers (:mod:`raykv.runtime.reader`) to reach the first stage and by
shards (:mod:`raykv.runtime.shard`) to reach the next stage.

Every part leaves compact (:func:`compact`): Ray pickles a sliced batch with the whole
of its parents' buffers, so a source serving slices of one large table, sent whole to a
single shard, shipped the table again with every batch.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa
import ray

_SLACK = 64 << 10  # bytes of buffer beyond a batch's own size that are not worth a copy
_ALPHA = 0.3  # weight of the newest call in a destination's seconds-per-call average


def compact(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch``, copied into buffers of its own size when it is a slice of larger ones.

    Ray pickles a sliced batch with every byte of its parents' buffers: a 262,144-row
    slice of an 8M-row table (a ``TableSource`` batch) went to a single shard as 128 MB
    instead of 4 MB, and a one-shard pipeline ran at a fifth of a two-shard one (parts
    for several shards are ``take`` copies already). Cost: O(columns) to check; one copy
    of the batch's own bytes (0.3 ms for 4 MB) when it is such a slice.
    """
    if (batch.num_columns == 0
            or batch.get_total_buffer_size() <= 2 * batch.nbytes + _SLACK):
        return batch
    return pa.RecordBatch.from_arrays([pa.concat_arrays([col]) for col in batch.columns],
                                      schema=batch.schema)


class Channel(Protocol):
    """How a sender reaches its destinations (Ray handles, or a test's fakes)."""

    def send(self, dest: int, method: str, *args: Any) -> Any:
        """Call ``method(*args)`` on destination ``dest``; return a waitable reference."""

    def wait(self, ref: Any) -> Any:
        """Block until ``ref`` is done; raise its error."""

    def done(self, ref: Any) -> bool:
        """Whether ``ref`` is done (without blocking)."""


class RayChannel:
    """A :class:`Channel` over Ray actor handles (one caller: calls run in order).

    Every call carries ``attempt=`` (the sender's run attempt): a shard that survived a
    failure drops the calls of the attempt before its local recovery.
    """

    def __init__(self, handles: Sequence[Any], attempt: int) -> None:
        self._handles = list(handles)
        self._attempt = attempt

    def send(self, dest: int, method: str, *args: Any) -> Any:
        """``handles[dest].<method>.remote(*args, attempt=...)``."""
        return getattr(self._handles[dest], method).remote(*args, attempt=self._attempt)

    def wait(self, ref: Any) -> Any:
        """``ray.get(ref)``."""
        return ray.get(ref)

    def done(self, ref: Any) -> bool:
        """A zero-timeout ``ray.wait``."""
        ready, _ = ray.wait([ref], timeout=0)
        return bool(ready)


class Outbox:
    """Calls in flight to ``n`` destinations (see the module docstring).

    Args:
        channel: the way to the destinations.
        n: number of destinations.
        max_inflight: ``process`` calls in flight per destination before waiting.
        target_seconds: the destination's seconds of work to keep in flight (``None``:
            always ``max_inflight`` calls); see the module docstring.
    """

    def __init__(self, channel: Channel, n: int, max_inflight: int,
                 target_seconds: float | None = None) -> None:
        self._channel = channel
        self.n = n
        self._max_inflight = max_inflight
        self._target = target_seconds
        self.queues: list[deque[Any]] = [deque() for _ in range(n)]
        #: per destination: calls in flight allowed now
        self.limits = [max_inflight if target_seconds is None else 1] * n
        self._seconds = [0.0] * n  # per destination: seconds per call (moving average)

    def send_parts(self, parts: dict[int, pa.RecordBatch], input_id: int) -> None:
        """``process(part, input_id)`` on every destination of ``parts``, with backpressure.

        Each part is sent :func:`compact`.
        """
        for dest, part in parts.items():
            q = self.queues[dest]
            q.append(self._channel.send(dest, "process", compact(part), input_id))
            while len(q) > self.limits[dest]:
                self._collect(dest)

    def _collect(self, dest: int) -> None:
        """Wait for ``dest``'s oldest call; with a target, adapt its limit to the answer.

        The answer of a ``process`` call is ``(rows, seconds, senders)`` (module
        docstring); anything else is not counted.
        """
        answer = self._channel.wait(self.queues[dest].popleft())
        if self._target is None or type(answer) is not tuple:
            return
        _, took, senders = answer
        avg = self._seconds[dest]
        avg = took if avg == 0.0 else avg + _ALPHA * (took - avg)
        self._seconds[dest] = avg
        share = math.ceil(self._target / (avg * senders)) if avg > 0 else self._max_inflight
        self.limits[dest] = min(self._max_inflight, max(2 if senders == 1 else 1, share))

    def broadcast(self, method: str, *args: Any) -> None:
        """``method(*args)`` on every destination, not waited for."""
        for dest in range(self.n):
            self._channel.send(dest, method, *args)

    def reap(self) -> None:
        """Collect the calls that are done (raising the first failure); never blocks."""
        for dest, q in enumerate(self.queues):
            while q and self._channel.done(q[0]):
                self._collect(dest)

    def drain(self) -> None:
        """Wait for every call in flight (raising the first failure)."""
        for dest, q in enumerate(self.queues):
            while q:
                self._collect(dest)


__all__ = ["Channel", "Outbox", "RayChannel", "compact"]
