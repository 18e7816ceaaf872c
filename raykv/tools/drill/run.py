"""Running a drill: a reference run, rounds of runs with kills, and their checks."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from raykv.sources import GeneratorSource, Source
from raykv.tools.drill.config import AGGS, KEY, DrillConfig
from raykv.tools.drill.killer import Killer, plan_kills
from raykv.tools.drill.model import diff_outputs, expected_epochs, read_published
from raykv.tools.drill.report import DrillResult, KillRecord

if TYPE_CHECKING:

    from raykv.pipeline import Pipeline, ProgressEvent, RunSummary
    from raykv.testing import Faults


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
        standby=cfg.standby,
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
        source = GeneratorSource(gen, limit=gen.num_batches)
        ref_ckpt = f"{base}/reference"
        ref = _pipeline(cfg, source, ref_ckpt, work / "out" / "reference", work / "local",
                        None, None, 0)
        summary = ref.run()
        problems = _check_run(cfg, summary, ref_ckpt, work / "out" / "reference", want,
                              "reference run")
        reference = read_published(work / "out" / "reference")
        result.rows_out = sum(t.num_rows for t in reference.values())
        result.problems += problems
        if problems:
            return result
        rng = random.Random(cfg.seed)
        # each delay widens the window of one kill moment; without that moment it would
        # only slow the run down (and every recovery, with the restore delay)
        faults = Faults(
            process_delay=cfg.process_delay if "mid-batch" in cfg.moments else 0.0,
            upload_delay=cfg.upload_delay if "upload" in cfg.moments else 0.0,
            restore_delay=cfg.restore_delay if "recovery" in cfg.moments else 0.0)
        round_no = 0
        while len(result.kills) < cfg.kills:
            round_no += 1
            remaining = cfg.kills - len(result.kills)
            killer = Killer(plan_kills(cfg, remaining, rng), rng, round_no,
                            len(result.kills) + 1, cfg.final_epoch, cfg.rows_through,
                            cfg.targets)
            ckpt = f"{base}/round-{round_no:03d}"
            out = work / "out" / f"round-{round_no:03d}"
            p = _pipeline(cfg, source, ckpt, out, work / "local", killer,
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


__all__ = ["run_drill"]
