"""The driver side of a run: epochs, commits, failure detection, recovery, rescaling.

The coordinator lives in the driver (the process that calls ``Pipeline.run``). It reads
the source, splits each batch by the first stage's partitioning and sends the pieces to
the first-stage shard actors (at most ``max_inflight`` calls in flight per shard:
backpressure, and where a dead actor surfaces). It ends an epoch every
``checkpoint_interval`` seconds or ``epoch_every_batches`` batches by sending
``barrier(e)`` to every first-stage shard; Ray delivers one caller's calls to one actor
in order, so the barrier arrives after the epoch's batches.

A commit thread waits for every shard of every stage to acknowledge ``e``
(``wait_uploaded``, answered from the actors' ``"io"`` group once the upload is
durable) and commits epochs in order, so the source never waits for an upload:

1. stage the last stage's output of ``e`` in the sink;
2. ``store.commit_epoch(e, shard manifests, offsets={"source": offset at e},
   metadata=partitioning + stages + lineage)``: THE commit, one write, last;
3. ``sink.publish(e)``; then garbage-collect down to ``retain`` epochs.

Recovery (any shard call fails, an actor dies, the store fails transiently): stop;
kill every shard actor of the run and wait until they are gone; start new ones that each
restore the last committed epoch (``restore_shard`` downloads only what the local dir
lacks); reconcile the sink (drop staged output of uncommitted epochs); reopen the source
at the committed offsets; go on. At most ``max_restarts`` times per run. Bad input
(``ValueError``/``TypeError`` from a shard or the split) is not retried: replay would
fail the same way; it is raised with the column named, and the last committed epoch
stays restorable. A corrupt or missing checkpoint file is not retried either: the
``CorruptionError`` is raised with the epochs that are still intact. Any other failure
that is not transient (``is_transient``: dead processes, lost nodes, I/O) is retried
once: when the same error (type and message) happens again at the same epoch, the run
stops and raises it (the repeat rule, :meth:`Coordinator.judge`; docs/recovery.md,
"Failure classification").

Restore with another shard count or engine (rescaling): each new shard rebuilds its
state from the old shards whose key-group ranges overlap its own. Shard names carry a
generation (``<stage>-<i>of<n>-g<gen>``) that changes with every rescale or rollback, so
engine file names never collide with files an older layout or an abandoned branch left
in the store (DESIGN invariant 1).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from raykv import rebalance
from raykv.errors import (
    CheckpointNotFoundError,
    CorruptionError,
    add_context,
    failure_context,
    mark_user_code,
)
from raykv.export import encode_operator
from raykv.metrics import DriverMetrics, pipeline_tag
from raykv.operators.base import describe_schema_change
from raykv.partitioning import DEFAULT_NUM_KEY_GROUPS, Partitioning, split_batch
from raykv.pipeline import Pipeline, ProgressEvent, RunSummary, default_local_dir
from raykv.shard import (
    Ack,
    RestorePlan,
    RestoreSource,
    ShardActor,
    ShardSpec,
    StageSpec,
    wait_dir_free,
    wipe_dir,
)
from raykv.sources import StopSource

log = logging.getLogger("raykv")

METADATA_VERSION = 1
GC_INTERVAL = 2.0
KILL_WAIT = 15.0
IDLE_SLEEP = 0.005

_RECOVERABLE_RAY = tuple(
    getattr(ray.exceptions, name)
    for name in (
        "RayActorError", "ActorDiedError", "ActorUnavailableError", "ObjectLostError",
        "OwnerDiedError", "WorkerCrashedError", "NodeDiedError", "ObjectFetchTimedOutError",
        "ObjectReconstructionFailedError", "RaySystemError", "LocalRayletDiedError",
    )
    if hasattr(ray.exceptions, name)
)


# ---------------------------------------------------------------------------- failures


class _ShardFailure(Exception):
    """A shard call failed (the wrapped error came out of ``ray.get``)."""

    def __init__(self, err: BaseException) -> None:
        super().__init__(str(err))
        self.err = err


class _CommitFailure(Exception):
    """The driver's commit step failed (store write, sink)."""

    def __init__(self, err: BaseException) -> None:
        super().__init__(str(err))
        self.err = err


class _HookFailure(Exception):
    """``on_progress`` raised."""

    def __init__(self, err: BaseException) -> None:
        super().__init__(str(err))
        self.err = err


