"""``raykv demo``: the main job, a keyed aggregation on a local Ray, checked for exactness.

A deterministic generator produces ``events`` events (user ids drawn zipf, an amount
each) in batches; one ``Aggregate`` stage keeps per-user ``sum``/``count``/``mean`` in
``num_shards`` shard actors, checkpointing every ``checkpoint_interval`` seconds to a
local folder (or any URL). A progress line shows events/s, epochs committed and bytes
uploaded; at the end a summary and the top users are printed and the final state is
compared with a plain ``pyarrow`` group_by over the same events.

``engine_demo`` is the engine-only variant (no Ray): per-key counters in each engine,
sealed every few batches, reopened and compared with a dict.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raykv.engines import engine_class

if TYPE_CHECKING:
    from raykv.pipeline import ProgressEvent, RunSummary


@dataclass(frozen=True)
class ZipfEvents:
    """Batch ``i`` of a deterministic zipf event stream (picklable, seeded by ``i``).

    Columns: ``user`` (int64, zipf over ``keys`` users with exponent ``s``), ``amount``
    (int64, 1..100), ``ts`` (int64, event number).
    """

    events: int
    keys: int
    batch_size: int = 65_536
    s: float = 1.1
    seed: int = 7

    def __call__(self, i: int) -> pa.RecordBatch | None:
        """Return batch ``i`` (``None`` past the end); the same rows for the same ``i``."""
        start = i * self.batch_size
        if start >= self.events:
            return None
        n = min(self.batch_size, self.events - start)
        rng = np.random.default_rng((self.seed, i))
        # zipf over a finite universe by inverse-CDF sampling: one searchsorted per batch
        users = np.searchsorted(self._cdf(), rng.random(n)).astype(np.int64)
        amount = rng.integers(1, 101, n, dtype=np.int64)
        ts = np.arange(start, start + n, dtype=np.int64)
        return pa.record_batch({"user": users, "amount": amount, "ts": ts})

    def _cdf(self) -> np.ndarray:
        cached = _CDF_CACHE.get((self.keys, self.s))
        if cached is None:
            p = 1.0 / np.arange(1, self.keys + 1) ** self.s
            cached = np.cumsum(p / p.sum())
            cached[-1] = 1.0
            _CDF_CACHE[(self.keys, self.s)] = cached
        return cached

    @property
    def num_batches(self) -> int:
        """Batches in the stream."""
        return -(-self.events // self.batch_size)

    def table(self) -> pa.Table:
        """The whole stream as one table (for the exactness check)."""
        return pa.Table.from_batches([b for i in range(self.num_batches) if (b := self(i))])


_CDF_CACHE: dict[tuple[int, float], np.ndarray] = {}


class ProgressLine:
    """A one-line live progress display on a terminal (plain lines when not a TTY)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        # resolved per call, not at import: a stream bound at import outlives a swap
        # of sys.stderr (pytest's capture) and fails once that stream is closed
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self.last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        """Redraw the line for a ``ProgressEvent`` (commits, failures, the end)."""
        now = time.monotonic()
        if event.kind not in ("committed", "failure", "recovered", "finished"):
            return
        if self.tty and now - self.last < 0.1 and event.kind == "committed":
            return
        self.last = now
        done = min(event.rows_in, self.total)
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        rate = event.rows_in / event.elapsed if event.elapsed > 0 else 0.0
        uploaded = event.detail.get("bytes_uploaded_total", 0) / 2**20
        line = (f"[{bar:<30}] {frac:6.1%}  {rate:>11,.0f} events/s  "
                f"epochs {event.epochs_committed:>4}  uploaded {uploaded:7.1f} MiB  "
                f"restarts {event.restarts}")
        if self.tty:
            self.stream.write("\r" + line)
            if event.kind == "finished":
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def pipeline_demo(
    *, events: int = 3_000_000, keys: int = 100_000, engine: str = "hybridlog",
    num_shards: int = 2, checkpoint: str | None = None, checkpoint_interval: float = 1.0,
    batch_size: int = 65_536, top: int = 10, rebalance: bool = False,
    stream: TextIO | None = None,
) -> bool:
    """Run the demo pipeline; print progress, a summary and the top keys; return exactness.

    ``stream``: where the summary goes (default: ``sys.stdout`` at the time of the call).
    """
    if stream is None:
        stream = sys.stdout
    import ray

    import raykv

    engine_class(engine)  # fail fast on an unknown engine
    if events <= 0 or keys <= 0 or num_shards <= 0 or batch_size <= 0:
        msg = "--events, --keys, --shards and --batch-size must be positive"
        raise ValueError(msg)
    gen = ZipfEvents(events=events, keys=keys, batch_size=batch_size)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=max(2, num_shards), include_dashboard=False,
                 configure_logging=False, log_to_driver=False)
    tmp = tempfile.TemporaryDirectory(prefix="raykv-demo-")
    try:
        url = checkpoint or f"file://{Path(tmp.name) / 'checkpoints'}"
        print(f"raykv demo: {events:,} events, {keys:,} zipf users, {num_shards} shards, "
              f"engine {engine}, checkpoints every {checkpoint_interval:g}s to {url}", file=stream)
        pipeline = raykv.Pipeline(
            source=raykv.sources.GeneratorSource(gen, limit=gen.num_batches),
            stages=[raykv.operators.Aggregate(key="user",
                                              aggs={"amount": ["sum", "count", "mean"]})],
            num_shards=num_shards, engine=engine, checkpoint=url,
            checkpoint_interval=checkpoint_interval, retain=3,
            local_dir=str(Path(tmp.name) / "state"),
            on_progress=ProgressLine(events),
            rebalance=raykv.rebalance.Rebalance() if rebalance else None,
        )
        summary = pipeline.run()
        final = summary.output_by_epoch[summary.last_epoch] if summary.last_epoch else None
        ok = _report(summary, final, gen, top, stream)
    finally:
        tmp.cleanup()
        if started_ray:
            ray.shutdown()
    return ok


