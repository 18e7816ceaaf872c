"""The driver's control loop of one attempt: when epochs end, barriers, pauses, the end.

Contract: :meth:`Feeder.feed` runs while the reader actors
(:mod:`raykv.runtime.reader_actor`) read the source and send its rows to the first-stage
shards; the driver sees no record. It watches the readers (``status``: ended, stopped by
the source, batches sent in the epoch) and ends an epoch with :meth:`Feeder.barrier`:

* every ``epoch_every_batches`` batches *per reader* (each reader holds after that many
  batches until the barrier comes, so epochs do not depend on timing), or every
  ``checkpoint_interval`` seconds of ``clock`` when some reader sent data in the epoch
  and fewer than ``max_pending_epochs`` epochs wait for their commit;
* ``barrier(e, final=True)`` once every reader's splits ended (the shards ``finish``);
  a plain barrier when the source raised ``StopSource`` or ``Pipeline.stop()`` was
  called (the run is paused, ``run(resume=True)`` goes on).

A barrier asks every reader for ``barrier(e)``; each sends it into all its channels after
its current batch and answers with its splits' offsets (a
:class:`~raykv.runtime.reader.Cut`); the union of those offsets and the rows of the
epoch go to the committer with every shard's ``wait_uploaded(e)``. When a rebalance is
planned (decided by the commit thread), the next barrier pauses the readers behind it
(their calls in flight drained), the rebalancer moves the key groups, and the readers
resume with the first stage's new assignment.

The feeder is a part of the :class:`~raykv.runtime.coordinator.Coordinator` and holds a
reference to it. It reads ``p`` (the pipeline), ``clock``, ``_stages``, ``_readers``,
``_reader_stages``,
``_handles``, ``_committer`` and ``rebalancer``; it writes ``_next_epoch`` (one up per
barrier) and emits ``"barrier"`` events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray

from raykv.runtime.committer import Committer, PendingEpoch
from raykv.runtime.failures import shard_get
from raykv.runtime.interrupts import raise_if_interrupted
from raykv.runtime.reader import Cut, Status
from raykv.sources import Offset

if TYPE_CHECKING:
    from raykv.runtime.coordinator import Coordinator

POLL = 0.1
"""Longest wait (s) for the readers' status between two looks at the clock and stop()."""


class Feeder:
    """The driver's control loop and barriers (see the module docstring)."""

    def __init__(self, coord: Coordinator) -> None:
        self._coord = coord
        self.offsets: dict[str, Offset] = {}
        self.event_maxes: dict[str, int] = {}

    def feed(self, committer: Committer, run_refs: list[Any], *, initial_barrier: bool) -> bool:
        """Drive one attempt until the input ends (``False``) or the run stops (``True``).

        ``initial_barrier``: the readers start paused and an epoch without input is
        committed first (a rescaled or rolled-back layout becomes durable before any new
        input); they resume once it is. A rollback's first commit tells the sink which
        epochs are abandoned, which drops staged output of later epochs: input that ran
        ahead of it would lose its output. Raises the first failure of a reader, a shard
        or the commit thread.
        """
        c = self._coord
        p = c.p
        readers = list(c._readers.values())
        every = p.epoch_every_batches
        interval = p.checkpoint_interval if every is None else None
        self.offsets = {}
        self.event_maxes = {}  # every cut carries all its reader's (restored ones too)
        if initial_barrier:  # durable before any input: the readers wait behind it
            self.barrier(final=False, pause=True)
            committer.drain()
            shard_get([r.resume.remote() for r in readers])
        idle = [False] * len(readers)
        sent = [0] * len(readers)  # batches each reader sent in the epoch (last known)
        last = c.clock()
        while True:
            raise_if_interrupted(c.interrupted)
            committer.check()
            _raise_failed(run_refs)
            if p.stop_requested:
                self.barrier(final=False)
                return True
            timeout = POLL if interval is None else max(0.0, min(POLL, last + interval
                                                                 - c.clock()))
            active = [i for i in range(len(readers)) if not idle[i]]
            statuses: list[Status] = shard_get(
                [readers[i].status.remote(timeout) for i in active])
            for i, st in zip(active, statuses, strict=True):
                idle[i] = st.idle
                sent[i] = st.batches
                if st.failed:
                    _raise_failed(run_refs, wait=True)
                if st.stopped:
                    self.barrier(final=False)
                    return True
            if all(idle):
                self.barrier(final=True)
                return False
            if every is not None:
                ready = all(idle[i] or sent[i] >= every for i in range(len(readers)))
                if ready:
                    committer.wait_below(p.max_pending_epochs)
                    self._end_epoch(committer)
                    sent = [0] * len(readers)
            elif (interval is not None and any(sent) and c.clock() - last >= interval
                  and committer.pending < p.max_pending_epochs):
                self._end_epoch(committer)
                sent = [0] * len(readers)
                last = c.clock()

    def _end_epoch(self, committer: Committer) -> None:
        """A barrier; with a rebalance planned, the readers pause behind it for the moves."""
        c = self._coord
        planned = c.rebalancer.planned
        self.barrier(final=False, pause=planned)
        if planned:
            c.rebalancer.apply(committer)
            shard_get([r.resume.remote(c._stages[c._reader_stages[name]].partitioning)
                       for name, r in c._readers.items()])

    def barrier(self, *, final: bool, pause: bool = False) -> list[Cut]:
        """End the current epoch at every reader (``finish`` when ``final``); submit it.

        ``pause``: the readers wait for ``resume`` after it (rebalancing).
        """
        c = self._coord
        epoch = c._next_epoch
        c._next_epoch += 1
        cuts: list[Cut] = shard_get(
            [r.barrier.remote(epoch, final, pause) for r in c._readers.values()])
        for cut in cuts:
            self.offsets.update(cut.offsets)
            self.event_maxes.update(cut.event_maxes)
        refs = {name: h.wait_uploaded.remote(epoch, c._attempt_current)
                for name, h in c._handles.items()}
        assert c._committer is not None
        c._committer.submit(PendingEpoch(epoch, refs, dict(self.offsets),
                                         sum(cut.rows for cut in cuts), final,
                                         dict(self.event_maxes)))
        c._emit("barrier", epoch, final=final)
        return cuts


def _raise_failed(run_refs: list[Any], *, wait: bool = False) -> None:
    """Raise the failure of a reader whose ``run`` ended (``wait``: one is ending)."""
    if not run_refs:
        return
    ready, _ = (ray.wait(run_refs, num_returns=1, timeout=5.0) if wait
                else ray.wait(run_refs, num_returns=len(run_refs), timeout=0))
    for ref in ready:
        shard_get(ref)


__all__ = ["POLL", "Feeder"]
