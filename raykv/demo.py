"""The demo job: per-key event counts kept in each engine, checked against a dict.

Each batch of zipf-distributed keys is pre-aggregated with ``np.unique`` and applied with
one ``multi_get`` + one ``multi_set`` (the way raykv's operators use an engine); every
epoch the engine is sealed, and at the end it is closed, reopened and compared.
"""

from __future__ import annotations

import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from raykv.engines import engine_class

_COUNT = struct.Struct("<q")


def _zipf_keys(rng: np.random.Generator, n: int, keys: int) -> np.ndarray:
    p = 1.0 / np.arange(1, keys + 1) ** 1.1
    return rng.choice(keys, n, p=p / p.sum())


def engine_demo(
    engines: list[str], events: int, keys: int, batch_size: int = 65_536,
    data_dir: str | None = None, epoch_batches: int = 4,
) -> bool:
    """Run the demo on each engine; print a table; return True when every check passed."""
    for name in engines:
        engine_class(name)  # fail fast on an unknown engine name
    if events <= 0 or keys <= 0 or batch_size <= 0:
        msg = "--events, --keys and --batch-size must be positive"
        raise ValueError(msg)
    rng = np.random.default_rng(7)
    stream = _zipf_keys(rng, events, keys)
    expected_ids, expected_counts = np.unique(stream, return_counts=True)
    expected = {b"user-%d" % k: int(c) for k, c in zip(expected_ids, expected_counts, strict=True)}
    print(f"raykv demo: {events:,} events over {keys:,} zipf keys, batches of {batch_size:,}\n")
    print(f"{'engine':<10} {'events/s':>12} {'seals':>6} {'seal ms (max)':>14} "
          f"{'disk MiB':>9} {'reopen ms':>10}  check")
    all_ok = True
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        for name in engines:
            path = Path(tmp) / name
            cls = engine_class(name)
            store = cls(path)
            seal_ms: list[float] = []
            t0 = time.perf_counter()
            for i, start in enumerate(range(0, events, batch_size)):
                ids, counts = np.unique(stream[start : start + batch_size], return_counts=True)
                ks = [b"user-%d" % k for k in ids.tolist()]
                old = store.multi_get(ks)
                new = [
                    _COUNT.pack((_COUNT.unpack(o)[0] if o else 0) + c)
                    for o, c in zip(old, counts.tolist(), strict=True)
                ]
                store.multi_set(list(zip(ks, new, strict=True)))
                if (i + 1) % epoch_batches == 0:
                    t = time.perf_counter()
                    store.seal()
                    seal_ms.append((time.perf_counter() - t) * 1e3)
            elapsed = time.perf_counter() - t0
            store.close()
            t = time.perf_counter()
            store = cls(path)
            reopen_ms = (time.perf_counter() - t) * 1e3
            got = {k: _COUNT.unpack(v)[0] for k, v in store.items()}
            store.close()
            ok = got == expected
            all_ok &= ok
            disk = sum(f.stat().st_size for f in path.iterdir()) / 2**20
            print(f"{name:<10} {events / elapsed:>12,.0f} {len(seal_ms):>6} "
                  f"{max(seal_ms, default=0):>14.1f} {disk:>9.2f} {reopen_ms:>10.1f}  "
                  f"{'ok' if ok else 'WRONG'}")
    print("\nall results match a plain dict" if all_ok else "\nMISMATCH against the dict model")
    return all_ok
