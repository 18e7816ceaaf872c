"""HybridLog: a FASTER-style hybrid log with a hash index (thesis 3.4, Chandramouli et al. 2018).

The log is split by age into regions (newest first):

* **mutable** (``_mut``): the newest ``ro_lag_interval`` records. Updating a key whose
  latest record is here overwrites it in place: no new record, no memory growth. It
  holds no tombstones: a delete drops the key's in-memory copy and, if a durable record
  must be shadowed, appends its tombstone to the read-only region (``_delete``); so an
  in-place update never changes the live key count (``live_keys``, kept by the writes).
* **read-only**: older records still only in memory. Updating such a key is a
  read-copy-update: the new record is appended to the mutable region and the old one
  leaves memory (superseded records are never kept). Records enter this region a page
  at a time (``page = max(1, min(ro_lag_interval, flush_interval) // 16)`` records);
  once ``flush_interval`` records have entered it, its records are flushed as one run.
* **cached**: records that are durable in a run file and still in memory; they serve
  reads, and are evicted oldest first beyond ``mem_segment_len - ro_lag_interval -
  flush_interval`` records, so the three regions never hold more than
  ``mem_segment_len`` records.
* **disk**: immutable run files; the hash index ``_index`` maps every key with a durable
  record to one packed int (run slot, value offset, value length).

In memory, the read-only and cached regions share one dict, ``_frozen``, in log order:
the cached records, then a watermark entry (``_WATERMARK``), then the read-only records.
So a lookup costs at most two dict probes before the index, a batch lookup is two
C-level ``map`` calls (the regions are disjoint: a key lives in one), and a flush finds
the read-only records by a sequential scan back to the watermark, with no per-key set.
Like FASTER's, the read-only region is counted in log records (``_n_ro``, records shifted
in since the last flush): a record superseded there leaves memory but still counts.

Records in the mutable and read-only regions are the *dirty* ones (not durable yet).
``seal()`` writes exactly those as one new run (FASTER's fold-over checkpoint: the whole
in-memory log becomes read-only and clean, and stays in memory as cached records), so an
incremental checkpoint holds only what changed since the previous seal. After a seal the
first update of a key is a read-copy-update; later ones are in place again. Merges
(``merge.py``) and optional compaction run on the write path (the first write after a
seal, or right after a flush), never inside ``seal()``, and commit a manifest.

Lifecycle: ``open -> (get | set | multi_get | multi_set | items | seal)* -> close``.
"""

from __future__ import annotations

import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import compress, islice, repeat
from operator import is_, truth
from pathlib import Path
from typing import Any, NoReturn, Unpack, cast

import numpy as np

from raykv.engines.base import KVStore, Pairs, StoreOptions, check_int_param
from raykv.engines.fileio import write_file
from raykv.engines.hybridlog.merge import is_prefix, pick_merge
from raykv.engines.hybridlog.runfile import (
    LEN_SHIFT,
    MAX_SLOTS,
    NO_LOC,
    PAGE_SIZE,
    RUN_KIND,
    RUN_VERSION,
    SLOT_BITS,
    SLOT_MASK,
    START_MASK,
    RunFile,
    encode_run,
    gather_values,
    live_mask,
    pack_locs,
    value_ends,
)
from raykv.engines.manifest import Manifest
from raykv.errors import StoreClosedError

MAX_RUNS_PER_LEVEL_CEILING = 1024


class _Closed(dict[Any, Any]):
    """Stands in for every region dict after close: any access raises ``StoreClosedError``.

    Lets the hot paths skip an "is it open?" test on every call. Typed ``dict[Any, Any]``
    because it replaces dicts of three value types (``_mut``, ``_frozen``, ``_index``).
    """

    def _closed(self, *_: object) -> NoReturn:
        msg = "HybridLog engine is closed; open a new one"
        raise StoreClosedError(msg)

    get = __contains__ = __setitem__ = __getitem__ = __delitem__ = _closed
    # these dict methods take keyword arguments: the catch-all signature is incompatible
    pop = update = keys = items = values = _closed  # type: ignore[assignment]


