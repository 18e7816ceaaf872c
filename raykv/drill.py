"""Recovery drills: kill shard actors at chosen moments and prove the result is exact.

A drill runs one keyed aggregation (``Aggregate(user: sum, count, min, max)`` over a
deterministic zipf event stream, :class:`raykv.demo.ZipfEvents`) with checkpoints and a
:class:`raykv.sinks.ParquetSink`, and kills a random shard actor (``ray.kill``) at a random
moment, ``kills`` times in a row. Moments (``MOMENTS``):

* ``mid-batch``: a short random delay after an epoch commits, while the shards process the
  next epoch's batches (``Faults(process_delay=...)`` keeps every call busy for a while);
* ``upload``: a short random delay after ``barrier(e)`` is sent, while the shards seal and
  upload epoch ``e`` (``Faults(upload_delay=...)`` holds every upload open);
* ``acked``: every shard acknowledged epoch ``e`` (its shard manifests are durable) and the
  driver is about to write the epoch manifest: between ack and commit;
* ``recovery``: while the replacement shards of the previous kill restore their state
  (``Faults(restore_delay=...)``); it always follows another kill.

One kill is armed at a time: it fires at its moment, the coordinator detects the dead
actor, restores every shard to the last committed epoch and replays the source; once the
new shards are ready (``"started"``), the next kill is armed. When the input ends before
every kill has fired, a new round (a fresh pipeline, checkpoint and output directory)
continues with the remaining kills.

Exactness: epochs end every ``epoch_every`` batches, so they are identical run to run. A
failure-free *reference run* of the same pipeline is compared with a plain ``pyarrow``
group_by model (changelog of each epoch, and the final values of the last epoch), then
every drill round must publish exactly the reference's Parquet output, epoch by epoch
(read back with pyarrow), leave nothing staged, and leave a store that ``verify()``s.

Per kill the drill records when it struck, the epoch the shards were restored from, the
events replayed (rows the source re-read from that epoch's offset up to where it was), the
time to detect the failure and the recovery time (kill to new shards ready).

Example::

    result = run_drill(DrillConfig(kills=5, events=20_000))
    print(format_table(result.kills))
    assert result.ok, result.problems

Cost: one reference run plus one run per round; every kill costs an actor teardown and
restart (about 1-3 s on a laptop) plus the replay.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from raykv.demo import ZipfEvents
from raykv.sources import Offset, Source, SourceReader

if TYPE_CHECKING:
    from ray.actor import ActorHandle

    from raykv.pipeline import Pipeline, ProgressEvent, RunSummary
    from raykv.testing import Faults

log = logging.getLogger("raykv.drill")

MOMENTS = ("mid-batch", "upload", "acked", "recovery")
"""Kill moments a drill can choose from (see the module docstring)."""

AGGS: dict[str, list[str]] = {"amount": ["sum", "count", "min", "max"]}
KEY = "user"
OUT_COLUMNS = ["user", "amount_sum", "amount_count", "amount_min", "amount_max"]


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DrillConfig:
    """What a drill runs and how it kills (a plain value; validated on construction).

    Attributes:
        kills: shard kills to survive in a row (each one detected and recovered).
        events: events in the input stream.
        keys: distinct users (zipf distributed).
        batch_size: events per source batch.
        epoch_every: source batches per epoch (deterministic epochs).
        num_shards: shard actors of the aggregation stage.
        engine: state engine (``hybridlog``, ``lsm``, ``appendlog``, ``memonly``).
        seed: seeds the kill plan (moments, shards, delays); the events are fixed.
        moments: the moments to choose from (a subset of ``MOMENTS``).
        checkpoint: base checkpoint URL; the reference and each round use a sub-folder
            (default: a temporary local folder).
        storage_options: fsspec options for ``checkpoint`` (S3 endpoint, keys).
        work_dir: folder for outputs, local engine state and the default checkpoints
            (default: a temporary folder, removed at the end).
        process_delay: seconds each shard ``process`` call sleeps (widens mid-batch).
        upload_delay: seconds each upload waits before it starts (widens mid-upload).
        restore_delay: seconds each restoring shard sleeps (widens during-recovery).
    """

    kills: int = 20
    events: int = 60_000
    keys: int = 2_000
    batch_size: int = 1_000
    epoch_every: int = 2
    num_shards: int = 2
    engine: str = "hybridlog"
    seed: int = 0
    moments: tuple[str, ...] = MOMENTS
    checkpoint: str | None = None
    storage_options: dict[str, Any] | None = None
    work_dir: str | None = None
    process_delay: float = 0.02
    upload_delay: float = 0.3
    restore_delay: float = 0.4

    def __post_init__(self) -> None:
        for name in ("kills", "events", "keys", "batch_size", "epoch_every", "num_shards"):
            value = getattr(self, name)
            if type(value) is not int or value < (0 if name == "kills" else 1):
                msg = f"drill {name} must be a positive int, got {value!r}"
                raise ValueError(msg)
        for name in ("process_delay", "upload_delay", "restore_delay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                msg = f"drill {name} must be a number of seconds >= 0, got {value!r}"
                raise ValueError(msg)
        moments = tuple(self.moments)
        unknown = [m for m in moments if m not in MOMENTS]
        if not moments or unknown:
            msg = (f"drill moments must be a non-empty subset of {list(MOMENTS)}, "
                   f"got {list(moments)}")
            raise ValueError(msg)
        if moments == ("recovery",):
            msg = "drill moment 'recovery' follows another kill: add another moment"
            raise ValueError(msg)
        object.__setattr__(self, "moments", moments)
        if self.num_batches < 2 * self.epoch_every:
            msg = (
                f"drill input too short: {self.events} events in batches of {self.batch_size} "
                f"give {self.num_batches} batches, fewer than two epochs of {self.epoch_every}; "
                "raise events or lower batch_size"
            )
            raise ValueError(msg)
        from raykv.engines import engine_class

        engine_class(self.engine)  # raises ValueError naming the known engines

    @property
    def num_batches(self) -> int:
        """Source batches in the stream."""
        return -(-self.events // self.batch_size)

    @property
    def final_epoch(self) -> int:
        """The epoch number of the final (``finish()``) epoch of a run."""
        return self.num_batches // self.epoch_every + 1

    def generator(self) -> ZipfEvents:
        """The event stream: batch ``i`` is ``generator()(i)``."""
        return ZipfEvents(events=self.events, keys=self.keys, batch_size=self.batch_size)


# ---------------------------------------------------------------------------- results


@dataclass
class KillRecord:
    """One kill and the recovery that followed.

    Attributes:
        number: 1-based position in the drill.
        round: the run (round) it happened in.
        moment: one of ``MOMENTS``.
        when: what exactly it followed (e.g. ``"0.12 s after barrier 5"``).
        shard: the shard actor killed.
        epoch: the epoch of the triggering event (``None`` for ``recovery``).
        restored_from: the committed epoch every shard was restored from (``None``: the
            run restarted from empty state, nothing was committed yet).
        events_replayed: source rows read again after the recovery (from the restored
            epoch's offset up to where the source was when the failure was seen).
        detect_s: seconds from the kill to the driver noticing the failure.
        recovery_s: seconds from the kill to the replacement shards being ready.
        interrupted: the next kill (a ``recovery`` kill) struck while this kill's
            replacement shards were restoring; that kill's row shows the recovery.
    """

    number: int
    round: int
    moment: str
    when: str
    shard: str
    epoch: int | None
    restored_from: int | None = None
    events_replayed: int = 0
    detect_s: float | None = None
    recovery_s: float | None = None
    interrupted: bool = False
    killed_at: float = 0.0
    failure_pos: int | None = None
    next_open: int | None = None


@dataclass
class DrillResult:
    """What a drill did and found.

    Attributes:
        config: the drill's configuration.
        kills: the kills that were detected and recovered from, in order.
        undetected: kills that struck after the run had committed its final epoch (they
            prove nothing and do not count).
        rounds: runs with kills (the reference run not included).
        epochs: epochs per run (the final one included).
        rows_out: published output rows of the reference run.
        problems: every check that failed (empty: the drill passed).
        wall_time: seconds for the whole drill.
    """

    config: DrillConfig
    kills: list[KillRecord] = field(default_factory=list)
    undetected: list[KillRecord] = field(default_factory=list)
    rounds: int = 0
    epochs: int = 0
    rows_out: int = 0
    problems: list[str] = field(default_factory=list)
    wall_time: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every kill was survived and every output was exact."""
        return not self.problems and len(self.kills) >= self.config.kills


def format_table(kills: Sequence[KillRecord]) -> str:
    """Render kill records as a fixed-width text table (one line per kill)."""
    head = (f"{'#':>3}  {'round':>5}  {'moment':<9}  {'when':<30}  {'shard':<22}  "
            f"{'restored':>8}  {'replayed':>9}  {'detect s':>8}  {'recovery s':>11}")
    lines = [head, "-" * len(head)]
    for k in kills:
        restored = "empty" if k.restored_from is None else str(k.restored_from)
        detect = "-" if k.detect_s is None else f"{k.detect_s:.2f}"
        recovery = "-" if k.recovery_s is None else f"{k.recovery_s:.2f}"
        if k.interrupted:
            restored, recovery = "next row", "interrupted"
        lines.append(
            f"{k.number:>3}  {k.round:>5}  {k.moment:<9}  {k.when:<30.30}  {k.shard:<22.22}  "
            f"{restored:>8}  {k.events_replayed:>9,}  {detect:>8}  {recovery:>11}"
        )
    return "\n".join(lines)


def summarize(result: DrillResult) -> str:
    """One paragraph: kills survived, recovery times, exactness."""
    cfg = result.config
    times = sorted(k.recovery_s for k in result.kills if k.recovery_s is not None)
    per_moment = {m: sum(1 for k in result.kills if k.moment == m) for m in cfg.moments}
    lines = [
        f"kills survived: {len(result.kills)}/{cfg.kills} in {result.rounds} round(s) "
        f"({', '.join(f'{m} {n}' for m, n in per_moment.items())})",
    ]
    if times:
        median = times[len(times) // 2]
        lines.append(f"recovery time: median {median:.2f} s, max {times[-1]:.2f} s; "
                     f"events replayed: {sum(k.events_replayed for k in result.kills):,}")
    if result.undetected:
        lines.append(f"{len(result.undetected)} kill(s) struck after the final commit "
                     "(not counted)")
    if result.problems:
        lines.append("MISMATCH:")
        lines.extend(f"  - {p}" for p in result.problems)
    else:
        lines.append(
            f"exact: every round published the failure-free output ({result.epochs} epochs, "
            f"{result.rows_out:,} rows, final state of {cfg.keys:,} zipf users checked "
            "against pyarrow group_by) and its store verifies"
        )
    lines.append(f"drill time: {result.wall_time:.1f} s")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the source


class _Tracker:
    """Driver-side record of where a drill's source readers were opened and are now."""

    def __init__(self, batch_size: int, events: int) -> None:
        self.batch_size = batch_size
        self.events = events
        self.opens: list[int] = []  # row position of each open, in order
        self.pos = 0  # row position of the current reader

    def rows(self, offset: Offset | None) -> int:
        """Rows before batch ``offset``."""
        return min(int(offset or 0) * self.batch_size, self.events)


class TrackedSource(Source):
    """A generator source over a :class:`ZipfEvents` stream that tracks its readers.

    It records (in the driver) where each reader was opened and how far it read, so a
    drill can count the events replayed after each recovery.

    Offset: the next batch number, as for ``GeneratorSource``.
    """

    def __init__(self, gen: ZipfEvents, tracker: _Tracker) -> None:
        from raykv.sources import GeneratorSource

        self.inner = GeneratorSource(gen, limit=gen.num_batches)
        self.tracker = tracker

    def open(self, offset: Offset | None = None) -> SourceReader:
        """Open the stream at batch ``offset`` and record the row position."""
        reader = self.inner.open(offset)
        start = self.tracker.rows(offset)
        self.tracker.opens.append(start)
        self.tracker.pos = start
        return _TrackedReader(reader, self.tracker)

    def describe(self) -> dict[str, Any]:
        """Type and the generator's parameters."""
        return {"type": "TrackedSource", **self.inner.describe()}


class _TrackedReader(SourceReader):
    def __init__(self, reader: SourceReader, tracker: _Tracker) -> None:
        self._reader = reader
        self._tracker = tracker

    def read(self) -> pa.RecordBatch | None:
        batch = self._reader.read()
        if batch is not None:
            self._tracker.pos += batch.num_rows
        return batch

    @property
    def offset(self) -> Offset:
        return self._reader.offset

    def close(self) -> None:
        self._reader.close()


# ---------------------------------------------------------------------------- the killer


@dataclass
class _Planned:
    moment: str
    skip: int
    delay: float


def plan_kills(cfg: DrillConfig, count: int, rng: random.Random) -> list[_Planned]:
    """Choose ``count`` kill moments: every allowed moment early on, then at random.

    ``recovery`` never comes first nor right after another ``recovery`` (it needs a
    recovery in progress to strike).
    """
    out: list[_Planned] = []
    unused = list(cfg.moments)
    for _ in range(count):
        allowed = [m for m in cfg.moments
                   if m != "recovery" or (out and out[-1].moment != "recovery")]
        fresh = [m for m in unused if m in allowed]
        moment = rng.choice(fresh or allowed)
        if moment in unused:
            unused.remove(moment)
        if moment == "mid-batch":
            delay = rng.uniform(0.02, 0.15)
        elif moment == "upload":
            delay = rng.uniform(0.03, max(0.05, cfg.upload_delay * 0.6))
        elif moment == "recovery":
            delay = rng.uniform(0.0, max(0.02, cfg.restore_delay * 0.6))
        else:
            delay = 0.0
        skip = 0 if moment == "recovery" else rng.randint(0, 1)
        out.append(_Planned(moment, skip, delay))
    return out


class _Killer:
    """``on_progress`` hook of a drill round: fires the planned kills one at a time."""

    _TRIGGER = {"mid-batch": "committed", "upload": "barrier", "acked": "acked",
                "recovery": "starting"}

    def __init__(self, plan: list[_Planned], rng: random.Random, round_no: int,
                 first_number: int, final_epoch: int, tracker: _Tracker) -> None:
        self.plan = plan
        self.rng = rng
        self.round = round_no
        self.number = first_number
        self.final_epoch = final_epoch
        self.tracker = tracker
        self.records: list[KillRecord] = []
        self.lock = threading.RLock()
        self.done = False
        self.waiting: KillRecord | None = None  # fired, failure not seen yet
        self.recovering: KillRecord | None = None  # failure seen, new shards not ready
        self.skipped = 0
        self.opens_at_start = 0
        self.t0 = time.perf_counter()

    def __call__(self, ev: ProgressEvent) -> None:
        with self.lock:
            self._on_event(ev)

    def _on_event(self, ev: ProgressEvent) -> None:
        now = time.perf_counter()
        if ev.kind == "starting":
            self.opens_at_start = len(self.tracker.opens)
        elif ev.kind == "failure":
            rec = self.waiting
            if rec is not None:
                rec.detect_s = now - rec.killed_at
                opened = len(self.tracker.opens) > self.opens_at_start
                rec.failure_pos = self.tracker.pos if opened else None
                rec.next_open = len(self.tracker.opens)
                self.waiting = None
                self.recovering = rec
        elif ev.kind == "started" and self.recovering is not None:
            rec = self.recovering
            rec.restored_from = ev.detail.get("restored_from")
            rec.recovery_s = now - rec.killed_at
            self.recovering = None
        elif ev.kind == "committed" and ev.detail.get("final"):
            self.done = True
        if self.done or self.waiting is not None or not self.plan or not ev.shards:
            return
        nxt = self.plan[0]
        if nxt.moment == "recovery":
            if self.recovering is None or ev.kind != "starting":
                return
        elif self.recovering is not None or ev.kind != self._TRIGGER[nxt.moment]:
            return
        if ev.epoch is not None and ev.epoch >= self.final_epoch:
            return
        if ev.kind == "barrier" and ev.detail.get("final"):
            return
        if self.skipped < nxt.skip:
            self.skipped += 1
            return
        if nxt.moment == "recovery" and self.recovering is not None:
            self.recovering.interrupted = True
            self.recovering = None
        self.plan.pop(0)
        self.skipped = 0
        name = self.rng.choice(sorted(ev.shards))
        handle = ev.shards[name]
        if nxt.moment == "recovery":
            when = f"{nxt.delay:.2f} s into restore"
            if ev.detail.get("attempt") is not None:
                when += f" #{ev.detail['attempt']}"
        elif nxt.delay:
            when = f"{nxt.delay:.2f} s after {ev.kind} {ev.epoch}"
        else:
            when = f"acked {ev.epoch}, before commit"
        rec = KillRecord(number=self.number, round=self.round, moment=nxt.moment, when=when,
                         shard=name, epoch=ev.epoch)
        self.number += 1
        self.records.append(rec)
        self.waiting = rec
        if nxt.delay:
            timer = threading.Timer(nxt.delay, self._kill, [rec, handle])
            timer.daemon = True
            timer.start()
        else:
            self._kill(rec, handle)

    def _kill(self, rec: KillRecord, handle: ActorHandle[Any]) -> None:
        import ray

        with self.lock:
            if self.done:
                return
            rec.killed_at = time.perf_counter()
        try:
            ray.kill(handle, no_restart=True)
        except Exception as err:  # the actor is already gone: the kill still "struck"
            log.debug("drill: ray.kill(%s) failed: %s", rec.shard, err)

    def finish(self) -> tuple[list[KillRecord], list[KillRecord]]:
        """Split fired kills into recovered and undetected ones; fill events replayed."""
        with self.lock:
            self.done = True
            recovered, undetected = [], []
            for rec in self.records:
                if rec.detect_s is None:
                    undetected.append(rec)
                    continue
                if (rec.failure_pos is not None and rec.next_open is not None
                        and rec.next_open < len(self.tracker.opens)):
                    rec.events_replayed = max(0, rec.failure_pos
                                              - self.tracker.opens[rec.next_open])
                recovered.append(rec)
            return recovered, undetected


# ---------------------------------------------------------------------------- checks


def expected_epochs(cfg: DrillConfig) -> dict[int, pa.Table]:
    """The output of a failure-free run, per epoch, from a plain pyarrow group_by.

    Epoch ``e < final`` holds the changelog: the running aggregates of the users that had
    events in ``e``; the final epoch holds every user's final aggregates.
    """
    table = cfg.generator().table()
    rows = cfg.batch_size * cfg.epoch_every
    aggs = [(col, op) for col, ops in AGGS.items() for op in ops]
    out: dict[int, pa.Table] = {}

    def model(t: pa.Table) -> pa.Table:
        g = pa.TableGroupBy(t, KEY, use_threads=False).aggregate(aggs)
        return g.select(OUT_COLUMNS).sort_by(KEY)

    for e in range(1, cfg.final_epoch):
        m = model(table.slice(0, rows * e))
        recent = pc.unique(table.slice(rows * (e - 1), rows)[KEY])
        out[e] = m.filter(pc.is_in(m[KEY], value_set=recent))
    out[cfg.final_epoch] = model(table)
    return out


def read_published(path: str | Path, storage_options: dict[str, Any] | None = None
                   ) -> dict[int, pa.Table]:
    """Read a ParquetSink directory back with pyarrow: epoch -> its output (sorted by key)."""
    import fsspec
    import pyarrow.parquet as pq

    from raykv.sinks import parse_part_file_name

    fs, root = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
    parts: dict[int, list[pa.Table]] = {}
    for p in sorted(fs.ls(root, detail=False)):
        parsed = parse_part_file_name(p.rstrip("/").rsplit("/", 1)[-1])
        if parsed is None:
            continue
        with fs.open(p, "rb") as f:
            parts.setdefault(parsed[0], []).append(pq.read_table(f))
    return {e: pa.concat_tables(ts).sort_by(KEY) for e, ts in sorted(parts.items())}


def diff_outputs(got: dict[int, pa.Table], want: dict[int, pa.Table], what: str) -> list[str]:
    """Describe every difference between two epoch -> output mappings (empty: equal)."""
    problems: list[str] = []
    if sorted(got) != sorted(want):
        problems.append(f"{what}: epochs {sorted(got)}, expected {sorted(want)}")
    for e in sorted(set(got) & set(want)):
        g = got[e].select(OUT_COLUMNS).sort_by(KEY)
        w = want[e].select(OUT_COLUMNS).sort_by(KEY)
        if g.num_rows != w.num_rows:
            problems.append(f"{what}: epoch {e} has {g.num_rows} rows, expected {w.num_rows}")
            continue
        for col in OUT_COLUMNS:
            if not g[col].equals(w[col]):
                bad = pc.index(pc.not_equal(g[col], w[col]), True).as_py()
                problems.append(
                    f"{what}: epoch {e} column {col!r} differs at user "
                    f"{g[KEY][bad].as_py()}: {g[col][bad].as_py()} != {w[col][bad].as_py()}"
                )
                break
    return problems


# ---------------------------------------------------------------------------- running


def _pipeline(cfg: DrillConfig, source: Source, checkpoint: str, out: Path, local: Path,
              on_progress: Callable[[ProgressEvent], None] | None, faults: Faults | None,
              max_restarts: int) -> Pipeline:
    import raykv
    from raykv.operators import Aggregate
    from raykv.sinks import ParquetSink

    return raykv.Pipeline(
        source=source, stages=[Aggregate(KEY, AGGS)], sink=ParquetSink(out),
        num_shards=cfg.num_shards, engine=cfg.engine, checkpoint=checkpoint,
        storage_options=cfg.storage_options, checkpoint_interval=None,
        epoch_every_batches=cfg.epoch_every, retain=3, local_dir=str(local),
        on_progress=on_progress, faults=faults, max_restarts=max_restarts,
    )


def _check_run(cfg: DrillConfig, summary: RunSummary, checkpoint: str, out: Path,
               want: dict[int, pa.Table], what: str) -> list[str]:
    from raykv.checkpointing import CheckpointStore

    problems: list[str] = []
    if not summary.finished:
        problems.append(f"{what}: the run did not finish")
    got = read_published(out)
    problems += diff_outputs(got, want, f"{what} published output")
    staged = [p.name for p in (out / "_staging").glob("*")] if (out / "_staging").is_dir() else []
    if staged:
        problems.append(f"{what}: files left in {out / '_staging'}: {staged[:5]}")
    store = CheckpointStore(checkpoint, cfg.storage_options)
    latest = store.latest_epoch()
    if latest != cfg.final_epoch or not store.read_epoch(latest).metadata.get("final"):
        problems.append(f"{what}: latest committed epoch is {latest}, expected the final "
                        f"epoch {cfg.final_epoch}")
    try:
        store.verify()
    except Exception as err:  # CorruptionError names the file
        problems.append(f"{what}: checkpoint store does not verify: {err}")
    return problems


def run_drill(cfg: DrillConfig, *, on_round: Callable[[int, list[KillRecord]], None] | None = None
              ) -> DrillResult:
    """Run a reference run, then rounds of kills until ``cfg.kills`` were survived.

    Starts a local Ray (``ray.init``) when none is connected and shuts it down after.

    Args:
        cfg: the drill.
        on_round: called after each round with its number and its recovered kills.

    Returns:
        The :class:`DrillResult` (``ok`` tells whether the drill passed).

    Raises:
        StoreUnavailableError: ``cfg.checkpoint`` cannot be reached (before any run).
        ValueError: a round's checkpoint or output location already holds a run.
    """
    import ray

    from raykv.checkpointing import CheckpointStore
    from raykv.testing import Faults

    t_start = time.perf_counter()
    result = DrillResult(config=cfg)
    tmp = tempfile.mkdtemp(prefix="raykv-drill-", dir=cfg.work_dir)
    work = Path(tmp)
    base = (cfg.checkpoint.rstrip("/") if cfg.checkpoint
            else f"file://{work / 'checkpoints'}")
    CheckpointStore(base, cfg.storage_options)  # fail fast: unreachable store, bad credentials
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    try:
        want = expected_epochs(cfg)
        result.epochs = len(want)
        gen = cfg.generator()
        ref_ckpt = f"{base}/reference"
        ref = _pipeline(cfg, TrackedSource(gen, _Tracker(cfg.batch_size, cfg.events)),
                        ref_ckpt, work / "out" / "reference", work / "local", None, None, 0)
        summary = ref.run()
        problems = _check_run(cfg, summary, ref_ckpt, work / "out" / "reference", want,
                              "reference run")
        reference = read_published(work / "out" / "reference")
        result.rows_out = sum(t.num_rows for t in reference.values())
        result.problems += problems
        if problems:
            return result
        rng = random.Random(cfg.seed)
        faults = Faults(process_delay=cfg.process_delay, upload_delay=cfg.upload_delay,
                        restore_delay=cfg.restore_delay)
        round_no = 0
        while len(result.kills) < cfg.kills:
            round_no += 1
            remaining = cfg.kills - len(result.kills)
            tracker = _Tracker(cfg.batch_size, cfg.events)
            killer = _Killer(plan_kills(cfg, remaining, rng), rng, round_no,
                             len(result.kills) + 1, cfg.final_epoch, tracker)
            ckpt = f"{base}/round-{round_no:03d}"
            out = work / "out" / f"round-{round_no:03d}"
            p = _pipeline(cfg, TrackedSource(gen, tracker), ckpt, out, work / "local", killer,
                          faults, max_restarts=remaining + 2)
            try:
                summary = p.run()
            finally:
                recovered, undetected = killer.finish()
            for i, rec in enumerate(recovered):
                rec.number = len(result.kills) + i + 1
            result.kills += recovered
            result.undetected += undetected
            result.rounds = round_no
            what = f"round {round_no}"
            if summary.restarts != len(recovered):
                result.problems.append(
                    f"{what}: {summary.restarts} recoveries for {len(recovered)} detected kills")
            result.problems += _check_run(cfg, summary, ckpt, out, reference, what)
            if on_round is not None:
                on_round(round_no, recovered)
            if result.problems:
                break
            if not recovered:
                result.problems.append(f"{what}: no kill struck before the input ended; "
                                       "use more events")
                break
        return result
    finally:
        result.wall_time = time.perf_counter() - t_start
        if started_ray:
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


__all__ = [
    "MOMENTS",
    "DrillConfig",
    "DrillResult",
    "KillRecord",
    "TrackedSource",
    "diff_outputs",
    "expected_epochs",
    "format_table",
    "plan_kills",
    "read_published",
    "run_drill",
    "summarize",
]
