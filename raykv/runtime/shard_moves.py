"""The shard's state moves: rebuilding from old shards (rescale) and rebalancing.

Contract: :class:`KeyGroupMoves` is a mixin of :class:`~raykv.runtime.shard.ShardWorker`
(its methods run in the shard actor): ``_rebuild`` fills a new shard's engine with the
keys of its key groups out of the old shards of a committed epoch (a rescale or an engine
change), and ``rebalance`` takes over the key groups a new assignment gives the shard
and drops those it takes away. The key-group copies themselves are
:mod:`raykv.runtime.keygroups`; this module fetches the old shards (from the store, or a
dir the driver restored) and keeps the shard's spec, logic, tracker and stats in step.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from raykv.partitioning import Partitioning
from raykv.runtime import keygroups
from raykv.runtime.localdirs import wipe_dir
from raykv.runtime.specs import RestorePlan, RestoreSource, ShardSpec


class _Shard(Protocol):
    """What the moves use of the shard worker."""

    spec: ShardSpec
    name: str
    engine: Any
    logic: Any
    _tracker: Any
    stats_: dict[str, float]

    def _get_store(self) -> Any: ...
    def _check_ok(self) -> None: ...
    def _fence(self, *, check: bool = True) -> None: ...
    def _fault(self, point: str) -> None: ...
    def _fail(self, err: BaseException) -> None: ...
    def _build_logic(self) -> Any: ...
    def _copy_from(self, epoch: int, sources: tuple[RestoreSource, ...], wanted: Any) -> int: ...


class KeyGroupMoves:
    """Rescale rebuilds and rebalance moves of one shard (see the module docstring)."""

    def _rebuild(self: _Shard, plan: RestorePlan) -> int:
        """Copy the keys of this shard's key groups out of the old shards' states."""
        assert plan.epoch is not None
        part = self.spec.stage.partitioning
        copied = self._copy_from(plan.epoch, plan.rebuild, part.owned_mask(self.spec.index))
        self.engine.seal()
        return copied

    def _copy_from(self: _Shard, epoch: int, sources: tuple[RestoreSource, ...],
                   wanted: Any) -> int:
        """``keygroups.copy_from`` the old shards ``sources`` at ``epoch`` into the engine.

        Each source is restored into a temporary dir (unless the driver already did:
        ``local_dir``). Returns the number of pairs written.
        """
        spec = self.spec

        def fetch(src: RestoreSource) -> Path:
            if src.local_dir is not None:
                return Path(src.local_dir)
            tmp = Path(spec.data_dir).parent / f".rebuild-{self.name}-{src.shard}"
            wipe_dir(tmp)
            self._get_store().restore_shard(epoch, src.shard, tmp)
            return tmp

        return keygroups.copy_from(
            self.engine, spec.stage.operator, sources, wanted,
            num_key_groups=spec.stage.partitioning.num_key_groups, fetch=fetch)

    def rebalance(self: _Shard, epoch: int, partitioning: Partitioning,
                  sources: tuple[RestoreSource, ...]) -> dict[str, Any]:
        """Take over the key groups ``partitioning`` gives this shard, drop those it takes away.

        Called by the driver at an epoch boundary: ``epoch`` is committed and no data is
        in flight. The gained groups' keys are copied from ``sources`` (the shards that
        owned them) as of ``epoch``; then the lost groups' keys are deleted and the
        operator is rebuilt on the engine. Nothing is sealed: the next epoch's checkpoint
        holds the new state, and a failure before it commits restores ``epoch`` with the
        old assignment. Cost: a scan of every source's state and of this shard's own.
        """
        self._fence()  # no epoch in the epoch thread (shard_epochs.py)
        cpu = time.thread_time()
        try:
            t0 = time.perf_counter()
            spec = self.spec
            gained = partitioning.owned_mask(spec.index) & ~spec.stage.partitioning.owned_mask(
                spec.index)
            self.spec = replace(spec, stage=replace(spec.stage, partitioning=partitioning))
            copied = self._copy_from(epoch, sources, gained)
            self._fault("rebalance")
            dropped = keygroups.drop_unowned(self.engine, spec.stage.operator, partitioning,
                                             spec.index)
            self.logic = self._build_logic()
            if self._tracker is not None:
                self._tracker.retain_groups(partitioning.owned_mask(spec.index))
            seconds = time.perf_counter() - t0
            self.stats_["rebalances"] += 1
            self.stats_["rebalance_seconds"] += seconds
            self.stats_["busy_cpu_seconds"] += time.thread_time() - cpu
            return {"shard": self.name, "copied": copied, "dropped": dropped,
                    "seconds": seconds}
        except BaseException as err:
            self._fail(err)
            raise


__all__ = ["KeyGroupMoves"]
