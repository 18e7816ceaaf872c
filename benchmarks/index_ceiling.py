"""What a dict index costs a bulk write, against a vectorized table (issue 15, item 3).

HybridLog and AppendLog index every key with a ``dict`` from its bytes to a location (a
Python int). A bulk write of keys already present pays one dict store per key; with the
keys spread over a dict of a million entries, each store misses the CPU cache several
times (the hash slot, the entry, the stored key to compare bytes with, the old value to
release). No C-level pass around it can go below that floor, so this script measures it
on the bulk workload's shape and puts it beside a vectorized alternative:

* ``dict_update``: ``dict.update`` of every key again, in another order, with fresh key
  objects (as an operator decodes them from a batch) and new int locations: the floor
  of ``multi_set`` for updates with a dict index.
* ``dict_get``: ``map(dict.__getitem__)`` of the same keys: the floor of ``multi_get``'s
  index lookups.
* ``table_upsert`` / ``table_get``: the same keys as 8-byte words (uint64) in
  :class:`raykv.engines.u64index.U64Index` (open addressing, linear probing, numpy passes
  per probe round; ``swap``, which also returns each key's old value, and ``get``),
  checked against the dict on every run. Until stop 31 a prototype in this file.
* ``words``: turning the ``bytes`` keys into words (``join`` + ``frombuffer``), what the
  table costs more when keys come as ``bytes`` rather than as an Arrow column.

Rates are keys per second of wall time, best of ``--repeat``. The keys are 8 random
bytes (the encoding of every integer and time key); the bulk benchmark's 8-16-byte keys
(``benchmarks.engines --bulk``) cost the dict a little more.

    python -m benchmarks.index_ceiling                 # 1,000,000 keys, batches of 100,000
    python -m benchmarks.index_ceiling --keys 200000   # smaller
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, machine, machine_line
from raykv.engines.u64index import U64Index


def _best(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(n: int, batch: int, repeat: int, seed: int = 1) -> dict[str, Any]:
    """Rates (keys/s) of the five measurements above on ``n`` keys in ``batch``-sized calls."""
    rng = np.random.default_rng(seed)
    words = rng.choice(np.uint64(1) << np.uint64(62), n, replace=False).astype(np.uint64)
    keys = [w.to_bytes(8, "big") for w in words.tolist()]
    order = rng.permutation(n)
    again = [bytes(bytearray(keys[i])) for i in order]  # fresh objects, equal bytes
    again_words = words[order]
    locs = (np.arange(n, dtype=np.uint64) << np.uint64(20)) | (np.uint64(16) << np.uint64(56))
    fresh = locs[order] + np.uint64(1)  # the new location of ``again[i]``
    new_locs = fresh.tolist()
    cuts = range(0, n, batch)

    index = dict(zip(keys, locs.tolist(), strict=True))
    table = U64Index(2 * n)
    for a in cuts:
        table.swap(words[a : a + batch], locs[a : a + batch])

    def dict_update() -> None:
        for a in cuts:
            index.update(zip(again[a : a + batch], new_locs[a : a + batch], strict=True))

    def dict_get() -> None:
        for a in cuts:
            list(map(index.__getitem__, again[a : a + batch]))

    def table_upsert() -> None:
        for a in cuts:
            table.swap(again_words[a : a + batch], fresh[a : a + batch])

    def table_get() -> None:
        for a in cuts:
            table.get(again_words[a : a + batch])

    def to_words() -> None:
        for a in cuts:
            np.frombuffer(b"".join(again[a : a + batch]), dtype=">u8").astype(np.uint64)

    secs = {"dict_update": _best(dict_update, repeat), "dict_get": _best(dict_get, repeat),
            "table_upsert": _best(table_upsert, repeat), "table_get": _best(table_get, repeat),
            "words": _best(to_words, repeat)}
    # the table holds what the dict holds
    got = table.get(again_words)
    want = np.fromiter(map(index.__getitem__, again), dtype=np.uint64, count=n)
    if len(table) != len(index) or not bool((got == want).all()):
        msg = "U64Index disagrees with the dict"
        raise AssertionError(msg)
    return {"keys": n, "batch": batch, "repeat": repeat,
            "keys_s": {k: n / s for k, s in secs.items()}, "machine": machine()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "index_ceiling.json")
    args = ap.parse_args(argv)
    res = measure(args.keys, args.batch, args.repeat)
    print(f"{machine_line(res['machine'])}; {args.keys:,} keys in batches of {args.batch:,}")
    for name, rate in res["keys_s"].items():
        print(f"  {name:<13} {rate / 1e6:6.2f}M keys/s  ({1e9 / rate:6.0f} ns a key)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
