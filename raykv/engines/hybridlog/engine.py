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
  record to one packed int (run slot, value offset, value length). It is a dict, or a
  ``KeyIndex`` (``keyindex.py``: keys of 1-16 bytes in vectorized tables) once a large
  batch of such keys comes.

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

Modules: ``regions.py`` (the in-memory regions and the moves between them), ``bulk.py``
(``multi_set``), ``runset.py`` (run files and the hash index), ``maintenance.py`` (merges
and compaction; the policy is in ``merge.py``, splicing whole runs in ``splice.py``),
``runfile.py`` (the bytes). ``HybridLog`` is the last of a chain of base classes, one
per module (``splice.py`` is a helper of ``maintenance.py``).

Lifecycle: ``open -> (get | set | multi_get | multi_set | items | seal)* -> close``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, compress, islice, starmap
from operator import itemgetter
from typing import Unpack, cast

from raykv.engines.base import StoreOptions, check_int_param
from raykv.engines.hybridlog.bulk import BulkWrites
from raykv.engines.hybridlog.merge import over_space, pick_merge
from raykv.engines.hybridlog.regions import _CLOSED, _WATERMARK
from raykv.engines.hybridlog.runfile import (
    LEN_SHIFT,
    PAGE_SIZE,
    RUN_VERSION,
    SLOT_BITS,
    SLOT_MASK,
    START_MASK,
    RunFile,
)
from raykv.engines.hybridlog.runset import RunView
from raykv.engines.keyindex import KeyIndex, count_set, dict_sizeof, new_index, promoted, store
from raykv.engines.manifest import Manifest

MAX_RUNS_PER_LEVEL_CEILING = 1024
_ITEMS_CHUNK = 65_536  # index entries whose values ``items()`` reads at a time


