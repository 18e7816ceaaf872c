"""The driver side of a run: the control plane (epochs, commits, failures, recovery).

The coordinator lives in the driver (the process that calls ``Pipeline.run``) and touches
no record. Per attempt it starts the shard actors of every stage (restored from the base
epoch), then ``source_parallelism`` source reader actors that read the source's splits
and send the rows straight to the first stage's shards (``reader_actor``). The control
loop (``feeding``: :class:`Feeder`) ends an epoch every ``checkpoint_interval`` seconds
or ``epoch_every_batches`` batches per reader by asking every reader for ``barrier(e)``;
each reader answers with its splits' offsets, and the shards align the barrier over all
their inputs, so the offsets are a consistent cut.

A commit thread (``committer``) waits for every shard of every stage to acknowledge
``e`` (``wait_uploaded``, answered from the actors' ``"io"`` group once the upload is
durable; the last stage's shards have staged their ``ParquetSink`` output by then) and
commits epochs in order (``commit``: :class:`EpochCommit`): the epoch manifest with every
split's offset, THE commit, one write, last; then ``sink.publish(e)``.

Recovery (a reader or shard call fails, an actor dies, the store fails transiently) is
local (``attempt_actors``, ``survivors``): stop; still the live actors (readers stop,
shards quiesce) and kill the dead; bind the sink to the next attempt's writer and
reconcile it (drop staged output of uncommitted epochs and of every other writer,
``Sink.for_attempt``); roll every surviving shard back in place to the last committed
epoch from its own files (``reset``: ``restore_shard`` downloads only what the local dir
lacks) and give each dead actor's role to a standby (``Pipeline.standby``) or a new
actor; deal the splits to the readers again, each at its committed offset; go on. At
most ``max_restarts`` times per run. Bad input (``ValueError``/``TypeError`` from a
reader or a shard) and errors of the source are not retried: replay would fail the same
way; they are raised with the column, split or file named, and the last committed epoch
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

The coordinator is composed of parts, each in its own module of ``raykv.runtime``:
failure classification (``failures``: :class:`FailurePolicy`), the commit thread
(``committer``) and the commit of an epoch (``commit``), where an attempt starts and how
shards are laid out and restored (``layout``), the readers (``reader_actor``), the
control loop and barriers (``feeding``), rebalancing (``rebalancing``:
:class:`Rebalancer`) and the typed epoch metadata (``metadata``). This module keeps the
run itself: ``run``, one attempt, recovery, progress events.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from raykv.errors import (
    CorruptionError,
    add_context,
    failure_context,
    mark_user_code,
)
from raykv.late_output import WithLateOutput
from raykv.metrics import DriverMetrics, pipeline_tag
from raykv.partitioning import DEFAULT_NUM_KEY_GROUPS
from raykv.pipeline import Pipeline, ProgressEvent, RunSummary, default_local_dir
from raykv.runtime.actors import collect_stats
from raykv.runtime.attempt_actors import AttemptActors
from raykv.runtime.commit import EpochCommit
from raykv.runtime.committer import Committer
from raykv.runtime.failures import (
    FailurePolicy,
    HookFailure,
    ShardFailure,
    Verdict,
    classify,
    failure_epoch,
    is_transient,
    is_user_error,
    root_cause,
    shard_get,
)
from raykv.runtime.feeding import Feeder
from raykv.runtime.interrupts import sigint_flag
from raykv.runtime.layout import (
    Base,
    DriverRestore,
    Start,
    initial_state,
    plan_layout,
    sink_view_of_latest,
)
from raykv.runtime.metadata import encode_operator
from raykv.runtime.rebalancing import Rebalancer
from raykv.runtime.specs import StageSpec
from raykv.runtime.survivors import Standby, Survivors
from raykv.sinks import Sink
from raykv.sources import StopSource

log = logging.getLogger("raykv")


class Coordinator(AttemptActors):
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
        self._attempt_current = 0  # the attempt running (its calls carry the number)
        self._failures = FailurePolicy()
        self._next_epoch = self._first_epoch = 1
        self._num_key_groups = pipeline.num_key_groups or DEFAULT_NUM_KEY_GROUPS
        self._stages: list[StageSpec] = []
        self._operator_configs: dict[str, str] = {}
        self._generations: list[int] = []
        self._actors: list[list[Any]] = []
        self._handles: dict[str, Any] = {}
        self._readers: dict[str, Any] = {}
        self._reader_stages: dict[str, int] = {}  # reader name -> the stage it feeds
        self._run_refs: dict[str, Any] = {}  # reader name -> its run() of this attempt
        self._survivors = Survivors()  # actors of a failed attempt kept for the next
        self._standby = Standby()  # idle actors ready to take a dead one's place
        self._committer: Committer | None = None
        self._committed: Base | None = None  # last commit of this run
        self._base: Base = Base()
        self._abandon_on_commit = False
        self.rebalancer = Rebalancer(self)
        self.feeder = Feeder(self)
        self.committing = EpochCommit(self)
        self.sink = with_late_output(pipeline)  # the user's sink (+ its late rows' sink)
        self.interrupted = threading.Event()  # set by Ctrl-C (raykv.runtime.interrupts)
        self.writer = ""  # the attempt's writer: the id its staged sink output is fenced by
        self.attempt_sink: Sink = self.sink  # self.sink bound to the attempt's writer
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
        with sigint_flag(self.interrupted):
            return self._run()

    def _run(self) -> RunSummary:
        try:
            self._open_store()
            try:
                start = self._initial()
            except CorruptionError as err:  # a damaged epoch manifest
                self._explain_corruption(err, self.restore_epoch)
                raise
            self._base = base = start.base
            self.summary.restored_from = base.epoch
            self._bind_sink(start.sink_writer).start(
                start.sink_epoch, new_run=start.new_run, abandoned=start.sink_abandoned)
            if base.metadata is not None and base.metadata.final:
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
                            is_user_error(verdict.error) or verdict.reason == "repeated"):
                        self._settle()
                    self._teardown(keep=verdict.action != "stop")
                    if verdict.action == "stop":
                        self._raise_fatal(verdict, remote=isinstance(err, ShardFailure))
                    base = self._recover(verdict)
                    if base.metadata is not None and base.metadata.final:
                        # the failure surfaced after the final epoch was committed (a
                        # reader died before its run returned): the run is complete;
                        # replaying would commit finish() output a second time
                        stopped = False
                        break
            self.summary.stopped = stopped
            self.summary.finished = not stopped
            stats = collect_stats(self._handles)
            self.summary.readers = collect_stats(self._readers)
            self._emit("finished")
            return self._finish_summary(stats)
        finally:
            self._teardown()
            self.attempt_sink.close()
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
        if isinstance(self.sink, WithLateOutput):
            s.late_output = self.sink.late.result()
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

        The repeat rule and the classes of failures: :meth:`FailurePolicy.judge`.
        """
        return self._failures.judge(err, max(self._attempt_no - 1, 0))

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
        if self.store is not None and (is_user_error(root) or verdict.reason == "repeated"):
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
        except HookFailure as err:
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

    def _recover(self, verdict: Verdict) -> Base:
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
        if self._committed is not None:
            assert base.epoch is not None  # a commit has an epoch
            self._next_epoch = base.epoch + 1
        else:
            self._next_epoch = self._first_epoch
        if self.store is not None:
            self.store.close()
            self._open_store()  # fresh caches: files of uncommitted uploads are rewritten
        sink_epoch, abandoned = base.epoch, base.abandoned
        writer = base.metadata.writer if base.metadata is not None else None
        if base.rollback:
            sink_epoch, abandoned, writer = sink_view_of_latest(self.store)
        self._bind_sink(writer).start(sink_epoch, new_run=False, abandoned=abandoned)
        return base

    def _bind_sink(self, committed: str | None) -> Sink:
        """A new writer for the next attempt, and the sink bound to it (``attempt_sink``).

        ``committed``: the writer that committed the epoch the sink starts at.
        """
        self.writer = uuid.uuid4().hex[:16]
        self.attempt_sink = self.sink.for_attempt(self.writer, committed)
        return self.attempt_sink

    # ------------------------------------------------------------------ initial state

    def _open_store(self) -> None:
        url = self.p.checkpoint
        if url is None:
            return
        from raykv.checkpointing import CheckpointStore

        self.store = CheckpointStore(url, self.p.storage_options)
        self.driver_io = str(url).startswith("memory://")

    @property
    def restorer(self) -> DriverRestore:
        """Driver I/O: restores shards from the run's store in the driver."""
        return DriverRestore(self.store)

    def _initial(self) -> Start:
        """Decide where to start (:func:`initial_state`) and take its numbers."""
        start = initial_state(self.store, self.p, resume=self.resume,
                              restore_epoch=self.restore_epoch)
        if start.first_epoch is not None:
            self._next_epoch = self._first_epoch = start.first_epoch
        if start.num_key_groups is not None:
            self._num_key_groups = start.num_key_groups
        self._abandon_on_commit = start.abandon_on_commit
        return start

    def _local_root(self) -> Path:
        root = Path(self.p.local_dir or default_local_dir())
        return root / self._local_ident

    # ------------------------------------------------------------------ one attempt

    def _attempt(self, base: Base) -> bool:
        """Run from ``base`` until the input ends (False) or the run is stopped (True)."""
        attempt = self._attempt_current = self._attempt_no
        self._attempt_no += 1
        layout = plan_layout(self.p, base, self._num_key_groups)
        stages = self._stages = layout.stages
        self._generations = layout.generations
        self.rebalancer.reset()  # loads and plans of a failed attempt do not carry over
        # stored in every epoch so `raykv checkpoints export` can rebuild the operators
        self._operator_configs = {st.name: encode_operator(st.operator) for st in stages}
        self._start_actors(stages, layout.plans, attempt, base, paused=layout.changed)
        self._committer = committer = Committer(self.committing.commit)
        self._run_refs = {n: r.run.remote() for n, r in self._readers.items()}
        run_refs = list(self._run_refs.values())
        self._emit("started", restored_from=base.epoch, attempt=attempt)
        if self._t_first is None:
            self._t_first = time.perf_counter()
        # a rescaled / rolled-back layout is made durable before any new input
        stopped = self.feeder.feed(committer, run_refs, initial_barrier=layout.changed)
        committer.drain()
        if not stopped:
            shard_get(run_refs)  # the readers drained their calls in flight
        return stopped

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
                actors={**self._readers, **self._handles},
                error=error, detail=detail,
            )
            with self._user_code(f"on_progress({kind!r} event)", epoch):
                try:
                    cb(event)
                except BaseException as err:
                    raise HookFailure(err) from err

    @contextlib.contextmanager
    def _user_code(self, what: str, epoch: int | None) -> Iterator[None]:
        """Run driver-side code of the user (source, sink, ``on_progress``) as ``what``.

        An exception it raises propagates as it is (its traceback is local), marked as
        user code (``failure_context``) with ``epoch`` and a note naming both.
        """
        try:
            yield
        except Exception as exc:
            err = exc.err if isinstance(exc, HookFailure) else exc
            if not isinstance(err, StopSource | ray.exceptions.RayError) and (
                    "user_code" not in failure_context(err)):
                mark_user_code(err, what)
                add_context(err, epoch=epoch)
                where = f" at epoch {epoch}" if epoch is not None else ""
                err.add_note(f"raykv: {what} raised {type(err).__name__} in the driver{where}")
            raise


def with_late_output(p: Pipeline) -> Sink:
    """``p.sink``, wrapped with its late sink when a window stage has ``late="emit"``."""
    assert p.sink is not None  # Pipeline.__post_init__ sets a CollectSink
    if not any(getattr(op, "late", "drop") == "emit" for op in p.stages):
        return p.sink
    late = p.sink.late_sink()
    assert late is not None  # Pipeline.__post_init__ refused a sink without one
    return WithLateOutput(p.sink, late)


__all__ = ["Coordinator", "Verdict", "classify", "failure_epoch", "is_transient", "root_cause"]
