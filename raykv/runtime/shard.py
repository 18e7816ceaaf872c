"""The shard actor: one engine, one operator, aligned barriers, background uploads.

Contract: the actor's methods (``setup``, ``process``/``barrier``/``finish``,
``rebalance``, ``wait_uploaded``...) as below. The pieces it is made of live next to it:
the specs it receives (:mod:`raykv.runtime.specs`), barrier alignment
(:mod:`raykv.runtime.aligner`), the upload thread and acks (:mod:`raykv.runtime.uploader`),
key-group copies for rescale and rebalance (:mod:`raykv.runtime.keygroups`, driven by
the :class:`~raykv.runtime.shard_moves.KeyGroupMoves` mixin), the upload thread's side
(:class:`~raykv.runtime.shard_uploads.EpochUploads`), local recovery
(:class:`~raykv.runtime.shard_rollback.LocalRollback`: ``quiesce``, ``reset``), the
epoch thread (:class:`~raykv.runtime.shard_epochs.EpochWorker`) and how a failure is
described and poisons the shard (:class:`~raykv.runtime.shard_poison.ShardPoison`).

One Ray actor runs per shard per stage (:data:`ShardActor`, built from the plain class
:class:`ShardWorker`, which tests can also drive directly). It receives configs and paths,
never live objects (STYLE lesson 5): a :class:`ShardSpec` at creation, then
``setup(plan)`` opens the engine in its local directory, restored from a checkpoint
according to a :class:`RestorePlan`.

Lifecycle (per actor)::

    setup (set_downstream)? (process | barrier | finish | rebalance
                             | set_downstream_partitioning)*
    with   (wait_uploaded | stats)*

Concurrency: the actor's default concurrency group has one thread, and Ray runs the calls
one caller makes to one actor in the order they were made; ``process``, ``barrier`` and
``finish`` therefore see a caller's stream in order (``tests/test_pipeline.py`` proves
it). ``wait_uploaded`` and ``stats`` run in a second group (``"io"``, one thread), so the
driver learns of durable uploads without queueing behind data, and ``ping`` in a third
(a drill gets the pid at once). One background thread uploads sealed epochs in epoch
order.

Aligned barriers (DESIGN invariant 2): a shard of stage ``s > 0`` has one input per shard
of stage ``s - 1`` (a first-stage shard has one input: the driver). When ``barrier(e)``
has arrived from some inputs but not all, further data from those inputs is buffered;
when it has arrived from all of them the epoch is complete:

1. ``out = logic.on_barrier(e)``; for the final epoch ``logic.finish_chunks()``, the
   final values streamed from the engine in bounded chunks (``logic.finish()`` for a
   logic without it);
2. ``out`` is re-partitioned by the next stage's key and sent on, chunk by chunk,
   followed by ``barrier(e)`` to every next-stage shard; on the last stage it is kept
   for the driver's sink, or staged in a sink that ``stages_on_shards`` (the final
   epoch's chunks right here, one at a time: see ``EpochUploads._stage_final``);
3. ``engine.seal()``; the live files are hard-linked into a staging dir
   (``link_files``) and queued for upload; processing resumes with the buffered input;
4. the upload thread runs ``store.upload_shard`` and records an :class:`Ack` that
   ``wait_uploaded(e)`` returns.

Steps 1-3 run on the epoch thread when the operator can detach its epoch (``Aggregate``;
``Pipeline.overlap_epochs``): the data thread goes on with epoch ``e + 1`` meanwhile
(``raykv.runtime.shard_epochs`` has the invariants).

A failure of any call poisons the shard: every later call raises the same error, so the
driver sees it whichever ref it waits on. Before that, the error is given its context
(``raykv.errors.failure_context``: stage, shard, epoch; key and ``user_code`` when user
code raised it, see :meth:`ShardWorker._contextualize`), because the driver only receives
the pickled exception: an error from user code keeps its type and gets two notes, where it
happened and the traceback formatted here (docs/recovery.md, "Failure classification").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from raykv.errors import CorruptionError
from raykv.hotkeys import LoadTracker, counts_of
from raykv.metrics import ShardMetrics, process_cpu_seconds
from raykv.partitioning import Partitioning, split_batch
from raykv.runtime.aligner import BARRIER, DATA, FINISH, Aligned, BarrierAligner
from raykv.runtime.heap import HeapTrimmer
from raykv.runtime.localdirs import cleanup_siblings, wait_dir_free, wipe_dir
from raykv.runtime.outbox import Outbox, RayChannel
from raykv.runtime.shard_epochs import EpochWorker
from raykv.runtime.shard_moves import KeyGroupMoves
from raykv.runtime.shard_poison import ShardPoison
from raykv.runtime.shard_rollback import LocalRollback
from raykv.runtime.shard_uploads import EpochUploads
from raykv.runtime.specs import Ack, RestorePlan, ShardSpec, StageSpec
from raykv.runtime.uploader import Uploader
from raykv.topology import sides_of
from raykv.watermarks import combine


def _as_table(out: Any) -> pa.Table | None:
    if out is None:
        return None
    if isinstance(out, pa.RecordBatch):
        out = pa.Table.from_batches([out])
    if not isinstance(out, pa.Table):
        msg = f"an operator returned {type(out).__name__}; expected a pyarrow RecordBatch or None"
        raise TypeError(msg)
    return out if out.num_rows else None


# ---------------------------------------------------------------------------- the worker


class ShardWorker(KeyGroupMoves, LocalRollback, EpochUploads, EpochWorker, ShardPoison):
    """One shard: engine + operator logic + barrier alignment + upload thread.

    Use through :data:`ShardActor` (a Ray actor); the plain class works in-process too.
    """

    def __init__(self, spec: ShardSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self._context = (
            f"stage {spec.stage.name!r} (key column {spec.stage.key!r}), shard {self.name}"
        )
        self.engine: Any = None
        self.logic: Any = None
        self._store: Any = None
        self._outbox: Outbox | None = None  # to the next stage's shards
        self._aligner = BarrierAligner(spec.num_inputs, self._context)
        self._input_keys = sides_of(spec.stage.operator)[1]
        #: input id -> side, for a stage of several inputs (``None``: one input)
        self._sides = ([s for s, n in enumerate(spec.input_sides) for _ in range(n)]
                       if len(spec.input_sides) > 1 else None)
        self._epoch: int | None = spec.first_epoch  # the epoch the stream is in
        self._uploader = Uploader(self.name, self._upload, self._upload_failed)
        self._counts = {"process": 0, "barrier": 0, "upload": 0, "rebalance": 0,
                        "chunk": 0}
        self._node_id: str | None = None
        self._tracker: LoadTracker | None = None
        self._cpu_reported = 0.0
        self._metrics = ShardMetrics(spec.pipeline, spec.stage.name, spec.name)
        self._heap = HeapTrimmer()
        self._quiesced = False  # between quiesce() and reset(): data calls are dropped
        self._watermark: int | None = None  # at the last barrier (stats)
        self._epoch_cpu = 0.0  # CPU seconds of the epoch thread (shard_epochs.py)
        self.stats_: dict[str, float] = {
            "rows_in": 0, "batches_in": 0, "rows_out": 0, "epochs": 0, "seal_seconds": 0.0,
            "upload_seconds": 0.0, "bytes_uploaded": 0, "files_uploaded": 0,
            "process_seconds": 0.0, "restore_seconds": 0.0, "restored_bytes": 0,
            "track_seconds": 0.0, "rebalances": 0, "rebalance_seconds": 0.0,
            "busy_cpu_seconds": 0.0, "sink_seconds": 0.0,
        }

    # ------------------------------------------------------------------ setup

    def _get_store(self) -> Any:
        if self._store is None:
            from raykv.checkpointing import CheckpointStore

            assert self.spec.checkpoint is not None  # only called with a checkpoint store
            self._store = CheckpointStore(self.spec.checkpoint, self.spec.storage_options)
        return self._store

    def setup(self, plan: RestorePlan) -> dict[str, Any]:
        """Restore or create the state described by ``plan``; open engine and operator.

        Returns facts for the driver: node id, pid, restore seconds, keys rebuilt,
        files downloaded (0 when every file of the epoch was found in ``data_dir``).
        Cost: a direct restore downloads only files missing from ``data_dir``; a rebuild
        reads every key of the overlapping old shards once.
        """
        try:
            return self._setup(plan)
        except BaseException as err:
            if isinstance(err, CorruptionError) and err.epoch is None:
                err.epoch = plan.epoch
            self._add_context(err, epoch=plan.epoch, phase="restore")
            self._fail(err)
            raise

    def _setup(self, plan: RestorePlan) -> dict[str, Any]:
        from raykv.engines import open_engine

        t0 = time.perf_counter()
        spec = self.spec
        data_dir = Path(spec.data_dir)
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        wait_dir_free(data_dir)
        # links of the epochs this shard (or a predecessor on this node) uploaded: the
        # restore takes files from there before downloading; then they go (epochs not
        # committed are replayed)
        links = self._links_dir
        spares = sorted(links.iterdir(), reverse=True) if links.is_dir() else []
        if spec.faults is not None and spec.faults.restore_delay and plan.epoch is not None:
            time.sleep(spec.faults.restore_delay)
        rebuilt = downloaded = 0
        if plan.epoch is None:
            wipe_dir(data_dir)
            self.engine = open_engine(spec.stage.engine, data_dir, **spec.stage.engine_params)
        elif plan.direct is not None:
            if not plan.materialized:
                swap = self._get_store().restore_shard(plan.epoch, plan.direct.shard,
                                                       data_dir, spares)
                downloaded = swap.downloaded_files
                self.stats_["restored_bytes"] = swap.downloaded_bytes
            self.engine = open_engine(spec.stage.engine, data_dir, **spec.stage.engine_params)
        else:
            wipe_dir(data_dir)
            self.engine = open_engine(spec.stage.engine, data_dir, **spec.stage.engine_params)
            rebuilt = self._rebuild(plan)
        shutil.rmtree(links, ignore_errors=True)
        self.logic = self._build_logic()
        if spec.hot_keys:
            self._tracker = LoadTracker(
                self._input_keys[0], spec.stage.partitioning.num_key_groups, spec.hot_keys,
                track_groups=spec.track_groups,
            )
        if spec.checkpoint is not None:
            from raykv.checkpointing import link_files  # noqa: F401 - import before epoch 1

            if not spec.driver_io:
                self._get_store()  # connect now: fail fast, keep the first upload cheap
        cleanup_siblings(Path(spec.data_dir).parent, set(spec.stage.shard_names))
        self._uploader.start()
        self.stats_["restore_seconds"] = time.perf_counter() - t0
        self._node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return {
            "shard": self.name,
            "node_id": self._node_id,
            "pid": os.getpid(),
            "restore_seconds": self.stats_["restore_seconds"],
            "rebuilt_keys": rebuilt,
            "downloaded_files": downloaded,
        }

    @property
    def _forwards_changelog(self) -> bool:
        """The output is a changelog: to another stage, or to a sink that wants row kinds."""
        wanted = self.spec.downstream is not None or self.spec.sink_changelog
        return wanted and getattr(self.spec.stage.operator, "emits_retractions", False)

    def _build_logic(self) -> Any:
        """The operator's logic on the engine (tracking old values when it forwards them)."""
        logic = self.spec.stage.operator.build(self.engine)
        if self._forwards_changelog:
            logic.keep_before_images = True
        logic.count_keys = bool(self.spec.hot_keys)  # the load tracker takes its counts
        self._wire_fence(logic)
        advance = getattr(logic, "advance_watermark", None)
        if self.spec.event_time and advance is not None:
            advance(None)  # from the start: windows close by the sources' watermark alone
        return logic

    def set_downstream_partitioning(self, partitioning: Partitioning) -> None:
        """Route this shard's output by ``partitioning`` from now on (next stage rebalanced)."""
        self._fence()
        down = self.spec.downstream
        assert down is not None
        self.spec = replace(self.spec, downstream=replace(down, partitioning=partitioning))

    def set_downstream(self, handles: list[Any]) -> None:
        """Connect the next stage's shard actors (by index)."""
        self._outbox = Outbox(RayChannel(handles, self.spec.attempt), len(handles),
                              self.spec.max_inflight, self.spec.inflight_seconds)

    # ------------------------------------------------------------------ the stream

    def process(self, batch: pa.RecordBatch, input_id: int = 0, attempt: int | None = None
                ) -> tuple[int, float, int]:
        """Apply ``batch`` from ``input_id`` (buffered if that input is past a barrier).

        ``attempt``: the sender's run attempt; a call of another attempt than this
        shard's (queued before a local recovery, see :meth:`reset`) is dropped (0 rows).
        Returns the rows, the seconds taken and the shard's number of senders (what the
        sender's ``Outbox`` sizes its calls in flight by). Raises the operator's errors
        with stage, key column and shard named, and user code's (:meth:`_contextualize`).
        """
        t = time.perf_counter()
        if self._stale(attempt):
            return 0, 0.0, self.spec.num_inputs
        self._check_ok()
        self._fault("process")
        faults = self.spec.faults
        if faults is not None and faults.process_delay:
            time.sleep(faults.process_delay)
        self._receive(DATA, input_id, batch)
        return batch.num_rows, time.perf_counter() - t, self.spec.num_inputs

    def barrier(self, epoch: int, input_id: int = 0, watermark: int | None = None,
                idle: bool = False, attempt: int | None = None) -> None:
        """``barrier(epoch)`` from ``input_id``: the input's records of ``epoch`` are all in.

        ``watermark``/``idle``: the input's event-time watermark at the barrier
        (``raykv.watermarks``); an idle input does not hold the shard's back.
        """
        if not self._stale(attempt):
            self._check_ok()
            self._receive(BARRIER, input_id, epoch, (watermark, idle))

    def finish(self, epoch: int, input_id: int = 0, watermark: int | None = None,
               idle: bool = False, attempt: int | None = None) -> None:
        """End of bounded input from ``input_id``; the final epoch ``epoch`` emits ``finish()``."""
        if not self._stale(attempt):
            self._check_ok()
            self._receive(FINISH, input_id, epoch, (watermark, idle))

    def _stale(self, attempt: int | None) -> bool:
        """A data call sent in another attempt, or arriving while the shard is quiesced."""
        return self._quiesced or (attempt is not None and attempt != self.spec.attempt)

    def _receive(self, kind: int, input_id: int, payload: Any, mark: Any = None) -> None:
        cpu = time.thread_time()
        try:
            for step in self._aligner.receive(kind, input_id, payload, mark):
                if isinstance(step, Aligned):
                    self._end_epoch(step)
                else:
                    self._process(step.batch, step.input_id)
        except BaseException as err:
            if err is not self._uploader.failure:  # not the epoch thread's, raised again
                err = self._contextualize(err)
                self._fail(err)
            raise err
        finally:
            self.stats_["busy_cpu_seconds"] += time.thread_time() - cpu

    def _end_epoch(self, step: Aligned) -> None:
        """Complete an aligned epoch: here, or on the epoch thread (``shard_epochs.py``)."""
        self._fence()  # the previous epoch is complete (and did not fail)
        self._epoch = epoch = step.epoch
        marks = combine(step.marks)
        load = self._load_report()
        if self._overlaps(step.final):
            self.logic.detach()  # the epoch's buffered input, moved aside in O(1)
            self._submit_epoch(epoch, lambda: self._complete(
                epoch, final=False, watermark=marks, load=load))
        else:
            self._complete(epoch, final=step.final, watermark=marks, load=load)
        self._epoch = epoch + 1

    def _process(self, batch: pa.RecordBatch, input_id: int) -> None:
        t = time.perf_counter()
        side = 0
        if self._sides is None:
            self.logic.process(batch)
        else:
            side = self._sides[input_id]
            self.logic.process(batch, side)
        t2 = time.perf_counter()
        self.stats_["process_seconds"] += t2 - t
        if self._tracker is not None:
            self._tracker.observe(batch.column(self._input_keys[side]), counts_of(self.logic))
            self.stats_["track_seconds"] += time.perf_counter() - t2
        self.stats_["rows_in"] += batch.num_rows
        self.stats_["batches_in"] += 1
        self._metrics.batch(batch.num_rows)

    def _complete(self, epoch: int, *, final: bool, watermark: tuple[int | None, bool],
                  load: dict[str, Any] | None) -> None:
        """Steps 1-3 of the module docstring for an aligned ``epoch``.

        ``watermark``: the inputs' combined ``(watermark, idle)`` at the barrier;
        ``load``: the epoch's load report (taken on the data thread).
        """
        t0 = time.perf_counter()
        self._fault("barrier")
        self._heap.maybe_release()  # the previous epoch's garbage back to the OS (heap.py)
        wm, idle = watermark
        self._watermark = wm
        advance = getattr(self.logic, "advance_watermark", None)
        if self.spec.event_time and wm is not None and advance is not None:
            advance(wm)  # event-time operators close windows by the sources' watermark
        chunks: Iterator[pa.Table] | None = None
        if self._forwards_changelog:  # the next stage retracts what this one replaced
            out = _as_table(self.logic.changelog(epoch))
        elif final:
            out, chunks = None, self._final_chunks()
        else:
            out = _as_table(self.logic.on_barrier(epoch))
        down = self.spec.downstream
        rows_out = 0
        if down is not None:
            assert self._outbox is not None  # connected before the first epoch
            for part in [out] if chunks is None else chunks:
                if part is not None:
                    self._forward(part, down, self._outbox)
            self._outbox.broadcast("finish" if final else "barrier", epoch,
                                   self.spec.downstream_offset + self.spec.index, wm, idle)
            self._outbox.reap()
            out = None
        elif chunks is not None:
            out, rows_out = self._stage_final(epoch, chunks)
        late = (_as_table(self.logic.late_rows())
                if getattr(self.spec.stage.operator, "late", "drop") == "emit" else None)
        if out is not None:
            rows_out = out.num_rows
            self.stats_["rows_out"] += out.num_rows
        self.stats_["epochs"] += 1
        meta = {
            "stage": self.spec.stage.name, "index": self.spec.index,
            "num_shards": self.spec.stage.num_shards, "engine": self.spec.stage.engine,
            "rows_in": int(self.stats_["rows_in"]), "final": final,
        }
        if self.spec.checkpoint is None:
            seconds = time.perf_counter() - t0
            self.stats_["seal_seconds"] += seconds
            self._metrics.epoch(seconds, self.stats_["rows_out"], self.engine, self._tracker,
                            getattr(self.logic, "late_events", 0))
            ack = Ack(epoch, self.name, output=out, rows_out=rows_out, metadata=meta,
                      seal_seconds=seconds, load=load, late_output=late)
            self._stage_output(ack)
            self._uploader.post(ack)
            return
        from raykv.checkpointing import link_files

        files = self.engine.seal()
        staging = self._links_dir / f"e{epoch:012d}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        link_files(self.spec.data_dir, files, staging)
        seconds = time.perf_counter() - t0
        self.stats_["seal_seconds"] += seconds
        self._metrics.epoch(seconds, self.stats_["rows_out"], self.engine, self._tracker,
                            getattr(self.logic, "late_events", 0))
        self._uploader.queue(Ack(epoch, self.name, output=out, rows_out=rows_out,
                                 staging=str(staging), files=files, metadata=meta,
                                 seal_seconds=seconds, load=load, late_output=late))

    def _final_chunks(self) -> Iterator[pa.Table]:
        """The end-of-input output as non-empty tables, one engine chunk at a time.

        ``logic.finish_chunks()`` when the logic has it (memory: one chunk), else
        ``logic.finish()`` as one table. Fault point ``"chunk"`` before each chunk.
        """
        stream = getattr(self.logic, "finish_chunks", None)
        batches = stream() if stream is not None else iter([self.logic.finish()])
        for batch in batches:
            table = _as_table(batch)
            if table is not None:
                self._fault("chunk")
                yield table

    def _load_report(self) -> dict[str, Any] | None:
        if self._tracker is None:
            return None
        out = self._tracker.report()
        out["write_amplification"] = self.engine.stats.write_amplification
        cpu = self.stats_["busy_cpu_seconds"] + self._epoch_cpu
        out["cpu_seconds"], self._cpu_reported = cpu - self._cpu_reported, cpu
        return out

    def _forward(self, out: pa.Table, down: StageSpec, outbox: Outbox) -> None:
        """Re-partition ``out`` by the next stage's key and send it (backpressure)."""
        for batch in out.combine_chunks().to_batches():
            outbox.send_parts(split_batch(batch, self.spec.downstream_key or down.key,
                                          down.partitioning),
                              self.spec.downstream_offset + self.spec.index)
        self.stats_["rows_out"] += out.num_rows
        self._metrics.inflight(down, outbox.queues)

    @ray.method(concurrency_group="io")
    def stats(self) -> dict[str, Any]:
        """Counters of this shard plus its engine's stats (``engine.stats``, memory)."""
        out: dict[str, Any] = dict(self.stats_)
        out["shard"] = self.name
        out["stage"] = self.spec.stage.name
        out["node_id"] = self._node_id
        out["pid"] = os.getpid()
        out["process_cpu_seconds"] = process_cpu_seconds()
        out["watermark"] = self._watermark
        out["late_events"] = getattr(self.logic, "late_events", 0)
        engine = self.engine
        if engine is not None:
            s = engine.stats
            out["engine"] = {
                "name": self.spec.stage.engine, "app_bytes": s.app_bytes,
                "disk_bytes": s.disk_bytes, "seals": s.seals, "merges": s.merges,
                "write_amplification": s.write_amplification,
            }
            with contextlib.suppress(Exception):  # best effort while another thread writes
                out["engine"]["memory_bytes"] = engine.__sizeof__()
        return out

    @ray.method(concurrency_group="ping")
    def ping(self) -> int:
        """Return the actor's pid (liveness probe; answered even while uploads wait)."""
        return os.getpid()

    def close(self) -> None:
        """Stop the upload thread and close the engine (seals it). Idempotent."""
        self._fence(check=False)
        self._uploader.close(timeout=60)
        if self.engine is not None:
            self.engine.close()


# Ray's stubs do not type ``ray.remote(**options)`` applied to a class (``concurrency_groups``
# is missing from the keyword overload).
ShardActor = ray.remote(concurrency_groups={"io": 1, "ping": 1}, max_restarts=0)(  # type: ignore[call-overload]
    ShardWorker)
"""The Ray actor class of :class:`ShardWorker` (groups default, ``io``, ``ping``: 1 thread each)."""

__all__ = ["BARRIER", "DATA", "FINISH", "ShardActor", "ShardWorker"]
