"""The shard actor: one engine, one operator, aligned barriers, background uploads.

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
driver learns of durable uploads without queueing behind data. One background thread
uploads sealed epochs in epoch order.

Aligned barriers (DESIGN invariant 2): a shard of stage ``s > 0`` has one input per shard
of stage ``s - 1`` (a first-stage shard has one input: the driver). When ``barrier(e)``
has arrived from some inputs but not all, further data from those inputs is buffered;
when it has arrived from all of them the epoch is complete:

1. ``out = logic.on_barrier(e)`` (``logic.finish()`` for the final epoch);
2. ``out`` is re-partitioned by the next stage's key and sent on, followed by
   ``barrier(e)`` to every next-stage shard; on the last stage it is kept for the driver;
3. ``engine.seal()``; the live files are hard-linked into a staging dir
   (``link_files``) and queued for upload; processing resumes with the buffered input;
4. the upload thread runs ``store.upload_shard`` and records an :class:`Ack` that
   ``wait_uploaded(e)`` returns.

A failure of any call poisons the shard: every later call raises the same error, so the
driver sees it whichever ref it waits on. Before that, the error is given its context
(``raykv.errors.failure_context``: stage, shard, epoch; key and ``user_code`` when user
code raised it, see :meth:`ShardWorker._contextualize`), because the driver only receives
the pickled exception: an error from user code keeps its type and gets two notes, where it
happened and the traceback formatted here (docs/recovery.md, "Failure classification").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import shutil
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from raykv.errors import CorruptionError, UserCodeError, add_context, failure_context
from raykv.hotkeys import LoadTracker
from raykv.metrics import ShardMetrics
from raykv.partitioning import Partitioning, key_groups_of, split_batch

DATA, BARRIER, FINISH = 0, 1, 2
REBUILD_CHUNK = 65_536
DIR_FREE_TIMEOUT = 60.0


# ---------------------------------------------------------------------------- specs


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
        downstream: the next stage (``None`` on the last stage).
        checkpoint: checkpoint store URL, or ``None`` (no seals, no uploads).
        storage_options: fsspec options of the store.
        driver_io: the driver uploads from the staging dir and restores before ``setup``
            (``memory://`` stores live in the driver's process).
        max_inflight: calls to one downstream shard in flight before waiting.
        faults: ``raykv.testing.Faults`` or ``None``.
        attempt: run attempt number (0, then +1 per recovery).
        first_epoch: the epoch number of the attempt's first barrier (``None``: unknown);
            the shard counts from it to name the epoch of a failure.
        hot_keys: Space-Saving counters of the shard's :class:`raykv.hotkeys.LoadTracker`
            (0: no load tracking).
        track_groups: also count updates per key group (the rebalancer needs them).
        pipeline: the ``pipeline`` tag of the shard's metrics (``raykv.metrics``).
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
    faults: Any = None
    attempt: int = 0
    first_epoch: int | None = None
    hot_keys: int = 0
    track_groups: bool = False
    pipeline: str = ""

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
        output: the last stage's output of the epoch (``None`` elsewhere or when empty).
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
    staging: str | None = None
    files: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    seal_seconds: float = 0.0
    load: dict[str, Any] | None = None


# ---------------------------------------------------------------------------- helpers


def routing_key_fn(operator: Any) -> Any:
    """Return ``f(state_key) -> key bytes | None``: the encoded key that was hashed.

    Uses the operator's ``routing_key(state_key)`` (``KeyedOperator`` has one: windows
    strip their 8-byte suffix; metadata keys give ``None``, meaning "every shard keeps a
    copy"). An operator without one has state keys equal to its encoded keys.
    """
    fn = getattr(operator, "routing_key", None)
    if callable(fn):
        return fn
    return lambda k: k


def _route_groups(keys: list[bytes], route: Any, num_key_groups: int) -> tuple[list[Any], Any]:
    """The routing key (``None``: metadata) and the key group of each state key."""
    routed = [route(k) for k in keys]
    return routed, key_groups_of([b"" if r is None else r for r in routed], num_key_groups)


def _as_table(out: Any) -> pa.Table | None:
    if out is None:
        return None
    if isinstance(out, pa.RecordBatch):
        out = pa.Table.from_batches([out])
    if not isinstance(out, pa.Table):
        msg = f"an operator returned {type(out).__name__}; expected a pyarrow RecordBatch or None"
        raise TypeError(msg)
    return out if out.num_rows else None


def wait_dir_free(path: Path, timeout: float = DIR_FREE_TIMEOUT) -> None:
    """Wait until no process holds the engine lock of ``path`` (a killed actor's exit).

    Raises:
        TimeoutError: still locked after ``timeout`` seconds.
    """
    lock = path / "LOCK"
    if not lock.exists():
        return
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        finally:
            os.close(fd)
        if time.monotonic() > deadline:
            msg = (
                f"data directory {path} is still locked by another process after {timeout:.0f}s; "
                "is an old shard actor still running? kill it or use another local_dir"
            )
            raise TimeoutError(msg)
        time.sleep(0.05)


def wipe_dir(path: Path) -> None:
    """Remove ``path`` and everything in it, then recreate it empty."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def _annotate(err: BaseException, context: str) -> BaseException:
    """Return ``err`` with ``context`` prepended (same type when possible)."""
    if isinstance(err, ray.exceptions.RayError) or not isinstance(err, ValueError | TypeError):
        return err
    text = f"{context}: {err}"
    try:
        new = type(err)(text)
    except Exception:
        new = ValueError(text) if isinstance(err, ValueError) else TypeError(text)
    new.__cause__ = err
    return new


def _round_trips(err: BaseException) -> str:
    """``""`` if ``err`` survives Ray's pickling unchanged, else why not."""
    try:
        back = ray.cloudpickle.loads(ray.cloudpickle.dumps(err))
        same = (type(back) is type(err) and str(back) == str(err)
                and getattr(back, "__notes__", None) == getattr(err, "__notes__", None))
    except Exception as why:
        return f"{type(why).__name__}: {why}"
    return "" if same else "its type, message or notes change when it is unpickled"


def _where(ctx: dict[str, Any]) -> str:
    """``stage 's', shard x, key k, epoch e`` from a failure context (parts that are known)."""
    parts = []
    if "stage" in ctx:
        parts.append(f"stage {ctx['stage']!r}")
    for name in ("shard", "key", "epoch"):
        if name in ctx:
            parts.append(f"{name} {ctx[name]}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------- the worker


class ShardWorker:
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
        self._down: list[Any] = []
        self._inflight: dict[int, deque[Any]] = {}
        self._arrived: set[int] = set()
        self._aligning: tuple[int, int] | None = None  # (kind, epoch) being aligned
        self._blocked: list[tuple[int, int, Any]] = []
        self._failure: BaseException | None = None
        self._epoch: int | None = spec.first_epoch  # the epoch the stream is in
        self._upload_failure: BaseException | None = None
        self._queued: set[int] = set()  # epochs sealed and handed to the upload thread
        self._cond = threading.Condition()
        self._acks: dict[int, Ack] = {}
        self._uploads: queue.Queue[Any] = queue.Queue()
        self._uploader: threading.Thread | None = None
        self._counts = {"process": 0, "barrier": 0, "upload": 0, "rebalance": 0}
        self._node_id: str | None = None
        self._tracker: LoadTracker | None = None
        self._cpu_reported = 0.0
        self._metrics = ShardMetrics(spec.pipeline, spec.stage.name, spec.name)
        self.stats_: dict[str, float] = {
            "rows_in": 0, "batches_in": 0, "rows_out": 0, "epochs": 0, "seal_seconds": 0.0,
            "upload_seconds": 0.0, "bytes_uploaded": 0, "files_uploaded": 0,
            "process_seconds": 0.0, "restore_seconds": 0.0, "restored_bytes": 0,
            "track_seconds": 0.0, "rebalances": 0, "rebalance_seconds": 0.0,
            "busy_cpu_seconds": 0.0,
        }

    # ------------------------------------------------------------------ setup

    def _get_store(self) -> Any:
        if self._store is None:
            from raykv.checkpointing import CheckpointStore

            self._store = CheckpointStore(self.spec.checkpoint, self.spec.storage_options)
        return self._store

    def setup(self, plan: RestorePlan) -> dict[str, Any]:
        """Restore or create the state described by ``plan``; open engine and operator.

        Returns facts for the driver: node id, pid, restore seconds, keys rebuilt.
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
        # staged links of a previous incarnation: never needed again (epochs it did not
        # upload are replayed)
        shutil.rmtree(data_dir.parent / f".staging-{self.name}", ignore_errors=True)
        if spec.faults is not None and spec.faults.restore_delay and plan.epoch is not None:
            time.sleep(spec.faults.restore_delay)
        rebuilt = 0
        if plan.epoch is None:
            wipe_dir(data_dir)
            self.engine = open_engine(spec.stage.engine, data_dir, **spec.stage.engine_params)
        elif plan.direct is not None:
            if not plan.materialized:
                self._get_store().restore_shard(plan.epoch, plan.direct.shard, data_dir)
            self.engine = open_engine(spec.stage.engine, data_dir, **spec.stage.engine_params)
        else:
            wipe_dir(data_dir)
            self.engine = open_engine(spec.stage.engine, data_dir, **spec.stage.engine_params)
            rebuilt = self._rebuild(plan)
        self.logic = spec.stage.operator.build(self.engine)
        if spec.hot_keys:
            self._tracker = LoadTracker(
                spec.stage.key, spec.stage.partitioning.num_key_groups, spec.hot_keys,
                track_groups=spec.track_groups,
            )
        if spec.checkpoint is not None:
            from raykv.checkpointing import link_files  # noqa: F401 - import before epoch 1

            if not spec.driver_io:
                self._get_store()  # connect now: fail fast, keep the first upload cheap
        self._cleanup_siblings()
        self._start_uploader()
        self.stats_["restore_seconds"] = time.perf_counter() - t0
        self._node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return {
            "shard": self.name,
            "node_id": self._node_id,
            "pid": os.getpid(),
            "restore_seconds": self.stats_["restore_seconds"],
            "rebuilt_keys": rebuilt,
        }

    def _rebuild(self, plan: RestorePlan) -> int:
        """Copy the keys of this shard's key groups out of the old shards' states."""
        assert plan.epoch is not None
        part = self.spec.stage.partitioning
        copied = self._copy_from(plan.epoch, plan.rebuild, part.owned_mask(self.spec.index))
        self.engine.seal()
        return copied

    def _copy_from(self, epoch: int, sources: tuple[RestoreSource, ...], wanted: Any) -> int:
        """Copy the pairs of ``sources`` at ``epoch`` whose key group is ``wanted[group]``.

        Each source is restored into a temporary dir (unless the driver already did:
        ``local_dir``), opened and scanned once. Metadata keys (``routing_key(k) is None``)
        belong to every shard: their values in the sources and in this shard's engine
        are merged by the operator (e.g. windows keep the highest watermark). Returns the
        number of pairs written.
        """
        from raykv.engines import open_engine

        spec = self.spec
        route = routing_key_fn(spec.stage.operator)
        groups_n = spec.stage.partitioning.num_key_groups
        copied = 0
        meta: dict[bytes, list[bytes]] = {}  # metadata key -> its value in each old shard
        for src in sources:
            if src.local_dir is not None:
                tmp = Path(src.local_dir)
            else:
                tmp = Path(spec.data_dir).parent / f".rebuild-{self.name}-{src.shard}"
                wipe_dir(tmp)
                self._get_store().restore_shard(epoch, src.shard, tmp)
            old = open_engine(src.engine, tmp, **src.engine_params)
            try:
                keys: list[bytes] = []
                values: list[bytes] = []
                for k, v in old.items():
                    keys.append(k)
                    values.append(v)
                    if len(keys) >= REBUILD_CHUNK:
                        copied += self._copy_owned(keys, values, route, wanted, groups_n, meta)
                        keys, values = [], []
                copied += self._copy_owned(keys, values, route, wanted, groups_n, meta)
            finally:
                old.close()
            shutil.rmtree(tmp, ignore_errors=True)
        if meta:
            op = spec.stage.operator
            pairs = []
            for k, vs in meta.items():
                own = self.engine.get(k)
                pairs.append((k, op.merge_metadata(k, [own, *vs] if own else vs)))
            self.engine.multi_set(pairs)
            copied += len(pairs)
        return copied

    def _copy_owned(
        self, keys: list[bytes], values: list[bytes], route: Any, wanted: Any,
        groups_n: int, meta: dict[bytes, list[bytes]],
    ) -> int:
        """``multi_set`` the pairs whose key group is ``wanted``; collect metadata keys."""
        if not keys:
            return 0
        routed, g = _route_groups(keys, route, groups_n)
        keep = wanted[g].tolist()
        pairs = []
        for k, v, ok, r in zip(keys, values, keep, routed, strict=True):
            if r is None:
                meta.setdefault(k, []).append(v)
            elif ok:
                pairs.append((k, v))
        if pairs:
            self.engine.multi_set(pairs)
        return len(pairs)

    def _drop_unowned(self) -> int:
        """Delete this shard's pairs whose key group it no longer owns. Returns how many."""
        part = self.spec.stage.partitioning
        owned = part.owned_mask(self.spec.index)
        route = routing_key_fn(self.spec.stage.operator)
        doomed: list[bytes] = []
        chunk: list[bytes] = []

        def flush() -> None:
            routed, g = _route_groups(chunk, route, part.num_key_groups)
            doomed.extend(k for k, r, ok in zip(chunk, routed, owned[g].tolist(), strict=True)
                          if r is not None and not ok)
            chunk.clear()

        for k in self.engine.keys():  # noqa: SIM118 - an engine, not a dict
            chunk.append(k)
            if len(chunk) >= REBUILD_CHUNK:
                flush()
        flush()
        for k in doomed:
            self.engine.delete(k)
        return len(doomed)

    def rebalance(self, epoch: int, partitioning: Partitioning,
                  sources: tuple[RestoreSource, ...]) -> dict[str, Any]:
        """Take over the key groups ``partitioning`` gives this shard, drop those it takes away.

        Called by the driver at an epoch boundary: ``epoch`` is committed and no data is
        in flight. The gained groups' keys are copied from ``sources`` (the shards that
        owned them) as of ``epoch``; then the lost groups' keys are deleted and the
        operator is rebuilt on the engine. Nothing is sealed: the next epoch's checkpoint
        holds the new state, and a failure before it commits restores ``epoch`` with the
        old assignment. Cost: a scan of every source's state and of this shard's own.
        """
        self._check_ok()
        cpu = time.thread_time()
        try:
            t0 = time.perf_counter()
            spec = self.spec
            gained = partitioning.owned_mask(spec.index) & ~spec.stage.partitioning.owned_mask(
                spec.index)
            self.spec = replace(spec, stage=replace(spec.stage, partitioning=partitioning))
            copied = self._copy_from(epoch, sources, gained)
            self._fault("rebalance")
            dropped = self._drop_unowned()
            self.logic = spec.stage.operator.build(self.engine)
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

    def set_downstream_partitioning(self, partitioning: Partitioning) -> None:
        """Route this shard's output by ``partitioning`` from now on (next stage rebalanced)."""
        self._check_ok()
        down = self.spec.downstream
        assert down is not None
        self.spec = replace(self.spec, downstream=replace(down, partitioning=partitioning))

    def _cleanup_siblings(self) -> None:
        """Delete local dirs of this stage's shards that are not in the current layout."""
        stage_dir = Path(self.spec.data_dir).parent
        current = set(self.spec.stage.shard_names)
        try:
            entries = list(stage_dir.iterdir())
        except FileNotFoundError:
            return
        for d in entries:
            if not d.is_dir():
                continue
            name = d.name.removeprefix(".staging-") if d.name.startswith(".staging-") else d.name
            if not name.startswith(".") and name not in current:
                shutil.rmtree(d, ignore_errors=True)

    def set_downstream(self, handles: list[Any]) -> None:
        """Connect the next stage's shard actors (by index)."""
        self._down = list(handles)
        self._inflight = {j: deque() for j in range(len(handles))}

    # ------------------------------------------------------------------ the stream

    def process(self, batch: pa.RecordBatch, input_id: int = 0) -> int:
        """Apply ``batch`` from ``input_id`` (buffered if that input is past a barrier).

        Returns the number of rows received. Raises the operator's ``ValueError``/
        ``TypeError`` with the stage, key column and shard named, and an error of user
        code as the user's exception with stage, shard, key, epoch and traceback noted
        (see :meth:`_contextualize`).
        """
        self._check_ok()
        self._fault("process")
        faults = self.spec.faults
        if faults is not None and faults.process_delay:
            time.sleep(faults.process_delay)
        self._receive(DATA, input_id, batch)
        return int(batch.num_rows)

    def barrier(self, epoch: int, input_id: int = 0) -> None:
        """``barrier(epoch)`` from ``input_id``: the input's records of ``epoch`` are all in."""
        self._check_ok()
        self._receive(BARRIER, input_id, epoch)

    def finish(self, epoch: int, input_id: int = 0) -> None:
        """End of bounded input from ``input_id``; the final epoch ``epoch`` emits ``finish()``."""
        self._check_ok()
        self._receive(FINISH, input_id, epoch)

    def _receive(self, kind: int, input_id: int, payload: Any) -> None:
        cpu = time.thread_time()
        try:
            self._run_items(deque([(kind, input_id, payload)]))
        except BaseException as err:
            err = self._contextualize(err)
            self._fail(err)
            raise err
        finally:
            self.stats_["busy_cpu_seconds"] += time.thread_time() - cpu

    def _run_items(self, items: deque[tuple[int, int, Any]]) -> None:
        while items:
            kind, input_id, payload = items.popleft()
            if input_id in self._arrived:
                self._blocked.append((kind, input_id, payload))
                continue
            if kind == DATA:
                t = time.perf_counter()
                self.logic.process(payload)
                t2 = time.perf_counter()
                self.stats_["process_seconds"] += t2 - t
                if self._tracker is not None:
                    self._tracker.observe(payload.column(self.spec.stage.key))
                    self.stats_["track_seconds"] += time.perf_counter() - t2
                self.stats_["rows_in"] += payload.num_rows
                self.stats_["batches_in"] += 1
                self._metrics.batch(payload.num_rows)
                continue
            if not 0 <= input_id < self.spec.num_inputs:
                msg = f"{self._context}: barrier from unknown input {input_id}"
                raise RuntimeError(msg)
            if self._aligning is None:
                self._aligning = (kind, payload)
            elif self._aligning != (kind, payload):
                msg = (
                    f"{self._context}: barrier mismatch: aligning {self._aligning}, "
                    f"input {input_id} sent {(kind, payload)}"
                )
                raise RuntimeError(msg)
            self._arrived.add(input_id)
            if len(self._arrived) == self.spec.num_inputs:
                self._arrived = set()
                self._aligning = None
                self._epoch = payload
                self._complete(payload, final=kind == FINISH)
                self._epoch = payload + 1
                items.extendleft(reversed(self._blocked))
                self._blocked = []

    def _complete(self, epoch: int, *, final: bool) -> None:
        """Steps 1-3 of the module docstring for an aligned ``epoch``."""
        t0 = time.perf_counter()
        self._fault("barrier")
        out = _as_table(self.logic.finish() if final else self.logic.on_barrier(epoch))
        down = self.spec.downstream
        if down is not None:
            if out is not None:
                self._forward(out, down)
            me = self.spec.index
            for h in self._down:
                (h.finish if final else h.barrier).remote(epoch, me)
            self._reap()
            out = None
        if out is not None:
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
            self._metrics.epoch(seconds, self.stats_["rows_out"], self.engine, self._tracker)
            self._post(Ack(epoch, self.name, output=out, metadata=meta, seal_seconds=seconds,
                           load=self._load_report()))
            return
        from raykv.checkpointing import link_files

        files = self.engine.seal()
        staging = Path(self.spec.data_dir).parent / f".staging-{self.name}" / f"e{epoch:012d}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        link_files(self.spec.data_dir, files, staging)
        seconds = time.perf_counter() - t0
        self.stats_["seal_seconds"] += seconds
        self._metrics.epoch(seconds, self.stats_["rows_out"], self.engine, self._tracker)
        with self._cond:
            self._queued.add(epoch)
        self._uploads.put(Ack(epoch, self.name, output=out, staging=str(staging), files=files,
                              metadata=meta, seal_seconds=seconds, load=self._load_report()))

    def _load_report(self) -> dict[str, Any] | None:
        if self._tracker is None:
            return None
        out = self._tracker.report()
        out["write_amplification"] = self.engine.stats.write_amplification
        cpu = self.stats_["busy_cpu_seconds"]
        out["cpu_seconds"], self._cpu_reported = cpu - self._cpu_reported, cpu
        return out

    def _forward(self, out: pa.Table, down: StageSpec) -> None:
        import ray as _ray

        me = self.spec.index
        for batch in out.combine_chunks().to_batches():
            for j, sub in split_batch(batch, down.key, down.partitioning).items():
                q = self._inflight[j]
                q.append(self._down[j].process.remote(sub, me))
                if len(q) > self.spec.max_inflight:
                    _ray.get(q.popleft())
        self.stats_["rows_out"] += out.num_rows
        self._metrics.inflight(down, self._inflight)

    def _reap(self) -> None:
        """Collect finished downstream calls (raising their errors)."""
        for q in self._inflight.values():
            while q:
                ready, _ = ray.wait([q[0]], timeout=0)
                if not ready:
                    break
                ray.get(q.popleft())

    # ------------------------------------------------------------------ uploads

    def _start_uploader(self) -> None:
        if self._uploader is None:
            self._uploader = threading.Thread(
                target=self._upload_loop, name=f"raykv-upload-{self.name}", daemon=True
            )
            self._uploader.start()

    def _upload_loop(self) -> None:
        while True:
            ack = self._uploads.get()
            if ack is None:
                return
            try:
                self._fault("upload")
                faults = self.spec.faults
                if faults is not None and faults.upload_delay:
                    time.sleep(faults.upload_delay)
                if not self.spec.driver_io:
                    t = time.perf_counter()
                    sm = self._get_store().upload_shard(
                        ack.epoch, self.name, ack.staging, ack.files, metadata=ack.metadata
                    )
                    self.stats_["upload_seconds"] += time.perf_counter() - t
                    self._metrics.upload(time.perf_counter() - t, sm)
                    self.stats_["bytes_uploaded"] += sm.new_bytes
                    self.stats_["files_uploaded"] += sm.new_files
                    assert ack.staging is not None
                    shutil.rmtree(ack.staging, ignore_errors=True)
                    ack.manifest = sm
                    ack.staging = None
                self._post(ack)
            except BaseException as err:
                self._add_context(err, epoch=ack.epoch, phase="upload")
                with self._cond:
                    self._upload_failure = err
                self._fail(err)
                return

    def _post(self, ack: Ack) -> None:
        with self._cond:
            self._acks[ack.epoch] = ack
            self._queued.discard(ack.epoch)
            self._cond.notify_all()

    @ray.method(concurrency_group="io")
    def wait_uploaded(self, epoch: int) -> Ack:
        """Block until ``epoch`` is sealed and uploaded here; return its :class:`Ack`.

        Runs in the ``"io"`` group: it never waits behind data processing. An epoch sealed
        before the shard failed is still acknowledged once its upload is durable; any
        other epoch raises the shard's failure.
        """
        with self._cond:
            while epoch not in self._acks:
                if self._upload_failure is not None:
                    raise self._upload_failure
                if self._failure is not None and epoch not in self._queued:
                    raise self._failure
                self._cond.wait()
            return self._acks.pop(epoch)

    @ray.method(concurrency_group="io")
    def stats(self) -> dict[str, Any]:
        """Counters of this shard plus its engine's stats (``engine.stats``, memory)."""
        out: dict[str, Any] = dict(self.stats_)
        out["shard"] = self.name
        out["stage"] = self.spec.stage.name
        out["node_id"] = self._node_id
        out["pid"] = os.getpid()
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

    @ray.method(concurrency_group="io")
    def ping(self) -> int:
        """Return the actor's pid (liveness probe)."""
        return os.getpid()

    def close(self) -> None:
        """Stop the upload thread and close the engine (seals it). Idempotent."""
        if self._uploader is not None:
            self._uploads.put(None)
            self._uploader.join(timeout=60)
            self._uploader = None
        if self.engine is not None:
            self.engine.close()

    # ------------------------------------------------------------------ failure

    def _add_context(self, err: BaseException, *, epoch: int | None = None,
                     phase: str | None = None) -> None:
        """Record stage, shard and epoch on ``err`` (not on Ray's errors: not ours)."""
        if isinstance(err, ray.exceptions.RayError):
            return
        add_context(err, stage=self.spec.stage.name, shard=self.name,
                    epoch=self._epoch if epoch is None else epoch, phase=phase)

    def _contextualize(self, err: BaseException) -> BaseException:
        """The error a failed ``process``/``barrier``/``finish`` raises and poisons the shard with.

        * Ray errors (a downstream shard's failure, a dead actor) pass unchanged: the shard
          that failed first described its own error.
        * An error of user code (marked by the operator, ``raykv.errors.mark_user_code``)
          stays the user's exception object, with stage, shard and epoch added to its
          ``failure_context`` and two notes: where it happened, and its traceback as
          formatted here (``__traceback__`` does not survive pickling). One that would not
          survive Ray's pickling unchanged is replaced by a ``UserCodeError`` describing it.
        * Other ``ValueError``/``TypeError`` get the stage and shard prepended to their
          message (``_annotate``); every error gets its ``failure_context``.
        """
        if isinstance(err, ray.exceptions.RayError):
            return err
        ctx = failure_context(err)
        if "user_code" not in ctx:
            err = _annotate(err, self._context)
            self._add_context(err)
            return err
        if "shard" in ctx:  # described already (raised again)
            return err
        tb = "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip()
        self._add_context(err)
        ctx = failure_context(err)
        what = f"{ctx['user_code']} raised {type(err).__name__}"
        err.add_note(f"raykv: {what} in {_where(ctx)} (key column {self.spec.stage.key!r})")
        err.add_note(f"raykv: remote traceback (shard {self.name}, pid {os.getpid()}):\n{tb}")
        why = _round_trips(err)
        if not why:
            return err
        name = f"{type(err).__module__}.{type(err).__qualname__}"
        msg = (
            f"{what} in {_where(ctx)}: {err}; the exception cannot be sent from the shard "
            f"actor to the driver ({why}), so raykv raises UserCodeError in its place. "
            f"Remote traceback:\n{tb}"
        )
        new = UserCodeError(msg, error_type=name, context=ctx)
        new.__cause__ = err
        return new

    def _fail(self, err: BaseException) -> None:
        with self._cond:
            if self._failure is None:
                self._failure = err
            self._cond.notify_all()

    def _check_ok(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fault(self, point: str) -> None:
        faults = self.spec.faults
        if faults is None or faults.crash_at is None:
            return
        prefix, at, n = faults.crash_at
        if at != point or not self.name.startswith(prefix):
            return
        if self.spec.attempt not in faults.crash_attempts:
            return
        self._counts[point] += 1
        if self._counts[point] == n:
            os._exit(1)


ShardActor = ray.remote(concurrency_groups={"io": 1}, max_restarts=0)(ShardWorker)
"""The Ray actor class of :class:`ShardWorker` (default group: 1 thread; ``"io"``: 1)."""

__all__ = [
    "Ack",
    "RestorePlan",
    "RestoreSource",
    "ShardActor",
    "ShardSpec",
    "ShardWorker",
    "StageSpec",
    "routing_key_fn",
    "wait_dir_free",
]
