"""Rebalancing at run time: fold load reports, decide moves, carry them out.

Contract: the commit thread calls :meth:`Rebalancer.account_load` for every committed
epoch (it returns the epoch manifest's ``load`` entry and sums key-group loads per
stage) and :meth:`Rebalancer.decide`, which asks the planner (:func:`raykv.rebalance.plan`)
for a new assignment of each stage whose summed loads call for one (cooldown and
``min_rows`` of the pipeline's ``Rebalance`` config). The feed loop calls
:meth:`Rebalancer.apply` right after a barrier when :attr:`Rebalancer.planned`; it moves
the key groups through the checkpoint of the latest committed epoch (docs/recovery.md,
"Rebalance of a stage at epoch F").

The rebalancer is a part of the :class:`~raykv.runtime.coordinator.Coordinator` and holds
a reference to it. It reads ``p.rebalance``, ``_num_key_groups``, ``_actors``,
``driver_io``, ``restorer``, ``_committed`` and ``_local_root()``; under the coordinator's
``_lock`` it writes ``summary.load`` and its own sums and plans; it replaces a stage's
spec in ``_stages`` with the new partitioning, appends to ``summary.rebalances`` and emits
``"rebalanced"`` events.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from raykv import rebalance
from raykv.runtime.committer import Committer
from raykv.runtime.failures import shard_get
from raykv.runtime.layout import holders
from raykv.runtime.metadata import ShardLoad
from raykv.runtime.specs import Ack, RestoreSource, StageSpec

if TYPE_CHECKING:
    from raykv.runtime.coordinator import Coordinator

log = logging.getLogger("raykv")


class Rebalancer:
    """Per-stage load sums and planned moves of one run attempt (see the module docstring)."""

    def __init__(self, coord: Coordinator) -> None:
        self._coord = coord
        # per stage, key-group loads summed since the last decision, and plans decided by
        # the commit thread for the feed loop to carry out (under the coordinator's _lock)
        self._loads: dict[int, np.ndarray] = {}
        self._load_rows: dict[int, int] = {}
        self._since_rebalance: dict[int, int] = {}
        self._plans: dict[int, rebalance.Plan] = {}

    def reset(self) -> None:
        """Forget loads and plans (a new attempt: those of a failed one do not carry over)."""
        with self._coord._lock:
            self._loads, self._load_rows, self._since_rebalance, self._plans = {}, {}, {}, {}

    @property
    def planned(self) -> bool:
        """Whether moves are decided and wait for the feed loop."""
        return bool(self._plans)

    def rebalances(self, stage: StageSpec) -> bool:
        """Whether ``stage`` is rebalanced (configured, >1 shard, operator allows it)."""
        return (self._coord.p.rebalance is not None and stage.num_shards > 1
                and getattr(stage.operator, "rebalance_safe", True))

    def account_load(self, acks: list[Ack]) -> dict[str, dict[str, ShardLoad]]:
        """Fold an epoch's load reports into the summary and the rebalancer's sums.

        Returns the epoch manifest's ``load`` entry: per stage, per shard, the epoch's
        ``updates`` and ``cpu_seconds``, the run's ``updates_total``, ``hot_keys`` and
        ``write_amplification``.
        """
        c = self._coord
        out: dict[str, dict[str, ShardLoad]] = {}
        index = {st.name: i for i, st in enumerate(c._stages)}
        with c._lock:
            for ack in acks:
                rep = ack.load
                if rep is None:
                    continue
                stage = str(ack.metadata["stage"])
                entry = c.summary.load.setdefault(ack.shard, {"stage": stage, "updates": 0})
                entry["updates"] += int(rep["rows"])
                entry["hot_keys"] = rep["hot_keys"]
                entry["write_amplification"] = float(rep["write_amplification"])
                out.setdefault(stage, {})[ack.shard] = ShardLoad(
                    updates=int(rep["rows"]), updates_total=entry["updates"],
                    hot_keys=rep["hot_keys"],
                    write_amplification=round(float(rep["write_amplification"]), 4),
                    cpu_seconds=round(float(rep["cpu_seconds"]), 4),
                )
                i = index.get(stage)
                if i is not None and "groups" in rep:
                    acc = self._loads.setdefault(
                        i, np.zeros(c._num_key_groups, dtype=np.float64))
                    np.add.at(acc, rep["groups"], rep["group_counts"])
                    self._load_rows[i] = self._load_rows.get(i, 0) + int(rep["rows"])
        return out

    def decide(self, acks: list[Ack]) -> None:
        """Commit thread: plan a rebalance of each stage whose summed loads call for one."""
        c = self._coord
        cfg = c.p.rebalance
        if cfg is None:
            return
        stages_seen = {str(a.metadata["stage"]) for a in acks}
        with c._lock:
            for i, stage in enumerate(c._stages):
                if stage.name not in stages_seen or not self.rebalances(stage):
                    continue
                self._since_rebalance[i] = self._since_rebalance.get(i, 0) + 1
                if i in self._plans or self._since_rebalance[i] <= cfg.cooldown_epochs:
                    continue
                if self._load_rows.get(i, 0) < cfg.min_rows:
                    continue
                decided = rebalance.plan(self._loads[i], stage.partitioning, cfg)
                self._loads[i][:] = 0
                self._load_rows[i] = 0
                if decided is not None:
                    self._plans[i] = decided

    def apply(self, committer: Committer) -> None:
        """Feed loop, right after a barrier: carry out the planned rebalances.

        1. Wait until every epoch is committed: the latest epoch ``F`` holds all input
           so far under the old assignment, and no data is in flight. (Epoch boundaries
           stay where they would be without rebalancing.)
        2. Every shard of the stage takes the key groups it gains from the givers'
           checkpoint of ``F`` and deletes those it loses (``ShardWorker.rebalance``).
        3. The senders (the readers, or the shards of the stages that feed it) route by the new
           assignment; the next commit writes it into its epoch manifest.

        A failure anywhere restores ``F``, whose manifest has the old assignment.
        """
        c = self._coord
        committer.drain()
        with c._lock:
            plans, self._plans = self._plans, {}
        assert c._committed is not None
        epoch = c._committed.epoch
        assert epoch is not None
        root = c._local_root()
        for i, decided in sorted(plans.items()):
            t0 = time.perf_counter()
            stage = c._stages[i]
            new = decided.partitioning
            refs = []
            for j, actor in enumerate(c._actors[i]):
                sources = tuple(
                    RestoreSource(stage.shard_names[k], stage.engine, stage.engine_params)
                    for k in holders(stage.partitioning, new, j, gained_only=True))
                if c.driver_io:
                    sources = c.restorer.materialize_sources(
                        epoch, sources, root / stage.name, stage.shard_names[j])
                refs.append(actor.rebalance.remote(epoch, new, sources))
            infos = shard_get(refs)
            shard_get([a.set_downstream_partitioning.remote(new)
                       for up in c.p.topology.stage_producers(i) for a in c._actors[up]])
            c._stages[i] = replace(stage, partitioning=new)
            with c._lock:
                self._since_rebalance[i] = 0
                self._loads.pop(i, None)
                self._load_rows[i] = 0
            detail: dict[str, Any] = {
                "stage": stage.name, "moved_groups": len(decided.moves),
                "before": [round(x, 4) for x in decided.before],
                "after": [round(x, 4) for x in decided.after],
                "copied_keys": sum(int(x["copied"]) for x in infos),
                "dropped_keys": sum(int(x["dropped"]) for x in infos),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            c.summary.rebalances.append({"epoch": epoch, **detail})
            log.info("raykv: rebalanced stage %s at epoch %d: %s", stage.name, epoch, detail)
            c._emit("rebalanced", epoch, **detail)


__all__ = ["Rebalancer"]
