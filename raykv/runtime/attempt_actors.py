"""The actors of one run attempt: start them, connect them, and still them after a failure.

Contract: the :class:`AttemptActors` mixin of :class:`~raykv.runtime.coordinator.Coordinator`.
``_start_actors`` brings up an attempt's shards (restored per their plans) and readers;
``_teardown`` ends the attempt. After a recoverable failure (``keep=True``) the live
actors are stilled and kept (:func:`~raykv.runtime.survivors.keep_survivors`): the next
``_start_actors`` rolls each back in place (``reset``) and gives a dead actor's role to
a standby (``Pipeline.standby``) or a new actor in the same placement slot. Otherwise
(the run ends or stops) every actor is killed and waited for until gone.

Order at the start of an attempt: shard specs and plans; survivors taken (the unused
killed), standbys assigned to dead roles; shards created; standbys topped up in the
background; shards ``reset``/``setup`` and waited for; stages connected; readers created
or ``reset`` and waited for (so that no control call reaches the loop of the failed
attempt).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from raykv.runtime.actors import check_driver_io_nodes, connect_stages, create_shards, kill_shards
from raykv.runtime.failures import shard_get
from raykv.runtime.layout import Base, input_sides, shard_specs
from raykv.runtime.reader_actor import ReaderSpec, create_readers, plan_readers
from raykv.runtime.specs import RestorePlan, ShardSpec, StageSpec
from raykv.runtime.survivors import Survivors, keep_survivors

if TYPE_CHECKING:
    import contextlib
    from pathlib import Path

    from raykv.metrics import DriverMetrics
    from raykv.pipeline import Pipeline
    from raykv.runtime.committer import Committer
    from raykv.runtime.layout import DriverRestore
    from raykv.runtime.rebalancing import Rebalancer
    from raykv.runtime.survivors import Standby
    from raykv.sinks import Sink


class AttemptActors:
    """Start and end the actors of an attempt (mixin of the coordinator; module docstring)."""

    if TYPE_CHECKING:  # what the mixin uses of the coordinator
        p: Pipeline
        sink: Sink
        attempt_sink: Sink
        driver_io: bool
        rebalancer: Rebalancer
        _metrics: DriverMetrics
        _next_epoch: int
        _committer: Committer | None
        _actors: list[list[Any]]
        _handles: dict[str, Any]
        _readers: dict[str, Any]
        _reader_stages: dict[str, int]
        _run_refs: dict[str, Any]
        _survivors: Survivors
        _standby: Standby

        @property
        def restorer(self) -> DriverRestore: ...  # noqa: D102
        def _local_root(self) -> Path: ...
        def _emit(self, kind: str, epoch: int | None = None, **detail: Any) -> None: ...
        def _user_code(self, what: str, epoch: int | None
                       ) -> contextlib.AbstractContextManager[None]: ...

    def _start_actors(
        self, stages: list[StageSpec], plans: list[list[RestorePlan]], attempt: int,
        base: Base, *, paused: bool,
    ) -> None:
        """Start the shards (restored per ``plans``) and the readers; connect the shards.

        New readers are created before the shards' ``setup``/``reset`` is waited for, so
        that their processes start while the shards restore (no reader calls a shard
        before ``run``); returns once every shard is set up and every reader is
        constructed or reset, so the run's clock (``processing_time``) starts with its
        first batch, not with the readers' process start-up (1.5-1.6 s on the 2-core
        machine, counted in it before).
        """
        readers, counts = self._plan_readers(base, stages, attempt, paused=paused)
        specs = shard_specs(
            stages, self._local_root(), self.rebalancer.rebalances,
            checkpoint=self.p.checkpoint, storage_options=self.p.storage_options,
            driver_io=self.driver_io, max_inflight=self.p.max_inflight,
            inflight_seconds=self.p.inflight_seconds,
            faults=self.p.faults, attempt=attempt, first_epoch=self._next_epoch,
            hot_keys=self.p.hot_keys, pipeline=self._metrics.pipeline,
            topology=self.p.topology, readers=counts,
            sink=self.attempt_sink if self.sink.stages_on_shards else None,
            sink_changelog=self.sink.changelog,
            kept_epochs=self.p.max_pending_epochs + 1,
            event_time=self.p.watermark is not None, overlap_epochs=self.p.overlap_epochs,
        )
        if self.driver_io:
            plans = self.restorer.materialize(specs, plans)
        kept = self._survivors.take([sp.name for row in specs for sp in row],
                                    [sp.name for sp in readers], self._standby)
        self._actors = create_shards(specs, self.p.actor_options, kept.shards)
        self._handles = {
            sp.name: a for row_s, row_a in zip(specs, self._actors, strict=True)
            for sp, a in zip(row_s, row_a, strict=True)
        }
        self._survivors.shards = {}  # adopted
        if self.p.standby and not self.driver_io:
            self._fill_standby(specs[0][0], readers[0], self._actors[readers[0].stage])
        refs = [
            a.reset.remote(sp, plan) if sp.name in kept.shards else a.setup.remote(plan)
            for row_s, row_a, row_p in zip(specs, self._actors, plans, strict=True)
            for sp, a, plan in zip(row_s, row_a, row_p, strict=True)
        ]
        self._emit("starting", attempt=attempt, kept=len(kept))
        slot = sum(len(row) for row in self._actors)
        waits: list[Any] = []  # kept readers' resets, new readers' pings
        self._readers = {}
        self._reader_stages = {sp.name: sp.stage for sp in readers}
        for name, source in self.p.source_map().items():
            group = [sp for sp in readers if sp.source_name == name]
            handles, resets = create_readers(
                group, source, self._actors[group[0].stage], self.p.actor_options,
                first_slot=slot, kept=kept.readers)
            slot += len(group)
            waits += resets
            waits += [h.ping.remote() for sp, h in zip(group, handles, strict=True)
                      if sp.name not in kept.readers]  # answers once constructed
            self._readers.update({sp.name: h for sp, h in zip(group, handles, strict=True)})
        self._survivors.readers = {}  # adopted
        infos = shard_get(refs)
        connect_stages(self._actors, self.p.topology)
        if self.driver_io:
            check_driver_io_nodes(infos, self.p.checkpoint)
        shard_get(waits)

    def _fill_standby(self, shard: ShardSpec, reader: ReaderSpec, first_stage: list[Any]
                      ) -> None:
        """Top the standby pool up to ``Pipeline.standby`` actors of each kind (no wait).

        ``shard``, ``reader``: the templates (the attempt's first of each); ``first_stage``:
        the actors a reader feeds. Called at each attempt's start, once its shards are
        created: at the run's start the pool starts beside its actors, and after a
        recovery the standbys it took are replaced at once. Measured with ``raykv drill
        --standby 2`` (kills about 1.5 s apart, a process start 2-3 s under that load):
        topping up after the recovery's first commit instead left the pool empty more
        often (kill to next commit p95 3.2 s against 2.8 s, single runs).
        """
        options = self.p.actor_options
        self._standby.fill(
            self.p.standby,
            lambda: create_shards([[shard]], options)[0][0],
            lambda: create_readers([reader], self.p.source_map()[reader.source_name],
                                   first_stage, options)[0][0])

    def _plan_readers(self, base: Base, stages: list[StageSpec], attempt: int, *,
                      paused: bool) -> tuple[list[ReaderSpec], list[int]]:
        """The reader specs of an attempt and the reader count of each source.

        Every source's splits start at ``base``'s offsets. A source's readers feed one
        side of one stage; their input ids there follow the senders of earlier sides.

        Raises:
            ValueError: ``base`` holds offsets of a source the pipeline does not have.
        """
        p = self.p
        topo = p.topology
        sources = p.source_map()
        offsets, maxes = dict(base.offsets or {}), dict(base.event_maxes)
        planned: list[list[ReaderSpec]] = []
        for k, (name, source) in enumerate(sources.items()):
            feed = topo.source_feeds[k]
            stage = stages[feed.stage]
            pre = p.split_prefix(name)
            mine = {sid: off for sid, off in offsets.items() if sid.startswith(pre)}
            for sid in mine:
                offsets.pop(sid)
            with self._user_code(f"source {type(source).__name__}.splits()",
                                 self._next_epoch):
                planned.append(plan_readers(
                    source, None if base.offsets is None else _strip(mine, pre),
                    p.source_parallelism_of(name) or stage.num_shards,
                    _strip({s: m for s, m in maxes.items() if s.startswith(pre)}, pre),
                    name="reader" if not pre else f"reader-{name}",
                    key=topo.side_key(feed), partitioning=stage.partitioning,
                    max_inflight=p.max_inflight, inflight_seconds=p.inflight_seconds,
                    epoch_batches=p.epoch_every_batches,
                    paused=paused, faults=p.faults, attempt=attempt,
                    first_epoch=self._next_epoch, watermark=p.source_watermark(name),
                    source_name=name, prefix=pre, stage=feed.stage))
        if offsets:
            msg = (f"the checkpoint holds offsets of splits {sorted(offsets)[:5]} of sources "
                   f"this pipeline does not have (it has {list(sources)}); restore with the "
                   "sources it was written with, or start a new run on an empty checkpoint")
            raise ValueError(msg)
        counts = [len(group) for group in planned]
        sides = input_sides(stages, topo, counts)
        out = []
        for k, group in enumerate(planned):
            feed = topo.source_feeds[k]
            first = sum(sides[feed.stage][:feed.side])
            out += [replace(sp, index=first + sp.index) for sp in group]
        return out, counts

    def _teardown(self, *, keep: bool = False) -> None:
        """Stop the commit thread and the attempt's actors.

        ``keep``: a recovery follows; live actors are stilled and kept for it (local
        recovery, :mod:`raykv.runtime.survivors`) unless the store lives in the driver
        (``memory://``: the driver writes restored files into the data dirs). Otherwise
        every actor, standbys included, is killed and waited for until gone.
        """
        committer, self._committer = self._committer, None
        if committer is not None:
            committer.stop()
        # survivors not adopted yet (the start of an attempt failed) count as its actors
        readers = {**self._survivors.readers, **self._readers}
        shards = {**self._survivors.shards, **self._handles}
        runs = self._run_refs
        self._survivors = Survivors()
        self._actors, self._handles, self._readers, self._run_refs = [], {}, {}, {}
        if keep and not self.driver_io:
            pings = self._standby.ping()
            kept = self._survivors = keep_survivors(readers, shards, runs)
            self._standby.check(pings, need=(len(shards) - len(kept.shards),
                                             len(readers) - len(kept.readers)))
            if committer is not None:
                committer.release()
        else:
            self._standby.drop()
            kill_shards([*readers.values(), *shards.values()])


def _strip(by_split: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``by_split`` with ``prefix`` taken off each split id."""
    return {sid[len(prefix):]: v for sid, v in by_split.items()}


__all__ = ["AttemptActors"]
