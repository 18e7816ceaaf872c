"""Where a run attempt starts and how its shards are laid out and restored.

Contract (all driver side, no actors started here):

* :func:`initial_state`: from the store and ``Pipeline.run``'s arguments, the committed
  :class:`Base` the run starts from, what the sink is told, and the first epoch number;
  :func:`check_compatible` rejects a checkpoint another pipeline wrote.
* :func:`plan_layout`: per stage a :class:`~raykv.runtime.specs.StageSpec` (shard names
  with their generation, the key-group assignment) and per shard a
  :class:`~raykv.runtime.specs.RestorePlan`: direct restore (same count and engine) or
  rebuild from the old shards that hold its key groups (:func:`holders`).
* :func:`shard_specs`: the :class:`~raykv.runtime.specs.ShardSpec` of every shard.
* :func:`placements`: node affinity of each shard actor.
* :class:`DriverRestore`: driver I/O (``memory://`` stores) restores shards itself
  before the actors start, and rewrites the plans to point at what it restored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from raykv.errors import CorruptionError
from raykv.partitioning import Partitioning
from raykv.runtime.localdirs import wait_dir_free, wipe_dir
from raykv.runtime.metadata import EpochMetadata, is_pipeline_metadata
from raykv.runtime.specs import RestorePlan, RestoreSource, ShardSpec, StageSpec
from raykv.sources.base import WHOLE
from raykv.topology import SOURCE, Topology

if TYPE_CHECKING:
    from raykv.pipeline import Pipeline


@dataclass
class Base:
    """The committed state a run attempt starts from.

    Attributes:
        epoch: the committed epoch (``None``: empty state).
        metadata: its metadata (``None`` without an epoch or a store).
        offsets: every source split's offset at ``epoch`` (``None``: the beginning).
        rollback: ``epoch`` is older than the store's latest (``restore_epoch``).
        abandoned: epoch ranges abandoned by rollbacks in this lineage.
        rows_total: source rows committed in this lineage.
        event_maxes: every split's largest event time at ``epoch`` (``Pipeline.watermark``).
    """

    epoch: int | None = None
    metadata: EpochMetadata | None = None
    offsets: dict[str, Any] | None = None
    event_maxes: dict[str, int] = field(default_factory=dict)
    rollback: bool = False
    abandoned: list[list[int]] = field(default_factory=list)
    rows_total: int = 0


@dataclass(frozen=True)
class Start:
    """Where a run starts (:func:`initial_state`).

    Attributes:
        base: the committed state to restore.
        sink_epoch: the epoch the sink is started at.
        sink_abandoned: the abandoned ranges the sink is told.
        new_run: no committed epoch to continue from.
        first_epoch: the number of the run's first new epoch (``None``: no store).
        abandon_on_commit: a rollback: the first commit tells the sink what it abandons.
        num_key_groups: the checkpoint's key groups (``None``: no checkpoint to follow).
        sink_writer: the writer that committed ``sink_epoch`` (``Sink.for_attempt``).
    """

    base: Base
    sink_epoch: int | None
    sink_abandoned: list[list[int]]
    new_run: bool
    first_epoch: int | None = None
    abandon_on_commit: bool = False
    num_key_groups: int | None = None
    sink_writer: str | None = None


def initial_state(store: Any, pipeline: Pipeline, *, resume: bool,
                  restore_epoch: int | None) -> Start:
    """Decide where a run starts (see :class:`Start`).

    Raises:
        ValueError: a new run on a store with committed epochs, or a checkpoint this
            pipeline cannot restore (:func:`check_compatible`).
    """
    if store is None:
        return Start(Base(), None, [], True)
    epochs = store.epochs()
    latest = epochs[-1] if epochs else None
    if restore_epoch is not None:
        manifest = store.read_epoch(restore_epoch)
        epoch: int | None = restore_epoch
    elif resume:
        manifest = store.read_epoch(latest) if latest is not None else None
        epoch = latest
    else:
        if epochs:
            from raykv.checkpointing.store import summarize_epochs

            msg = (
                f"checkpoint {store.url} already holds committed epochs "
                f"({summarize_epochs(epochs)}); run(resume=True) continues from the latest, "
                "run(restore_epoch=N) from an older one; for a new run use an empty "
                "checkpoint location"
            )
            raise ValueError(msg)
        manifest, epoch = None, None
    first_epoch = (latest or 0) + 1
    if manifest is None:
        return Start(Base(), None, [], True, first_epoch=first_epoch)
    meta = check_compatible(manifest.metadata, f"epoch {manifest.epoch} in {store.url}",
                            pipeline)
    abandoned = meta.abandoned_lists
    rollback = latest is not None and epoch != latest
    base = Base(epoch=epoch, metadata=meta, offsets=split_offsets(manifest.offsets, meta),
                rollback=rollback, abandoned=abandoned, rows_total=meta.rows_total,
                event_maxes=dict(manifest.offsets.get("event_maxes") or {}))
    if rollback:
        assert epoch is not None and latest is not None
        base.abandoned = [*abandoned, [epoch + 1, latest]]
        sink_epoch, sink_abandoned, writer = sink_view_of_latest(store)
        return Start(base, sink_epoch, sink_abandoned, False, first_epoch=first_epoch,
                     abandon_on_commit=True, num_key_groups=meta.num_key_groups,
                     sink_writer=writer)
    return Start(base, epoch, abandoned, False, first_epoch=first_epoch,
                 num_key_groups=meta.num_key_groups, sink_writer=meta.writer)


def split_offsets(offsets: dict[str, Any], meta: EpochMetadata) -> dict[str, Any]:
    """Every split's offset from an epoch manifest's ``offsets``.

    Metadata version 2 stores ``{"splits": {split id: offset}}``; version 1 (before
    splits existed) stored ``{"source": offset of the whole stream}``, read as the one
    split :data:`~raykv.sources.base.WHOLE` (the source is then read as one stream).
    """
    if meta.version >= 2:
        return dict(offsets.get("splits") or {})
    return {WHOLE: offsets.get("source")}


def sink_view_of_latest(store: Any) -> tuple[int | None, list[list[int]], str | None]:
    """The committed lineage as of the store's latest epoch (before a rollback commits).

    ``(latest epoch, its abandoned ranges, the writer that committed it)``.
    """
    latest = store.latest_epoch()
    if latest is None:
        return None, [], None
    meta = store.read_epoch(latest).metadata
    return latest, [list(r) for r in meta.get("abandoned", [])], meta.get("writer")


def check_compatible(data: dict[str, Any], where: str, pipeline: Pipeline) -> EpochMetadata:
    """Parse an epoch's metadata and check ``pipeline`` can restore it.

    Raises:
        ValueError: no raykv pipeline wrote it, or another stage list, stage key or
            operator, or another ``num_key_groups`` than the pipeline's (when set).
    """
    if not is_pipeline_metadata(data):
        msg = f"{where} was not written by a raykv pipeline (no stage metadata)"
        raise ValueError(msg)
    names = pipeline.stage_names()
    old_names = [s.get("name") for s in data["stages"]]
    if old_names != names:
        msg = (
            f"{where} was written by a pipeline with stages {old_names}; this pipeline has "
            f"{names}: stage names and order must match to restore"
        )
        raise ValueError(msg)
    meta = EpochMetadata.from_dict(data)
    for i, (op, old) in enumerate(zip(pipeline.stages, meta.stages, strict=True)):
        if old.key != op.key or old.operator != type(op).__name__:
            msg = (
                f"{where}: stage {names[i]!r} was {old.operator}(key="
                f"{old.key!r}), this pipeline has {type(op).__name__}(key={op.key!r})"
            )
            raise ValueError(msg)
    groups = meta.num_key_groups
    if pipeline.num_key_groups is not None and pipeline.num_key_groups != groups:
        msg = (
            f"{where} uses num_key_groups={groups}; it is fixed when a pipeline is created "
            f"(got num_key_groups={pipeline.num_key_groups}); leave it unset to use the "
            "checkpoint's"
        )
        raise ValueError(msg)
    return meta


@dataclass(frozen=True)
class Layout:
    """The stages of an attempt, each shard's restore plan, and the shard generations.

    Attributes:
        stages: one spec per stage.
        plans: per stage, per shard, how it gets its state.
        generations: per stage, the generation in its shard names.
        changed: the layout differs from the base epoch's (rescale, other engine,
            rollback): the attempt makes it durable with a barrier before any input.
    """

    stages: list[StageSpec]
    plans: list[list[RestorePlan]]
    generations: list[int]
    changed: bool


def plan_layout(pipeline: Pipeline, base: Base, num_key_groups: int) -> Layout:
    """Stage specs and restore plans of an attempt that starts from ``base``."""
    groups = num_key_groups
    stages: list[StageSpec] = []
    plans: list[list[RestorePlan]] = []
    gens: list[int] = []
    changed = False
    names = pipeline.stage_names()
    for i, op in enumerate(pipeline.stages):
        n = pipeline.stage_num_shards(i)
        engine = pipeline.stage_engine(i)
        params = pipeline.stage_engine_params(i)
        part = Partitioning(num_shards=n, num_key_groups=groups)
        if base.metadata is None:
            gen = 0
            stage_plans = [RestorePlan() for _ in range(n)]
        else:
            old = base.metadata.stages[i]
            old_n, old_engine, old_params = old.num_shards, old.engine, dict(old.engine_params)
            old_names = list(old.shards)
            old_part = old.layout(groups)
            same = old_n == n and old_engine == engine
            gen = old.generation + (0 if same and not base.rollback else 1)
            changed |= not same
            if old_n == n:
                part = old_part  # the epoch's assignment, rebalanced groups included
            if same:
                stage_plans = [
                    RestorePlan(epoch=base.epoch,
                                direct=RestoreSource(old_names[j], old_engine, old_params))
                    for j in range(n)
                ]
            else:
                stage_plans = []
                for j in range(n):
                    sources = tuple(RestoreSource(old_names[k], old_engine, old_params)
                                    for k in holders(old_part, part, j, gained_only=False))
                    stage_plans.append(RestorePlan(epoch=base.epoch, rebuild=sources))
        shard_names = tuple(f"{names[i]}-{j}of{n}-g{gen}" for j in range(n))
        stages.append(StageSpec(i, names[i], op.key, op, engine, params, part, shard_names))
        plans.append(stage_plans)
        gens.append(gen)
    return Layout(stages, plans, gens, changed or base.rollback)


def input_sides(stages: list[StageSpec], topology: Topology, readers: Sequence[int]
                ) -> list[list[int]]:
    """Per stage, the senders of each input side, side after side.

    A side's senders are a source's readers (``readers``: the count of each source) or
    an upstream stage's shards; a stage's input ids run side after side.
    """
    return [[readers[i.index] if i.kind == SOURCE else stages[i.index].num_shards
             for i in topology.inputs[s]] for s in range(len(stages))]


def shard_specs(stages: list[StageSpec], root: Path, track_groups: Callable[[StageSpec], bool],
                *, topology: Topology, readers: Sequence[int], sink: Any = None,
                sink_changelog: bool = False, **common: Any
                ) -> list[list[ShardSpec]]:
    """Per stage, per shard, its :class:`ShardSpec`.

    Data dir ``root/<stage>/<shard>``; inputs per :func:`input_sides` (``readers``: the
    reader count of each source); the stage it feeds and how (``topology``);
    ``track_groups(stage)``: whether its shards count key-group loads; ``sink``: given to
    the last stage's shards (a sink they stage their output in themselves); ``common``:
    the fields every shard shares (checkpoint, faults, attempt, ...).
    """
    sides = input_sides(stages, topology, readers)
    specs: list[list[ShardSpec]] = []
    for s, stage in enumerate(stages):
        feed = topology.stage_feeds[s]
        specs.append([
            ShardSpec(
                stage=stage, index=j,
                data_dir=str(root / stage.name / stage.shard_names[j]),
                num_inputs=sum(sides[s]), input_sides=tuple(sides[s]),
                downstream=None if feed is None else stages[feed.stage],
                downstream_key=None if feed is None else topology.side_key(feed),
                downstream_offset=0 if feed is None else sum(sides[feed.stage][:feed.side]),
                sink=sink if s + 1 == len(stages) else None,
                sink_changelog=s + 1 == len(stages) and sink_changelog,
                track_groups=track_groups(stage),
                **common,
            )
            for j in range(stage.num_shards)
        ])
    return specs


def holders(old: Partitioning, new: Partitioning, shard: int, *, gained_only: bool
            ) -> list[int]:
    """The shards that own, under ``old``, key groups ``shard`` owns under ``new``.

    ``gained_only``: only the groups ``shard`` did not own already (a rebalance's givers).
    """
    wanted = new.owned_mask(shard)
    if gained_only:
        wanted &= old.owners != shard
    return np.unique(old.owners[wanted]).tolist()


def placements(n: int, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Scheduling options for ``n`` shard actors: round-robin over the alive nodes.

    Shards take no CPU reservation, and Ray packs such actors on one node even with
    ``SPREAD`` (a *soft* node affinity falls back to another node now and then, too), so
    each shard gets a hard node affinity. If that node died since the listing, Ray fails
    the actor at once (``ActorUnschedulableError``), which is a recoverable failure: the
    next attempt lists the nodes again. A ``scheduling_strategy`` in ``actor_options`` wins.
    """
    if "scheduling_strategy" in options:
        return [{} for _ in range(n)]
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = sorted(
        node["NodeID"] for node in ray.nodes()
        if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0
    )
    if len(nodes) < 2:
        return [{} for _ in range(n)]
    return [
        {"scheduling_strategy": NodeAffinitySchedulingStrategy(nodes[k % len(nodes)], soft=False)}
        for k in range(n)
    ]


class DriverRestore:
    """Driver I/O: restore shards from ``store`` in the driver, before the actors start.

    Args:
        store: the run's ``CheckpointStore`` (a ``memory://`` store lives in the driver).
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    def materialize(
        self, specs: list[list[ShardSpec]], plans: list[list[RestorePlan]]
    ) -> list[list[RestorePlan]]:
        """Restore every shard's state into its dirs; return the plans that use them."""
        out: list[list[RestorePlan]] = []
        for row_s, row_p in zip(specs, plans, strict=True):
            row: list[RestorePlan] = []
            for sp, plan in zip(row_s, row_p, strict=True):
                data_dir = Path(sp.data_dir)
                data_dir.parent.mkdir(parents=True, exist_ok=True)
                if plan.epoch is not None and plan.direct is not None:
                    data_dir.mkdir(parents=True, exist_ok=True)
                    wait_dir_free(data_dir)
                    self.restore_shard(plan.epoch, plan.direct.shard, data_dir)
                    plan = replace(plan, materialized=True)
                elif plan.epoch is not None and plan.rebuild:
                    plan = replace(plan, rebuild=self.materialize_sources(
                        plan.epoch, plan.rebuild, data_dir.parent, sp.name))
                row.append(plan)
            out.append(row)
        return out

    def materialize_sources(
        self, epoch: int, sources: tuple[RestoreSource, ...], parent: Path, name: str
    ) -> tuple[RestoreSource, ...]:
        """Restore each old shard of ``sources`` into a dir next to ``name``'s."""
        out = []
        for src in sources:
            tmp = parent / f".rebuild-{name}-{src.shard}"
            wipe_dir(tmp)
            self.restore_shard(epoch, src.shard, tmp)
            out.append(replace(src, local_dir=str(tmp)))
        return tuple(out)

    def restore_shard(self, epoch: int, shard: str, data_dir: Path) -> None:
        """``store.restore_shard``; a ``CorruptionError`` names ``epoch``."""
        try:
            self.store.restore_shard(epoch, shard, data_dir)
        except CorruptionError as err:
            if err.epoch is None:
                err.epoch = epoch
            raise


__all__ = [
    "Base",
    "DriverRestore",
    "Layout",
    "Start",
    "check_compatible",
    "holders",
    "initial_state",
    "input_sides",
    "placements",
    "plan_layout",
    "shard_specs",
    "sink_view_of_latest",
]
