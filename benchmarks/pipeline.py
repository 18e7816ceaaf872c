"""The runtime end to end on a local Ray: throughput, checkpoint overhead, resume, recovery.

Workloads (issue #4, item 8):

* ``throughput``: keyed sum+count (``Aggregate``) over 2,000,000 events with 100,000 keys
  drawn zipf (s=0.99), 2 shards: events/s with checkpoints off, every 1 s and every 0.1 s;
  bytes uploaded per epoch.
* ``statefulmap``: a running count per key with ``StatefulMap`` (one Python call per event).
* ``resume``: time to resume (restore + first batch) with 100,000 and 1,000,000 keys of
  state, from the same local dir (warm: only missing files) and from an empty one (cold).
* ``drill``: kill one shard when half the input has been read; time the recovery and
  check the result against a plain pyarrow group_by. ``--drill-repeat N`` runs a smaller
  kill drill N times in a row (kill points vary: mid-batch, mid-upload, before commit,
  during recovery) and stops at the first wrong result.

events/s is ``rows / processing_time`` (first batch sent to last commit; the Ray actor
start-up is reported separately as wall time). The final epoch (``finish()``: all
100,000 keys' final values) is part of every run.

    python -m benchmarks.pipeline                   # everything, results/pipeline.json
    python -m benchmarks.pipeline --quick           # 200,000 events (seconds)
    python -m benchmarks.pipeline --only throughput --repeat 3
    python -m benchmarks.pipeline --only drill --drill-repeat 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.common import REPO, RESULTS, loadavg


def model(table: pa.Table) -> pa.Table:
    return table.group_by("user").aggregate([("amount", "sum"), ("amount", "count")]).sort_by(
        "user")


def check(final: pa.Table, expected: pa.Table) -> bool:
    final = final.sort_by("user")
    return (
        final.num_rows == expected.num_rows
        and final["user"].equals(expected["user"])
        and final["amount_count"].equals(expected["amount_count"])
        and bool(np.allclose(final["amount_sum"].to_numpy(), expected["amount_sum"].to_numpy()))
    )


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="raykv-bench-"))

    def pipeline(self, source: Any, stages: list[Any], name: str, **kw: Any) -> Any:
        import raykv

        kw.setdefault("engine", self.args.engine)
        kw.setdefault("num_shards", self.args.shards)
        kw.setdefault("local_dir", str(self.tmp / "local"))
        ckpt = kw.pop("ckpt", True)
        if ckpt:
            kw.setdefault("checkpoint", str(self.tmp / f"ckpt-{name}"))
            shutil.rmtree(self.tmp / f"ckpt-{name}", ignore_errors=True)
        return raykv.Pipeline(source=source, stages=stages, **kw)

    # ------------------------------------------------------------------ throughput

    def throughput(self, table: pa.Table) -> dict[str, Any]:
        from raykv.operators import Aggregate
        from raykv.sources import TableSource

        expected = model(table)
        # "overlap": the epoch's fold and seal on the shards' epoch thread
        # (overlap_epochs=True, issue 15 item 2), measured in the same run for the ratio
        modes: list[tuple[str, float | None, bool]] = [
            ("off", None, False), ("1s", 1.0, False), ("0.1s", 0.1, False),
            ("1s overlap", 1.0, True), ("0.1s overlap", 0.1, True)]
        modes = [m for m in modes if m[0] in self.args.modes.split(",")]
        out: dict[str, Any] = {}
        for label, interval, overlap in modes:
            runs = []
            for r in range(self.args.repeat):
                p = self.pipeline(
                    TableSource(table, batch_size=self.args.batch_size),
                    [Aggregate("user", {"amount": ["sum", "count"]})], f"tp-{label}-{r}",
                    ckpt=interval is not None, checkpoint_interval=interval,
                    overlap_epochs=overlap,
                )
                s = p.run()
                ok = check(s.output_by_epoch[s.last_epoch], expected)
                epochs = len(s.epochs_committed)
                runs.append({
                    "events_per_s": s.events_per_s, "processing_s": s.processing_time,
                    "wall_s": s.wall_time, "epochs": epochs, "bytes_uploaded": s.bytes_uploaded,
                    "bytes_per_epoch": s.bytes_uploaded / epochs if interval else 0,
                    "seal_s_max": max(st["seal_seconds"] for st in s.shards.values()),
                    "process_s_max": max(st["process_seconds"] for st in s.shards.values()),
                    "correct": ok,
                })
                print(f"  throughput {label:>11} run {r}: {s.events_per_s:>12,.0f} events/s, "
                      f"{epochs} epochs, {s.bytes_uploaded / 2**20:6.1f} MiB uploaded, "
                      f"processing {s.processing_time:.2f}s, wall {s.wall_time:.2f}s, "
                      f"correct={ok}", flush=True)
            best = max(runs, key=lambda x: x["events_per_s"])
            out[label] = {**best, "runs": runs}
        base = out["off"]["events_per_s"] if "off" in out else None
        for label in ("1s", "0.1s", "1s overlap", "0.1s overlap"):
            if base and label in out:
                out[label]["overhead"] = 1 - out[label]["events_per_s"] / base
        return out

    # ------------------------------------------------------------------ stateful map

    def statefulmap(self, table: pa.Table) -> dict[str, Any]:
        from raykv.operators import StatefulMap
        from raykv.sources import TableSource

        n = min(table.num_rows, self.args.statefulmap_events)
        part = table.slice(0, n).select(["user", "amount"])
        p = self.pipeline(TableSource(part, batch_size=self.args.batch_size),
                          [StatefulMap("user", running_count)], "smap", checkpoint_interval=1.0)
        s = p.run()
        ok = s.rows_out == n
        print(f"  statefulmap: {s.events_per_s:,.0f} events/s over {n:,} events "
              f"({len(s.epochs_committed)} epochs, rows out {s.rows_out:,}, correct={ok})",
              flush=True)
        return {"events": n, "events_per_s": s.events_per_s, "processing_s": s.processing_time,
                "wall_s": s.wall_time, "correct": ok}

    # ------------------------------------------------------------------ resume

    def resume(self) -> dict[str, Any]:
        from raykv.operators import Aggregate
        from raykv.sources import GeneratorSource, StopSource

        out: dict[str, Any] = {}
        for keys in self.args.resume_keys:
            rng = np.random.default_rng(5)
            users = rng.permutation(keys).astype(np.int64)
            state = pa.table({"user": users, "amount": rng.random(keys)})
            batches = state.to_batches(max_chunksize=self.args.batch_size)
            first = min(self.args.batch_size, 65_536)
            extra = pa.table({"user": rng.integers(0, keys, first),
                              "amount": rng.random(first)}).to_batches()[0]

            def fn(i: int, batches: list[pa.RecordBatch] = batches,
                   extra: pa.RecordBatch = extra) -> pa.RecordBatch:
                if i < len(batches):
                    return batches[i]
                if i == len(batches):
                    msg = "state built"
                    raise StopSource(msg)
                if i == len(batches) + 1:
                    return extra  # the first batch after the resume
                msg = "one batch after the resume"
                raise StopSource(msg)

            name = f"resume-{keys}"
            op = Aggregate("user", {"amount": ["sum", "count"]})
            build = self.pipeline(GeneratorSource(fn), [op], name, checkpoint_interval=None)
            s0 = build.run()
            res: dict[str, Any] = {"state_build_s": s0.wall_time}
            warm = self.tmp / f"ckpt-{name}"  # its shards' local dirs are still there
            cold = self.tmp / f"ckpt-{name}-copy"  # another URL: empty local dirs
            shutil.copytree(warm, cold)
            for kind, ckpt in (("warm", warm), ("cold", cold)):
                marks: dict[str, float] = {}

                def on_progress(ev: Any, marks: dict[str, float] = marks) -> None:
                    marks.setdefault(ev.kind, time.perf_counter())

                p = self.pipeline(GeneratorSource(fn), [op], name, checkpoint_interval=None,
                                  ckpt=False, checkpoint=str(ckpt), on_progress=on_progress)
                t0 = time.perf_counter()
                s = p.run(resume=True)
                total = time.perf_counter() - t0
                restore = max(st["restore_seconds"] for st in s.shards.values())
                first_batch = max(st["process_seconds"] for st in s.shards.values())
                commit = marks["committed"] - marks["started"]
                spawn = marks["started"] - marks["starting"] - restore
                res[kind] = {
                    "restore_s": restore, "first_batch_s": first_batch,
                    "restore_plus_first_batch_s": restore + first_batch,
                    "first_commit_after_start_s": commit, "actor_start_s": spawn,
                    "total_s": total, "first_batch_rows": extra.num_rows,
                }
                assert s.rows_in == extra.num_rows  # it went on from the restored state
                print(f"  resume {keys:>9,} keys ({kind}): restore {restore:.3f}s + first batch "
                      f"({extra.num_rows:,} rows) {first_batch:.3f}s = "
                      f"{restore + first_batch:.3f}s; its commit after {commit:.2f}s; "
                      f"actor start {spawn:.2f}s; total {total:.2f}s", flush=True)
            out[str(keys)] = res
        return out

    # ------------------------------------------------------------------ drill

    def drill(self, table: pa.Table) -> dict[str, Any]:
        """Kill one shard when half of the input has been read (1 s checkpoints)."""
        import ray

        from raykv.operators import Aggregate
        from raykv.sources import GeneratorSource

        expected = model(table)
        batches = table.to_batches(max_chunksize=self.args.batch_size)
        half = len(batches) // 2
        marks: dict[str, float] = {}
        handles: dict[str, Any] = {}

        def on_progress(ev: Any) -> None:
            if ev.kind == "started":
                handles.update(ev.shards)
            marks.setdefault(ev.kind, time.perf_counter())
            if ev.kind == "started" and "failure" in marks:
                marks["recovered"] = time.perf_counter()

        def fn(i: int) -> pa.RecordBatch | None:
            if i == half and "killed" not in marks:
                marks["killed"] = time.perf_counter()
                ray.kill(handles[sorted(handles)[0]])
            return batches[i] if i < len(batches) else None

        p = self.pipeline(GeneratorSource(fn), [Aggregate("user", {"amount": ["sum", "count"]})],
                          "drill", checkpoint_interval=1.0, on_progress=on_progress)
        s = p.run()
        ok = check(s.output_by_epoch[s.last_epoch], expected)
        recovery = marks.get("recovered", 0) - marks.get("failure", 0)
        detect = marks.get("failure", 0) - marks["killed"]
        print(f"  drill: killed a shard at 50%: detected in {detect:.2f}s, recovered (new "
              f"actors restored) in {recovery:.2f}s, run {s.wall_time:.2f}s, restarts "
              f"{s.restarts}, correct={ok}", flush=True)
        return {"detect_s": detect, "recovery_s": recovery, "wall_s": s.wall_time,
                "events_per_s": s.events_per_s, "restarts": s.restarts, "correct": ok}

    def drill_repeat(self, times: int) -> dict[str, Any]:
        """The kill drill ``times`` times in a row, on a small input, each result checked."""
        import ray

        from raykv.operators import Aggregate
        from raykv.sources import TableSource
        from raykv.testing import Faults, zipf_events

        kinds = ["barrier", "acked", "committed", "starting"]
        rng = random.Random(self.args.seed)
        passed = 0
        seconds = []
        for i in range(times):
            table = zipf_events(60_000, 5_000, seed=100 + i)
            expected = model(table)
            kind = kinds[i % len(kinds)]
            epoch = rng.randint(1, 4)
            state = {"left": 2 if kind == "starting" else 1}

            def on_progress(ev: Any, kind: str = kind, epoch: int = epoch,
                            state: dict[str, int] = state) -> None:
                trigger = ev.kind == "barrier" and ev.epoch == epoch if kind == "starting" \
                    else ev.kind == kind and ev.epoch == epoch
                if ev.kind == "starting" and kind == "starting" and state["left"] == 1 \
                        and ev.detail["attempt"] == 1:
                    trigger = True  # a second kill while the replacements restore
                if trigger and state["left"] and ev.shards:
                    state["left"] -= 1
                    ray.kill(ev.shards[rng.choice(sorted(ev.shards))])

            p = self.pipeline(
                TableSource(table, batch_size=6_000),
                [Aggregate("user", {"amount": ["sum", "count"]})], f"rep-{i}",
                epoch_every_batches=2, on_progress=on_progress,
                faults=Faults(upload_delay=0.05, restore_delay=0.3),
                engine=rng.choice(["hybridlog", "lsm", "appendlog", "memonly"]),
            )
            t0 = time.perf_counter()
            s = p.run()
            seconds.append(time.perf_counter() - t0)
            ok = check(s.output_by_epoch[s.last_epoch], expected) and s.rows_in == 60_000
            print(f"  drill {i + 1:>2}/{times}: kill at {kind} of epoch {epoch} "
                  f"({p.engine}): restarts {s.restarts}, {seconds[-1]:.1f}s, correct={ok}",
                  flush=True)
            if not ok:
                break
            passed += 1
        return {"times": times, "passed_in_a_row": passed, "seconds": seconds}


def running_count(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
    n = (state or 0) + 1
    return n, {"n": n}


def make_parser() -> argparse.ArgumentParser:
    """The command line; ``benchmarks.pipeline_figures`` builds its ``Bench`` args from it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200,000 events, 10,000 keys")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--engine", default="hybridlog")
    parser.add_argument("--batch-size", type=int, default=262_144)
    parser.add_argument("--repeat", type=int, default=1, help="runs per throughput mode (best)")
    parser.add_argument("--modes", default="off,1s,0.1s,1s overlap,0.1s overlap",
                        help="throughput modes to run (comma-separated)")
    parser.add_argument("--statefulmap-events", type=int, default=1_000_000)
    parser.add_argument("--resume-keys", default="100000,1000000")
    parser.add_argument("--only", default="throughput,statefulmap,resume,drill")
    parser.add_argument("--drill-repeat", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result JSON (default results/pipeline*.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.keys = 200_000, 10_000
        args.batch_size = min(args.batch_size, 65_536)
        args.statefulmap_events = 100_000
        args.resume_keys = "10000,100000"
    args.resume_keys = [int(k) for k in str(args.resume_keys).split(",")]
    only = set(args.only.split(","))

    import ray

    from raykv.testing import zipf_events

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    bench = Bench(args)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "platform": platform.platform(), "ray": ray.__version__,
                    "loadavg_start": loadavg()},
        "params": {k: v for k, v in vars(args).items() if k != "only"},
    }
    print(f"raykv pipeline benchmark: {args.events:,} events, {args.keys:,} zipf keys, "
          f"{args.shards} shards, engine {args.engine}, batches of {args.batch_size:,} "
          f"(load average {loadavg():.1f} on {os.cpu_count()} CPUs)", flush=True)
    table = zipf_events(args.events, args.keys, seed=args.seed)
    try:
        if "throughput" in only:
            results["throughput"] = bench.throughput(table)
        if "statefulmap" in only:
            results["statefulmap"] = bench.statefulmap(table)
        if "resume" in only:
            results["resume"] = bench.resume()
        if "drill" in only:
            results["drill"] = bench.drill(table)
        if args.drill_repeat:
            results["drill_repeat"] = bench.drill_repeat(args.drill_repeat)
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)
        results["machine"]["loadavg_end"] = loadavg()
        ray.shutdown()
    RESULTS.mkdir(exist_ok=True)
    default = "pipeline_quick.json" if args.quick else "pipeline.json"
    path = Path(args.out) if args.out else RESULTS / default
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"results: {path}")
    drill = results.get("drill_repeat")
    if drill and drill["passed_in_a_row"] != drill["times"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
