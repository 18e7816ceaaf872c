"""Source reader actors: the data plane's entry (DESIGN: splits -> readers -> shards).

Contract: the coordinator plans the readers of an attempt with :func:`plan_readers` (the
source's splits dealt to ``source_parallelism`` readers, each split with its committed
offset) and starts one :data:`ReaderActor` per :class:`ReaderSpec`
(:func:`create_readers`). Each actor runs a :class:`~raykv.runtime.reader.SourceReaderLoop`
over Ray handles of the first-stage shards: it reads its splits, hash-splits each batch
by the first stage's key groups and sends the parts straight to the shards (at most
``max_inflight`` calls in flight per shard). The driver never sees a record.

Methods (the actor's default group runs the loop, ``"control"`` answers the driver)::

    run()                                 # default group: returns at the end (or raises)
    reset(spec, shards)                   # default group: a new attempt (local recovery)
    stop()                                # control: run returns after the current batch
    barrier(epoch, final, pause) -> Cut   # control: barrier after the current batch
    status(timeout) -> Status             # control: ended / stopped / epoch batches
    resume(partitioning)  ping() -> pid   # control

A failure of the source is raised from ``run`` with the split named (and marked as a
failure of the source: not retried, see ``raykv.runtime.failures.classify``); a failure
of a shard call is raised as it came (a dead shard is recovered from).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import ray

from raykv.errors import add_context
from raykv.metrics import process_cpu_seconds
from raykv.partitioning import Partitioning
from raykv.runtime.failures import describe_shard_failure
from raykv.runtime.layout import placements
from raykv.runtime.outbox import RayChannel
from raykv.runtime.reader import Cut, SourceReaderLoop, SplitCursor, Status, assign_splits
from raykv.sources import Offset, Source, Split
from raykv.sources.base import WHOLE
from raykv.watermarks import ReaderClock, Watermark

IDLE_SLEEP = 0.005
"""Seconds a reader sleeps when an unbounded source has nothing right now."""


@dataclass(frozen=True)
class ReaderSpec:
    """Everything a reader actor needs besides the source and the shards (picklable).

    Attributes:
        name: ``reader-<i>of<n>`` (``reader-<source>-<i>of<n>`` with several sources; for
            events, drills and errors).
        index: the reader's input id at the shards it feeds.
        splits: ``(split id, offset)`` of every split it reads, in source order.
        key: the key column of the input it feeds.
        partitioning: the key-group assignment of the stage it feeds.
        max_inflight: calls in flight per shard before waiting for the oldest.
        inflight_seconds: ``Pipeline.inflight_seconds`` (the outbox's target).
        epoch_batches: ``Pipeline.epoch_every_batches`` (``None``: time-based epochs).
        paused: read nothing until the first barrier (a changed layout is made durable
            before new input).
        faults: ``raykv.testing.Faults`` or ``None`` (crash point ``"read"``).
        attempt: the run attempt.
        first_epoch: the epoch of the attempt's first barrier.
        watermark: ``Pipeline.watermark`` (``None``: barriers carry no watermark).
        event_maxes: the largest event time of each of its splits at the committed epoch.
        source_name: the name of the source it reads.
        prefix: what qualifies its split ids in the epoch's offsets (``"<source>:"`` with
            several sources, else ``""``).
        stage: the index of the stage it feeds.
    """

    name: str
    index: int
    splits: tuple[tuple[str, Offset], ...]
    key: str
    partitioning: Partitioning
    max_inflight: int = 4
    inflight_seconds: float | None = None
    epoch_batches: int | None = None
    paused: bool = False
    faults: Any = None
    attempt: int = 0
    first_epoch: int | None = None
    watermark: Watermark | None = None
    event_maxes: tuple[tuple[str, int], ...] = ()
    source_name: str = "source"
    prefix: str = ""
    stage: int = 0


def plan_readers(source: Source, offsets: dict[str, Offset] | None, parallelism: int,
                 event_maxes: dict[str, int] | None = None, *, name: str = "reader",
                 first_index: int = 0, **common: Any) -> list[ReaderSpec]:
    """The readers of an attempt: ``source``'s splits, each at its offset in ``offsets``.

    ``offsets`` are the committed epoch's (``None``: a new run). A checkpoint whose only
    split is :data:`~raykv.sources.base.WHOLE` while the source now lists its own
    splits was written before splits existed: the source is read as one stream from that
    offset by one reader. At most one reader per split. ``event_maxes``: each split's
    largest event time at the committed epoch. ``name``: the readers' name prefix;
    ``first_index``: the first reader's input id. ``common``: the other
    :class:`ReaderSpec` fields.

    Raises:
        ValueError: ``offsets`` name a split the source does not list (the checkpoint
            was taken over other input).
    """
    splits = source.splits()
    if offsets is not None and set(offsets) == {WHOLE} and WHOLE not in {s.id for s in splits}:
        splits = [Split(WHOLE)]
    known = {s.id for s in splits}
    stray = sorted(set(offsets or {}) - known)
    if stray:
        listed = ", ".join(repr(s) for s in sorted(known)[:5])
        msg = (
            f"the checkpoint holds offsets of splits {stray[:5]} that "
            f"{type(source).__name__} does not list now (it lists {listed}"
            f"{', ...' if len(known) > 5 else ''}); the checkpoint was taken over other "
            "input: restore that input, or start a new run on an empty checkpoint"
        )
        raise ValueError(msg)
    groups = [g for g in assign_splits(splits, max(1, min(parallelism, len(splits)))) if g]
    groups = groups or [[]]  # no splits: one reader that ends at once
    n = len(groups)
    return [
        ReaderSpec(name=f"{name}-{i}of{n}", index=first_index + i,
                   splits=tuple((s.id, (offsets or {}).get(s.id)) for s in group),
                   event_maxes=tuple((s.id, (event_maxes or {})[s.id]) for s in group
                                     if s.id in (event_maxes or {})), **common)
        for i, group in enumerate(groups)
    ]


class ReaderWorker:
    """One source reader (see the module docstring); :data:`ReaderActor` is its actor.

    Args:
        spec: what to read and where to send it.
        source: the source config.
        shards: handles of the first-stage shards, by index.
    """

    def __init__(self, spec: ReaderSpec, source: Source, shards: Sequence[Any]) -> None:
        self._source = source
        self.reset(spec, shards)

    def reset(self, spec: ReaderSpec, shards: Sequence[Any], source: Source | None = None
              ) -> None:
        """Read ``spec``'s splits from their offsets into ``shards`` (a new attempt).

        Local recovery calls it on a surviving reader after :meth:`stop` and the end of
        its ``run``: the same process reads on, with no actor start. ``source``: the
        source the role reads (a standby may take the role of a reader of another
        source). Cost: opening the splits' readers lazily, as a new actor would.
        """
        if source is not None:
            self._source = source
        self.spec = spec
        self._reads = 0
        self.loop = SourceReaderLoop(
            SplitCursor(self._source, spec.splits), spec.key, spec.partitioning,
            RayChannel(shards, spec.attempt), spec.index, spec.max_inflight,
            inflight_seconds=spec.inflight_seconds,
            idle=lambda: time.sleep(IDLE_SLEEP), epoch_batches=spec.epoch_batches,
            on_batch=self._fault, paused=spec.paused, first_epoch=spec.first_epoch,
            clock=(ReaderClock(spec.watermark, dict(spec.event_maxes))
                   if spec.watermark is not None else None))

    def run(self) -> dict[str, int]:
        """Run the loop to its end (final barrier sent, or stopped); rows and batches sent.

        Raises the loop's failure, described for the driver (reader, split, epoch).
        """
        try:
            self.loop.run()
        except BaseException as err:
            raise self._describe(err) from None
        return {"rows": self.loop.rows, "batches": self.loop.batches}

    def _describe(self, err: BaseException) -> BaseException:
        name = self.spec.name
        return describe_shard_failure(
            err, context=f"source {type(self._source).__name__}, {name}",
            key_column=self.spec.key, shard=name,
            add_context=lambda e: add_context(e, shard=name))

    @ray.method(concurrency_group="control")
    def barrier(self, epoch: int, final: bool = False, pause: bool = False) -> Cut:
        """``barrier(epoch)`` (``finish``) into every channel after the current batch.

        The cut's split ids carry the spec's ``prefix`` (the pipeline-wide split ids).
        """
        cut = self.loop.request_barrier(epoch, final=final, pause=pause)
        pre = self.spec.prefix
        if not pre:
            return cut
        return replace(cut, offsets={pre + k: v for k, v in cut.offsets.items()},
                       event_maxes={pre + k: v for k, v in cut.event_maxes.items()})

    @ray.method(concurrency_group="control")
    def status(self, timeout: float = 0.0) -> Status:
        """:meth:`SourceReaderLoop.status` (waits up to ``timeout`` s for it to be ready)."""
        return self.loop.status(timeout)

    @ray.method(concurrency_group="control")
    def stop(self) -> None:
        """Make ``run`` return after the current batch (local recovery, before ``reset``)."""
        self.loop.stop()

    @ray.method(concurrency_group="control")
    def resume(self, partitioning: Partitioning | None = None) -> None:
        """End a pause (after a rebalance: route by the new ``partitioning``)."""
        self.loop.resume(partitioning)

    @ray.method(concurrency_group="control")
    def stats(self) -> dict[str, Any]:
        """Rows and batches sent, the splits, pid, node and the process's CPU seconds."""
        return {
            "rows": self.loop.rows, "batches": self.loop.batches,
            "splits": [s for s, _ in self.spec.splits], "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "process_cpu_seconds": process_cpu_seconds(),
        }

    @ray.method(concurrency_group="control")
    def ping(self) -> int:
        """Return the actor's pid (liveness probe; drills kill it)."""
        return os.getpid()

    def _fault(self) -> None:
        faults = self.spec.faults
        if faults is None or faults.crash_at is None:
            return
        prefix, at, n = faults.crash_at
        if at != "read" or not self.spec.name.startswith(prefix):
            return
        if self.spec.attempt not in faults.crash_attempts:
            return
        self._reads += 1
        if self._reads == n:
            os._exit(1)


