"""The drill's source tracking, kill plans and the killer that strikes at chosen moments."""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from raykv.sources import Offset, Source, SourceReader
from raykv.tools.demo import ZipfEvents
from raykv.tools.drill.config import DrillConfig
from raykv.tools.drill.report import KillRecord

if TYPE_CHECKING:
    from ray.actor import ActorHandle

    from raykv.pipeline import ProgressEvent

log = logging.getLogger("raykv.drill")


# ---------------------------------------------------------------------------- the source


class Tracker:
    """Driver-side record of where a drill's source readers were opened and are now."""

    def __init__(self, batch_size: int, events: int) -> None:
        self.batch_size = batch_size
        self.events = events
        self.opens: list[int] = []  # row position of each open, in order
        self.pos = 0  # row position of the current reader

    def rows(self, offset: Offset | None) -> int:
        """Rows before batch ``offset``."""
        return min(int(offset or 0) * self.batch_size, self.events)


class TrackedSource(Source):
    """A generator source over a :class:`ZipfEvents` stream that tracks its readers.

    It records (in the driver) where each reader was opened and how far it read, so a
    drill can count the events replayed after each recovery.

    Offset: the next batch number, as for ``GeneratorSource``.
    """

    def __init__(self, gen: ZipfEvents, tracker: Tracker) -> None:
        from raykv.sources import GeneratorSource

        self.inner = GeneratorSource(gen, limit=gen.num_batches)
        self.tracker = tracker

    def open(self, offset: Offset | None = None) -> SourceReader:
        """Open the stream at batch ``offset`` and record the row position."""
        reader = self.inner.open(offset)
        start = self.tracker.rows(offset)
        self.tracker.opens.append(start)
        self.tracker.pos = start
        return _TrackedReader(reader, self.tracker)

    def describe(self) -> dict[str, Any]:
        """Type and the generator's parameters."""
        return {"type": "TrackedSource", **self.inner.describe()}


class _TrackedReader(SourceReader):
    def __init__(self, reader: SourceReader, tracker: Tracker) -> None:
        self._reader = reader
        self._tracker = tracker

    def read(self) -> pa.RecordBatch | None:
        batch = self._reader.read()
        if batch is not None:
            self._tracker.pos += batch.num_rows
        return batch

    @property
    def offset(self) -> Offset:
        return self._reader.offset

    def close(self) -> None:
        self._reader.close()


# ---------------------------------------------------------------------------- the killer


@dataclass
class _Planned:
    moment: str
    skip: int
    delay: float


def plan_kills(cfg: DrillConfig, count: int, rng: random.Random) -> list[_Planned]:
    """Choose ``count`` kill moments: every allowed moment early on, then at random.

    ``recovery`` never comes first nor right after another ``recovery`` (it needs a
    recovery in progress to strike).
    """
    out: list[_Planned] = []
    unused = list(cfg.moments)
    for _ in range(count):
        allowed = [m for m in cfg.moments
                   if m != "recovery" or (out and out[-1].moment != "recovery")]
        fresh = [m for m in unused if m in allowed]
        moment = rng.choice(fresh or allowed)
        if moment in unused:
            unused.remove(moment)
        if moment == "mid-batch":
            delay = rng.uniform(0.02, 0.15)
        elif moment == "upload":
            delay = rng.uniform(0.03, max(0.05, cfg.upload_delay * 0.6))
        elif moment == "recovery":
            delay = rng.uniform(0.0, max(0.02, cfg.restore_delay * 0.6))
        else:
            delay = 0.0
        skip = 0 if moment == "recovery" else rng.randint(0, 1)
        out.append(_Planned(moment, skip, delay))
    return out


