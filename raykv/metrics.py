"""raykv's metrics in Ray's dashboard and Prometheus: every metric is defined here.

raykv records its metrics through Ray's metrics API (``ray.util.metrics``). Each process
that records (the driver, every shard actor) hands them to its node's metrics agent, which
serves all of that node's processes on one Prometheus endpoint
(``http://<node>:<metrics_export_port>/metrics``). Two classes record:

* :class:`ShardMetrics`, created by every shard (``raykv.runtime.shard.ShardWorker``): rows,
  in-flight batches to the next stage, seal and upload times, state size and hot keys;
* :class:`DriverMetrics`, created by the coordinator: epochs, epoch duration, committed
  uploads, in-flight batches to the first stage, restarts, recovery time, rebalances.

:data:`METRICS` lists every metric once: its declared name, type, tags and meaning
(``docs/runtime.md``, "Metrics", renders it as a table). Ray prefixes every application
metric with ``ray_`` and Prometheus ends every counter in ``_total``, so the declared name
``raykv_rows_in`` is scraped as ``ray_raykv_rows_in_total``
(:attr:`MetricDef.exported`). Tags: ``pipeline`` (:func:`pipeline_tag`: the checkpoint
URL), ``stage`` (stage name) and ``shard`` (shard name, as in ``RunSummary.load``); Ray
adds its own (``WorkerId``, ``NodeAddress``, ``SessionName``, ...), so a query sums over
them: ``sum by (stage, shard) (ray_raykv_rows_in_total{pipeline="..."})``.

Cost: a record is one Ray metric call (about 3 us: tags are built once per shard), made
once per batch or per epoch, never per row. In-flight batches are counted with a
non-blocking ``ray.wait`` at most once per :data:`INFLIGHT_SAMPLE_SECONDS` per sender and
at every epoch end. Everything is a no-op costing one attribute test when Ray is not
initialized in the process at the first record, when ``ray.util.metrics`` cannot be used,
or when the environment variable ``RAYKV_METRICS=0`` is set (read once per process).
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("raykv")

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
SHARD_TAGS = ("pipeline", "stage", "shard")
STAGE_TAGS = ("pipeline", "stage")
PIPELINE_TAGS = ("pipeline",)

#: Histogram buckets (seconds) of every ``*_seconds`` metric: 1 ms to 5 min.
SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0, 300.0]

#: A sender counts its in-flight batches at most this often (and at every epoch end).
INFLIGHT_SAMPLE_SECONDS = 1.0

#: ``RAYKV_METRICS=0`` in a process's environment turns its metrics off.
ENV_SWITCH = "RAYKV_METRICS"


@dataclass(frozen=True)
class MetricDef:
    """One raykv metric.

    Attributes:
        key: the short name :class:`ShardMetrics` / :class:`DriverMetrics` use.
        name: the name declared to Ray (``raykv_...``, no ``_total``: Ray adds it).
        kind: ``"counter"``, ``"gauge"`` or ``"histogram"``.
        tags: the tag keys every record carries.
        side: where it is recorded: ``"shard"`` (shard actors), ``"driver"`` or ``"both"``.
        description: what it measures (Prometheus ``# HELP``).
    """

    key: str
    name: str
    kind: str
    tags: tuple[str, ...]
    side: str
    description: str

    @property
    def exported(self) -> str:
        """The name Prometheus scrapes: ``ray_`` + name (+ ``_total`` for a counter).

        A histogram is scraped as ``<exported>_bucket``, ``_sum`` and ``_count``.
        """
        return f"ray_{self.name}" + ("_total" if self.kind == COUNTER else "")


METRICS: tuple[MetricDef, ...] = (
    MetricDef("rows_in", "raykv_rows_in", COUNTER, SHARD_TAGS, "shard",
              "Input rows a shard processed, counted per batch (replayed rows count again "
              "after a recovery)."),
    MetricDef("rows_out", "raykv_rows_out", COUNTER, SHARD_TAGS, "shard",
              "Rows a shard emitted, counted per epoch: sent to the next stage, or on the "
              "last stage the epoch output handed to the sink."),
    MetricDef("late_events", "raykv_late_events", COUNTER, SHARD_TAGS, "shard",
              "Rows an event-time window found late (after their window closed by the "
              "watermark), dropped or emitted on the late output, counted per epoch."),
    MetricDef("batches_in_flight", "raykv_batches_in_flight", GAUGE, SHARD_TAGS, "both",
              "Batches sent to this shard and not processed yet, per sender (the driver "
              "or an upstream shard; sum over senders). At its limit (max_inflight, or "
              "fewer by inflight_seconds) the sender waits: backpressure."),
    MetricDef("seal_seconds", "raykv_seal_seconds", HISTOGRAM, SHARD_TAGS, "shard",
              "Seconds a shard spent ending an epoch: on_barrier or finish, seal, linking "
              "the files for upload."),
    MetricDef("upload_seconds", "raykv_upload_seconds", HISTOGRAM, SHARD_TAGS, "shard",
              "Seconds a shard's upload of one epoch to the checkpoint store took (not "
              "recorded for memory:// stores, which the driver uploads)."),
    MetricDef("live_keys", "raykv_live_keys", GAUGE, SHARD_TAGS, "shard",
              "Keys in a shard's state at its last epoch end, operator metadata "
              "excluded (a window stage holds one per key and open window); only engines "
              "that count keys in O(1) report it (memonly)."),
    MetricDef("state_bytes", "raykv_state_bytes", GAUGE, SHARD_TAGS, "shard",
              "Bytes of a shard's engine files at its last uploaded epoch (its "
              "checkpointed state)."),
    MetricDef("state_memory_bytes", "raykv_state_memory_bytes", GAUGE, SHARD_TAGS, "shard",
              "Bytes of memory a shard's engine holds at its last epoch end (the "
              "engine's O(1) estimate)."),
    MetricDef("hot_key_share", "raykv_hot_key_share", GAUGE, SHARD_TAGS, "shard",
              "The busiest key's share of a shard's updates since it started "
              "(Space-Saving estimate, may be high by at most 1/hot_keys; needs "
              "hot_keys > 0)."),
    MetricDef("uploaded_bytes", "raykv_uploaded_bytes", COUNTER, SHARD_TAGS, "driver",
              "Bytes of engine files uploaded for committed epochs (RunSummary."
              "bytes_uploaded, per shard)."),
    MetricDef("uploaded_files", "raykv_uploaded_files", COUNTER, SHARD_TAGS, "driver",
              "Engine files uploaded for committed epochs (RunSummary.files_uploaded, per "
              "shard)."),
    MetricDef("epochs_committed", "raykv_epochs_committed", COUNTER, PIPELINE_TAGS, "driver",
              "Epochs committed."),
    MetricDef("epoch_seconds", "raykv_epoch_seconds", HISTOGRAM, PIPELINE_TAGS, "driver",
              "Seconds from an epoch's barrier to its commit (sink published)."),
    MetricDef("restarts", "raykv_restarts", COUNTER, PIPELINE_TAGS, "driver",
              "Recoveries from failures (RunSummary.restarts)."),
    MetricDef("recovery_seconds", "raykv_recovery_seconds", HISTOGRAM, PIPELINE_TAGS,
              "driver",
              "Seconds from a failure (the failed attempt torn down) until the new "
              "shards restored the last committed epoch."),
    MetricDef("rebalances", "raykv_rebalances", COUNTER, STAGE_TAGS, "driver",
              "Key-group rebalances carried out (committed or later undone)."),
)

_BY_KEY = {m.key: m for m in METRICS}

# ---------------------------------------------------------------------------- registry

_lock = threading.Lock()
_instruments: dict[str, Any] | None = None
_failed = False


def _registry() -> dict[str, Any] | None:
    """This process's Ray metric objects by key, created once; ``None``: metrics are off."""
    global _instruments, _failed
    if _instruments is not None or _failed:
        return _instruments
    with _lock:
        if _instruments is not None or _failed:
            return _instruments
        if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
            _failed = True
            return None
        try:
            import ray

            if not ray.is_initialized():
                return None  # not cached: Ray may be initialized later in this process
            from ray.util.metrics import Counter, Gauge, Histogram

            made: dict[str, Any] = {}
            for m in METRICS:
                if m.kind == COUNTER:
                    made[m.key] = Counter(m.name, m.description, m.tags)
                elif m.kind == GAUGE:
                    made[m.key] = Gauge(m.name, m.description, m.tags)
                else:
                    made[m.key] = Histogram(m.name, m.description, SECONDS_BUCKETS, m.tags)
        except Exception as err:  # an install without metrics support: stay off
            log.warning("raykv: metrics are off (ray.util.metrics unavailable: %s)", err)
            _failed = True
            return None
        _instruments = made
        return made


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (every thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pipeline_tag(checkpoint: str | os.PathLike[str] | None, fallback: str) -> str:
    """The ``pipeline`` tag: the checkpoint URL as the store normalizes it, else ``fallback``.

    A plain path becomes ``file://<absolute path>``; user info, query and fragment are
    dropped (no credentials in labels). The URL names the pipeline's state, so it stays
    the same across ``run(resume=True)``, restarts and rescales. Runs without a
    checkpoint get ``fallback`` (the coordinator passes an id unique to the run).
    """
    if checkpoint is None:
        return fallback
    url = os.fspath(checkpoint)
    if "://" not in url:
        url = "file://" + os.path.abspath(url)
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def _metadata_keys(engine: Any) -> int:
    """How many operator metadata keys (``raykv.operators.base.META_KEYS``) ``engine`` holds.

    Cost: one ``get`` per metadata key (two).
    """
    from raykv.operators.base import META_KEYS

    return sum(1 for k in META_KEYS if engine.get(k))


class _StageLike(Protocol):
    """What in-flight sampling needs of a ``raykv.runtime.specs.StageSpec``."""

    @property
    def name(self) -> str: ...

    @property
    def shard_names(self) -> tuple[str, ...]: ...


Queues: TypeAlias = Sequence[Sequence[Any]] | Mapping[int, Sequence[Any]]


class _Inflight:
    """Counts a sender's unfinished ``process`` calls per receiving shard, throttled."""

    def __init__(self, pipeline: str) -> None:
        self._pipeline = pipeline
        self._last = 0.0
        self._stage: _StageLike | None = None
        self._queues: Queues | None = None
        self._set: set[tuple[str, str]] = set()

    def sample(self, gauge: Any, stage: _StageLike | None = None,
               queues: Queues | None = None, *, force: bool = False) -> None:
        """Set the gauge of every receiver from a non-blocking ``ray.wait`` on its calls.

        ``stage``/``queues`` (receiver index -> its object refs) are remembered, so a
        forced sample at an epoch end needs neither. Cost when not due: one clock read.
        """
        if stage is not None:
            self._stage, self._queues = stage, queues
        now = time.monotonic()
        if not force and now - self._last < INFLIGHT_SAMPLE_SECONDS:
            return
        self._last = now
        stage, queues = self._stage, self._queues
        if stage is None or queues is None:
            return
        import ray

        items: Iterable[tuple[int, Sequence[Any]]] = (
            queues.items() if isinstance(queues, Mapping) else enumerate(queues))
        for i, q in items:
            refs = list(q)
            busy = 0
            if refs:
                _, pending = ray.wait(refs, num_returns=len(refs), timeout=0,
                                      fetch_local=False)
                busy = len(pending)
            shard = stage.shard_names[i]
            self._set.add((stage.name, shard))
            gauge.set(busy, {"pipeline": self._pipeline, "stage": stage.name, "shard": shard})

    def clear(self, gauge: Any) -> None:
        """Set every gauge this sender set to 0 and forget the queues (the senders stopped)."""
        for stage, shard in self._set:
            gauge.set(0, {"pipeline": self._pipeline, "stage": stage, "shard": shard})
        self._set.clear()
        self._stage = self._queues = None


# ---------------------------------------------------------------------------- shard side


class ShardMetrics:
    """The metrics of one shard, recorded from inside its actor (tags fixed at creation).

    Contract: :meth:`batch` once per input batch, :meth:`inflight` after sending a batch
    downstream, :meth:`epoch` once per completed epoch, :meth:`upload` once per upload.
    Cost: about 3 us per record; nothing but an attribute test when metrics are off.
    """

    def __init__(self, pipeline: str, stage: str, shard: str) -> None:
        self._tags = {"pipeline": pipeline, "stage": stage, "shard": shard}
        self._m: dict[str, Any] | None = None
        self._resolved = False
        self._rows_out = 0.0
        self._late = 0
        self._inflight = _Inflight(pipeline)

    def _on(self) -> dict[str, Any] | None:
        self._m, self._resolved = _registry(), True  # decided once, at the first record
        return self._m

    def batch(self, rows: int) -> None:
        """Count one processed input batch of ``rows`` rows."""
        m = self._m if self._resolved else self._on()
        if m is not None and rows > 0:
            m["rows_in"].inc(rows, self._tags)

    def inflight(self, down: _StageLike, queues: Queues) -> None:
        """Sample the calls in flight to the next stage (``down``); throttled."""
        m = self._m if self._resolved else self._on()
        if m is not None:
            self._inflight.sample(m["batches_in_flight"], down, queues)

    def epoch(self, seal_seconds: float, rows_out_total: float, engine: Any,
              tracker: Any, late_total: int = 0) -> None:
        """Record an epoch's end: seal time, rows emitted, state size, hot-key share.

        Args:
            seal_seconds: time spent ending the epoch.
            rows_out_total: the shard's rows emitted so far (the delta is counted).
            engine: its ``KVStore``; its ``live_keys()`` (O(1), when the engine has it)
                minus the operator metadata keys it holds is the ``live_keys`` gauge.
            tracker: its ``raykv.hotkeys.LoadTracker`` or ``None``.
            late_total: the late rows its window operator found so far (the delta is
                counted).

        Cost: O(1): two ``get`` calls for the metadata keys, a top-1 of the ``hot_keys``
        Space-Saving counters, a few records.
        """
        m = self._m if self._resolved else self._on()
        if m is None:
            return
        tags = self._tags
        m["seal_seconds"].observe(float(seal_seconds), tags)
        rows = float(rows_out_total) - self._rows_out
        self._rows_out = float(rows_out_total)
        if rows > 0:
            m["rows_out"].inc(rows, tags)
        late, self._late = late_total - self._late, late_total
        if late > 0:
            m["late_events"].inc(late, tags)
        count = getattr(engine, "live_keys", None)
        try:
            if callable(count):
                m["live_keys"].set(int(count()) - _metadata_keys(engine), tags)
            m["state_memory_bytes"].set(int(engine.__sizeof__()), tags)
        except Exception as err:  # an engine closed under us: skip this sample
            log.debug("raykv: shard state metrics skipped: %s", err)
        if tracker is not None and tracker.hot.total:
            top = tracker.hot.top(1)
            if top:
                m["hot_key_share"].set(top[0].count / tracker.hot.total, tags)
        self._inflight.sample(m["batches_in_flight"], force=True)

    def upload(self, seconds: float, manifest: Any) -> None:
        """Record one epoch's upload: its duration and the state's size (``total_bytes``)."""
        m = self._m if self._resolved else self._on()
        if m is None:
            return
        m["upload_seconds"].observe(float(seconds), self._tags)
        m["state_bytes"].set(int(manifest.total_bytes), self._tags)


# ---------------------------------------------------------------------------- driver side


class DriverMetrics:
    """The coordinator's metrics of one ``Pipeline.run`` (recorded in the driver).

    Contract: :meth:`event` sees every progress event (``ProgressEvent.kind``),
    :meth:`committed` every committed epoch's shard manifests, :meth:`inflight` every
    batch sent to the first stage. Thread-safe (feed and commit threads both call it).
    Cost: one record per event, two per shard per commit, one clock read per batch.

    Attributes:
        pipeline: the ``pipeline`` tag (shards get it through their ``ShardSpec``).
    """

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self._tags = {"pipeline": pipeline}
        self._m: dict[str, Any] | None = None
        self._resolved = False
        self._lock = threading.Lock()
        self._barriers: dict[int, float] = {}
        self._failed_at: float | None = None
        self._inflight = _Inflight(pipeline)

    def _on(self) -> dict[str, Any] | None:
        self._m, self._resolved = _registry(), True  # decided once, at the first record
        return self._m

    def event(self, kind: str, epoch: int | None, detail: Mapping[str, Any]) -> None:
        """Fold one progress event (``barrier``, ``committed``, ``failure``, ...) in."""
        m = self._m if self._resolved else self._on()
        if m is None:
            return
        now = time.monotonic()
        with self._lock:
            if kind == "barrier" and epoch is not None:
                self._barriers[epoch] = now
                self._inflight.sample(m["batches_in_flight"], force=True)
            elif kind == "committed" and epoch is not None:
                m["epochs_committed"].inc(1, self._tags)
                started = self._barriers.pop(epoch, None)
                for e in [e for e in self._barriers if e < epoch]:
                    del self._barriers[e]
                if started is not None:
                    m["epoch_seconds"].observe(now - started, self._tags)
            elif kind == "failure":
                m["restarts"].inc(1, self._tags)
                self._failed_at = now
                self._barriers.clear()
                self._inflight.clear(m["batches_in_flight"])
            elif kind == "started" and self._failed_at is not None:
                m["recovery_seconds"].observe(now - self._failed_at, self._tags)
                self._failed_at = None
            elif kind == "rebalanced":
                m["rebalances"].inc(1, {**self._tags, "stage": str(detail.get("stage"))})
            elif kind == "finished":
                self._inflight.clear(m["batches_in_flight"])

    def committed(self, manifests: Mapping[str, Any]) -> None:
        """Count a committed epoch's uploads: shard name -> its ``ShardManifest``."""
        m = self._m if self._resolved else self._on()
        if m is None:
            return
        for shard, sm in manifests.items():
            tags = {**self._tags, "stage": str(sm.metadata.get("stage", "")), "shard": shard}
            if sm.new_bytes > 0:
                m["uploaded_bytes"].inc(int(sm.new_bytes), tags)
            if sm.new_files > 0:
                m["uploaded_files"].inc(int(sm.new_files), tags)

    def inflight(self, stage: _StageLike, queues: Queues) -> None:
        """Sample the driver's calls in flight to the first stage's shards; throttled."""
        m = self._m if self._resolved else self._on()
        if m is not None:
            self._inflight.sample(m["batches_in_flight"], stage, queues)


def metric(key: str) -> MetricDef:
    """The definition of metric ``key`` (e.g. ``"rows_in"``).

    Raises:
        KeyError: no such metric (the message lists them).
    """
    try:
        return _BY_KEY[key]
    except KeyError:
        msg = f"no raykv metric {key!r}; metrics: {sorted(_BY_KEY)}"
        raise KeyError(msg) from None


__all__ = [
    "METRICS",
    "SECONDS_BUCKETS",
    "DriverMetrics",
    "MetricDef",
    "ShardMetrics",
    "metric",
    "pipeline_tag",
    "process_cpu_seconds",
]