def _report(summary: RunSummary, final: pa.Table | None, gen: ZipfEvents, top: int,
            stream: TextIO) -> bool:
    print("", file=stream)
    rows = [
        ("events", f"{summary.rows_in:,}"),
        ("events/s (end to end)", f"{summary.events_per_s:,.0f}"),
        ("epochs committed", f"{len(summary.epochs_committed)}"),
        ("bytes uploaded", f"{summary.bytes_uploaded / 2**20:.1f} MiB "
                           f"({summary.files_uploaded} files)"),
        ("restarts", f"{summary.restarts}"),
        ("wall time", f"{summary.wall_time:.1f} s"),
    ]
    for k, v in rows:
        print(f"  {k:<24} {v}", file=stream)
    for line in summary.load_lines():
        print(line, file=stream)
    if final is None:
        print("no final output: the run did not finish", file=stream)
        return False
    final = final.sort_by([("amount_sum", "descending"), ("user", "ascending")])
    print(f"\n  top {top} users by amount:", file=stream)
    print(f"  {'user':>10} {'sum':>12} {'count':>8} {'mean':>8}", file=stream)
    for r in final.slice(0, top).to_pylist():
        print(f"  {r['user']:>10} {r['amount_sum']:>12,} {r['amount_count']:>8,} "
              f"{r['amount_mean']:>8.2f}", file=stream)
    expected = gen.table().group_by("user").aggregate(
        [("amount", "sum"), ("amount", "count"), ("amount", "mean")])
    cols = ["user", "amount_sum", "amount_count", "amount_mean"]
    got = final.select(cols).sort_by("user")
    want = expected.select(cols).sort_by("user")
    ok = (got.column("user").equals(want.column("user"))
          and got.column("amount_sum").equals(want.column("amount_sum"))
          and got.column("amount_count").equals(want.column("amount_count"))
          and bool(pc.all(pc.less_equal(pc.abs(pc.subtract(got.column("amount_mean"),
                                                           want.column("amount_mean"))),
                                        1e-9)).as_py()))
    print(f"\ncheck against pyarrow group_by over the same {gen.events:,} events: "
          f"{'exact' if ok else 'MISMATCH'} ({got.num_rows:,} users)", file=stream)
    return ok


_COUNT = struct.Struct("<q")


def engine_demo(
    engines: list[str], events: int, keys: int, batch_size: int = 65_536,
    data_dir: str | None = None, epoch_batches: int = 4,
) -> bool:
    """Run the engine-only demo on each engine; print a table; return True when all match."""
    for name in engines:
        engine_class(name)  # fail fast on an unknown engine name
    if events <= 0 or keys <= 0 or batch_size <= 0:
        msg = "--events, --keys and --batch-size must be positive"
        raise ValueError(msg)
    gen = ZipfEvents(events=events, keys=keys, batch_size=batch_size)
    stream = gen.table().column("user").to_numpy()
    expected_ids, expected_counts = np.unique(stream, return_counts=True)
    expected = {b"user-%d" % k: int(c) for k, c in zip(expected_ids, expected_counts, strict=True)}
    print(f"raykv engine demo: {events:,} events over {keys:,} zipf keys, "
          f"batches of {batch_size:,}\n")
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
