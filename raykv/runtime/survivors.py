"""Local recovery: the actors of a failed attempt that live on into the next one.

Contract: after a recoverable failure the coordinator calls :func:`keep_survivors` with
the attempt's readers, shards and the readers' ``run`` refs. Every reader is asked to
``stop`` and every shard to ``quiesce`` (both served outside the data thread); an actor
that answers, and for a reader whose ``run`` has also ended, is a *survivor*. Every
other actor is killed. The next attempt then ``reset`` the survivors in place (a shard
rolls its engine back to the committed epoch from its own files, a reader seeks its
splits) and starts actors only for the dead (``create_shards(..., kept=)``,
``create_readers(..., kept=)``). Calls still queued at a survivor from the failed
attempt carry that attempt's number and are dropped (``ShardWorker._stale``).

Why it is exact: a survivor's state after ``reset`` is the committed epoch's files,
exactly what a new actor would restore (``restore_shard`` reuses the local files it
verifies and downloads the rest); nothing of the failed attempt reaches the next one
(quiesced shards drop data calls, their pending uploads are abandoned before the sink
discards uncommitted output, old calls are fenced by attempt number). docs/recovery.md,
"Local recovery".

Cost: one round trip to every actor plus the end of running uploads and reads (at most
``QUIESCE_WAIT`` s), instead of starting every actor again (1.4-4 s on the 2-core
machine).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from raykv.runtime.actors import kill_shards
from raykv.runtime.failures import call_outcomes

log = logging.getLogger("raykv")

STANDBY_CHECK_WAIT = 0.1
"""Longest wait (s) for the standbys' ``ping`` at a recovery (a dead one fails at once)."""

QUIESCE_WAIT = 10.0
"""Longest wait (s) for the survivors to answer and the readers' ``run`` to end."""


@dataclass
class Survivors:
    """Actors kept for the next attempt, by name (empty: start every actor again)."""

    shards: dict[str, Any] = field(default_factory=dict)
    readers: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.shards) + len(self.readers)

    def take(self, shard_names: list[str], reader_names: list[str],
             standby: Standby) -> Survivors:
        """The actors the next attempt reuses, by the names of its shards and readers.

        Survivors it has no place for are killed; a name no survivor holds (an actor
        died) gets a standby while there is one. The result is a copy: the actors stay
        here too until the coordinator adopts them (clears ``shards`` once they are among
        its handles, ``readers`` likewise), so that a failure in between still finds them
        (``AttemptActors._teardown``).
        """
        unused = [h for n, h in self.shards.items() if n not in shard_names]
        unused += [h for n, h in self.readers.items() if n not in reader_names]
        kill_shards(unused)
        self.shards = {n: h for n, h in self.shards.items() if n in shard_names}
        self.readers = {n: h for n, h in self.readers.items() if n in reader_names}
        for names, kept, spare in ((shard_names, self.shards, standby.shards),
                                   (reader_names, self.readers, standby.readers)):
            for name in names:
                if name not in kept and spare:
                    kept[name] = spare.pop(0)  # the oldest: ready (Standby.check)
        return Survivors(dict(self.shards), dict(self.readers))

    def drop(self) -> None:
        """Kill every survivor and forget them all."""
        doomed = [*self.shards.values(), *self.readers.values()]
        self.shards, self.readers = {}, {}
        kill_shards(doomed)


