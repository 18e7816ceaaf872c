"""The specs passed between the driver and the shard actors (all picklable, no live objects).

Contract: these are plain frozen dataclasses (``Ack`` is mutable: the upload thread and
the driver fill in its manifest); the driver builds :class:`StageSpec`, :class:`ShardSpec`
and :class:`RestorePlan`, a shard returns one :class:`Ack` per epoch from
``wait_uploaded``. Nothing here imports Ray or an engine (STYLE lesson 5: actors receive
configs and paths, never live objects).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from raykv.partitioning import Partitioning


@dataclass(frozen=True)
class StageSpec:
    """One keyed stage as its shards see it (picklable).

    Attributes:
        index: position in the pipeline (0 = first).
        name: stage name (unique in the pipeline; part of shard names).
        key: key column.
        operator: the operator config (``build(store) -> OperatorLogic``).
        engine: engine name for ``raykv.engines.open_engine``.
        engine_params: keyword arguments of the engine.
        partitioning: key groups and shard count of the stage.
        shard_names: checkpoint names of the stage's shards, by index.
    """

    index: int
    name: str
    key: str
    operator: Any
    engine: str
    engine_params: dict[str, Any]
    partitioning: Partitioning
    shard_names: tuple[str, ...]

    @property
    def num_shards(self) -> int:
        """Number of shards of the stage."""
        return self.partitioning.num_shards


@dataclass(frozen=True)
class ShardSpec:
    """Everything a shard actor needs at creation (picklable; no live objects).

    Attributes:
        stage: the shard's stage.
        index: shard index within the stage.
        data_dir: local directory of the engine (the same path on the same node makes a
            restore download only the files it lacks).
        num_inputs: number of upstream senders whose barriers must align.
        input_sides: the senders of each input side, in side order (input ids
            ``0..input_sides[0]-1`` are side 0, the next ``input_sides[1]`` side 1);
            ``()``: one side.
        downstream: the stage this one feeds (``None`` on the last stage).
        downstream_key: the column the output is partitioned by for ``downstream`` (the
            key of the side it feeds; ``None``: ``downstream.key``).
        overlap_epochs: complete an epoch on the epoch thread when the operator can
            detach it (``raykv.runtime.shard_epochs``).
        downstream_offset: this shard's input id at ``downstream`` is
            ``downstream_offset + index`` (the senders of earlier sides come first).
        checkpoint: checkpoint store URL, or ``None`` (no seals, no uploads).
        storage_options: fsspec options of the store.
        driver_io: the driver uploads from the staging dir and restores before ``setup``
            (``memory://`` stores live in the driver's process).
        max_inflight: calls to one downstream shard in flight before waiting.
        inflight_seconds: ``Pipeline.inflight_seconds`` (the outbox's target).
        faults: ``raykv.testing.Faults`` or ``None``.
        attempt: run attempt number (0, then +1 per recovery).
        first_epoch: the epoch number of the attempt's first barrier (``None``: unknown);
            the shard counts from it to name the epoch of a failure.
        hot_keys: Space-Saving counters of the shard's :class:`raykv.hotkeys.LoadTracker`
            (0: no load tracking).
        track_groups: also count updates per key group (the rebalancer needs them).
        pipeline: the ``pipeline`` tag of the shard's metrics (``raykv.metrics``).
        sink: on the last stage, a sink whose ``stages_on_shards`` is true: the shard
            stages its output there itself (``None``: output rides the ack).
        sink_changelog: on the last stage, the sink wants row kinds (``Sink.changelog``).
        kept_epochs: uploaded epochs whose files the shard keeps hard-linked for a rollback
            in place (``Pipeline.max_pending_epochs + 1``: the committed epoch is among
            them, so local recovery downloads nothing even after merges removed files).
        event_time: the pipeline has a ``Watermark``: barriers carry the sources'
            watermark and event-time operators close windows by it alone
            (``advance_watermark``), not by their own rows.
    """

    stage: StageSpec
    index: int
    data_dir: str
    num_inputs: int
    downstream: StageSpec | None
    checkpoint: str | None
    storage_options: dict[str, Any] | None
    driver_io: bool = False
    max_inflight: int = 4
    inflight_seconds: float | None = None
    faults: Any = None
    attempt: int = 0
    first_epoch: int | None = None
    hot_keys: int = 0
    track_groups: bool = False
    pipeline: str = ""
    sink: Any = None
    sink_changelog: bool = False
    kept_epochs: int = 1
    event_time: bool = False
    input_sides: tuple[int, ...] = ()
    downstream_key: str | None = None
    downstream_offset: int = 0
    overlap_epochs: bool = False

    @property
    def name(self) -> str:
        """The shard's checkpoint name."""
        return self.stage.shard_names[self.index]


@dataclass(frozen=True)
class RestoreSource:
    """One shard of a committed epoch to build state from.

    Attributes:
        shard: its name in the epoch manifest.
        engine: the engine it was written with.
        engine_params: that engine's parameters.
        local_dir: a directory the driver already restored it into (driver I/O), or
            ``None`` (the shard restores it itself).
    """

    shard: str
    engine: str
    engine_params: dict[str, Any]
    local_dir: str | None = None


@dataclass(frozen=True)
class RestorePlan:
    """How a shard gets its initial state.

    * ``epoch is None``: empty state (the data dir is wiped).
    * ``direct``: same key range and engine: ``restore_shard(epoch, direct.shard,
      data_dir)`` (only missing files download), then open.
    * ``rebuild``: another shard count or engine: restore each listed old shard into a
      temporary dir, copy the keys whose key group is in this shard's range, seal.
    * ``materialized``: the driver already restored ``direct`` into ``data_dir``.
    """

    epoch: int | None = None
    direct: RestoreSource | None = None
    rebuild: tuple[RestoreSource, ...] = ()
    materialized: bool = False


@dataclass
class Ack:
    """A shard's report that epoch ``epoch`` is sealed and (unless driver I/O) durable.

    Attributes:
        epoch: the epoch.
        shard: shard name.
        manifest: the durable ``ShardManifest`` (``None`` without a checkpoint store or
            with driver I/O, where the driver uploads ``files`` from ``staging``).
        output: the last stage's output of the epoch for a driver-side sink (``None``
            elsewhere, when empty, or once the shard staged it in the sink itself).
        rows_out: rows of the last stage's output of the epoch (0 elsewhere).
        late_output: the epoch's late rows of a window stage with ``late="emit"`` for the
            driver to stage (``None``: none, or the shard staged them itself).
        staging: staging dir holding ``files`` (driver I/O only).
        files: live engine files of the epoch.
        metadata: the shard manifest metadata.
        seal_seconds: time spent in ``on_barrier`` + ``seal`` + linking.
        load: the epoch's load report (``LoadTracker.report()`` plus the engine's
            ``write_amplification`` and ``cpu_seconds``, the thread CPU time the shard
            spent on its stream since the previous report), or ``None`` without tracking.
    """

    epoch: int
    shard: str
    manifest: Any = None
    output: pa.Table | None = None
    rows_out: int = 0
    late_output: pa.Table | None = None
    staging: str | None = None
    files: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    seal_seconds: float = 0.0
    load: dict[str, Any] | None = None



__all__ = ["Ack", "RestorePlan", "RestoreSource", "ShardSpec", "StageSpec"]