def root_cause(err: BaseException) -> BaseException:
    """Unwrap Ray task errors (nested when an actor called an actor) to the original error."""
    for _ in range(16):
        if isinstance(err, _ShardFailure | _CommitFailure | _HookFailure):
            err = err.err
            continue
        cause = getattr(err, "cause", None)
        if isinstance(err, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
            err = cause
            continue
        break
    return err


def _is_user_error(err: BaseException) -> bool:
    return isinstance(err, ValueError | TypeError) and not isinstance(err, ray.exceptions.RayError)


def classify(err: BaseException) -> str:
    """``"recover"`` for failures a restart can fix, ``"fatal"`` for everything else.

    Recoverable: a shard call that failed for any reason but bad input or a corrupt /
    missing checkpoint (dead actors, lost objects, I/O errors inside a shard), and
    ``OSError`` (e.g. ``StoreUnavailableError``) in the driver's commit step. Fatal: bad
    input (``ValueError``/``TypeError``), ``CorruptionError``, ``CheckpointNotFoundError``,
    errors of the source, the sink or ``on_progress``, and interrupts.
    """
    root = root_cause(err)
    if isinstance(err, _ShardFailure):
        if _is_user_error(root) or isinstance(root, CorruptionError | CheckpointNotFoundError):
            return "fatal"
        if isinstance(root, KeyboardInterrupt | SystemExit):
            return "fatal"
        return "recover"
    if isinstance(err, _CommitFailure):
        if isinstance(root, CorruptionError):
            return "fatal"
        if isinstance(root, (OSError, *_RECOVERABLE_RAY)):
            return "recover"
        return "fatal"
    return "fatal"


def is_transient(root: BaseException) -> bool:
    """Whether a failure (a root cause) comes from the environment, not the data or code.

    Transient: ``OSError`` (an unreachable store, a full disk, a timeout) and Ray's system
    errors (a dead actor, worker or node, a lost object). They are retried up to
    ``max_restarts`` times however often they repeat. Every other recoverable failure is
    subject to the repeat rule (:meth:`Coordinator.judge`).
    """
    if isinstance(root, OSError):
        return True
    return isinstance(root, ray.exceptions.RayError) and not isinstance(
        root, ray.exceptions.RayTaskError | ray.exceptions.UnserializableException)


def failure_epoch(root: BaseException) -> int | None:
    """The epoch a failure happened in, as a shard or the driver recorded it (else ``None``).

    For a restore failure it is the epoch being restored.
    """
    epoch = failure_context(root).get("epoch")
    if epoch is None and isinstance(root, CorruptionError):
        epoch = root.epoch
    return epoch if isinstance(epoch, int) else None


@dataclass(frozen=True)
class Verdict:
    """What the driver does about one failure of a run attempt.

    Attributes:
        action: ``"recover"`` (restart from the last committed epoch) or ``"stop"``.
        reason: ``"transient"`` or ``"first occurrence"`` (recover); ``"repeated"``,
            ``"bad input"``, ``"corrupt checkpoint"``, ``"checkpoint not found"``,
            ``"driver"`` (the source, the sink, the driver's commit step),
            ``"on_progress"``, ``"interrupted"``, ``"max_restarts"``, ``"no checkpoint"``
            (stop).
        error: the root cause (what ``run`` raises, or the ``__cause__`` of what it raises).
        epoch: the epoch it happened in (``failure_epoch``), or ``None`` if unknown.
        attempt: the attempt that failed (0 = the first).
        first_attempt: for ``"repeated"``, the attempt the same failure happened in first.
    """

    action: str
    reason: str
    error: BaseException
    epoch: int | None
    attempt: int
    first_attempt: int | None = None

    def record(self) -> dict[str, Any]:
        """The ``RunSummary.failures`` entry (and progress event detail) of this verdict."""
        text = f"{type(self.error).__name__}: {self.error}"
        out: dict[str, Any] = {
            "attempt": self.attempt, "epoch": self.epoch, "action": self.action,
            "reason": self.reason, "error": text if len(text) <= 300 else text[:297] + "...",
        }
        if self.first_attempt is not None:
            out["first_attempt"] = self.first_attempt
        return out

    def detail(self) -> dict[str, Any]:
        """:meth:`record` without ``epoch`` and ``error`` (a progress event has its own)."""
        out = self.record()
        del out["epoch"], out["error"]
        return out


def _shard_get(refs: Any, timeout: float | None = None) -> Any:
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise
    except Exception as err:
        raise _ShardFailure(err) from err


# ---------------------------------------------------------------------------- state


@dataclass
class _Base:
    """The committed state a run attempt starts from."""

    epoch: int | None = None
    manifest: Any = None
    offset: Any = None
    rollback: bool = False
    abandoned: list[list[int]] = field(default_factory=list)
    rows_total: int = 0


@dataclass
class _Pending:
    """An epoch whose barrier was sent and that is not committed yet."""

    epoch: int
    refs: dict[str, Any]
    offset: Any
    rows: int
    final: bool


class _Committer:
    """The commit thread: waits for the acks of each pending epoch, commits in order."""

    def __init__(self, coord: Coordinator) -> None:
        self._coord = coord
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="raykv-commit", daemon=True)
        self._thread.start()

    def submit(self, pending: _Pending) -> None:
        with self._cond:
            self._queue.append(pending)
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def check(self) -> None:
        """Raise the commit thread's failure, if any."""
        if self.error is not None:
            raise self.error

    def wait_below(self, limit: int) -> None:
        """Block until fewer than ``limit`` epochs are pending (or raise a failure)."""
        with self._cond:
            while len(self._queue) >= limit and self.error is None:
                self._cond.wait(0.5)
        self.check()

    def drain(self) -> None:
        """Block until every submitted epoch is committed (or raise a failure)."""
        self.wait_below(1)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=KILL_WAIT)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                pending = self._queue[0]
            try:
                acks = self._wait_acks(pending)
                if acks is None:
                    return
                self._coord._commit(pending, acks)
            except BaseException as err:
                if not isinstance(err, _ShardFailure | _HookFailure | _CommitFailure):
                    err = _CommitFailure(err)
                with self._cond:
                    self.error = err
                    self._cond.notify_all()
                return
            with self._cond:
                self._queue.popleft()
                self._cond.notify_all()

    def _wait_acks(self, pending: _Pending) -> list[Ack] | None:
        names = list(pending.refs)
        waiting = [pending.refs[n] for n in names]
        while waiting:
            if self._stopping:
                return None
            ready, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=0.2)
            if ready:
                _shard_get(ready)  # raise a failure as soon as it is known
        acks: list[Ack] = _shard_get([pending.refs[n] for n in names])
        return acks


# ---------------------------------------------------------------------------- coordinator


