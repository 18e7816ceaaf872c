"""A shard's epoch thread: the end of an epoch off the input path (issue 15, item 2).

Contract: the :class:`EpochWorker` mixin of :class:`~raykv.runtime.shard.ShardWorker`.
When barrier ``e`` is aligned and the operator can detach its epoch (``logic.detach()``,
e.g. ``Aggregate``: the epoch's buffered partials are moved aside in O(1)), the shard
hands the rest of the epoch to one background thread: fold into the engine, output,
forwarding and ``barrier(e)`` downstream, seal, links, upload queue
(``ShardWorker._complete``). The data thread goes on at once with epoch ``e + 1``'s
batches, which the operator only buffers.

Invariants (why the state at every barrier is the same as without the thread):

* At most one epoch is in the thread. The data thread waits for it (:meth:`_fence`)
  before it completes the next epoch, before any call that touches the engine or the
  downstream wiring (``rebalance``, ``set_downstream_partitioning``, ``reset``,
  ``close``), and whenever the operator must touch the engine itself mid-epoch (its
  buffer is full, or it stores its first metadata): the logic's ``fence`` hook.
* Output and barriers leave from the epoch thread only, in epoch order; the data thread
  sends nothing downstream. Acks are queued in epoch order likewise.
* A failure in the thread poisons the shard (as any failure does); the next data call,
  or the fence, raises it.

Memory: one detached epoch plus the current epoch's buffer (each bounded by the
operator's ``max_buffered_bytes``). Cost: a thread start per epoch (~0.1 ms); the fold
and seal run beside the next epoch's combining, but both threads hold the process's
GIL for their Python parts. Measured on the 2-core machine (``Pipeline.overlap_epochs``,
off by default) it was slower than the data thread alone: docs/runtime.md,
"Performance".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any


class EpochWorker:
    """Runs one epoch's completion at a time on a background thread (module docstring)."""

    if TYPE_CHECKING:
        name: str
        logic: Any

        def _contextualize(self, err: BaseException, epoch: int | None = None
                           ) -> BaseException: ...
        def _fail(self, err: BaseException) -> None: ...
        def _check_ok(self) -> None: ...

    _epoch_job: threading.Thread | None = None
    _epoch_cpu: float = 0.0

    def _overlaps(self, final: bool) -> bool:
        """Whether this epoch's end runs on the epoch thread (not the final epoch)."""
        spec = getattr(self, "spec", None)
        return (not final and getattr(spec, "overlap_epochs", False)
                and callable(getattr(self.logic, "detach", None)))

    def _submit_epoch(self, epoch: int, complete: Callable[[], None]) -> None:
        """Run ``complete`` (the end of ``epoch``) on the epoch thread; return at once."""
        self._fence()

        def run() -> None:
            cpu = time.thread_time()
            try:
                complete()
            except BaseException as err:
                self._fail(self._contextualize(err, epoch))
            finally:
                self._epoch_cpu += time.thread_time() - cpu

        job = threading.Thread(target=run, name=f"raykv-epoch-{self.name}-{epoch}",
                               daemon=True)
        self._epoch_job = job
        job.start()

    def _fence(self, *, check: bool = True) -> None:
        """Wait until no epoch is in the thread; then raise its failure, if any (``check``)."""
        job, self._epoch_job = self._epoch_job, None
        if job is not None:
            job.join()
        if check:
            self._check_ok()

    def _wire_fence(self, logic: Any) -> None:
        """Give an operator that detaches epochs the fence it calls before engine work."""
        if callable(getattr(logic, "detach", None)):
            logic.fence = self._fence


__all__ = ["EpochWorker"]