# Ray's stubs do not type ``ray.remote(**options)`` applied to a class.
ReaderActor = ray.remote(concurrency_groups={"control": 2}, max_restarts=0)(  # type: ignore[call-overload]
    ReaderWorker)
"""The Ray actor class of :class:`ReaderWorker` (default group: the loop; ``"control"``: 2)."""


def create_readers(specs: list[ReaderSpec], source: Source, shards: list[Any],
                   actor_options: dict[str, Any] | None, first_slot: int = 0,
                   kept: dict[str, Any] | None = None) -> tuple[list[Any], list[Any]]:
    """One reader actor per spec, spread over the nodes like the shards.

    Readers take the placement slots after the ``first_slot`` the shards took, so that
    the round-robin over the nodes goes on where the shards' ended. The source config is
    put in the object store once and shared by every new reader. A reader named in
    ``kept`` (a survivor of local recovery, its ``run`` ended) is ``reset`` to its spec;
    the caller waits for ``resets`` (the refs of those calls) before it asks anything
    of the readers, so that no control call reaches the loop of the failed attempt.

    Returns:
        (the handles by spec, the refs of the ``reset`` calls)
    """
    options: dict[str, Any] = {"num_cpus": 0}
    options.update(actor_options or {})
    kept = kept or {}
    placement = placements(first_slot + len(specs), options)[first_slot:]
    source_ref = ray.put(source)
    out, resets = [], []
    for i, spec in enumerate(specs):
        old = kept.get(spec.name)
        if old is not None:
            resets.append(old.reset.remote(spec, shards, source_ref))
            out.append(old)
        else:
            out.append(ReaderActor.options(**options, **placement[i]).remote(
                spec, source_ref, shards))
    return out, resets


__all__ = ["IDLE_SLEEP", "ReaderActor", "ReaderSpec", "ReaderWorker", "create_readers",
           "plan_readers"]