class Killer:
    """``on_progress`` hook of a drill round: fires the planned kills one at a time."""

    _TRIGGER = {"mid-batch": "committed", "upload": "barrier", "acked": "acked",
                "recovery": "starting"}

    def __init__(self, plan: list[_Planned], rng: random.Random, round_no: int,
                 first_number: int, final_epoch: int, tracker: Tracker) -> None:
        self.plan = plan
        self.rng = rng
        self.round = round_no
        self.number = first_number
        self.final_epoch = final_epoch
        self.tracker = tracker
        self.records: list[KillRecord] = []
        self.lock = threading.RLock()
        self.done = False
        self.waiting: KillRecord | None = None  # fired, failure not seen yet
        self.recovering: KillRecord | None = None  # failure seen, new shards not ready
        self.skipped = 0
        self.opens_at_start = 0
        self.t0 = time.perf_counter()

    def __call__(self, ev: ProgressEvent) -> None:
        """The pipeline's ``on_progress``: arm, fire and record kills."""
        with self.lock:
            self._on_event(ev)

    def _on_event(self, ev: ProgressEvent) -> None:
        now = time.perf_counter()
        if ev.kind == "starting":
            self.opens_at_start = len(self.tracker.opens)
        elif ev.kind == "failure":
            rec = self.waiting
            if rec is not None:
                rec.detect_s = now - rec.killed_at
                opened = len(self.tracker.opens) > self.opens_at_start
                rec.failure_pos = self.tracker.pos if opened else None
                rec.next_open = len(self.tracker.opens)
                self.waiting = None
                self.recovering = rec
        elif ev.kind == "started" and self.recovering is not None:
            rec = self.recovering
            rec.restored_from = ev.detail.get("restored_from")
            rec.recovery_s = now - rec.killed_at
            self.recovering = None
        elif ev.kind == "committed" and ev.detail.get("final"):
            self.done = True
        if self.done or self.waiting is not None or not self.plan or not ev.shards:
            return
        nxt = self.plan[0]
        if nxt.moment == "recovery":
            if self.recovering is None or ev.kind != "starting":
                return
        elif self.recovering is not None or ev.kind != self._TRIGGER[nxt.moment]:
            return
        if ev.epoch is not None and ev.epoch >= self.final_epoch:
            return
        if ev.kind == "barrier" and ev.detail.get("final"):
            return
        if self.skipped < nxt.skip:
            self.skipped += 1
            return
        if nxt.moment == "recovery" and self.recovering is not None:
            self.recovering.interrupted = True
            self.recovering = None
        self.plan.pop(0)
        self.skipped = 0
        name = self.rng.choice(sorted(ev.shards))
        handle = ev.shards[name]
        if nxt.moment == "recovery":
            when = f"{nxt.delay:.2f} s into restore"
            if ev.detail.get("attempt") is not None:
                when += f" #{ev.detail['attempt']}"
        elif nxt.delay:
            when = f"{nxt.delay:.2f} s after {ev.kind} {ev.epoch}"
        else:
            when = f"acked {ev.epoch}, before commit"
        rec = KillRecord(number=self.number, round=self.round, moment=nxt.moment, when=when,
                         shard=name, epoch=ev.epoch)
        self.number += 1
        self.records.append(rec)
        self.waiting = rec
        if nxt.delay:
            timer = threading.Timer(nxt.delay, self._kill, [rec, handle])
            timer.daemon = True
            timer.start()
        else:
            self._kill(rec, handle)

    def _kill(self, rec: KillRecord, handle: ActorHandle[Any]) -> None:
        import ray

        with self.lock:
            if self.done:
                return
            rec.killed_at = time.perf_counter()
        try:
            ray.kill(handle, no_restart=True)
        except Exception as err:  # the actor is already gone: the kill still "struck"
            log.debug("drill: ray.kill(%s) failed: %s", rec.shard, err)

    def finish(self) -> tuple[list[KillRecord], list[KillRecord]]:
        """Split fired kills into recovered and undetected ones; fill events replayed."""
        with self.lock:
            self.done = True
            recovered, undetected = [], []
            for rec in self.records:
                if rec.detect_s is None:
                    undetected.append(rec)
                    continue
                if (rec.failure_pos is not None and rec.next_open is not None
                        and rec.next_open < len(self.tracker.opens)):
                    rec.events_replayed = max(0, rec.failure_pos
                                              - self.tracker.opens[rec.next_open])
                recovered.append(rec)
            return recovered, undetected
