"""What a run reports: its progress events and its summary (``raykv.pipeline`` re-exports).

Contract: the coordinator emits a :class:`ProgressEvent` to ``Pipeline(on_progress=...)``
at every step of a run (actors started, barriers, commits, failures, the end) and
returns a :class:`RunSummary` from ``Pipeline.run``; both are plain data (the actor
handles in an event are for tests and drills: ``ping()`` gives the pid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from ray.actor import ActorHandle


@dataclass(frozen=True)
class ProgressEvent:
    """What the driver reports to ``Pipeline(on_progress=...)``.

    ``kind`` is one of ``"starting"`` (shard actors created, restoring their state),
    ``"started"`` (actors ready; ``detail`` has ``restored_from``),
    ``"barrier"`` (barrier ``epoch`` sent), ``"acked"`` (every shard uploaded ``epoch``;
    called just before the commit), ``"committed"``, ``"rebalanced"`` (key groups moved
    at ``epoch``; ``detail`` is the ``RunSummary.rebalances`` entry), ``"failure"``
    (``error`` set; recovery follows; ``epoch`` is the failure's epoch when known,
    ``detail`` its ``RunSummary.failures`` entry), ``"fatal"`` (``error`` set; the run
    stops and raises it, or a ``RuntimeError`` from it; ``detail`` as for ``"failure"``,
    ``reason`` says why, e.g. ``"repeated"``), ``"finished"``. A recovery shows as
    ``"failure"`` followed by the next attempt's ``"starting"`` and ``"started"``.

    Attributes:
        kind: the event.
        epoch: the epoch concerned (``None`` for run-level events).
        rows_in: rows of committed epochs so far in this run.
        rows_out: output rows published so far.
        epochs_committed: epochs committed so far in this run.
        restarts: recoveries so far.
        elapsed: seconds since ``run`` started.
        shards: shard name -> its Ray actor handle in the current attempt (tools and
            tests use it, e.g. to kill one).
        actors: every actor of the attempt by name: the source readers
            (``reader-<i>of<n>``; ``reader-<source>-<i>of<n>`` with several sources)
            and the shards (the last stage's shards also write the
            sink's output). Each answers ``ping()`` with its process id.
        error: the failure for ``"failure"`` and ``"fatal"`` events.
        detail: event-specific extras.
    """

    kind: str
    epoch: int | None
    rows_in: int
    rows_out: int
    epochs_committed: int
    restarts: int
    elapsed: float
    shards: dict[str, ActorHandle[Any]] = field(default_factory=dict)
    actors: dict[str, ActorHandle[Any]] = field(default_factory=dict)
    error: BaseException | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    """What a ``run`` did.

    Attributes:
        rows_in: source rows in the epochs this run committed (each counted once, however
            often it was replayed).
        rows_out: output rows published to the sink by this run.
        epochs_committed: epochs this run committed, ascending.
        bytes_uploaded: bytes of engine files uploaded by this run (committed epochs).
        files_uploaded: engine files uploaded by this run (committed epochs).
        restarts: recoveries performed.
        wall_time: seconds from ``run`` to return, actor start-up included.
        processing_time: seconds from the first batch sent to the last commit.
        restored_from: the epoch the run started from (``None``: empty state).
        last_epoch: the newest committed epoch at the end (``None``: none).
        finished: the input ended and its final epoch (``finish()`` output) is committed.
        stopped: the run was stopped (``Pipeline.stop()`` / ``StopSource``) before the end.
        shards: per-shard counters and engine stats of the last attempt
            (``process_cpu_seconds``: the actor process's CPU time, every thread).
        readers: per source reader of the last attempt: ``rows`` and ``batches`` sent,
            its ``splits``, ``pid``, ``node_id`` and ``process_cpu_seconds``.
        load: per shard (by name): ``stage``, ``updates`` (input rows of the epochs this
            run committed), ``hot_keys`` (``[key, count, error]``, Space-Saving estimates,
            largest first) and the engine's ``write_amplification`` (empty with
            ``hot_keys=0``).
        rebalances: one entry per key-group rebalance: ``epoch`` (the committed epoch it
            started from), ``stage``, ``moved_groups``, ``before`` / ``after`` (each shard's
            share of the load that triggered it, planned), ``copied_keys``,
            ``dropped_keys``, ``seconds``; ``undone: True`` when a failure struck before
            the next epoch committed the new assignment (recovery restored the old one).
        failures: one entry per failure of the run, in order: ``attempt`` (0 = first),
            ``epoch`` (when known), ``error`` (``"Type: message"``), ``action``
            (``"recover"`` or ``"stop"``) and ``reason`` (``"transient"``, ``"first
            occurrence"``; ``"repeated"`` with ``first_attempt``, ``"max_restarts"``, ...;
            ``raykv.runtime.failures.Verdict``). A run that raises reports its last entry in
            the ``"fatal"`` progress event.
        output: the published output (``CollectSink`` only) as one table.
        output_by_epoch: the published output per epoch (``CollectSink`` only).
        late_output: the late rows of window stages with ``late="emit"`` (``CollectSink``:
            one table, the input rows unchanged; ``ParquetSink``: ``None``, they are in
            ``<path>/_late/``), published with their epochs, exactly once.
    """

    rows_in: int = 0
    rows_out: int = 0
    epochs_committed: list[int] = field(default_factory=list)
    bytes_uploaded: int = 0
    files_uploaded: int = 0
    restarts: int = 0
    wall_time: float = 0.0
    processing_time: float = 0.0
    restored_from: int | None = None
    last_epoch: int | None = None
    finished: bool = False
    stopped: bool = False
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    readers: dict[str, dict[str, Any]] = field(default_factory=dict)
    load: dict[str, dict[str, Any]] = field(default_factory=dict)
    rebalances: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    output: pa.Table | None = None
    output_by_epoch: dict[int, pa.Table] = field(default_factory=dict)
    late_output: pa.Table | None = None

    @property
    def events_per_s(self) -> float:
        """``rows_in / processing_time`` (0.0 when nothing ran)."""
        return self.rows_in / self.processing_time if self.processing_time > 0 else 0.0

    def __str__(self) -> str:
        state = "finished" if self.finished else "stopped" if self.stopped else "ended"
        head = (
            f"raykv run {state}: {self.rows_in:,} rows in, {self.rows_out:,} out, "
            f"{len(self.epochs_committed)} epochs committed (last {self.last_epoch}), "
            f"{self.bytes_uploaded / 2**20:.1f} MiB uploaded, {self.restarts} restarts, "
            f"{self.wall_time:.2f}s ({self.events_per_s:,.0f} events/s)"
        )
        return "\n".join([head, *self.load_lines()])

    def load_lines(self) -> list[str]:
        """The per-shard load, hot keys, write amplification and rebalances, as text lines."""
        from raykv.hotkeys import format_hot_keys

        lines = []
        stages: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for name, entry in sorted(self.load.items()):
            stages.setdefault(entry["stage"], []).append((name, entry))
        for stage, shards in stages.items():
            total = sum(e["updates"] for _, e in shards)
            mean = total / len(shards) if shards else 0
            busiest = max((e["updates"] for _, e in shards), default=0)
            ratio = f"{busiest / mean:.2f}x" if mean else "-"
            done = [r for r in self.rebalances if r["stage"] == stage and not r.get("undone")]
            moved = sum(r["moved_groups"] for r in done)
            n_reb = len(done)
            lines.append(f"  stage {stage}: busiest shard {ratio} the mean of {len(shards)} "
                         f"shards; {n_reb} rebalances moved {moved} key groups")
            for name, e in shards:
                share = e["updates"] / total if total else 0.0
                lines.append(f"    {name}: {e['updates']:,} updates ({share:.0%}), write amp "
                             f"{e['write_amplification']:.2f}, hot keys: "
                             f"{format_hot_keys(e['hot_keys'])}")
        return lines


__all__ = ["ProgressEvent", "RunSummary"]
