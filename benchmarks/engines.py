"""Thesis section 4.2: the engines side by side, next to a dict and RocksDB (rocksdict).

Workload (thesis 4.2): 5-byte keys and values, 100,000 unique keys, 300,000 sets then
300,000 gets, keys drawn uniform or zipf (s=0.99); thesis parameters for every engine.
Each (store, distribution) runs in a fresh subprocess so that resident memory is its own.

    python -m benchmarks.engines                 # full run, prints a markdown table
    python -m benchmarks.engines --quick         # small sizes (seconds)
    python -m benchmarks.engines --lsm-memory    # 2,000,000 keys x 100-byte values in LSMTree
    python -m benchmarks.engines --bulk          # multi_set of 1,000,000 distinct keys (issue 15)
    python -m benchmarks.engines --bulk --bulk-8  # the same with 8-byte keys (integer keys)
    python -m benchmarks.engines --bulk-profile hybridlog 100000 update  # cProfile of a phase
    python -m benchmarks.engines --fold hybridlog 20000000 4  # an Aggregate's barriers (issue 15)

Results go to benchmarks/results/engines.json (and lsm_memory.json, bulk.json).

The bulk workload (``--bulk``) is the per-epoch fold of an operator: 1,000,000 distinct
keys of 8-16 random bytes (``--bulk-8``: exactly 8, as an operator keyed by an integer
or time column writes them) with 16-byte values, written with ``multi_set`` of a ``dict``
(what ``keyed_state`` sends) in batches of 10,000 and 100,000 pairs, in three phases on
one store with the engine's default parameters: ``insert`` (every key new), ``update``
(every key again, in another order) and ``mixed`` (half the keys of each batch new, half
existing). The rate of a phase is keys over wall time, best of ``--repeat`` fresh stores
(and, less disturbed by other load on the machine, keys over the writing thread's CPU
time: background fsyncs excluded); ``dict`` is ``dict.update`` of the same batches (the
ceiling for a dict index).

The fold workload (``--fold ENGINE EVENTS EPOCH_BATCHES``) is what a pipeline shard pays
per checkpoint: an ``Aggregate`` (sum and count of ``amount`` per ``user``) over one
shard's half of ``zipf_events(EVENTS, 100,000 keys)`` in batches of 131,072 rows, in
process (no Ray), with a barrier (the fold: ``multi_get`` of the epoch's keys, combine,
``multi_set``) and a ``seal()`` every ``EPOCH_BATCHES`` batches. It reports the thread
CPU seconds of ``process``, the barriers, the seals, and within the barriers the
engine's ``multi_get`` and ``multi_set`` (CPU time: less disturbed by other load than
wall time).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, rss_bytes
from benchmarks.common import machine_line as machine

THESIS_PARAMS: dict[str, dict[str, Any]] = {
    "lsm": {"max_runs_per_level": 10, "density_factor": 10, "memtable_bytes_limit": 100_000},
    "hybridlog": {
        "mem_segment_len": 210_000,
        "ro_lag_interval": 10_000,
        "flush_interval": 10_000,
        "max_runs_per_level": 10,
    },
    "appendlog": {"threshold": 100_000, "max_runs_per_level": 10},
    "memonly": {},
}
STORES = ["dict", "rocksdb", "memonly", "lsm", "hybridlog", "appendlog"]
ENGINES_ONLY = STORES[2:]  # the raykv engines
BATCH = 10_000


def make_workload(dist: str, n_keys: int, n_ops: int, seed: int = 42) -> tuple[list[bytes], ...]:
    """Return (set_keys, set_values, get_keys) for the thesis workload."""
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(0, 1 << 40, n_keys * 2))
    rng.shuffle(ids)
    universe = [int(i).to_bytes(5, "big") for i in ids[:n_keys]]
    if dist == "uniform":
        set_ids = rng.integers(0, n_keys, n_ops)
        get_ids = rng.integers(0, n_keys, n_ops)
    else:
        p = 1.0 / np.arange(1, n_keys + 1) ** 0.99
        p /= p.sum()
        set_ids = rng.choice(n_keys, n_ops, p=p)
        get_ids = rng.choice(n_keys, n_ops, p=p)
    values = [bytes(v) for v in rng.integers(1, 256, (n_ops, 5), dtype=np.uint8)]
    return [universe[i] for i in set_ids], values, [universe[i] for i in get_ids]


def open_store(name: str, path: str) -> Any:
    if name == "dict":
        return {}
    if name == "rocksdb":
        from rocksdict import Rdict

        return Rdict(path)
    from raykv.engines import open_engine

    return open_engine(name, path, **THESIS_PARAMS[name])


def _timed(fn: Any, n: int) -> float:
    """Rate of ``fn()`` doing ``n`` operations, in operations per second (wall time)."""
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def run_one(name: str, dist: str, n_keys: int, n_ops: int, repeat: int = 3) -> dict[str, Any]:
    """Measure one store on one distribution (called in a fresh subprocess).

    Every rate is the best of ``repeat`` runs on a fresh store (the machine is shared, and
    the best run is the one least disturbed). Memory, seal time and disk figures come
    from the first run.
    """
    keys, values, get_keys = make_workload(dist, n_keys, n_ops)
    out: dict[str, Any] = {"store": name, "dist": dist, "n_keys": n_keys, "n_ops": n_ops,
                           "repeat": repeat}
    batches = [(keys[i : i + BATCH], values[i : i + BATCH]) for i in range(0, n_ops, BATCH)]
    get_batches = [get_keys[i : i + BATCH] for i in range(0, n_ops, BATCH)]
    rates: dict[str, list[float]] = {k: [] for k in
                                     ("set_ops_s", "get_ops_s", "multi_set_keys_s",
                                      "multi_get_keys_s")}
    for rep in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            gc.collect()
            rss0 = rss_bytes()
            store = open_store(name, os.path.join(tmp, "single"))
            if name in ("dict", "rocksdb"):
                setter, getter = store.__setitem__, store.get
            else:
                setter, getter = store.set, store.get

            def sets(setter: Any = setter) -> None:
                for k, v in zip(keys, values, strict=True):
                    setter(k, v)

            def gets(getter: Any = getter) -> None:
                for k in get_keys:
                    getter(k)

            rates["set_ops_s"].append(_timed(sets, n_ops))
            rates["get_ops_s"].append(_timed(gets, n_ops))
            if rep == 0:
                gc.collect()
                out["rss_growth_mib"] = (rss_bytes() - rss0) / 2**20
            if name not in ("dict", "rocksdb"):
                if rep == 0:
                    out["sizeof_mib"] = store.__sizeof__() / 2**20
                    t = time.perf_counter()
                    store.seal()
                    out["seal_ms"] = (time.perf_counter() - t) * 1e3
                    out["disk_mib"] = sum(
                        f.stat().st_size for f in Path(tmp, "single").iterdir()
                    ) / 2**20
                    out["write_amp"] = store.stats.write_amplification
                store.close()
            elif name == "rocksdb":
                store.close()

            store = open_store(name, os.path.join(tmp, "multi"))
            if name == "dict":
                def msets(store: Any = store) -> None:
                    for ks, vs in batches:
                        store.update(zip(ks, vs, strict=True))

                def mgets(store: Any = store) -> None:
                    for ks in get_batches:
                        list(map(store.get, ks))
            elif name == "rocksdb":
                from rocksdict import WriteBatch

                def msets(store: Any = store) -> None:
                    for ks, vs in batches:
                        wb = WriteBatch()
                        for k, v in zip(ks, vs, strict=True):
                            wb.put(k, v)
                        store.write(wb)

                def mgets(store: Any = store) -> None:
                    for ks in get_batches:
                        store.get(ks)
            else:
                def msets(store: Any = store) -> None:
                    for ks, vs in batches:
                        store.multi_set(list(zip(ks, vs, strict=True)))

                def mgets(store: Any = store) -> None:
                    for ks in get_batches:
                        store.multi_get(ks)
            rates["multi_set_keys_s"].append(_timed(msets, n_ops))
            rates["multi_get_keys_s"].append(_timed(mgets, n_ops))
            if name != "dict":
                store.close()
    out.update({k: max(v) for k, v in rates.items()})
    return out


def lsm_memory(n_keys: int) -> dict[str, Any]:
    """Insert ``n_keys`` keys with 100-byte values into LSMTree; report RSS growth."""
    from raykv.engines import open_engine

    with tempfile.TemporaryDirectory() as tmp:
        gc.collect()
        rss0 = rss_bytes()
        store = open_engine("lsm", tmp)
        value = b"v" * 100
        t = time.perf_counter()
        for i in range(0, n_keys, BATCH):
            store.multi_set([(b"key%010d" % j, value) for j in range(i, min(i + BATCH, n_keys))])
        elapsed = time.perf_counter() - t
        store.seal()
        gc.collect()
        growth = rss_bytes() - rss0
        out = {
            "n_keys": n_keys,
            "rss_growth_mib": growth / 2**20,
            "sizeof_mib": store.__sizeof__() / 2**20,
            "write_s": elapsed,
            "disk_mib": sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20,
        }
        store.close()
    return out


BULK_STORES = ["dict", "hybridlog", "appendlog", "memonly", "lsm"]
BULK_VALUE_LEN = 16


def make_bulk_keys(n: int, seed: int, eight: bool = False) -> list[bytes]:
    """``n`` distinct random keys of 8-16 bytes (distinct: 8 random bytes or more each).

    ``eight``: every key 8 bytes (what an operator keyed by an integer column writes).
    """
    rng = np.random.default_rng(seed)
    lens = np.full(n, 8) if eight else rng.integers(8, 17, n)
    blob = rng.integers(0, 256, int(lens.sum()), dtype=np.uint8).tobytes()
    ends = np.cumsum(lens).tolist()
    keys = [blob[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    return list(dict.fromkeys(keys))  # 2**-64 odds of a repeat: drop it anyway


def fresh_copies(keys: list[bytes]) -> list[bytes]:
    """New ``bytes`` objects equal to ``keys`` (as an operator decodes them from a batch)."""
    blob = b"".join(keys)
    ends = np.cumsum([len(k) for k in keys]).tolist()
    return [blob[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def bulk_phases(n_keys: int, batch: int, eight: bool = False
                ) -> dict[str, list[dict[bytes, bytes]]]:
    """The batches of the bulk workload's three phases (see the module docstring)."""
    keys = make_bulk_keys(2 * n_keys, seed=7, eight=eight)
    old, fresh = keys[:n_keys], keys[n_keys:]
    rng = np.random.default_rng(8)
    value = np.arange(BULK_VALUE_LEN, dtype=np.uint8).tobytes()

    def batches(ks: list[bytes], tag: int) -> list[dict[bytes, bytes]]:
        ks = fresh_copies(ks)
        vals = [tag.to_bytes(1, "big") + value[1:]] * len(ks)
        return [dict(zip(ks[i : i + batch], vals[i : i + batch], strict=True))
                for i in range(0, len(ks), batch)]

    updates = [old[i] for i in rng.permutation(n_keys)]
    half = n_keys // 2
    mixed_keys = [k for pair in zip(updates[:half], fresh[:half], strict=True) for k in pair]
    return {"insert": batches(old, 1), "update": batches(updates, 2),
            "mixed": batches(mixed_keys, 3)}


