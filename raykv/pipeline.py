"""The user-facing pipeline: a source, keyed stages, a sink, and how to checkpoint them.

Example (the API in ``docs/runtime.md``)::

    pipeline = raykv.Pipeline(
        source=raykv.sources.ParquetSource("events/", batch_size=65_536),
        stages=[raykv.operators.Aggregate(key="user", aggs={"amount": ["sum", "count"]})],
        sink=raykv.sinks.ParquetSink("out/"),
        num_shards=4, engine="hybridlog", engine_params={},
        checkpoint="file:///tmp/ckpt", checkpoint_interval=1.0, retain=3,
    )
    summary = pipeline.run()              # a new run
    summary = pipeline.run(resume=True)   # continue from the latest committed epoch
    summary = pipeline.run(restore_epoch=12)  # roll back to a retained epoch

``Pipeline`` is a plain config: constructing it validates the values and touches
nothing (no Ray, no files). ``run`` drives everything from the calling process (the
driver) through :mod:`raykv.runtime.coordinator`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raykv.operators.changelog import check_chain
from raykv.sinks import CollectSink, Sink
from raykv.sources import Source
from raykv.summary import ProgressEvent, RunSummary
from raykv.topology import Topology, build_topology, check_schemas
from raykv.watermarks import Watermark

if TYPE_CHECKING:

    from raykv.rebalance import Rebalance
    from raykv.testing import Faults


def default_local_dir() -> str:
    """The shards' engine root when ``Pipeline(local_dir=None)``: ``$TMPDIR/raykv-state``.

    The name has a dash so that it can never be imported: a folder named ``raykv`` in the
    temp dir would shadow the package for any script started from there.
    """
    return os.path.join(tempfile.gettempdir(), "raykv-state")


_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Pipeline:
    """A keyed dataflow: ``source -> stages[0] -> ... -> stages[-1] -> sink``.

    Or several named ``sources`` and stages that each read one or two named inputs
    (joins): ``raykv.topology`` has the rules; the last stage feeds the sink.

    Every stage runs as ``num_shards`` Ray actors, each holding the state of a range of
    key groups in an engine on local disk. Data between stages is re-partitioned by the
    next stage's key; barriers flow through (aligned), so every epoch is a consistent cut.

    Args:
        source: a replayable :class:`raykv.sources.Source` (or ``sources``).
        stages: keyed operators (``raykv.operators``), each with its key column and
            optional per-stage ``name``, ``engine``, ``engine_params``, ``num_shards``
            and ``input`` (the source or earlier stage it reads; default the stage
            before it); a ``TwoInputOperator`` (joins) names ``left`` and ``right``.
        sink: where output goes (default: a new :class:`raykv.sinks.CollectSink`,
            returned as ``RunSummary.output``).
        num_shards: default shards per stage.
        engine: default engine (``"hybridlog"``, ``"lsm"``, ``"appendlog"``, ``"memonly"``).
        engine_params: default engine parameters (JSON-able; stored in every epoch).
        checkpoint: checkpoint store URL (``file:///path``, a plain path, ``s3://bucket/
            prefix``, ``memory://name``), or ``None``: no checkpoints (no recovery once
            output was published; no resume).
        storage_options: fsspec options for ``checkpoint`` (e.g. S3 endpoint, keys).
        checkpoint_interval: seconds between epochs (``None``: only the final epoch).
            An epoch ends once the interval has passed, some input was read in it and
            fewer than ``max_pending_epochs`` epochs wait for their commit. A lower
            bound: each reader puts the barrier after the batch it is sending, which
            waits for room when its shards are behind: a busy shard lengthens the
            epoch by up to one of its calls, a pause between checkpoints
            (docs/runtime.md, "Checkpoint latency": at 0.1 s, ``Aggregate``'s epochs
            last about 0.25 s, and epochs as asked cost it 40 % of its events/s).
        epoch_every_batches: end an epoch every this many source batches per reader
            instead (each reader holds after that many until the barrier), so epochs are
            identical run to run for a given ``source_parallelism`` (tests, drills,
            benchmarks).
        retain: committed epochs kept by garbage collection (plus pinned ones).
        num_key_groups: key groups (default 4096 for a new pipeline; a restore uses the
            checkpoint's; giving another value than the checkpoint's is an error).
        max_restarts: recoveries allowed in one ``run`` before it gives up.
        max_inflight: ``process`` calls in flight per shard and sender at most before
            the sender waits (backpressure).
        inflight_seconds: the seconds of a shard's work its senders keep in flight to
            it (buffer debloating): each sender's calls in flight follow the seconds
            the shard reports per call, its share of this target, at least 1 (2 for a
            sole sender) and at most ``max_inflight``. A barrier queues behind them, so
            this bounds the time from a barrier to its commit when the shards are the
            bottleneck (docs/runtime.md, "Checkpoint latency"). ``None``: always
            ``max_inflight``.
        max_pending_epochs: epochs sealed but not committed before new barriers wait.
        source_parallelism: source reader actors (default: the shard count of the stage
            the source feeds; at most one per split of the source); with ``sources``,
            a dict by source name is allowed. Each reads its share of the
            source's splits and sends the rows straight to the first stage's shards; the
            driver reads no record. It may change between runs of one checkpoint: the
            splits are dealt again and each resumes at its committed offset.
        watermark: where event time comes from (``raykv.Watermark(column, max_delay,
            idle_timeout)``): each split's watermark travels with the barriers through
            every stage, and the window operators close windows by it alone (not by
            the rows each shard happens to see); stored in every epoch. ``None``: each
            window shard derives its own watermark from its rows (the rule before
            source watermarks). With ``sources``, a dict by source name is allowed (a
            source not in it has no watermark). docs/runtime.md, "Event time".
        standby: idle actors kept started beside the run, this many shard actors and
            as many reader actors: after a failure a dead actor's role goes to a standby
            (``reset`` to it, no process start) while a new standby starts in the
            background. Costs an idle process each (about 150 MB); 0: a dead actor is
            replaced by a new actor (about 0.6 s more per failure on the 2-core machine).
            Survivors are rolled back in place either way (docs/recovery.md, "Local
            recovery").
        local_dir: root of the shards' engine directories on each node (default:
            :func:`default_local_dir`, the system temp dir + ``/raykv-state``). Stable per
            checkpoint URL, so a restore on the same node downloads only missing files.
        actor_options: extra ``ActorClass.options`` for shard and reader actors (default
            ``{"num_cpus": 0}``, placed round-robin over the alive nodes that have CPUs;
            a ``scheduling_strategy`` here replaces that placement).
        on_progress: called with a :class:`ProgressEvent` from the driver (main or
            commit thread, one call at a time); an exception in it fails the run.
        clock: time source for ``checkpoint_interval`` (default ``time.monotonic``;
            ``raykv.testing.FakeClock`` in tests).
        faults: ``raykv.testing.Faults`` to inject delays/crashes in shards (tests only).
        hot_keys: Space-Saving counters per shard for hot-key and load metrics
            (``RunSummary.load``, the epoch manifests); 0 turns load tracking off.
        rebalance: a :class:`raykv.rebalance.Rebalance` to move key groups from busy to
            idle shards at epoch boundaries (``docs/runtime.md``, "Skew"); needs a
            ``checkpoint`` (moved state travels through it) and ``hot_keys > 0``. Stages
            whose results depend on the assignment (``TumblingWindow``: per-shard
            watermarks) are never rebalanced.
        overlap_epochs: a shard completes an epoch (the fold of its buffered aggregates,
            output, seal) on a second thread while it combines the next epoch's batches,
            for operators that can detach an epoch (``Aggregate``;
            ``raykv.runtime.shard_epochs``). Off by default: on the 2-core machine it
            was 5-15 % slower than completing epochs on the data thread (the two threads
            of one process contend for the GIL and the cores are busy anyway;
            ``benchmarks/README.md``, "Pipeline"). For machines with cores to spare.
        sources: several named sources instead of ``source`` (``{"bids": src, ...}``);
            each is read by its own readers, and its splits' offsets are stored in every
            epoch under ``"<name>:<split>"``. Stages name the source they read.
    """

    source: Source | None = None
    stages: Sequence[Any] = ()
    sink: Sink | None = None
    num_shards: int = 2
    engine: str = "hybridlog"
    engine_params: dict[str, Any] | None = None
    checkpoint: str | None = None
    storage_options: dict[str, Any] | None = None
    checkpoint_interval: float | None = 1.0
    epoch_every_batches: int | None = None
    retain: int = 3
    num_key_groups: int | None = None
    max_restarts: int = 10
    max_inflight: int = 4
    inflight_seconds: float | None = 0.1
    max_pending_epochs: int = 4
    source_parallelism: int | Mapping[str, int] | None = None
    standby: int = 0
    watermark: Watermark | Mapping[str, Watermark] | None = None
    local_dir: str | None = None
    actor_options: dict[str, Any] | None = None
    on_progress: Callable[[ProgressEvent], None] | None = None
    clock: Callable[[], float] | None = None
    faults: Faults | None = None
    hot_keys: int = 16
    rebalance: Rebalance | None = None
    overlap_epochs: bool = False
    sources: Mapping[str, Source] | None = None
    topology: Topology = field(init=False, repr=False, compare=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        self._check_sources()
        if isinstance(self.stages, str | bytes) or not isinstance(self.stages, Sequence):
            msg = f"stages must be a list of keyed operators, got {type(self.stages).__name__}"
            raise TypeError(msg)
        self.stages = list(self.stages)
        if not self.stages:
            msg = "a pipeline needs at least one keyed stage (e.g. raykv.operators.Aggregate)"
            raise ValueError(msg)
        for i, op in enumerate(self.stages):
            if not callable(getattr(op, "build", None)) or not isinstance(
                getattr(op, "key", None), str
            ):
                msg = (
                    f"stages[{i}] must be a keyed operator with a key column and build(store), "
                    f"got {type(op).__name__}"
                )
                raise TypeError(msg)
        names = self.stage_names()
        for name in names:
            if not _NAME_RE.match(name):
                msg = (
                    f"stage name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' "
                    "or '.' (it becomes part of checkpoint and file names)"
                )
                raise ValueError(msg)
        if len(set(names)) != len(names):
            msg = f"stage names must be unique, got {names}"
            raise ValueError(msg)
        self.topology = build_topology(list(self.source_map()), self.stages, names)
        check_chain(self.stages, names, self.topology.edges())
        if self.sink is None:
            self.sink = CollectSink()
        elif not isinstance(self.sink, Sink):
            msg = f"sink must be a raykv.sinks.Sink, got {type(self.sink).__name__}"
            raise TypeError(msg)
        elif self.sink.stages_on_shards and type(self.sink).for_attempt is Sink.for_attempt:
            warnings.warn(
                f"{type(self.sink).__name__} stages output on the shards (stages_on_shards) "
                "but does not implement Sink.for_attempt: output a shard of a failed run "
                "attempt stages after the recovery could be published beside the replay's. "
                "Stage per writer in for_attempt (as ParquetSink does; docs/runtime.md, "
                "'Sinks'), or override it to return self when nothing needs fencing",
                stacklevel=3)
        _positive_int("num_shards", self.num_shards)
        _positive_int("retain", self.retain)
        _positive_int("max_inflight", self.max_inflight)
        _positive_int("max_pending_epochs", self.max_pending_epochs)
        if self.inflight_seconds is not None and (
                type(self.inflight_seconds) not in (int, float)
                or not 0 < self.inflight_seconds < float("inf")):
            msg = (f"inflight_seconds must be a number > 0 (seconds of a shard's work in "
                   f"flight per sender) or None, got {self.inflight_seconds!r}")
            raise ValueError(msg)
        for name in self.source_map():
            par = self.source_parallelism_of(name)
            if par is not None:
                _positive_int(f"source_parallelism of source {name!r}", par)
        for name in ("max_restarts", "standby"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                msg = f"{name} must be an int >= 0, got {value!r}"
                raise ValueError(msg)
        if self.epoch_every_batches is not None:
            _positive_int("epoch_every_batches", self.epoch_every_batches)
        if self.checkpoint_interval is not None and (
            not isinstance(self.checkpoint_interval, int | float) or self.checkpoint_interval <= 0
        ):
            msg = (
                "checkpoint_interval must be a positive number of seconds or None, "
                f"got {self.checkpoint_interval!r}"
            )
            raise ValueError(msg)
        if self.num_key_groups is not None:
            _positive_int("num_key_groups", self.num_key_groups)
        if not isinstance(self.engine, str) or not self.engine:
            msg = f"engine must be an engine name, got {self.engine!r}"
            raise TypeError(msg)
        self._check_watermarks()
        for i, op in enumerate(self.stages):
            params = self.stage_engine_params(i)
            try:
                json.dumps(params)
            except TypeError as err:
                msg = f"engine_params of stage {names[i]!r} must be JSON-able ({err})"
                raise TypeError(msg) from None
            n = self.stage_num_shards(i)
            groups = self.num_key_groups or 4096
            if n > groups:
                msg = f"stage {names[i]!r} has {n} shards but only {groups} key groups"
                raise ValueError(msg)
            if getattr(op, "late", "drop") == "emit" and self.sink.late_sink() is None:
                msg = (
                    f"stage {names[i]!r} has late='emit', but sink "
                    f"{type(self.sink).__name__} has no place for late rows (its "
                    "late_sink() is None); use ParquetSink or CollectSink, or late='drop'"
                )
                raise ValueError(msg)
            column = getattr(op, "time_column", None)
            wm = self.watermark
            if isinstance(wm, Watermark) and column is not None and column != wm.column:
                msg = (
                    f"stage {names[i]!r} ({type(op).__name__}) closes windows on column "
                    f"{column!r}, but the pipeline's watermark is on column {wm.column!r}; "
                    "use one event-time column (watermarks are in its units)"
                )
                raise ValueError(msg)
            if getattr(op, "requires_watermark", False) and not self.watermark:
                msg = (
                    f"stage {names[i]!r} ({type(op).__name__}) works in event time: give "
                    "the pipeline watermark=raykv.Watermark(column, max_delay) (the "
                    "sources' event time closes its windows and expires its state)"
                )
                raise ValueError(msg)
        if self.checkpoint is not None and not isinstance(self.checkpoint, str):
            self.checkpoint = str(self.checkpoint)
        if type(self.hot_keys) is not int or self.hot_keys < 0:
            msg = f"hot_keys must be an int >= 0 (0: no load tracking), got {self.hot_keys!r}"
            raise ValueError(msg)
        if self.rebalance is not None:
            from raykv.rebalance import Rebalance

            if not isinstance(self.rebalance, Rebalance):
                msg = (f"rebalance must be a raykv.rebalance.Rebalance or None, "
                       f"got {type(self.rebalance).__name__}")
                raise TypeError(msg)
            if self.checkpoint is None or self.hot_keys == 0:
                msg = ("rebalance needs checkpoint= (moved key groups travel through it) and "
                       "hot_keys > 0 (the loads come from the load trackers)")
                raise ValueError(msg)

    def _check_sources(self) -> None:
        if (self.source is None) == (self.sources is None):
            msg = ("give a pipeline either source= (one source) or sources= (a dict of "
                   "named sources), not both and not neither")
            raise ValueError(msg)
        if self.sources is not None:
            if not isinstance(self.sources, Mapping) or not self.sources:
                msg = (f"sources must be a non-empty dict of name -> raykv.sources.Source, "
                       f"got {self.sources!r}")
                raise TypeError(msg)
            self.sources = dict(self.sources)
        for name, src in self.source_map().items():
            if not isinstance(name, str) or not _NAME_RE.match(name):
                msg = (f"source name {name!r} is not allowed: use 1-64 letters, digits, "
                       "'_', '-' or '.'")
                raise ValueError(msg)
            if not isinstance(src, Source):
                msg = (
                    f"source {name!r} must be a raykv.sources.Source (TableSource, "
                    f"ParquetSource, ...), got {type(src).__name__}"
                )
                raise TypeError(msg)

    def _check_watermarks(self) -> None:
        wm = self.watermark
        if isinstance(wm, Mapping) and self.sources is not None:
            stray = sorted(set(wm) - set(self.sources))
            if stray:
                msg = f"watermark names sources {stray} that the pipeline does not have"
                raise ValueError(msg)
            marks: list[Any] = list(wm.values())
        else:
            marks = [] if wm is None else [wm]
        for m in marks:
            if not isinstance(m, Watermark):
                msg = (f"watermark must be a raykv.Watermark(column, max_delay, "
                       f"idle_timeout){' or a dict of them by source name' if self.sources else ''}"
                       f", got {type(m).__name__}")
                raise TypeError(msg)

    # ------------------------------------------------------------------ sources

    def source_map(self) -> dict[str, Source]:
        """The sources by name (one source is named ``"source"``)."""
        if self.sources is not None:
            return dict(self.sources)
        assert self.source is not None
        return {"source": self.source}

    def source_watermark(self, name: str) -> Watermark | None:
        """The watermark of source ``name`` (``None``: none)."""
        wm = self.watermark
        if isinstance(wm, Mapping):
            return wm.get(name)
        return wm

    def source_parallelism_of(self, name: str) -> int | None:
        """The reader count asked for source ``name`` (``None``: the default)."""
        par = self.source_parallelism
        if isinstance(par, Mapping):
            return par.get(name)
        return par

    def split_prefix(self, name: str) -> str:
        """What qualifies source ``name``'s split ids in epoch offsets (``""``: one source)."""
        return "" if self.sources is None else f"{name}:"

    def describe_sources(self) -> dict[str, Any]:
        """The sources' ``describe()`` for epoch metadata (one source: its own)."""
        if self.sources is None:
            assert self.source is not None
            return self.source.describe()
        return {"sources": {n: s.describe() for n, s in self.sources.items()}}

    # ------------------------------------------------------------------ per-stage settings

    def stage_names(self) -> list[str]:
        """Stage names: each operator's ``name``, else its class name + position."""
        return [
            getattr(op, "name", None) or f"{type(op).__name__}{i}"
            for i, op in enumerate(self.stages)
        ]

    def stage_num_shards(self, i: int) -> int:
        """Shard count of stage ``i`` (its own, else the pipeline's)."""
        return getattr(self.stages[i], "num_shards", None) or self.num_shards

    def stage_engine(self, i: int) -> str:
        """Engine of stage ``i`` (its own, else the pipeline's)."""
        return getattr(self.stages[i], "engine", None) or self.engine

    def stage_engine_params(self, i: int) -> dict[str, Any]:
        """Engine parameters of stage ``i`` (its own, else the pipeline's)."""
        params = getattr(self.stages[i], "engine_params", None)
        if params is None:
            params = self.engine_params
        return dict(params or {})

    # ------------------------------------------------------------------ running

    def run(self, *, resume: bool = False, restore_epoch: int | None = None) -> RunSummary:
        """Run the pipeline until its input ends (or ``stop()``); return a summary.

        Args:
            resume: continue from the latest committed epoch of ``checkpoint`` (after a
                driver crash, a ``stop()``, or to read input added since). With nothing
                committed yet it starts from the beginning.
            restore_epoch: continue from this retained epoch instead, abandoning later
                ones (their sink output is removed).

        A new run (neither argument) refuses a checkpoint location that already holds
        committed epochs. Shard failures are recovered from the last committed epoch up
        to ``max_restarts`` times; the result equals a run without failures.

        Raises:
            ValueError / TypeError: bad input (missing key column, schema change, null
                key, oversized key), naming the column or value; the last committed
                epoch stays restorable. A source whose ``input_schema()`` lacks a column a
                stage reads, or join keys of two types, are refused before anything
                runs.
            CheckpointNotFoundError: ``restore_epoch`` is not retained (lists those that are).
            CorruptionError: a checkpoint file is damaged or missing; at once, naming the
                file, the check, the epoch and the committed epochs still intact.
            The exception of user code (``StatefulMap``/``Reduce`` functions, codecs,
                sources, sinks) as it was raised, with notes naming the stage, shard, key,
                epoch and the remote traceback; from a shard, after it happened again at
                the same epoch after one recovery (any other non-transient failure too).
            RuntimeError: more than ``max_restarts`` failures (``__cause__``: the last),
                or a failure after output was published without a checkpoint.

        See docs/recovery.md, "Failure classification".
        """
        if resume and restore_epoch is not None:
            msg = "pass either resume=True or restore_epoch=..., not both"
            raise ValueError(msg)
        if (resume or restore_epoch is not None) and self.checkpoint is None:
            msg = "resume/restore_epoch need a checkpoint store: set Pipeline(checkpoint=...)"
            raise ValueError(msg)
        from raykv.runtime.coordinator import Coordinator

        check_schemas(self.topology, self.stages, self.stage_names(),
                      {n: _known_schema(s) for n, s in self.source_map().items()})
        self._stop.clear()
        return Coordinator(self, resume=resume, restore_epoch=restore_epoch).run()

    def stop(self) -> None:
        """Ask a running ``run`` (another thread, or ``on_progress``) to stop gracefully.

        The driver ends the current epoch, waits for it to commit and returns; the input
        is not finished (no ``finish()``), so ``run(resume=True)`` continues the stream.
        """
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        """True once ``stop()`` was called during the current run."""
        return self._stop.is_set()


def _known_schema(source: Source) -> Any:
    """``source.input_schema()``, or ``None`` when it fails.

    The readers then raise that error with the split named, as a failure of the source.
    """
    try:
        return source.input_schema()
    except Exception:
        return None


def _positive_int(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        msg = f"{name} must be a positive int, got {value!r}"
        raise ValueError(msg)


__all__ = ["Pipeline", "ProgressEvent", "RunSummary"]