_CLOSED = _Closed()
_Lookup = Callable[[bytes, object], object]  # dict.get / dict.pop with a default
# The one key of ``_frozen`` that is not bytes; typed as a key of the region dicts (a
# bytes type test tells it apart: ``_check`` counts it).
_WATERMARK = cast(bytes, type("_Watermark", (), {"__repr__": lambda self: "<watermark>"})())


def _presync(path: Path) -> None:
    """Fsync ``path`` ahead of the commit that must sync it (best effort, background)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # merged away and deleted already
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # the commit's own fsync will report it
    finally:
        os.close(fd)


class HybridLog(KVStore):
    """FASTER-style HybridLog engine: in-place updates in memory, immutable runs on disk.

    Args:
        data_dir: directory owned by the engine.
        mem_segment_len: most records kept in memory (mutable + read-only + cached);
            must be >= ``ro_lag_interval + flush_interval`` (thesis 4.1.2). The part
            beyond the two intervals caches flushed records for reads.
        ro_lag_interval: size of the mutable region, in records: how many of the newest
            records can still be updated in place.
        flush_interval: records in the read-only region that trigger a flush to a run.
        max_runs_per_level: runs a size tier may hold before its runs are merged
            (1..1024; see ``merge.py``).
        compaction_enabled: also rewrite any run whose live fraction fell below one
            half (FASTER log compaction; thesis 4.1.2 found it not worth it).
        **kwargs: ``max_key_len``, ``max_value_len``, ``remote``, ``storage_options``
            (see ``KVStore``).

    Memory: O(live keys) for the index plus at most ``mem_segment_len`` records; an
    overwrite never adds memory. ``items()`` yields pairs in no particular order.
    Not thread-safe (one thread drives an engine).

    Example:
        >>> import tempfile
        >>> with HybridLog(tempfile.mkdtemp(), ro_lag_interval=2, flush_interval=2,
        ...                mem_segment_len=4) as db:
        ...     db.set(b"k", b"v1"); db.set(b"k", b"v2")
        ...     db.get(b"k"), db.region_sizes()["mutable"]
        (b'v2', 1)
    """

    engine_name = "hybridlog"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        mem_segment_len: int = 40_000,
        ro_lag_interval: int = 10_000,
        flush_interval: int = 10_000,
        max_runs_per_level: int = 10,
        compaction_enabled: bool = False,
        **kwargs: Unpack[StoreOptions],
    ) -> None:
        self.ro_lag_interval = check_int_param("ro_lag_interval", ro_lag_interval, 1)
        self.flush_interval = check_int_param("flush_interval", flush_interval, 1)
        self.mem_segment_len = check_int_param("mem_segment_len", mem_segment_len, 2)
        if mem_segment_len < ro_lag_interval + flush_interval:
            msg = (
                f"mem_segment_len={mem_segment_len} must be >= ro_lag_interval + "
                f"flush_interval = {ro_lag_interval + flush_interval}; raise mem_segment_len "
                "or lower the intervals"
            )
            raise ValueError(msg)
        self.max_runs_per_level = check_int_param("max_runs_per_level", max_runs_per_level, 1)
        if max_runs_per_level > MAX_RUNS_PER_LEVEL_CEILING:
            msg = (f"max_runs_per_level={max_runs_per_level} exceeds "
                   f"{MAX_RUNS_PER_LEVEL_CEILING}")
            raise ValueError(msg)
        if type(compaction_enabled) is not bool:
            msg = f"compaction_enabled must be a bool, got {type(compaction_enabled).__name__}"
            raise TypeError(msg)
        self.compaction_enabled = compaction_enabled
        self._presyncer: ThreadPoolExecutor | None = None  # background fsync of flushed runs
        self._page = max(1, min(ro_lag_interval, flush_interval) // 16)
        self._cache_cap = mem_segment_len - ro_lag_interval - flush_interval
        self._reset_memory()
        super().__init__(data_dir, **kwargs)

    # ------------------------------------------------------------------ lifecycle hooks

    def _reset_memory(self) -> None:
        self._mut: dict[bytes, bytes] = {}
        # cached records, the watermark, then read-only records (see the module docstring)
        self._frozen: dict[bytes, bytes | None] = {_WATERMARK: None}
        self._n_ro = 0  # log records shifted into the read-only region since the last flush
        self._index: dict[bytes, int] = {}
        self._live = 0  # keys whose newest record holds a value (``live_keys``)
        self._runs: list[RunFile] = []
        self._slots: list[RunFile] = []  # slot -> run; a free slot holds its last, closed run
        self._free_slots: list[int] = []
        self._maintenance = False  # merges/compaction to check on the next write

    def _open(self, manifest: Manifest | None) -> None:
        self._release_runs()
        self._reset_memory()
        if manifest is None:
            return
        if manifest.engine != self.engine_name:
            msg = (
                f"{self.data_dir} holds a {manifest.engine!r} engine, not {self.engine_name!r}; "
                "open it with that engine or use another directory"
            )
            raise ValueError(msg)
        index = self._index
        try:
            for name in manifest.files:
                run = self._open_run(name)
                self._runs.append(run)
                keys, ends = run.index()
                index.update(zip(keys, pack_locs(run.slot, ends), strict=True))
        except BaseException:
            self._release_runs()
            raise
        # live = index entries whose newest record is not a tombstone (length 0)
        self._live = sum(map(truth, map(LEN_SHIFT.__rrshift__, index.values())))
        self._maintenance = True

    def _release(self) -> None:
        if self._presyncer is not None:
            self._presyncer.shutdown(wait=True)
            self._presyncer = None
        self._release_runs()
        self._mut = self._frozen = _CLOSED
        self._index = _CLOSED
        self._n_ro = 0
        self._live = 0

    def _release_runs(self) -> None:
        for run in getattr(self, "_slots", ()):
            run.close()
        self._runs = []
        self._slots = []
        self._free_slots = []

    def _seal(self) -> bool:
        """Write the dirty records (mutable + read-only regions) as one run; commit.

        Cost: O(records changed since the last seal): one run file, one manifest. After
        it every in-memory record is clean (cached). Never merges.
        """
        mut, frozen = self._mut, self._frozen
        if self._n_ro or mut:
            keys, values = self._read_only_records()
            keys.extend(mut)
            values.extend(mut.values())
            self._write_run(keys, values)  # on failure every record stays dirty
            del frozen[_WATERMARK]
            frozen.update(mut)
            frozen[_WATERMARK] = None
            self._n_ro = 0
            self._mut = {}
            self._evict()
            self._maintenance = True
        names = [r.name for r in self._runs]
        if names == self._live_files:
            return False
        self._commit(names, {"format": RUN_VERSION})
        return True

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes) -> bytes:
        """Return the value of ``key`` or ``b""``.

        Cost: up to two dict lookups (mutable region, then read-only/cached) and one index
        lookup; a key found only on disk costs one mmap slice, plus a crc32 of its 4 KiB
        page the first time that page is read.
        """
        try:
            value = self._mut.get(key)
            if value is None:
                value = self._frozen.get(key)
                if value is None:
                    loc = self._index.get(key)
                    if loc is None:
                        if type(key) is not bytes or not 0 < len(key) <= self.max_key_len:
                            self._reject_key(key)
                        return b""
                    start = loc >> SLOT_BITS & START_MASK
                    return self._slots[loc & SLOT_MASK].read(
                        start, start + (loc >> LEN_SHIFT)
                    )
        except TypeError:
            if type(key) is not bytes:
                self._reject_key(key)
            raise
        return value

    def _read_loc(self, loc: int) -> bytes:
        start = loc >> SLOT_BITS & START_MASK
        return self._slots[loc & SLOT_MASK].read(
            start, start + (loc >> LEN_SHIFT)
        )

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes]:
        """Return the values of ``keys`` in order (``b""`` for missing keys).

        Cost: two C-level ``map`` passes over the batch (the mutable region's answer is
        the default of the frozen region's lookup), then one index lookup and one read
        per key that only the disk holds.
        """
        self._ensure_open()
        self._check_keys(keys)
        res: list[bytes | None] = list(map(self._frozen.get, keys, map(self._mut.get, keys)))
        if None in res:
            read, index = self._read_loc, self._index
            for i in compress(range(len(res)), list(map(is_, res, repeat(None)))):
                loc = index.get(keys[i])
                res[i] = b"" if loc is None else read(loc)
        return cast(list[bytes], res)  # every None was replaced

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over all live pairs, in no particular order.

        Verifies every value page of every run first (a full scan, so a damaged page is
        reported even if no live value sits on it). The store must not be modified while
        the iterator is in use. Cost: O(keys) plus one read per key held only on disk.
        """
        self._ensure_open()
        return self._iter_items()

    def _iter_items(self) -> Iterator[tuple[bytes, bytes]]:
        for run in self._runs:
            run.verify_all()
        mut, frozen = self._mut, self._frozen
        for region in (mut, frozen):
            for key, value in region.items():
                if value:
                    yield key, value
        read = self._read_loc
        for key, loc in self._index.items():
            if key in mut or key in frozen:
                continue
            value = read(loc)
            if value:
                yield key, value

    # ------------------------------------------------------------------ writes

    def set(self, key: bytes, value: bytes) -> None:
        """Insert, update or (``value == b""``) delete ``key``.

        Cost: a key in the mutable region is updated in place (two dict operations);
        otherwise one record is appended to the mutable region (read-copy-update: the
        superseded in-memory copy, if any, is dropped), every ``page`` appends move a
        page of records to the read-only region, and every ``flush_interval`` of those
        are flushed to a run (then over-full levels are merged).
        """
        mut = self._mut
        try:
            hit = key in mut
        except TypeError:
            hit = False
        if (
            type(value) is not bytes
            or not 0 < len(value) <= self.max_value_len
            or (not hit
            and (type(key) is not bytes or not 0 < len(key) <= self.max_key_len))
        ):
            self._check_kv(key, value)
            self.stats.app_bytes += len(key)
            self._delete(key)  # a valid pair that failed the test: value == b""
            return
        self.stats.app_bytes += len(key) + len(value)
        if hit:  # the mutable region holds no tombstones: the key stays live
            mut[key] = value
            return
        if self._maintenance:
            self._maintain()
        old = self._frozen.pop(key, None)
        if not (self._index.get(key, 0) >> LEN_SHIFT if old is None else old):
            self._live += 1
        mut[key] = value
        if len(mut) > self.ro_lag_interval:
            self._shift()

    def _delete(self, key: bytes) -> None:
        """Delete ``key`` (validated): a read-copy-update straight into the read-only region.

        The mutable region never holds a tombstone, so an in-place update there never
        turns a deleted key live again and ``set`` counts live keys without reading the
        old value. The key's in-memory copy (mutable or frozen) is dropped; a tombstone
        record is appended to the read-only region only if a durable live record would
        otherwise show through (none is needed when nothing durable holds the key, or
        the durable record is already a tombstone).
        Cost: up to three dict operations; flushes like any record entering the region.
        """
        if self._maintenance:
            self._maintain()
        frozen = self._frozen
        old = self._mut.pop(key, None)
        if old is None:
            old = frozen.pop(key, None)
        disk = self._index.get(key, 0) >> LEN_SHIFT
        if disk if old is None else old:
            self._live -= 1
        if disk:
            frozen[key] = b""  # after the watermark: a dirty read-only record
            self._n_ro += 1
            if self._n_ro >= self.flush_interval:
                self._flush()

    def multi_set(self, pairs: Pairs) -> None:
        """Apply ``(key, value)`` pairs in order (later pairs win); validated as a whole first.

        Cost: C-level passes over the batch (keys already in the mutable region are
        updated in place, the others appended in batch order), then the same region
        moves, flushes and merges as ``set``.
        """
        self._ensure_open()
        batch = self._check_batch(pairs)
        if not batch:
            return
        if self._maintenance:
            self._maintain()
        if b"" in batch.values():  # deletes (keys are distinct: order does not matter)
            for key in [k for k, v in batch.items() if not v]:
                self._delete(key)
            batch = {k: v for k, v in batch.items() if v}
            if not batch:
                return
        frozen, mut, index = self._frozen, self._mut, self._index
        before = len(mut)
        mut.update(batch)
        added = len(mut) - before  # keys new to the mutable region: the last ``added``
        if added:  # (keys already there were live: it holds no tombstones)
            new = list(islice(reversed(mut), added))
            # each new key's newest record before the batch: its frozen value (popped:
            # read-copy-update), else its value length on disk (0: tombstone or absent)
            olds: Iterator[object] = (
                map(LEN_SHIFT.__rrshift__, map(index.get, new, repeat(0))) if index
                else repeat(0, added)
            )
            if len(frozen) > 1:
                olds = map(cast(_Lookup, frozen.pop), new, olds)
            self._live += added - sum(map(truth, olds))
        if len(mut) > self.ro_lag_interval:
            self._shift()

    # ------------------------------------------------------------------ region moves

    def _shift(self) -> None:
        """Move the oldest records of the mutable region to the read-only one, a page at a time.

        Flushes the read-only region each time ``flush_interval`` records entered it.
        """
        mut, lag, page, flush = self._mut, self.ro_lag_interval, self._page, self.flush_interval
        frozen = self._frozen
        while len(mut) > lag:
            n = min(len(mut) - lag + page - 1, flush - self._n_ro, len(mut))
            old = list(islice(mut, n))
            frozen.update(zip(old, map(mut.pop, old), strict=True))
            self._n_ro += n
            if self._n_ro >= flush:
                self._flush()

    def _read_only_records(self) -> tuple[list[bytes], list[bytes]]:
        """Return the read-only records (newest first): the entries after the watermark.

        Cost: a sequential scan of the newest ``_n_ro + 1`` entries; no hashing.
        """
        frozen = self._frozen
        n = self._n_ro + 1
        keys = list(islice(reversed(frozen), n))
        values = list(islice(reversed(frozen.values()), n))
        cut = keys.index(_WATERMARK)
        del keys[cut:], values[cut:]
        return keys, cast(list[bytes], values)  # only the watermark's value is None

    def _flush(self) -> None:
        """Write the read-only region as one run; its records become cached (clean)."""
        keys, values = self._read_only_records()
        self._write_run(keys, values, presync=True)  # on failure the records stay dirty
        frozen = self._frozen
        del frozen[_WATERMARK]
        frozen[_WATERMARK] = None
        self._n_ro = 0
        self._evict()
        self._maintain()

    def _evict(self) -> None:
        """Drop the oldest cached records beyond ``mem_segment_len - ro_lag - flush``.

        Called right after the watermark moved to the end of ``_frozen``, so every record
        before it is clean. The mutable region never exceeds ``ro_lag_interval`` records
        and the read-only one stays below ``flush_interval``, so memory never holds more
        than ``mem_segment_len`` records.
        """
        frozen = self._frozen
        excess = len(frozen) - 1 - self._cache_cap
        if excess > 0:
            deque(map(frozen.__delitem__, list(islice(frozen, excess))), maxlen=0)

    # ------------------------------------------------------------------ runs

    def _open_run(self, name: str) -> RunFile:
        """Open run file ``name`` in a free slot (a dropped run's, else a new one)."""
        reuse = bool(self._free_slots)
        slot = self._free_slots.pop() if reuse else len(self._slots)
        if slot >= MAX_SLOTS:  # pragma: no cover - bounded by max_runs_per_level
            msg = f"HybridLog at {self.data_dir} has {slot} runs; lower max_runs_per_level"
            raise RuntimeError(msg)
        try:
            run = RunFile(self.data_dir / name, slot)
        except BaseException:
            if reuse:
                self._free_slots.append(slot)
            raise
        if reuse:
            self._slots[slot] = run
        else:
            self._slots.append(run)
        return run

    def _drop_run(self, run: RunFile) -> None:
        """Close ``run`` and free its slot (the closed run stays there until it is reused)."""
        run.close()
        self._free_slots.append(run.slot)

    def _new_run(self, keys: list[bytes], blob: bytes, ends: Sequence[int] | np.ndarray,
                 *, presync: bool = False) -> tuple[RunFile, list[int]]:
        """Write a new run file; return it and the packed locations of its values.

        The next commit fsyncs the file (durability never depends on anything else).
        ``presync=True`` (flushes) also starts that fsync now on a background thread, so
        neither the write path nor the next ``seal()`` waits for the disk.
        """
        name = self._new_file(RUN_KIND)
        data = encode_run(keys, blob, ends)
        path = self.data_dir / name
        write_file(path, data, sync=False)
        self._written(name, len(data))
        if presync:
            if self._presyncer is None:
                self._presyncer = ThreadPoolExecutor(1, thread_name_prefix="hybridlog-fsync")
            self._presyncer.submit(_presync, path)
        run = self._open_run(name)
        return run, pack_locs(run.slot, ends)

    def _write_run(self, keys: list[bytes], values: list[bytes], *, presync: bool = False
                   ) -> None:
        """Append a run of dirty records and point the index at it.

        A tombstone for a key with no durable record is not written: nothing to shadow.
        """
        index = self._index
        if b"" in values:
            kept = [(k, v) for k, v in zip(keys, values, strict=True) if v or k in index]
            keys = [k for k, _ in kept]
            values = [v for _, v in kept]
        if not keys:
            return
        run, locs = self._new_run(keys, b"".join(values), value_ends(values), presync=presync)
        self._runs.append(run)
        index.update(zip(keys, locs, strict=True))

    def _maintain(self) -> None:
        """Merge over-full levels (and compact sparse runs if enabled); commit if any changed."""
        changed = False
        while True:
            group = pick_merge([r.count for r in self._runs], self.max_runs_per_level)
            if group is None and self.compaction_enabled:
                group = self._sparse_run()
            if group is None:
                break
            self._merge(group)
            changed = True
        if changed:
            self._commit([r.name for r in self._runs], {"format": RUN_VERSION})
        self._maintenance = False  # only now: a failed merge is retried on the next write

    def _live_counts(self) -> Counter[int]:
        """Live records per run slot. Cost: one C-level pass over the index."""
        return Counter(map(SLOT_MASK.__and__, self._index.values()))

    def _sparse_run(self) -> list[int] | None:
        """Position of the first run whose live fraction is below one half, if any."""
        live = self._live_counts()
        for pos, run in enumerate(self._runs):
            if live.get(run.slot, 0) * 2 < run.count:
                return [pos]
        return None

    def _merge(self, group: list[int]) -> None:
        """Rewrite the live records of the runs at ``group`` (ascending) into one run.

        The new run takes the place of the newest member. Tombstones are dropped only
        when ``group`` is a prefix (holds the oldest run and every run up to its newest
        member). Cost: reads every member once (verifying its pages), writes the live
        records once; vectorized over records.
        """
        runs, index = self._runs, self._index
        members = [runs[pos] for pos in group]
        drop_tombstones = is_prefix(group)
        keys: list[bytes] = []
        blobs: list[bytes] = []
        lens: list[np.ndarray] = []
        dropped: list[bytes] = []
        for run in members:
            run.verify_all()
            run_keys, ends = run.index()
            run_lens = np.diff(ends, prepend=np.uint64(0))
            live = live_mask(list(map(index.get, run_keys, repeat(NO_LOC))), run.slot, ends)
            if drop_tombstones:
                dead = live & (run_lens == 0)
                if dead.any():
                    dropped.extend(compress(run_keys, dead.tolist()))
                    live &= ~dead
            if not live.any():
                continue
            keys.extend(compress(run_keys, live.tolist()))
            blobs.append(gather_values(run.mm, ends, live))
            lens.append(run_lens[live])
        new_run = None
        if keys:  # written before anything changes: a failure leaves the runs as they were
            ends_all = np.cumsum(np.concatenate(lens), dtype=np.uint64)
            new_run, locs = self._new_run(keys, b"".join(blobs), ends_all)
        where = group[-1] - (len(group) - 1)
        for pos in reversed(group):
            del runs[pos]
        if new_run is not None:
            runs.insert(where, new_run)
            index.update(zip(keys, locs, strict=True))
        for key in dropped:
            del index[key]
        for run in members:
            self._drop_run(run)
        self.stats.merges += 1

    # ------------------------------------------------------------------ introspection

    def region_sizes(self) -> dict[str, int]:
        """Record counts per region plus index entries and run files. Cost: O(runs)."""
        self._ensure_open()
        return {
            "mutable": len(self._mut),
            "read_only": self._read_only_count(),
            "cached": len(self._frozen) - 1 - self._read_only_count(),
            "index": len(self._index),
            "runs": len(self._runs),
            "disk_records": sum(r.count for r in self._runs),
        }

    def live_keys(self) -> int:
        """Number of live keys, exact. Cost: O(1) (a counter kept by the write paths)."""
        self._ensure_open()
        return self._live

    def _read_only_count(self) -> int:
        """Records in memory after the watermark. Cost: O(read-only region)."""
        return list(islice(reversed(self._frozen), self._n_ro + 1)).index(_WATERMARK)

    def __sizeof__(self) -> int:
        """Estimate of the engine's memory, in O(1) (samples up to 32 entries per dict)."""
        total = object.__sizeof__(self)
        if self._closed:
            return total
        for table in (self._mut, self._frozen, self._index):
            total += sys.getsizeof(table)
            sample = list(islice(table.items(), 32))
            if sample:
                per = sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in sample) / len(sample)
                total += int(per * len(table))
        for run in self._runs:
            total += 5 * (-(-run.values_len // PAGE_SIZE)) + 256
        return total

    def _check(self) -> None:
        """Assert the engine's invariants (for tests; O(state))."""
        self._ensure_open()
        mut, frozen, index = self._mut, self._frozen, self._index
        n_ro = self._read_only_count()
        assert len(mut) <= self.ro_lag_interval, "mutable region over ro_lag_interval"
        assert n_ro <= self._n_ro < self.flush_interval, "read-only region not flushed"
        assert len(frozen) - 1 - n_ro <= self._cache_cap, "cached region over its bound"
        assert len(mut) + len(frozen) - 1 <= self.mem_segment_len, "memory over bound"
        assert not (mut.keys() & frozen.keys()), "key in the mutable and another region"
        assert b"" not in mut.values(), "tombstone in the mutable region"
        assert self._live == sum(1 for _ in self._iter_items()), "live key count is off"
        assert sum(type(k) is not bytes for k in frozen) == 1, "watermark lost or doubled"
        ro = set(islice(reversed(frozen), n_ro))
        slots = {r.slot for r in self._runs}
        assert len(slots) == len(self._runs), "two runs share a slot"
        for run in self._runs:
            assert self._slots[run.slot] is run, "slot table out of date"
        assert len({r.name for r in self._runs}) == len(self._runs), "duplicate run"
        for loc in index.values():
            owner = self._slots[loc & SLOT_MASK]
            assert owner.slot in slots, "index points to a dropped run"
            start = loc >> SLOT_BITS & START_MASK
            assert start + (loc >> LEN_SHIFT) <= owner.values_len, "index points past values"
        for key, value in islice(frozen.items(), 2000):
            if key in ro or key is _WATERMARK:
                continue
            durable = index.get(key)
            if durable is None:
                assert value == b"", "cached record without a durable copy"
            else:
                assert self._read_loc(durable) == value, "cached record differs from disk"
        if not self._maintenance:
            assert pick_merge([r.count for r in self._runs], self.max_runs_per_level) is None
        for name in self._live_files:
            assert (self.data_dir / name).is_file(), f"live file {name} missing"