@dataclass
class Standby:
    """Idle shard and reader actors started ahead of a failure (``Pipeline.standby``).

    A standby is an ordinary actor built from a template spec (the attempt's first shard
    or reader) that never receives ``setup``/``run``: after a failure the coordinator
    ``reset`` makes it a dead actor, which costs no process start. ``fill`` tops
    the pool up in the background (actor creation does not block).
    """

    shards: list[Any] = field(default_factory=list)
    readers: list[Any] = field(default_factory=list)
    _pinged: float = field(default=0.0, repr=False)  # when :meth:`ping` was sent

    def fill(self, n: int, make_shard: Any, make_reader: Any) -> None:
        """Start actors until there are ``n`` of each kind (``make_*()`` starts one)."""
        while len(self.shards) < n:
            actor = make_shard()
            actor.warm.remote()
            self.shards.append(actor)
        while len(self.readers) < n:
            self.readers.append(make_reader())

    def ping(self) -> dict[str, Any]:
        """Ping every standby (no wait); pass the result to :meth:`check`.

        Sent before the survivors are stilled, so that the standbys' answers and the
        survivors' overlap on the recovery path.
        """
        self._pinged = time.monotonic()
        pool = {f"s{i}": h for i, h in enumerate(self.shards)}
        pool.update({f"r{i}": h for i, h in enumerate(self.readers)})
        return {n: (h, h.ping.remote()) for n, h in pool.items()}

    def check(self, pings: dict[str, Any], timeout: float = STANDBY_CHECK_WAIT, *,
              need: tuple[int, int] | None = None) -> None:
        """Forget the standbys whose ``ping`` failed (their process or node died).

        ``pings``: what :meth:`ping` returned. The standbys that answered come first in
        the pool, so that a recovery takes a ready one before one still starting
        (replaced at the last attempt's start: a process start takes 1.4-4 s on the
        2-core machine, longer than the gap between the kills of a drill). One still
        starting (no answer ``timeout`` s after the pings were sent) is kept: if it dies later,
        its ``reset`` fails and the next recovery replaces it. A dead actor's ping
        fails at once, so the wait is short: it is on the recovery path.

        ``need``: (shards, readers) the recovery takes; the wait ends as soon as that
        many of each kind answered (the others keep their place behind them).
        """
        shards, readers = need or (0, 0)

        def enough(out: dict[str, bool]) -> bool:
            answered = [n[0] for n, ok in out.items() if ok]
            return answered.count("s") >= shards and answered.count("r") >= readers

        outcomes = call_outcomes({n: ref for n, (_, ref) in pings.items()},
                             self._pinged + timeout, None if need is None else enough)
        kill_shards([h for n, (h, _) in pings.items() if outcomes.get(n) is False])
        order = sorted((n for n in pings if outcomes.get(n) is not False),
                       key=lambda n: n not in outcomes)  # stable: answered first
        self.shards = [pings[n][0] for n in order if n[0] == "s"]
        self.readers = [pings[n][0] for n in order if n[0] == "r"]

    def drop(self) -> None:
        """Kill every standby."""
        doomed, self.shards, self.readers = [*self.shards, *self.readers], [], []
        kill_shards(doomed)


def keep_survivors(readers: dict[str, Any], shards: dict[str, Any],
                   run_refs: dict[str, Any], timeout: float = QUIESCE_WAIT) -> Survivors:
    """Still the live actors of a failed attempt; kill the others (module docstring).

    ``run_refs``: the ``run`` call of each reader that was started. A reader is kept
    only once its ``run`` has ended (with or without an error: a shard it fed may have
    died); a shard once ``quiesce`` returned.
    """
    deadline = time.monotonic() + timeout
    calls = {n: h.stop.remote() for n, h in readers.items()}
    calls.update({n: h.quiesce.remote() for n, h in shards.items()})
    live = {n for n, ok in call_outcomes(calls, deadline).items() if ok}
    runs = {n: r for n, r in run_refs.items() if n in live}
    if runs:
        ended, _ = ray.wait(list(runs.values()), num_returns=len(runs),
                            timeout=max(0.0, deadline - time.monotonic()))
        live -= {n for n, r in runs.items() if r not in set(ended)}
    kept = Survivors({n: h for n, h in shards.items() if n in live},
                     {n: h for n, h in readers.items() if n in live})
    dead = [h for n, h in [*shards.items(), *readers.items()] if n not in live]
    kill_shards(dead)
    log.info("raykv: local recovery keeps %d of %d actors", len(kept),
             len(shards) + len(readers))
    return kept


__all__ = ["QUIESCE_WAIT", "STANDBY_CHECK_WAIT", "Standby", "Survivors", "keep_survivors"]
