"""Thesis section 4.3: incremental snapshots of the four engines, on file:// and on S3 (moto).

Two experiments, 2-byte keys and 8-byte values (so at most 65,536 keys, as in the thesis):

* ``inserts`` (figure 4.17): write ``--insert-keys`` new keys per round and snapshot after
  each round, so the state grows.
* ``updates`` (figure 4.18): load ``--update-keys`` keys (65,536) and snapshot once (the
  initial load, not counted), then ``--update-rounds`` rounds (50) of
  ``--updates-per-round`` (1,000) updates of random existing keys, each followed by a
  snapshot.

Every snapshot is the thesis API, ``engine.snapshot(epoch)`` (seal + upload of the files
the store lacks + commit), timed; after it ``gc(retain=--retain)`` runs (timed apart).
Per round the CSV records the snapshot time, bytes uploaded, cumulative bytes, the live
state's file bytes and the store's size after GC. After the rounds the state is restored
into an empty directory: ``restore_shard`` alone and opening an engine with ``remote=``
(restore + index rebuild), the median of three runs each.

    python -m benchmarks.snapshots                       # all engines, file:// and S3
    python -m benchmarks.snapshots --quick --store file  # small sizes, seconds
    python -m benchmarks.snapshots --engines hybridlog,appendlog --experiments updates

Outputs in ``benchmarks/results/``: ``snapshots_<experiment>_<store>.csv`` (per round),
``snapshots_<store>.json`` (summary + targets), ``snapshots_<experiment>_<store>.png``
(thesis figures 4.17/4.18: snapshot time and bytes vs write volume, per engine, plus
cumulative). The S3 run starts moto's server in a subprocess on 127.0.0.1 so that its
CPU time is not charged to the snapshots (the timings still share the machine with it).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
ENGINES = ["memonly", "lsm", "hybridlog", "appendlog"]
MIB = 1 << 20
KEY_LEN, VALUE_LEN = 2, 8

# Targets from the issue (experiment "updates", file://).
TARGET_UPDATE_BYTES = 1.7 * MIB  # HybridLog and AppendLog, 50 rounds, load excluded
TARGET_SNAPSHOT_S = 0.050  # no single snapshot() above
TARGET_RESTORE_S = 0.050  # 65,536 keys into an empty dir, hash-indexed engine, file://
TARGET_STORE_RATIO = 2.0  # store after the rounds (retain=3) <= 2 x live run files


@dataclass
class Round:
    engine: str
    experiment: str
    store: str
    round: int
    epoch: int
    write_bytes: int  # cumulative key+value bytes written by the application
    snapshot_s: float  # wall time of engine.snapshot(epoch) = seal_s + upload_commit_s
    seal_s: float  # the engine's seal (measured by sealing just before the snapshot)
    upload_commit_s: float  # upload of new files + shard manifest + epoch commit
    snapshot_cpu_s: float  # process CPU time of the snapshot (less noisy on a busy machine)
    uploaded_bytes: int
    cumulative_uploaded: int
    new_files: int
    live_bytes: int  # bytes of the files of this epoch (the state on the store)
    store_bytes: int  # bytes of all engine files in the store after gc
    gc_s: float


def key(i: int) -> bytes:
    return i.to_bytes(KEY_LEN, "big")


# ---------------------------------------------------------------------- S3 (moto) server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[dict[str, Any]]:
    """Run moto's S3 server in a subprocess; yield storage options for s3fs."""
    port = _free_port()
    code = (
        "import logging, time\n"
        "logging.getLogger('werkzeug').setLevel(logging.ERROR)\n"
        "from moto.server import ThreadedMotoServer\n"
        f"s = ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False)\n"
        "s.start()\n"
        "while True: time.sleep(3600)\n"
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        yield {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench", "secret": "bench"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------- experiments


def open_engine(name: str, path: Path, url: str, options: dict[str, Any] | None,
                params: dict[str, Any]) -> Any:
    from raykv.engines import engine_class

    return engine_class(name)(path, remote=url, storage_options=options, **params)


def run_experiment(engine: str, experiment: str, store_name: str, url: str,
                   options: dict[str, Any] | None, args: argparse.Namespace,
                   work: Path) -> tuple[list[Round], dict[str, Any]]:
    from raykv.checkpointing import CheckpointStore

    params = json.loads(args.engine_params).get(engine, {})
    rng = random.Random(42)
    store = CheckpointStore(url, options)
    data_dir = work / f"{engine}-{experiment}"
    rounds: list[Round] = []
    written = 0
    cumulative = 0
    summary: dict[str, Any] = {"engine": engine, "experiment": experiment, "store": store_name}
    kv = open_engine(engine, data_dir, url, options, params)
    try:
        epoch = 0
        if experiment == "updates":
            n = args.update_keys
            for lo in range(0, n, 8192):
                hi = min(n, lo + 8192)
                kv.multi_set({key(i): rng.randbytes(VALUE_LEN) for i in range(lo, hi)})
            written += n * (KEY_LEN + VALUE_LEN)
            epoch += 1
            t0 = time.perf_counter()
            kv.snapshot(epoch)
            summary["load_snapshot_s"] = time.perf_counter() - t0
            summary["load_uploaded_bytes"] = store.read_epoch(epoch).new_bytes
            n_rounds = args.update_rounds
        else:
            n_rounds = args.insert_rounds
        next_key = 0
        for r in range(1, n_rounds + 1):
            if experiment == "updates":
                pairs = {key(rng.randrange(args.update_keys)): rng.randbytes(VALUE_LEN)
                         for _ in range(args.updates_per_round)}
                kv.multi_set(pairs)
                written += args.updates_per_round * (KEY_LEN + VALUE_LEN)
            else:
                hi = min(next_key + args.insert_keys, 1 << (8 * KEY_LEN))
                kv.multi_set({key(i): rng.randbytes(VALUE_LEN) for i in range(next_key, hi)})
                written += (hi - next_key) * (KEY_LEN + VALUE_LEN)
                next_key = hi
            epoch += 1
            c0 = time.process_time()
            t0 = time.perf_counter()
            kv.seal()
            t1 = time.perf_counter()
            kv.snapshot(epoch)  # its seal is now idle: this is the checkpoint store's share
            t2 = time.perf_counter()
            cpu_s = time.process_time() - c0
            seal_s, upload_s, snap_s = t1 - t0, t2 - t1, t2 - t0
            em = store.read_epoch(epoch)
            t0 = time.perf_counter()
            store.gc(retain=args.retain)
            gc_s = time.perf_counter() - t0
            cumulative += em.new_bytes
            rounds.append(Round(engine, experiment, store_name, r, epoch, written, snap_s,
                                seal_s, upload_s, cpu_s, em.new_bytes, cumulative,
                                sum(s.new_files for s in em.shards.values()),
                                em.total_bytes, store.store_bytes(), gc_s))
        n_live_keys = sum(1 for _ in kv.items())
    finally:
        kv.close()

    restore_s, open_s = [], []
    for i in range(3):
        target = work / f"restore-{engine}-{experiment}-{i}"
        t0 = time.perf_counter()
        store.restore_shard(epoch, "engine", target)
        restore_s.append(time.perf_counter() - t0)
        shutil.rmtree(target)
        t0 = time.perf_counter()
        kv2 = open_engine(engine, target, url, options, params)
        open_s.append(time.perf_counter() - t0)
        assert sum(1 for _ in kv2.items()) == n_live_keys
        kv2.close()
        shutil.rmtree(target)
    shutil.rmtree(data_dir, ignore_errors=True)

    snaps = [r.snapshot_s for r in rounds]
    last = rounds[-1]
    summary.update(
        rounds=len(rounds),
        live_keys=n_live_keys,
        uploaded_bytes=cumulative,
        snapshot_max_ms=1000 * max(snaps),
        snapshot_p50_ms=1000 * statistics.median(snaps),
        seal_p50_ms=1000 * statistics.median(r.seal_s for r in rounds),
        upload_commit_p50_ms=1000 * statistics.median(r.upload_commit_s for r in rounds),
        upload_commit_max_ms=1000 * max(r.upload_commit_s for r in rounds),
        snapshot_cpu_max_ms=1000 * max(r.snapshot_cpu_s for r in rounds),
        snapshot_total_s=sum(snaps),
        gc_max_ms=1000 * max(r.gc_s for r in rounds),
        live_bytes=last.live_bytes,
        store_bytes=last.store_bytes,
        store_ratio=last.store_bytes / last.live_bytes if last.live_bytes else 0.0,
        restore_ms=1000 * statistics.median(restore_s),
        open_with_restore_ms=1000 * statistics.median(open_s),
        engine_params=params,
    )
    store.close()
    return rounds, summary


# ---------------------------------------------------------------------- output


def write_csv(path: Path, rows: list[Round]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))


def plot(path: Path, rows: list[Round], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for engine in dict.fromkeys(r.engine for r in rows):
        rs = [r for r in rows if r.engine == engine]
        x = [r.write_bytes / MIB for r in rs]
        t = [1000 * r.snapshot_s for r in rs]
        b = [r.uploaded_bytes / 1024 for r in rs]
        cum_t, acc = [], 0.0
        for v in t:
            acc += v / 1000
            cum_t.append(acc)
        axes[0][0].plot(x, t, marker=".", label=engine)
        axes[0][1].plot(x, cum_t, label=engine)
        axes[1][0].plot(x, b, marker=".", label=engine)
        axes[1][1].plot(x, [r.cumulative_uploaded / MIB for r in rs], label=engine)
    labels = [("snapshot time (ms)", "cumulative snapshot time (s)"),
              ("bytes uploaded per snapshot (KiB)", "cumulative bytes uploaded (MiB)")]
    for i in range(2):
        for j in range(2):
            ax = axes[i][j]
            ax.set_xlabel("write volume (MiB of keys + values)")
            ax.set_ylabel(labels[i][j])
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_targets(summaries: list[dict[str, Any]]) -> list[str]:
    lines = []
    for s in summaries:
        if s["experiment"] != "updates" or s["store"] != "file":
            continue
        e = s["engine"]
        if e in ("hybridlog", "appendlog"):
            ok = s["uploaded_bytes"] <= TARGET_UPDATE_BYTES
            lines.append(f"{e}: update bytes {s['uploaded_bytes'] / MIB:.2f} MiB <= 1.7 MiB: "
                         f"{'PASS' if ok else 'FAIL'}")
        if e != "memonly":
            ok = s["snapshot_max_ms"] <= 1000 * TARGET_SNAPSHOT_S
            lines.append(f"{e}: max snapshot {s['snapshot_max_ms']:.1f} ms <= 50 ms: "
                         f"{'PASS' if ok else 'FAIL'}")
            ok = s["store_ratio"] <= TARGET_STORE_RATIO
            lines.append(f"{e}: store/live {s['store_ratio']:.2f} <= 2: "
                         f"{'PASS' if ok else 'FAIL'}")
        if e in ("hybridlog", "appendlog", "memonly"):
            ok = s["restore_ms"] <= 1000 * TARGET_RESTORE_S
            lines.append(f"{e}: restore {s['restore_ms']:.1f} ms <= 50 ms "
                         f"(open with restore {s['open_with_restore_ms']:.1f} ms): "
                         f"{'PASS' if ok else 'FAIL'}")
    return lines


def table(summaries: list[dict[str, Any]]) -> str:
    head = ("| store | experiment | engine | rounds | uploaded MiB | snap ms max / p50 "
            "| seal p50 | upload+commit p50 / max | snap CPU max "
            "| live KiB | store KiB (retain) | restore ms | open+restore ms |")
    out = [head, "|" + "---|" * 13]
    for s in summaries:
        out.append(
            f"| {s['store']} | {s['experiment']} | {s['engine']} | {s['rounds']} | "
            f"{s['uploaded_bytes'] / MIB:.3f} | {s['snapshot_max_ms']:.1f} / "
            f"{s['snapshot_p50_ms']:.1f} | {s['seal_p50_ms']:.1f} | "
            f"{s['upload_commit_p50_ms']:.1f} / {s['upload_commit_max_ms']:.1f} | "
            f"{s['snapshot_cpu_max_ms']:.1f} | {s['live_bytes'] / 1024:.0f} | "
            f"{s['store_bytes'] / 1024:.0f} | {s['restore_ms']:.1f} | "
            f"{s['open_with_restore_ms']:.1f} |"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------- main


def importable(engine: str) -> bool:
    from raykv.engines import ENGINES as REGISTRY

    try:
        importlib.import_module(REGISTRY[engine].split(":")[0])
    except Exception as err:  # an engine still being written
        print(f"skipping {engine}: {err}", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--experiments", default="inserts,updates")
    p.add_argument("--store", choices=["file", "s3", "both"], default="both")
    p.add_argument("--insert-rounds", type=int, default=50)
    p.add_argument("--insert-keys", type=int, default=1000, help="new keys per round")
    p.add_argument("--update-keys", type=int, default=65536)
    p.add_argument("--update-rounds", type=int, default=50)
    p.add_argument("--updates-per-round", type=int, default=1000)
    p.add_argument("--retain", type=int, default=3)
    p.add_argument("--engine-params", default="{}",
                   help='JSON, e.g. \'{"lsm": {"memtable_bytes_limit": 100000}}\'')
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.insert_rounds, args.insert_keys = 10, 500
        args.update_keys, args.update_rounds, args.updates_per_round = 8192, 10, 200
        if os.environ.get("RAYKV_BENCH_TINY") == "1":  # benchmarks.common.tiny()
            args.insert_rounds, args.insert_keys = 5, 200
            args.update_keys, args.update_rounds, args.updates_per_round = 2048, 5, 100
    engines = [e for e in args.engines.split(",") if importable(e)]
    experiments = args.experiments.split(",")
    stores = ["file", "s3"] if args.store == "both" else [args.store]
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    all_summaries: list[dict[str, Any]] = []
    for store_name in stores:
        work = Path(tempfile.mkdtemp(prefix="raykv-snapbench-"))
        try:
            ctx = moto_server() if store_name == "s3" else _nothing()
            with ctx as options:
                if store_name == "s3":
                    import s3fs

                    bucket = f"raykv-bench-{uuid.uuid4().hex[:8]}"
                    s3fs.S3FileSystem(**options).mkdir(bucket)
                summaries = []
                for experiment in experiments:
                    rows: list[Round] = []
                    for engine in engines:
                        if store_name == "s3":
                            url = f"s3://{bucket}/{experiment}/{engine}"
                        else:
                            url = f"file://{work}/store-{experiment}-{engine}"
                        print(f"[{store_name}] {experiment} {engine} ...", flush=True)
                        rs, summary = run_experiment(engine, experiment, store_name, url,
                                                     options, args, work)
                        rows += rs
                        summaries.append(summary)
                    if rows:
                        stem = f"snapshots_{experiment}_{store_name}{suffix}"
                        write_csv(args.out / f"{stem}.csv", rows)
                        fig = "4.17" if experiment == "inserts" else "4.18"
                        plot(args.out / f"{stem}.png", rows,
                             f"thesis fig. {fig}: {experiment}, {store_name} store, "
                             f"retain={args.retain}")
                (args.out / f"snapshots_{store_name}{suffix}.json").write_text(json.dumps({
                    "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                "platform": platform.platform()},
                    "args": {k: str(v) for k, v in sorted(vars(args).items())},
                    "summaries": summaries,
                }, indent=2))
                all_summaries += summaries
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(all_summaries))
    print()
    for line in check_targets(all_summaries):
        print(line)
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


# ---------------------------------------------------------------------- report section


def report_run(quick: bool, out: Path) -> dict[str, Any]:
    """The report's snapshot section: this script on the local ``file`` store."""
    main(["--store", "file", "--out", str(out), *(["--quick"] if quick else [])])
    suffix = "_quick" if quick else ""
    res = json.loads((out / f"snapshots_file{suffix}.json").read_text())
    return {**res, "suffix": suffix}


def report_render(res: dict[str, Any], img: str) -> list[str]:
    """Markdown for the snapshot figures; every number quoted comes from ``res``."""
    a, sfx = res["args"], res["suffix"]
    out = [
        f"Local `file://` checkpoint store. *Inserts* (figure 4.17): {a['insert_rounds']} "
        f"rounds of {a['insert_keys']} new keys, a snapshot after each. *Updates* (figure "
        f"4.18): {a['update_keys']} keys loaded and snapshotted (not counted), then "
        f"{a['update_rounds']} rounds of {a['updates_per_round']} updates of random existing "
        "keys, a snapshot after each. 2-byte keys, 8-byte values, retain=3. Top: time per "
        "snapshot and cumulative; bottom: bytes uploaded per snapshot and cumulative, against "
        "the bytes the application wrote.",
        "",
    ]
    for exp, fig in (("updates", "4.18"), ("inserts", "4.17")):
        ss = [x for x in res["summaries"] if x["experiment"] == exp]
        if not ss:
            continue
        least = min(ss, key=lambda x: x["uploaded_bytes"])
        most = max(ss, key=lambda x: x["uploaded_bytes"])
        fastest = min(ss, key=lambda x: x["snapshot_total_s"])
        out += [
            f"![{exp}]({img}snapshots_{exp}_file{sfx}.png)", "",
            f"*{exp.capitalize()}* (thesis {fig}): uploaded in total "
            + ", ".join(f"{x['engine']} {x['uploaded_bytes'] / MIB:.2f} MiB" for x in ss)
            + f"; {most['engine']} uploads "
            f"{most['uploaded_bytes'] / max(least['uploaded_bytes'], 1):.0f}x what "
            f"{least['engine']} does. Cumulative snapshot time is lowest for "
            f"{fastest['engine']} ({fastest['snapshot_total_s']:.2f} s over "
            f"{fastest['rounds']} snapshots); the slowest single snapshot of each: "
            + ", ".join(f"{x['engine']} {x['snapshot_max_ms']:.0f} ms" for x in ss) + ".",
            "",
        ]
    return out


if __name__ == "__main__":
    sys.exit(main())