class Coordinator:
    """Runs one ``Pipeline.run`` call (see the module docstring for the protocol)."""

    def __init__(self, pipeline: Pipeline, *, resume: bool, restore_epoch: int | None) -> None:
        self.p = pipeline
        self.resume = resume
        self.restore_epoch = restore_epoch
        self.clock = pipeline.clock or time.monotonic
        self.summary = RunSummary()
        self.store: Any = None
        self.driver_io = False
        self._lock = threading.Lock()
        self._emit_lock = threading.RLock()
        self._t0 = time.perf_counter()
        self._t_first: float | None = None
        self._attempt_no = 0
        # repeat rule: (error type, message, epoch) -> attempt it first failed in
        self._seen_failures: dict[tuple[str, str, int | None], int] = {}
        self._next_epoch = self._first_epoch = 1
        self._num_key_groups = pipeline.num_key_groups or DEFAULT_NUM_KEY_GROUPS
        self._stages: list[StageSpec] = []
        self._operator_configs: dict[str, str] = {}
        self._generations: list[int] = []
        self._actors: list[list[Any]] = []
        self._handles: dict[str, Any] = {}
        self._committer: _Committer | None = None
        self._committed: _Base | None = None  # last commit of this run
        self._base: _Base = _Base()
        self._abandon_on_commit = False
        self._last_gc = 0.0
        # skew: per stage, key-group loads summed since the last decision, and plans
        # decided by the commit thread for the feed loop to carry out (under _lock)
        self._loads: dict[int, np.ndarray] = {}
        self._load_rows: dict[int, int] = {}
        self._since_rebalance: dict[int, int] = {}
        self._plans: dict[int, rebalance.Plan] = {}
        self._schema: pa.Schema | None = None
        # engine dirs live under local_dir/<ident>: stable per checkpoint URL, so a restore
        # on the same node finds the files it already has
        url = pipeline.checkpoint
        self._local_ident = (
            hashlib.sha1(str(url).encode()).hexdigest()[:12] if url is not None
            else "nockpt-" + uuid.uuid4().hex[:12]
        )
        self._metrics = DriverMetrics(pipeline_tag(url, self._local_ident))

    # ------------------------------------------------------------------ entry

    def run(self) -> RunSummary:
        """Run to the end of input (or stop); recover from failures; return the summary."""
        if not ray.is_initialized():
            ray.init()
        sink = self.p.sink
        assert sink is not None
        try:
            self._open_store()
            try:
                base, sink_epoch, sink_abandoned, new_run = self._initial()
            except CorruptionError as err:  # a damaged epoch manifest
                self._explain_corruption(err, self.restore_epoch)
                raise
            self._base = base
            self.summary.restored_from = base.epoch
            sink.start(sink_epoch, new_run=new_run, abandoned=sink_abandoned)
            if base.manifest is not None and base.manifest.metadata.get("final"):
                self.summary.finished = True
                self.summary.last_epoch = base.epoch
                return self._finish_summary(stats={})
            while True:
                try:
                    stopped = self._attempt(base)
                    break
                except BaseException as err:
                    verdict = self.judge(err)
                    if verdict.action == "stop" and (
                            _is_user_error(verdict.error) or verdict.reason == "repeated"):
                        self._settle()
                    self._teardown()
                    if verdict.action == "stop":
                        self._raise_fatal(verdict, remote=isinstance(err, _ShardFailure))
                    base = self._recover(verdict)
            self.summary.stopped = stopped
            self.summary.finished = not stopped
            stats = self._collect_stats()
            self._emit("finished")
            return self._finish_summary(stats)
        finally:
            self._teardown()
            sink.close()
            if self.store is not None:
                self.store.close()

    def _finish_summary(self, stats: dict[str, dict[str, Any]]) -> RunSummary:
        s = self.summary
        s.wall_time = time.perf_counter() - self._t0
        if self._t_first is not None:
            s.processing_time = time.perf_counter() - self._t_first
        s.shards = stats
        sink = self.p.sink
        s.output = sink.result() if sink is not None else None
        epochs = getattr(sink, "epochs", None)
        s.output_by_epoch = epochs() if callable(epochs) else {}
        return s

    def _settle(self, timeout: float = 60.0) -> None:
        """Commit every epoch whose shards all acknowledge it; give up at the first that fails.

        Used before raising a bad-input error or a repeated failure: the epochs before the
        bad batch are complete and valid, so they are committed and the run can resume
        from the last of them.
        """
        committer = self._committer
        if committer is None:
            return
        deadline = time.monotonic() + timeout
        while committer.pending and committer.error is None and time.monotonic() < deadline:
            time.sleep(0.01)

    def judge(self, err: BaseException) -> Verdict:
        """Decide whether the failure ``err`` of the current attempt is recovered from.

        1. ``classify(err) == "fatal"`` (bad input, a corrupt or missing checkpoint, a
           failure of the source, the sink or ``on_progress``, an interrupt): stop.
        2. ``is_transient`` (dead processes, lost nodes, I/O): recover (``_recover``
           still stops after ``max_restarts``).
        3. Anything else (an exception of user code, a raykv bug) is recovered from once:
           if the same error (type and message) happened at the same epoch before in
           this run, stop (``"repeated"``): replaying the same input hits it again.
        """
        root = root_cause(err)
        epoch = failure_epoch(root)
        attempt = max(self._attempt_no - 1, 0)
        if classify(err) != "recover":
            if isinstance(root, KeyboardInterrupt | SystemExit):
                reason = "interrupted"
            elif isinstance(root, CorruptionError):
                reason = "corrupt checkpoint"
            elif isinstance(root, CheckpointNotFoundError):
                reason = "checkpoint not found"
            elif isinstance(err, _HookFailure):
                reason = "on_progress"
            elif _is_user_error(root):
                reason = "bad input"
            else:
                reason = "driver"
            return Verdict("stop", reason, root, epoch, attempt)
        if is_transient(root):
            return Verdict("recover", "transient", root, epoch, attempt)
        key = (f"{type(root).__module__}.{type(root).__qualname__}", str(root), epoch)
        first = self._seen_failures.get(key)
        if first is not None:
            return Verdict("stop", "repeated", root, epoch, attempt, first_attempt=first)
        self._seen_failures[key] = attempt
        return Verdict("recover", "first occurrence", root, epoch, attempt)

    def _raise_fatal(self, verdict: Verdict, *, remote: bool = False) -> None:
        """Explain ``verdict.error`` (notes, corruption details), report it, raise it.

        ``remote``: it came out of a shard (unpickled here): raised without the chain of
        the driver's wrappers (its own traceback is in its notes).
        """
        root = verdict.error
        notes = getattr(root, "__notes__", [])
        if isinstance(root, CorruptionError):
            self._explain_corruption(root, root.epoch)
        if verdict.reason == "repeated":
            note = (
                f"raykv: {type(root).__name__} happened at epoch {verdict.epoch} in attempt "
                f"{verdict.first_attempt} and again in attempt {verdict.attempt} after a "
                "recovery; a failure that repeats at the same epoch is not retried "
                f"(max_restarts={self.p.max_restarts} not spent; docs/recovery.md, "
                "\"Failure classification\")"
            )
            if note not in notes:
                root.add_note(note)
        last = self._committed.epoch if self._committed else self._base.epoch
        user_code = "user_code" in failure_context(root)
        if self.store is not None and (_is_user_error(root) or verdict.reason == "repeated"):
            fix = "the input or the code" if user_code else "the input"
            note = (
                f"raykv: the run stopped; the last committed epoch is {last} in "
                f"{self.store.url} (fix {fix}, then run(resume=True) continues from it)"
            )
            if note not in notes:
                root.add_note(note)
        self._stop_with(verdict)
        if remote:
            raise root from None
        raise root

    def _stop_with(self, verdict: Verdict) -> None:
        """Record the verdict that ends the run and emit the ``"fatal"`` event."""
        self.summary.failures.append(verdict.record())
        log.error("raykv: the run stops (%s): %s: %s", verdict.reason,
                  type(verdict.error).__name__, verdict.error)
        if verdict.reason in ("interrupted", "on_progress"):
            return
        try:
            self._emit("fatal", verdict.epoch, error=verdict.error, **verdict.detail())
        except _HookFailure as err:
            log.warning("raykv: on_progress failed on the 'fatal' event: %s", err.err)

    def _explain_corruption(self, err: CorruptionError, epoch: int | None) -> None:
        """Add the committed epochs and which of them are intact to ``err`` (once).

        Cost: a ``verify`` of every committed epoch (each referenced file read once).
        """
        if self.store is None or err.restorable is not None:
            return
        try:
            committed = self.store.epochs()
            intact = self.store.intact_epochs(committed)
        except Exception as why:
            err.add_note(f"raykv: could not check which epochs are intact: {why}")
            return
        err.set_restorable(committed, intact, store=self.store.url, epoch=epoch)

    def _recover(self, verdict: Verdict) -> _Base:
        root = verdict.error
        if self.summary.restarts >= self.p.max_restarts:
            self._stop_with(replace(verdict, action="stop", reason="max_restarts"))
            msg = (
                f"raykv gave up after {self.p.max_restarts} restarts (max_restarts); "
                f"last failure: {type(root).__name__}: {root}"
            )
            raise RuntimeError(msg) from root
        if self.store is None and self.summary.epochs_committed:
            self._stop_with(replace(verdict, action="stop", reason="no checkpoint"))
            msg = (
                "a shard failed after output was published and the pipeline has no "
                "checkpoint to recover from (checkpoint=None); set checkpoint= to make "
                f"runs fault tolerant. Failure: {type(root).__name__}: {root}"
            )
            raise RuntimeError(msg) from root
        self.summary.restarts += 1
        self.summary.failures.append(verdict.record())
        self._emit("failure", verdict.epoch, error=root, **verdict.detail())
        log.warning("raykv: failure (%s: %s; %s); recovering", type(root).__name__, root,
                    verdict.reason)
        base = self._committed if self._committed is not None else self._base
        for r in self.summary.rebalances:  # moved at base.epoch or later: never committed
            if base.epoch is None or r["epoch"] >= base.epoch:
                r["undone"] = True
        # the replay gets the epoch numbers the lost epochs had: a run with failures
        # commits the same epochs as one without
        self._next_epoch = base.epoch + 1 if self._committed is not None else self._first_epoch
        if self.store is not None:
            self.store.close()
            self._open_store()  # fresh caches: files of uncommitted uploads are rewritten
        sink = self.p.sink
        assert sink is not None
        sink_epoch = base.epoch
        abandoned = base.abandoned
        if base.rollback:
            sink_epoch, abandoned = self._sink_view_of_latest()
        sink.start(sink_epoch, new_run=False, abandoned=abandoned)
        return base

    # ------------------------------------------------------------------ initial state

    def _open_store(self) -> None:
        url = self.p.checkpoint
        if url is None:
            return
        from raykv.checkpointing import CheckpointStore

        self.store = CheckpointStore(url, self.p.storage_options)
        self.driver_io = str(url).startswith("memory://")

    def _initial(self) -> tuple[_Base, int | None, list[list[int]], bool]:
        """Decide where to start: (base, sink epoch, sink abandoned ranges, new run)."""
        store = self.store
        if store is None:
            return _Base(), None, [], True
        epochs = store.epochs()
        latest = epochs[-1] if epochs else None
        if self.restore_epoch is not None:
            manifest = store.read_epoch(self.restore_epoch)
            epoch: int | None = self.restore_epoch
        elif self.resume:
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
        self._next_epoch = self._first_epoch = (latest or 0) + 1
        if manifest is None:
            return _Base(), None, [], True
        self._check_compatible(manifest)
        meta = manifest.metadata
        abandoned = [list(r) for r in meta.get("abandoned", [])]
        rollback = latest is not None and epoch != latest
        base = _Base(
            epoch=epoch, manifest=manifest, offset=manifest.offsets.get("source"),
            rollback=rollback, abandoned=abandoned, rows_total=int(meta.get("rows_total", 0)),
        )
        if rollback:
            assert epoch is not None and latest is not None
            base.abandoned = [*abandoned, [epoch + 1, latest]]
            self._abandon_on_commit = True
            sink_epoch, sink_abandoned = self._sink_view_of_latest()
            return base, sink_epoch, sink_abandoned, False
        return base, epoch, abandoned, False

    def _sink_view_of_latest(self) -> tuple[int | None, list[list[int]]]:
        """The committed lineage as of the store's latest epoch (before a rollback commits)."""
        latest = self.store.latest_epoch()
        if latest is None:
            return None, []
        meta = self.store.read_epoch(latest).metadata
        return latest, [list(r) for r in meta.get("abandoned", [])]

    def _check_compatible(self, manifest: Any) -> None:
        meta = manifest.metadata
        where = f"epoch {manifest.epoch} in {self.store.url}"
        stages = meta.get("stages")
        if not isinstance(stages, list) or meta.get("raykv") != METADATA_VERSION:
            msg = f"{where} was not written by a raykv pipeline (no stage metadata)"
            raise ValueError(msg)
        names = self.p.stage_names()
        old_names = [s.get("name") for s in stages]
        if old_names != names:
            msg = (
                f"{where} was written by a pipeline with stages {old_names}; this pipeline has "
                f"{names}: stage names and order must match to restore"
            )
            raise ValueError(msg)
        for i, (op, old) in enumerate(zip(self.p.stages, stages, strict=True)):
            if old.get("key") != op.key or old.get("operator") != type(op).__name__:
                msg = (
                    f"{where}: stage {names[i]!r} was {old.get('operator')}(key="
                    f"{old.get('key')!r}), this pipeline has {type(op).__name__}(key={op.key!r})"
                )
                raise ValueError(msg)
        groups = int(meta["num_key_groups"])
        if self.p.num_key_groups is not None and self.p.num_key_groups != groups:
            msg = (
                f"{where} uses num_key_groups={groups}; it is fixed when a pipeline is created "
                f"(got num_key_groups={self.p.num_key_groups}); leave it unset to use the "
                "checkpoint's"
            )
            raise ValueError(msg)
        self._num_key_groups = groups

    # ------------------------------------------------------------------ layout

    def _layout(self, base: _Base) -> tuple[list[StageSpec], list[list[RestorePlan]], bool]:
        """Stage specs, per-shard restore plans, and whether the layout changed."""
        groups = self._num_key_groups
        stages: list[StageSpec] = []
        plans: list[list[RestorePlan]] = []
        gens: list[int] = []
        changed = False
        names = self.p.stage_names()
        for i, op in enumerate(self.p.stages):
            n = self.p.stage_num_shards(i)
            engine = self.p.stage_engine(i)
            params = self.p.stage_engine_params(i)
            part = Partitioning(num_shards=n, num_key_groups=groups)
            if base.manifest is None:
                gen = 0
                stage_plans = [RestorePlan() for _ in range(n)]
            else:
                old = base.manifest.metadata["stages"][i]
                old_n, old_engine = int(old["num_shards"]), str(old["engine"])
                old_params = dict(old.get("engine_params") or {})
                old_names = list(old["shards"])
                old_part = Partitioning.from_dict(
                    old.get("partitioning") or {"num_shards": old_n, "num_key_groups": groups})
                same = old_n == n and old_engine == engine
                gen = int(old["generation"]) + (0 if same and not base.rollback else 1)
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
                                        for k in _holders(old_part, part, j, gained_only=False))
                        stage_plans.append(RestorePlan(epoch=base.epoch, rebuild=sources))
            shard_names = tuple(f"{names[i]}-{j}of{n}-g{gen}" for j in range(n))
            stages.append(StageSpec(i, names[i], op.key, op, engine, params, part, shard_names))
            plans.append(stage_plans)
            gens.append(gen)
        self._generations = gens
        return stages, plans, changed or base.rollback

    def _local_root(self) -> Path:
        root = Path(self.p.local_dir or default_local_dir())
        return root / self._local_ident

    # ------------------------------------------------------------------ actors

    def _start_actors(
        self, stages: list[StageSpec], plans: list[list[RestorePlan]], attempt: int
    ) -> None:
        root = self._local_root()
        specs: list[list[ShardSpec]] = []
        for s, stage in enumerate(stages):
            row = []
            for j in range(stage.num_shards):
                row.append(ShardSpec(
                    stage=stage, index=j,
                    data_dir=str(root / stage.name / stage.shard_names[j]),
                    num_inputs=1 if s == 0 else stages[s - 1].num_shards,
                    downstream=stages[s + 1] if s + 1 < len(stages) else None,
                    checkpoint=self.p.checkpoint, storage_options=self.p.storage_options,
                    driver_io=self.driver_io, max_inflight=self.p.max_inflight,
                    faults=self.p.faults, attempt=attempt, first_epoch=self._next_epoch,
                    hot_keys=self.p.hot_keys,
                    track_groups=self._rebalances(stage), pipeline=self._metrics.pipeline,
                ))
            specs.append(row)
        if self.driver_io:
            plans = self._materialize(specs, plans)
        options: dict[str, Any] = {"num_cpus": 0}
        options.update(self.p.actor_options or {})
        placement = _placements(sum(len(row) for row in specs), options)
        self._actors = []
        k = 0
        for row in specs:
            actors = []
            for sp in row:
                actors.append(ShardActor.options(**options, **placement[k]).remote(sp))
                k += 1
            self._actors.append(actors)
        self._handles = {
            sp.name: a for row_s, row_a in zip(specs, self._actors, strict=True)
            for sp, a in zip(row_s, row_a, strict=True)
        }
        refs = [
            a.setup.remote(plan)
            for row_a, row_p in zip(self._actors, plans, strict=True)
            for a, plan in zip(row_a, row_p, strict=True)
        ]
        self._emit("starting", attempt=attempt)
        infos = _shard_get(refs)
        for s in range(len(stages) - 1):
            for a in self._actors[s]:
                a.set_downstream.remote(self._actors[s + 1])
        if self.driver_io:
            here = ray.get_runtime_context().get_node_id()
            away = [i["shard"] for i in infos if i["node_id"] not in (None, here)]
            if away:
                msg = (
                    f"checkpoint {self.p.checkpoint!r} is a memory:// store, which lives in the "
                    f"driver's process, but shards {away} run on other nodes; use a file:// "
                    "path on shared storage or s3:// for a multi-node cluster"
                )
                raise ValueError(msg)

    def _materialize(
        self, specs: list[list[ShardSpec]], plans: list[list[RestorePlan]]
    ) -> list[list[RestorePlan]]:
        """Driver I/O: restore every shard's state into its dirs before the actors start."""
        out: list[list[RestorePlan]] = []
        for row_s, row_p in zip(specs, plans, strict=True):
            row: list[RestorePlan] = []
            for sp, plan in zip(row_s, row_p, strict=True):
                data_dir = Path(sp.data_dir)
                data_dir.parent.mkdir(parents=True, exist_ok=True)
                if plan.epoch is not None and plan.direct is not None:
                    data_dir.mkdir(parents=True, exist_ok=True)
                    wait_dir_free(data_dir)
                    self._restore_shard(plan.epoch, plan.direct.shard, data_dir)
                    plan = replace(plan, materialized=True)
                elif plan.epoch is not None and plan.rebuild:
                    plan = replace(plan, rebuild=self._materialize_sources(
                        plan.epoch, plan.rebuild, data_dir.parent, sp.name))
                row.append(plan)
            out.append(row)
        return out

    def _materialize_sources(
        self, epoch: int, sources: tuple[RestoreSource, ...], parent: Path, name: str
    ) -> tuple[RestoreSource, ...]:
        """Driver I/O: restore each old shard of ``sources`` into a dir next to ``name``'s."""
        out = []
        for src in sources:
            tmp = parent / f".rebuild-{name}-{src.shard}"
            wipe_dir(tmp)
            self._restore_shard(epoch, src.shard, tmp)
            out.append(replace(src, local_dir=str(tmp)))
        return tuple(out)

    def _restore_shard(self, epoch: int, shard: str, data_dir: Path) -> None:
        """Driver I/O: ``store.restore_shard``; a ``CorruptionError`` names ``epoch``."""
        try:
            self.store.restore_shard(epoch, shard, data_dir)
        except CorruptionError as err:
            if err.epoch is None:
                err.epoch = epoch
            raise

    def _teardown(self) -> None:
        """Stop the commit thread, kill every shard actor and wait until they are gone."""
        committer, self._committer = self._committer, None
        if committer is not None:
            committer.stop()
        actors = [a for row in self._actors for a in row]
        self._actors = []
        self._handles = {}
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
        deadline = time.monotonic() + KILL_WAIT
        for a in actors:
            while time.monotonic() < deadline:
                try:
                    ray.get(a.ping.remote(), timeout=1.0)
                except ray.exceptions.GetTimeoutError:
                    continue
                except Exception:
                    break
                time.sleep(0.05)

    def _collect_stats(self) -> dict[str, dict[str, Any]]:
        names = list(self._handles)
        try:
            stats = ray.get([self._handles[n].stats.remote() for n in names], timeout=30)
        except Exception as err:
            log.warning("raykv: could not collect shard stats: %s", err)
            return {}
        return dict(zip(names, stats, strict=True))

    # ------------------------------------------------------------------ one attempt

    def _attempt(self, base: _Base) -> bool:
        """Run from ``base`` until the input ends (False) or the run is stopped (True)."""
        attempt = self._attempt_no
        self._attempt_no += 1
        stages, plans, changed = self._layout(base)
        self._stages = stages
        with self._lock:  # loads and plans of a failed attempt do not carry over
            self._loads, self._load_rows, self._since_rebalance, self._plans = {}, {}, {}, {}
        # stored in every epoch so `raykv checkpoints export` can rebuild the operators
        self._operator_configs = {st.name: encode_operator(st.operator) for st in stages}
        self._start_actors(stages, plans, attempt)
        self._committer = committer = _Committer(self)
        self._emit("started", restored_from=base.epoch, attempt=attempt)
        if self._t_first is None:
            self._t_first = time.perf_counter()
        source = type(self.p.source).__name__
        with self._user_code(f"source {source}.open({base.offset!r})", self._next_epoch):
            reader = self.p.source.open(base.offset)
        self._rows_epoch = 0
        try:
            if changed:
                # make a rescaled / rolled-back layout durable before any new input
                self._barrier(base.offset, final=False)
            stopped = self._feed(reader, committer)
            # the last epoch: finish() at the end of input; a plain barrier when stopped
            # (also when empty: a StopSource may have moved the offset past its marker)
            self._barrier(reader.offset, final=not stopped)
            committer.drain()
        finally:
            reader.close()
        return stopped

    def _feed(self, reader: Any, committer: _Committer) -> bool:
        p = self.p
        actors = self._actors[0]
        inflight: list[deque[Any]] = [deque() for _ in actors]
        every = p.epoch_every_batches
        interval = p.checkpoint_interval if every is None else None
        self._batches_epoch = 0
        last = self.clock()
        while True:
            committer.check()
            if p.stop_requested:
                return True
            if self._plans and not self._batches_epoch:  # right after a barrier
                for q in inflight:
                    _shard_get(list(q))
                    q.clear()
                self._apply_rebalance(committer)
            try:
                with self._user_code(f"source {type(p.source).__name__}.read", self._next_epoch):
                    batch = reader.read()
            except StopSource:
                return True
            if batch is None:
                return False
            first = self._stages[0]
            if batch.num_rows:
                parts = split_batch(batch, first.key, first.partitioning)  # key checks first
                self._check_schema(batch)
                for i, sub in parts.items():
                    q = inflight[i]
                    q.append(actors[i].process.remote(sub))
                    if len(q) > p.max_inflight:
                        _shard_get(q.popleft())
                self._metrics.inflight(first, inflight)
                self._rows_epoch += batch.num_rows
                self._batches_epoch += 1
            else:
                time.sleep(IDLE_SLEEP)
            if every is not None and self._batches_epoch >= every:
                committer.wait_below(p.max_pending_epochs)
                self._barrier(reader.offset, final=False)
            elif (
                interval is not None
                and self._batches_epoch
                and self.clock() - last >= interval
                and committer.pending < p.max_pending_epochs
            ):
                self._barrier(reader.offset, final=False)
                last = self.clock()

    def _check_schema(self, batch: pa.RecordBatch) -> None:
        if self._schema is None:
            self._schema = batch.schema
            return
        if batch.schema.equals(self._schema):
            return
        msg = f"a source batch changed schema: {_schema_diff(self._schema, batch.schema)}"
        raise ValueError(msg)

    def _barrier(self, offset: Any, *, final: bool) -> None:
        epoch = self._next_epoch
        self._next_epoch += 1
        for a in self._actors[0]:
            (a.finish if final else a.barrier).remote(epoch)
        refs = {name: h.wait_uploaded.remote(epoch) for name, h in self._handles.items()}
        assert self._committer is not None
        self._committer.submit(_Pending(epoch, refs, _copy_json(offset), self._rows_epoch, final))
        self._rows_epoch = 0
        self._batches_epoch = 0
        self._emit("barrier", epoch, final=final)

    # ------------------------------------------------------------------ commit (commit thread)

    def _commit(self, pending: _Pending, acks: list[Ack]) -> None:
        """Steps 1-3 of the module docstring for one fully acknowledged epoch."""
        e = pending.epoch
        self._emit("acked", e)
        sink = self.p.sink
        assert sink is not None
        store = self.store
        manifests: dict[str, Any] = {}
        if store is not None:
            for ack in acks:
                if ack.manifest is None:  # driver I/O: upload from the shard's staging dir
                    assert ack.staging is not None
                    ack.manifest = store.upload_shard(e, ack.shard, ack.staging, ack.files,
                                                      metadata=ack.metadata)
                    shutil.rmtree(ack.staging, ignore_errors=True)
                manifests[ack.shard] = ack.manifest
        rows_out = 0
        for ack in acks:
            if ack.output is not None and ack.output.num_rows:
                part = f"{ack.metadata['stage']}-{int(ack.metadata['index']):04d}"
                with self._user_code(f"sink {type(sink).__name__}.stage({e}, {part!r})", e):
                    sink.stage(e, part, ack.output)
                rows_out += ack.output.num_rows
        base = self._committed or self._base
        rows_total = base.rows_total + pending.rows
        abandoned = base.abandoned
        load = self._account_load(acks)
        em = None
        if store is not None:
            metadata = self._metadata(pending, base, rows_total)
            if load:
                metadata["load"] = load
            em = store.commit_epoch(e, manifests, offsets={"source": pending.offset},
                                    metadata=metadata)
        if self._abandon_on_commit:
            with self._user_code(f"sink {type(sink).__name__}.start({e})", e):
                sink.start(e, new_run=False, abandoned=abandoned)
            self._abandon_on_commit = False
        else:
            with self._user_code(f"sink {type(sink).__name__}.publish({e})", e):
                sink.publish(e)
        with self._lock:
            s = self.summary
            s.epochs_committed.append(e)
            s.last_epoch = e
            s.rows_in += pending.rows
            s.rows_out += rows_out
            for sm in manifests.values():
                s.bytes_uploaded += sm.new_bytes
                s.files_uploaded += sm.new_files
            self._committed = _Base(
                epoch=e, manifest=em, offset=pending.offset, rollback=False,
                abandoned=abandoned, rows_total=rows_total,
            )
        self._metrics.committed(manifests)
        self._emit("committed", e, final=pending.final, rows_out=rows_out,
                   bytes_uploaded_total=s.bytes_uploaded)
        if self.p.rebalance is not None and not pending.final:
            self._decide(acks)
        if store is not None and (pending.final or time.monotonic() - self._last_gc > GC_INTERVAL):
            self._last_gc = time.monotonic()
            try:
                store.gc(self.p.retain)
            except OSError as err:
                log.warning("raykv: garbage collection of %s failed: %s", store.url, err)

    def _metadata(self, pending: _Pending, base: _Base, rows_total: int) -> dict[str, Any]:
        sink = self.p.sink
        assert sink is not None
        return {
            "raykv": METADATA_VERSION,
            "num_key_groups": self._num_key_groups,
            "final": pending.final,
            "rows_total": rows_total,
            "parent": base.epoch,  # the previous epoch of this lineage
            "abandoned": base.abandoned,
            "stages": [
                {
                    "name": st.name, "key": st.key, "operator": type(st.operator).__name__,
                    "operator_config": self._operator_configs[st.name],
                    "engine": st.engine, "engine_params": st.engine_params,
                    "num_shards": st.num_shards, "generation": gen,
                    "partitioning": st.partitioning.to_dict(), "shards": list(st.shard_names),
                }
                for st, gen in zip(self._stages, self._generations, strict=True)
            ],
            "source": self.p.source.describe(),
            "sink": sink.describe(),
        }

    # ------------------------------------------------------------------ skew

    def _rebalances(self, stage: StageSpec) -> bool:
        """Whether ``stage`` is rebalanced (configured, >1 shard, operator allows it)."""
        return (self.p.rebalance is not None and stage.num_shards > 1
                and getattr(stage.operator, "rebalance_safe", True))

    def _account_load(self, acks: list[Ack]) -> dict[str, dict[str, Any]]:
        """Fold an epoch's load reports into the summary and the rebalancer's sums.

        Returns the epoch manifest's ``load`` entry: per stage, per shard, the epoch's
        ``updates`` and ``cpu_seconds``, the run's ``updates_total``, ``hot_keys`` and
        ``write_amplification``.
        """
        out: dict[str, dict[str, Any]] = {}
        index = {st.name: i for i, st in enumerate(self._stages)}
        with self._lock:
            for ack in acks:
                rep = ack.load
                if rep is None:
                    continue
                stage = str(ack.metadata["stage"])
                entry = self.summary.load.setdefault(ack.shard, {"stage": stage, "updates": 0})
                entry["updates"] += int(rep["rows"])
                entry["hot_keys"] = rep["hot_keys"]
                entry["write_amplification"] = float(rep["write_amplification"])
                out.setdefault(stage, {})[ack.shard] = {
                    "updates": int(rep["rows"]), "updates_total": entry["updates"],
                    "hot_keys": rep["hot_keys"],
                    "write_amplification": round(float(rep["write_amplification"]), 4),
                    "cpu_seconds": round(float(rep["cpu_seconds"]), 4),
                }
                i = index.get(stage)
                if i is not None and "groups" in rep:
                    acc = self._loads.setdefault(
                        i, np.zeros(self._num_key_groups, dtype=np.float64))
                    np.add.at(acc, rep["groups"], rep["group_counts"])
                    self._load_rows[i] = self._load_rows.get(i, 0) + int(rep["rows"])
        return out

    def _decide(self, acks: list[Ack]) -> None:
        """Commit thread: plan a rebalance of each stage whose summed loads call for one."""
        cfg = self.p.rebalance
        stages_seen = {str(a.metadata["stage"]) for a in acks}
        with self._lock:
            for i, stage in enumerate(self._stages):
                if stage.name not in stages_seen or not self._rebalances(stage):
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

    def _apply_rebalance(self, committer: _Committer) -> None:
        """Feed loop, right after a barrier: carry out the planned rebalances.

        1. Wait until every epoch is committed: the latest epoch ``F`` holds all input
           so far under the old assignment, and no data is in flight. (Epoch boundaries
           stay where they would be without rebalancing.)
        2. Every shard of the stage takes the key groups it gains from the givers'
           checkpoint of ``F`` and deletes those it loses (``ShardWorker.rebalance``).
        3. The senders (the driver, or the previous stage's shards) route by the new
           assignment; the next commit writes it into its epoch manifest.

        A failure anywhere restores ``F``, whose manifest has the old assignment.
        """
        committer.drain()
        with self._lock:
            plans, self._plans = self._plans, {}
        assert self._committed is not None
        epoch = self._committed.epoch
        assert epoch is not None
        root = self._local_root()
        for i, decided in sorted(plans.items()):
            t0 = time.perf_counter()
            stage = self._stages[i]
            new = decided.partitioning
            refs = []
            for j, actor in enumerate(self._actors[i]):
                sources = tuple(
                    RestoreSource(stage.shard_names[k], stage.engine, stage.engine_params)
                    for k in _holders(stage.partitioning, new, j, gained_only=True))
                if self.driver_io:
                    sources = self._materialize_sources(
                        epoch, sources, root / stage.name, stage.shard_names[j])
                refs.append(actor.rebalance.remote(epoch, new, sources))
            infos = _shard_get(refs)
            if i > 0:
                _shard_get([a.set_downstream_partitioning.remote(new)
                            for a in self._actors[i - 1]])
            self._stages[i] = replace(stage, partitioning=new)
            with self._lock:
                self._since_rebalance[i] = 0
                self._loads.pop(i, None)
                self._load_rows[i] = 0
            detail = {
                "stage": stage.name, "moved_groups": len(decided.moves),
                "before": [round(x, 4) for x in decided.before],
                "after": [round(x, 4) for x in decided.after],
                "copied_keys": sum(int(x["copied"]) for x in infos),
                "dropped_keys": sum(int(x["dropped"]) for x in infos),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            self.summary.rebalances.append({"epoch": epoch, **detail})
            log.info("raykv: rebalanced stage %s at epoch %d: %s", stage.name, epoch, detail)
            self._emit("rebalanced", epoch, **detail)

    # ------------------------------------------------------------------ progress

    def _emit(self, kind: str, epoch: int | None = None, *, error: BaseException | None = None,
              **detail: Any) -> None:
        self._metrics.event(kind, epoch, detail)
        cb = self.p.on_progress
        if cb is None:
            return
        with self._emit_lock:
            s = self.summary
            event = ProgressEvent(
                kind=kind, epoch=epoch, rows_in=s.rows_in, rows_out=s.rows_out,
                epochs_committed=len(s.epochs_committed), restarts=s.restarts,
                elapsed=time.perf_counter() - self._t0, shards=dict(self._handles),
                error=error, detail=detail,
            )
            with self._user_code(f"on_progress({kind!r} event)", epoch):
                try:
                    cb(event)
                except BaseException as err:
                    raise _HookFailure(err) from err

    @contextlib.contextmanager
    def _user_code(self, what: str, epoch: int | None) -> Iterator[None]:
        """Run driver-side code of the user (source, sink, ``on_progress``) as ``what``.

        An exception it raises propagates as it is (its traceback is local), marked as
        user code (``failure_context``) with ``epoch`` and a note naming both.
        """
        try:
            yield
        except Exception as exc:
            err = exc.err if isinstance(exc, _HookFailure) else exc
            if not isinstance(err, StopSource | ray.exceptions.RayError) and (
                    "user_code" not in failure_context(err)):
                mark_user_code(err, what)
                add_context(err, epoch=epoch)
                where = f" at epoch {epoch}" if epoch is not None else ""
                err.add_note(f"raykv: {what} raised {type(err).__name__} in the driver{where}")
            raise


# ---------------------------------------------------------------------------- helpers


def _placements(n: int, options: dict[str, Any]) -> list[dict[str, Any]]:
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


def _holders(old: Partitioning, new: Partitioning, shard: int, *, gained_only: bool
             ) -> list[int]:
    """The shards that own, under ``old``, key groups ``shard`` owns under ``new``.

    ``gained_only``: only the groups ``shard`` did not own already (a rebalance's givers).
    """
    wanted = new.owned_mask(shard)
    if gained_only:
        wanted &= old.owners != shard
    return np.unique(old.owners[wanted]).tolist()


def _copy_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy_json(v) for v in value]
    return value


def _schema_diff(expected: pa.Schema, got: pa.Schema) -> str:
    return (
        describe_schema_change(expected, got)
        + f" (expected {expected.names} as in the first batch); every batch must have one schema"
    )


__all__ = ["Coordinator", "Verdict", "classify", "failure_epoch", "is_transient", "root_cause"]
