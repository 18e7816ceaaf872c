"""The drill's kill plans and the killer that strikes at chosen moments."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raykv.tools.drill.config import DrillConfig
from raykv.tools.drill.report import KillRecord

if TYPE_CHECKING:
    from ray.actor import ActorHandle

    from raykv.pipeline import ProgressEvent

log = logging.getLogger("raykv.drill")


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
                 first_number: int, final_epoch: int, rows_at: Callable[[int | None], int],
                 targets: tuple[str, ...] = ("shard", "reader")) -> None:
        self.plan = plan
        self.rng = rng
        self.round = round_no
        self.number = first_number
        self.final_epoch = final_epoch
        self.rows_at = rows_at
        self.targets = targets
        self.last_barrier: int | None = None
        self.records: list[KillRecord] = []
        self.lock = threading.RLock()
        self.done = False
        self.waiting: KillRecord | None = None  # fired, failure not seen yet
        self.recovering: KillRecord | None = None  # failure seen, new shards not ready
        self.committing: KillRecord | None = None  # ready again, no commit since
        self.skipped = 0
        self.t0 = time.perf_counter()

    def __call__(self, ev: ProgressEvent) -> None:
        """The pipeline's ``on_progress``: arm, fire and record kills."""
        with self.lock:
            self._on_event(ev)

    def _on_event(self, ev: ProgressEvent) -> None:
        now = time.perf_counter()
        if ev.kind == "barrier":
            self.last_barrier = ev.epoch
        elif ev.kind == "failure":
            rec = self.waiting
            if rec is not None:
                rec.detect_s = now - rec.killed_at
                rec.failure_pos = self.rows_at(self.last_barrier)
                self.waiting = None
                self.recovering = rec
        elif ev.kind == "started" and self.recovering is not None:
            rec = self.recovering
            rec.restored_from = ev.detail.get("restored_from")
            rec.recovery_s = now - rec.killed_at
            self.committing = rec
            rec.events_replayed = max(0, (rec.failure_pos or 0)
                                      - self.rows_at(rec.restored_from))
            self.recovering = None
        elif ev.kind == "committed":
            rec = self.committing
            if rec is not None:
                rec.commit_s = now - rec.killed_at
                self.committing = None
            if ev.detail.get("final"):
                self.done = True
        targets = {name: h for name, h in ev.actors.items()
                   if ("reader" if name.startswith("reader-") else "shard") in self.targets}
        if self.done or self.waiting is not None or not self.plan or not targets:
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
        name = self.rng.choice(sorted(targets))
        handle = targets[name]
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
        try:  # SIGKILL of the actor's process, as a crash would do
            ref: Any = handle.ping.remote()
            os.kill(int(ray.get(ref, timeout=5)), signal.SIGKILL)
        except Exception as err:  # gone already (the kill still "struck"), or remote
            log.debug("drill: SIGKILL of %s failed (%s); ray.kill instead", rec.shard, err)
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)

    def finish(self) -> tuple[list[KillRecord], list[KillRecord]]:
        """Split fired kills into recovered and undetected ones."""
        with self.lock:
            self.done = True
            recovered = [rec for rec in self.records if rec.detect_s is not None]
            undetected = [rec for rec in self.records if rec.detect_s is None]
            return recovered, undetected