class HybridLog(BulkWrites):
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
            (1..1024); in a large store, tiers of big runs are merged by space instead
            (see ``merge.py``).
        compaction_enabled: also rewrite any run whose live fraction fell below one
            half (FASTER log compaction; thesis 4.1.2 found it not worth it).
        **kwargs: ``max_key_len``, ``max_value_len``, ``remote``, ``storage_options``
            (see ``KVStore``).

    Memory: O(live keys) for the index (about 120 bytes a key in a dict; 32-64 for an
    8-byte key and 50-100 for another of up to 16 bytes in a ``KeyIndex``) plus at most
    ``mem_segment_len`` records; an overwrite never adds memory. ``items()`` yields
    pairs in no particular order. Not thread-safe (one thread drives an engine).

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
        self._index = new_index()  # a dict until short keys come in bulk (``keyindex.py``)
        self._live = 0  # keys whose newest record holds a value (``live_keys``)
        self._pend: set[bytes] = set()  # keys counted as new, not yet settled (``regions.py``)
        self._runs: list[RunFile] = []
        self._slots: list[RunFile | RunView] = []  # slot -> run or view (splice.py)
        self._free_slots: list[int] = []
        self._maintenance = False  # merges/compaction to check on the next write
        self._index_tombs = False  # the index may hold tombstones (see ``runset.py``)

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
        try:
            for name in manifest.files:
                self._runs.append(self._open_run(name))
            for run in self._runs:
                keys, ends = run.index()
                # the first large run of 8-byte keys moves the index to a table
                self._index = promoted(self._index, keys, len(keys))
                store(self._index, keys, self._locs(run.slot, ends))
        except BaseException:
            self._release_runs()
            raise
        index = self._index
        # live = index entries whose newest record is not a tombstone (length 0)
        self._live = count_set(index, LEN_SHIFT)
        self._index_tombs = self._live < len(index)
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
        self._pend = set()

    def _seal(self) -> bool:
        """Write the dirty records (mutable + read-only regions) as one run; commit.

        Cost: O(records changed since the last seal): one run file, one manifest. After
        it every in-memory record is clean (cached). Never merges.
        """
        mut, frozen = self._mut, self._frozen
        self._settle()  # the run written below makes every record clean
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

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes]:
        """Return the values of ``keys`` in order (``b""`` for missing keys).

        Cost: two C-level ``map`` passes over the batch (the mutable region's answer is
        the default of the frozen region's lookup), then one index lookup per key that
        only the disk holds and vectorized reads of their values (``_read_missing``).
        """
        self._ensure_open()
        self._check_keys(keys)
        res: list[bytes | None] = list(map(self._frozen.get, keys, map(self._mut.get, keys)))
        if None in res:
            self._read_missing(keys, res)
        return cast(list[bytes], res)  # every None was replaced

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over all live pairs, in no particular order.

        Verifies every value page of every run first (a full scan, so a damaged page is
        reported even if no live value sits on it). The store must not be modified while
        the iterator is in use. Cost: O(keys); the pairs of :meth:`item_chunks`.
        """
        self._ensure_open()
        return chain.from_iterable(starmap(zip, self._item_chunks(_ITEMS_CHUNK)))

    def item_chunks(self, rows: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """The pairs of :meth:`items` as ``(keys, values)`` lists of at most ``rows``.

        Cost: the verification of :meth:`items`, then per chunk one pass over ``rows``
        index entries (no lookup: the locations come with the keys) and vectorized
        reads of their values (``RunSet._values_at``); memory: one chunk beyond the index.
        """
        self._ensure_open()
        return self._item_chunks(rows)

    def _item_chunks(self, rows: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
        for run in self._runs:
            run.verify_all()
        mut, frozen = self._mut, self._frozen
        for region in (mut, frozen):  # bounded by mem_segment_len
            live = [(k, v) for k, v in region.items() if v]  # (the watermark's is None)
            for a in range(0, len(live), rows):
                part = live[a : a + rows]
                yield list(map(itemgetter(0), part)), list(map(itemgetter(1), part))
        entries = iter(self._index.items())
        while chunk := list(islice(entries, rows)):
            if len(mut) + len(frozen) > 1:  # held in memory: listed above (``frozen``
                chunk = [e for e in chunk if e[0] not in mut and e[0] not in frozen]
            keys = list(map(itemgetter(0), chunk))  # always holds its watermark)
            values = self._values_at(list(map(itemgetter(1), chunk)))
            if not all(values):  # tombstones
                keys, values = list(compress(keys, values)), list(filter(None, values))
            if keys:
                yield keys, values

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
        """Number of live keys, exact.

        Cost: O(1) (a counter kept by the write paths), plus one index lookup per key a
        large batch left pending in the mutable region (``regions.py``; at most
        ``ro_lag_interval``, each settled once).
        """
        self._ensure_open()
        self._settle()
        return self._live

    def __sizeof__(self) -> int:
        """Estimate of the engine's memory, in O(1) (samples up to 32 entries per dict)."""
        total = object.__sizeof__(self)
        if self._closed:
            return total
        index = self._index
        total += dict_sizeof(self._mut) + dict_sizeof(self._frozen) + (
            index.__sizeof__() if isinstance(index, KeyIndex) else dict_sizeof(index))
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
        assert self._pend <= mut.keys(), "pending key outside the mutable region"
        listed = sum(len(keys) for keys, _ in self._item_chunks(_ITEMS_CHUNK))
        assert self.live_keys() == listed, "live key count is off"
        assert sum(type(k) is not bytes for k in frozen) == 1, "watermark lost or doubled"
        ro = set(islice(reversed(frozen), n_ro))
        slots = {r.slot for r in self._runs}
        assert len(slots) == len(self._runs), "two runs share a slot"
        for run in self._runs:
            assert self._slots[run.slot] is run, "slot table out of date"
            views = [seg for seg in run.segments if seg[0] != run.slot]
            for slot, shift, _, _ in views:
                view = self._slots[slot]
                assert isinstance(view, RunView) and view.run is run, "view out of date"
                assert view.shift == shift and slot not in slots, "view slot reused"
                slots.add(slot)
            spans = sorted((lo, hi) for _, _, lo, hi in run.segments)
            assert [lo for lo, _ in spans] == [0, *(hi for _, hi in spans[:-1])], "segments"
            assert spans[-1][1] == run.count, "segments do not cover the run"
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
            counts = [r.count for r in self._runs]
            live = len(index) if self.expiry is None else None  # see ``_maintain``
            assert pick_merge(counts, self.max_runs_per_level, live) is None
            assert live is None or not over_space(counts, live), "disk over SPACE_AMP x live"
        for name in self._live_files:
            assert (self.data_dir / name).is_file(), f"live file {name} missing"
