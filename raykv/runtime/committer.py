"""The commit thread: pending epochs collect their shards' acks and are committed in order.

Contract: the feed loop submits a :class:`PendingEpoch` (:meth:`Committer.submit`) right
after it sent ``barrier(e)`` (the refs of every shard's ``wait_uploaded(e)``); the thread waits
for all of them (raising a shard's failure as soon as one is known) and calls the
coordinator's ``commit(pending, acks)`` for each epoch, in submission order, one at a
time. The first failure stops the thread; the feed loop sees it through :meth:`check`,
:meth:`wait_below` or :meth:`drain` (wrapped: ``ShardFailure`` / ``HookFailure`` as
raised, anything else as ``CommitFailure``). Pending epochs never outlive an attempt:
the coordinator stops the committer on teardown (:meth:`Committer.stop`) and builds a new
one for the next attempt.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from raykv.runtime.failures import (
    CommitFailure,
    HookFailure,
    ShardFailure,
    call_outcomes,
    shard_get,
)
from raykv.runtime.specs import Ack

KILL_WAIT = 15.0


@dataclass
class PendingEpoch:
    """An epoch whose barrier was sent and that is not committed yet.

    Attributes:
        epoch: the epoch.
        refs: per shard name, the ref of its ``wait_uploaded(epoch)``.
        offset: the source offset at the barrier (a JSON-able copy).
        rows: source rows of the epoch.
        final: the last epoch of a finished input (``finish`` instead of ``barrier``).
        event_maxes: each split's largest event time at the barrier (with a watermark).
    """

    epoch: int
    refs: dict[str, Any]
    offset: Any
    rows: int
    final: bool
    event_maxes: dict[str, int] = field(default_factory=dict)


class Committer:
    """The commit thread of one run attempt (see the module docstring).

    Args:
        commit: commits one fully acknowledged epoch (runs in the thread).
    """

    def __init__(self, commit: Callable[[PendingEpoch, list[Ack]], None]) -> None:
        self._commit = commit
        self._queue: deque[PendingEpoch] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="raykv-commit", daemon=True)
        self._thread.start()

    def submit(self, pending: PendingEpoch) -> None:
        """Queue an epoch whose barrier was sent."""
        with self._cond:
            self._queue.append(pending)
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Number of submitted epochs not committed yet."""
        with self._cond:
            return len(self._queue)

    def check(self) -> None:
        """Raise the commit thread's failure, if any."""
        if self.error is not None:
            raise self.error

    def wait_below(self, limit: int) -> None:
        """Block until fewer than ``limit`` epochs are pending (or raise a failure)."""
        with self._cond:
            while len(self._queue) >= limit and self.error is None:
                self._cond.wait(0.5)
        self.check()

    def drain(self) -> None:
        """Block until every submitted epoch is committed (or raise a failure)."""
        self.wait_below(1)

    def stop(self) -> None:
        """Stop the thread (an epoch being committed finishes first, up to ``KILL_WAIT``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=KILL_WAIT)

    def release(self, timeout: float = 0.5) -> None:
        """After :meth:`stop`: collect the acks that will never be committed (no wait).

        Their errors (a quiesced survivor fails its waiters) are read and dropped, so
        that Ray does not report them as unhandled: on a daemon thread, at most
        ``timeout`` seconds, off the recovery path (it waited there for survivors' acks
        that were still on their way).
        """
        refs = dict(enumerate(r for pending in self._queue for r in pending.refs.values()))
        if refs:
            threading.Thread(target=call_outcomes, args=(refs, time.monotonic() + timeout),
                             daemon=True, name="raykv-release").start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                pending = self._queue[0]
            try:
                acks = self._wait_acks(pending)
                if acks is None:
                    return
                self._commit(pending, acks)
            except BaseException as err:
                if not isinstance(err, ShardFailure | HookFailure | CommitFailure):
                    err = CommitFailure(err)
                with self._cond:
                    self.error = err
                    self._cond.notify_all()
                return
            with self._cond:
                self._queue.popleft()
                self._cond.notify_all()

    def _wait_acks(self, pending: PendingEpoch) -> list[Ack] | None:
        names = list(pending.refs)
        waiting = [pending.refs[n] for n in names]
        while waiting:
            if self._stopping:
                return None
            # the first ref to end returns at once: a dead shard's failure is seen then
            ready, waiting = ray.wait(waiting, num_returns=1, timeout=0.2)
            if ready:
                shard_get(ready)  # raise a failure as soon as it is known
        acks: list[Ack] = shard_get([pending.refs[n] for n in names])
        return acks


__all__ = ["KILL_WAIT", "Committer", "PendingEpoch"]