PACKED = "-packed"  # a store name's suffix: ``multi_set_packed`` of the same batches


def as_arrays(batch: dict[bytes, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """A batch of 8-byte keys and fixed-size values as ``multi_set_packed`` takes it."""
    words = np.frombuffer(b"".join(batch), ">u8").astype(np.uint64)
    rows = np.frombuffer(b"".join(batch.values()), np.uint8).reshape(len(batch), -1)
    return words, rows


def _apply(write: Any, args: tuple[Any, ...]) -> None:
    write(*args)


def bulk_one(name: str, n_keys: int, batch: int, repeat: int = 2,
             profile: str | None = None, eight: bool = False) -> dict[str, Any]:
    """Rates of ``multi_set`` for the bulk workload on store ``name`` (default parameters).

    ``name`` may be ``dict``: ``dict.update`` of the same batches, the ceiling of any
    engine whose index is a dict; ``ENGINE-packed``: ``multi_set_packed`` of the batches
    as arrays (8-byte keys only). Every phase gets new key objects (equal bytes), so no
    lookup is helped by finding the very object it looks for. ``profile``: a phase whose
    first run is profiled (cProfile, cumulative times to stderr).
    """
    from raykv.engines import open_engine

    phases: dict[str, list[Any]] = dict(bulk_phases(n_keys, batch, eight))
    engine, packed = name.removesuffix(PACKED), name.endswith(PACKED)
    if packed:  # the batches as arrays, built before the clock starts
        phases = {p: [as_arrays(b) for b in bs] for p, bs in phases.items()}
    rates: dict[str, list[float]] = {p: [] for p in phases}
    cpu_rates: dict[str, list[float]] = {p: [] for p in phases}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            store: Any = {} if name == "dict" else open_engine(engine, tmp)
            write = (store.update if name == "dict" else
                     partial(_apply, store.multi_set_packed) if packed else store.multi_set)
            for phase, bs in phases.items():
                gc.collect()
                profiler = cProfile.Profile() if phase == profile else None
                t, cpu = time.perf_counter(), time.thread_time()
                if profiler is not None:
                    profiler.enable()
                for b in bs:
                    write(b)
                if profiler is not None:
                    profiler.disable()
                n = sum(len(b[0]) if packed else len(b) for b in bs)
                rates[phase].append(n / (time.perf_counter() - t))
                cpu_rates[phase].append(n / (time.thread_time() - cpu))
                if profiler is not None:  # the profile of the first run, to stderr
                    pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumtime").print_stats(
                        40)
                    profile = None
            if name != "dict":
                store.close()
    out: dict[str, Any] = {"store": name, "n_keys": n_keys, "batch": batch, "repeat": repeat}
    out.update({f"{p}_keys_s": max(r) for p, r in rates.items()})
    out.update({f"{p}_cpu_keys_s": max(r) for p, r in cpu_rates.items()})
    return out


def fold_one(name: str, events: int, per_epoch: int) -> dict[str, Any]:
    """The fold workload (module docstring) on engine ``name`` with default parameters."""
    import pyarrow.compute as pc

    from raykv.engines import open_engine
    from raykv.operators import Aggregate
    from raykv.testing import zipf_events

    table = zipf_events(events, 100_000, seed=0)
    table = table.filter(pc.equal(pc.bit_wise_and(table["user"], 1), 0))  # one shard's
    batches = table.to_batches(max_chunksize=131_072)
    secs = dict.fromkeys(["process", "barrier", "seal", "multi_get", "multi_set"], 0.0)
    keys = {"multi_get": 0, "multi_set": 0}
    clock = time.thread_time
    with tempfile.TemporaryDirectory() as tmp:
        store: Any = open_engine(name, tmp)
        get, put = store.multi_get, store.multi_set

        def multi_get(ks: Any) -> Any:
            t = clock()
            out = get(ks)
            secs["multi_get"] += clock() - t
            keys["multi_get"] += len(ks)
            return out

        def multi_set(pairs: Any) -> None:
            t = clock()
            put(pairs)
            secs["multi_set"] += clock() - t
            keys["multi_set"] += len(pairs)

        put_packed = store.multi_set_packed

        def multi_set_packed(words: Any, rows: Any) -> None:
            t = clock()
            put_packed(words, rows)
            secs["multi_set"] += clock() - t
            keys["multi_set"] += len(words)

        store.multi_get, store.multi_set = multi_get, multi_set
        store.multi_set_packed = multi_set_packed
        logic = Aggregate("user", {"amount": ["sum", "count"]}).build(store)
        for i, b in enumerate(batches):
            t = clock()
            logic.process(b)
            secs["process"] += clock() - t
            if (i + 1) % per_epoch == 0:
                t = clock()
                logic.on_barrier(i)
                secs["barrier"] += clock() - t
                t = clock()
                store.seal()
                secs["seal"] += clock() - t
        store.close()
    return {"store": name, "events": events, "rows": table.num_rows,
            "epochs": len(batches) // per_epoch, "cpu_s": secs, "keys": keys}


def run_bulk(stores: list[str], n_keys: int, batches: list[int], repeat: int,
             eight: bool = False) -> dict[str, Any]:
    """``bulk_one`` for every (store, batch size), each in a fresh subprocess."""
    rows = []
    for batch in batches:
        for name in stores:
            res = subprocess_json(["--bulk-one", name, str(n_keys), str(batch), str(repeat),
                                   *(["--bulk-8"] if eight else [])])
            res.update(store=name, batch=batch)
            rows.append(res)
            print(f"# {name} batch {batch}: {res}", file=sys.stderr)
    return {"machine": machine(), "loadavg": os.getloadavg()[0], "n_keys": n_keys,
            "key_len": "8" if eight else "8-16", "value_len": BULK_VALUE_LEN, "rows": rows}


def subprocess_json(args: list[str]) -> dict[str, Any]:
    """Run ``python -m benchmarks.engines ARGS`` and return the JSON of its last line."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.engines", *args],
        capture_output=True, text=True, check=False, cwd=Path(__file__).parent.parent,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(stores: list[str], dists: list[str], n_keys: int, n_ops: int,
            repeat: int = 3) -> dict[str, Any]:
    """``run_one`` for every (store, distribution), each in a fresh subprocess."""
    rows = []
    for dist in dists:
        for name in stores:
            res = subprocess_json(["--one", name, dist, str(n_keys), str(n_ops), str(repeat)])
            res.update(store=name, dist=dist)
            rows.append(res)
            print(f"# {name} {dist}: {res}", file=sys.stderr)
    return {"machine": machine(), "n_keys": n_keys, "n_ops": n_ops, "rows": rows}


def fmt(x: Any, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if x is None else f"{x / scale:,.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--stores", default=",".join(STORES))
    ap.add_argument("--dists", default="uniform,zipf")
    ap.add_argument("--lsm-memory", action="store_true")
    ap.add_argument("--bulk", action="store_true", help="multi_set of many distinct keys")
    ap.add_argument("--bulk-keys", type=int, default=1_000_000)
    ap.add_argument("--bulk-batches", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=2, help="runs per rate (--bulk)")
    ap.add_argument("--bulk-8", action="store_true",
                    help="--bulk with keys of 8 bytes (an integer key column) instead of 8-16")
    ap.add_argument("--bulk-one", nargs=4, metavar="X", help=argparse.SUPPRESS)
    ap.add_argument("--bulk-profile", nargs=3, metavar=("STORE", "BATCH", "PHASE"),
                    help="profile one phase of the bulk workload (cProfile, to stderr)")
    ap.add_argument("--fold", nargs=3, metavar=("STORE", "EVENTS", "EPOCH_BATCHES"),
                    help="an Aggregate's per-epoch fold and seal, in process (see above)")
    ap.add_argument("--one", nargs="+", metavar="STORE DIST NKEYS NOPS [REPEAT]",
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        name, dist, nk, no, *rep = args.one
        print(json.dumps(run_one(name, dist, int(nk), int(no), *map(int, rep))))
        return
    if args.fold:
        name, events, per_epoch = args.fold
        print(json.dumps(fold_one(name, int(events), int(per_epoch))))
        return
    if args.bulk_profile:
        name, batch, phase = args.bulk_profile
        print(json.dumps(bulk_one(name, args.bulk_keys, int(batch), 1, profile=phase,
                                  eight=args.bulk_8)))
        return
    if args.bulk_one:
        name, nk, batch, rep = args.bulk_one
        print(json.dumps(bulk_one(name, int(nk), int(batch), int(rep), eight=args.bulk_8)))
        return
    RESULTS.mkdir(exist_ok=True)
    if args.bulk:
        stores = args.stores.split(",") if args.stores != ",".join(STORES) else BULK_STORES
        n = 100_000 if args.quick else args.bulk_keys
        rep = run_bulk(stores, n, [int(b) for b in args.bulk_batches.split(",")], args.repeat,
                       args.bulk_8)
        if not args.quick:
            name = "bulk_keys8.json" if args.bulk_8 else "bulk.json"
            (RESULTS / name).write_text(json.dumps(rep, indent=1))
        print(f"Machine: {rep['machine']}; load average {rep['loadavg']:.1f}; {n:,} distinct "
              f"keys of {rep['key_len']} bytes, {BULK_VALUE_LEN}-byte values, "
              f"best of {args.repeat}\n")
        print("| store | batch | insert keys/s | update keys/s | mixed keys/s "
              "| insert / update / mixed keys per CPU s |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rep["rows"]:
            if "error" in r:
                print(f"| {r['store']} | {r['batch']:,} | error: {r['error']} | | | |")
                continue
            cpu = " / ".join(fmt(r.get(f"{p}_cpu_keys_s")) for p in ("insert", "update", "mixed"))
            print(f"| {r['store']} | {r['batch']:,} | {fmt(r['insert_keys_s'])} "
                  f"| {fmt(r['update_keys_s'])} | {fmt(r['mixed_keys_s'])} | {cpu} |")
        return
    if args.lsm_memory:
        n = 100_000 if args.quick else 2_000_000
        res = lsm_memory(n)
        res["machine"] = machine()
        (RESULTS / "lsm_memory.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
        return
    n_keys, n_ops = (10_000, 30_000) if args.quick else (100_000, 300_000)
    report = run_all(args.stores.split(","), args.dists.split(","), n_keys, n_ops)
    rows = report["rows"]
    (RESULTS / ("engines_quick.json" if args.quick else "engines.json")).write_text(
        json.dumps(report, indent=1)
    )
    print(f"Machine: {report['machine']}; {n_keys:,} keys, {n_ops:,} ops\n")
    print("| store | dist | set ops/s | get ops/s | multi_set keys/s | multi_get keys/s "
          "| sizeof MiB | RSS growth MiB | seal ms | disk MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['store']} | {r['dist']} | error: {r['error']} |||||||| |")
            continue
        print(
            f"| {r['store']} | {r['dist']} | {fmt(r['set_ops_s'])} | {fmt(r['get_ops_s'])} "
            f"| {fmt(r['multi_set_keys_s'])} | {fmt(r['multi_get_keys_s'])} "
            f"| {fmt(r.get('sizeof_mib'), digits=1)} | {fmt(r['rss_growth_mib'], digits=1)} "
            f"| {fmt(r.get('seal_ms'), digits=1)} | {fmt(r.get('disk_mib'), digits=2)} |"
        )


if __name__ == "__main__":
    main()
