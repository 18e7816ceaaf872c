"""AppendLog: a Bitcask-style engine, an append-only log of runs plus an in-memory hash index.

Every write appends one checksummed record to the *active run*; a dict (the *index*) maps
each key to the location of its latest record. A read is one dict lookup plus one slice
of a memory map, checked against the record's crc. The bytes are in ``runfile.py`` and
``FORMAT.md`` ("AppendLog"), the merge policy in ``merge.py``.

Life of a run::

    active (anonymous memory map, written out to its file in 1 MiB chunks)
      --(reaches ``threshold`` bytes, or a non-idle ``seal()``)-->
    closed (file = records | index section | footer; immutable, read through ``mmap``)
      --(its level reaches max_runs_per_level runs)-->
    merged (its live records are copied into a new run; the commit deletes it)

Merges are size-tiered (``merge.py``), and in a large store the big runs are merged by
space instead (when the runs hold over twice as many records as are live, the deadest are
rewritten); a merge of the oldest runs (a prefix) is where tombstones are dropped. Merges
run on the write path, never inside ``seal()``: a seal that leaves a level full only
marks a merge as due, and the next write performs it before appending.

Modules: ``bulk.py`` (``multi_set``, ``multi_set_packed``), ``active.py`` (the active
run), ``runset.py`` (closed runs, slots and merges), ``merge.py`` (the merge policy and
live records), ``runfile.py`` (the bytes). ``AppendLog`` is the last of a chain of base
classes, one per module.

Restart reads each run's footer and index section (never its records one by one) and
rebuilds the dict with C-level passes. After a crash the directory holds the state of the
last commit (a seal, or a merge, which commits all closed runs): the unsealed active run
is not in any manifest and is deleted on open, so a torn tail is never read.
"""

from __future__ import annotations

import mmap
import os
import sys
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from itertools import chain, compress, islice, repeat, starmap
from operator import add, getitem, itemgetter, not_
from typing import Unpack, cast

import numpy as np

from raykv.engines.appendlog.bulk import BulkWrites
from raykv.engines.appendlog.merge import levels, over_space, plan_merge
from raykv.engines.appendlog.runfile import (
    CRC_RESIDUE,
    N_SHIFT,
    NULL_LOC,
    NULL_REC,
    OFF_MASK,
    PACK_CRC,
    PACK_HDR2,
    SLOT_BITS,
    SLOT_MASK,
    SMALL_N,
    Run,
    RunWriter,
    closed_map,
    pack_locs,
    parse_header,
    record_columns,
    value_start,
)
from raykv.engines.base import StoreOptions, check_int_param
from raykv.engines.fileio import crc32, encode_varint
from raykv.engines.hybridlog.runfile import take_values  # a numpy gather of byte ranges
from raykv.engines.keyindex import Index, KeyIndex, get_many, new_index, promoted, store
from raykv.engines.manifest import Manifest

DEFAULT_THRESHOLD = 4 * 1024 * 1024
DEFAULT_MAX_RUNS_PER_LEVEL = 10
MAX_THRESHOLD = 1 << 36
_READ_BATCH = 4096
_GATHER_MIN = 64  # reads of this many records or more gather them with numpy
# rec[s] as a function for C-level maps (operator.getitem: faster than bytes.__getitem__;
# its stub types a slice of a Sequence as a Sequence, not bytes)
_cut = cast(Callable[[bytes, slice], bytes], getitem)


class AppendLog(BulkWrites):
    """A Bitcask-style engine: append-only runs on disk, a hash index of every key in memory.

    Args:
        data_dir: directory owned by this engine; created if missing.
        threshold: bytes of records after which the active run is closed and a new one
            started (thesis ``threshold``; default 4 MiB). Larger: fewer, bigger runs and
            merges; the active run is held in memory, so this also bounds that buffer.
        max_runs_per_level: number of runs of one size class (level) that triggers their
            merge into one run (thesis ``max_runs_per_level``; default 10, at least 2);
            in a large store, levels of big runs are merged by space instead
            (``merge.py``).
        **kwargs: ``max_key_len``, ``max_value_len``, ``remote``, ``storage_options``
            (see ``KVStore``).

    Costs: ``get`` is one dict lookup and one memory-map slice of the record (crc checked);
    ``set`` appends one record to an in-memory buffer (amortized: one 1 MiB file write per
    MiB, a run close per ``threshold`` bytes, and tiered merges that copy each live record
    O(log_{max_runs_per_level}(data / threshold)) times). ``seal()`` writes the records
    since the last seal plus a small index section and footer; it never merges.

    Memory: the index (one dict entry, key object and location int per key, deleted keys
    included until a merge drops their tombstone, plus a set of those keys), the active
    run buffer (about ``threshold`` bytes) and 4 bytes per record of the active run.
    Closed runs are memory-mapped (page cache, not counted by ``__sizeof__``), one mapping per run.

    ``items()`` yields pairs in arbitrary order (about the order keys were first written:
    a large batch's new keys grouped by key length, and not after a restart or a merge);
    it is not sorted and offers no ordered iteration.
    """

    engine_name = "appendlog"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        threshold: int = DEFAULT_THRESHOLD,
        max_runs_per_level: int = DEFAULT_MAX_RUNS_PER_LEVEL,
        **kwargs: Unpack[StoreOptions],
    ) -> None:
        check_int_param("threshold", threshold, 1, MAX_THRESHOLD, "bytes per run before it closes")
        check_int_param(
            "max_runs_per_level", max_runs_per_level, 2, 1 << 20, "runs per level before a merge"
        )
        self.threshold = threshold
        self.max_runs_per_level = max_runs_per_level
        self._amm = closed_map()  # the active run's buffer, allocated by _new_active
        self._reset()
        super().__init__(data_dir, **kwargs)

    # ------------------------------------------------------------------ lifecycle

    def _reset(self) -> None:
        """Empty in-memory state (no files touched)."""
        self._index: Index = new_index()  # a KeyIndex once short keys come in bulk
        self._dead: set[bytes] = set()  # keys of the index whose latest record is a tombstone
        # slot -> a run's mmap or the active buffer (slot 0: the null record; free: b"")
        self._bufs: list[mmap.mmap | bytes] = [NULL_REC]
        self._slot_names: list[str | None] = ["<none>"]
        self._free_slots: list[int] = []
        self._runs: list[Run] = []  # closed runs, oldest first
        self._uncommitted = False  # closed runs not yet listed in a manifest
        self._slow = True  # set() must call _before_write(): closed, or a merge is due
        self._writer: RunWriter | None = None
        self._aname: str | None = None
        self._aslot = 0
        self._abase = 0
        self._pos = 0
        self._flushed = 0
        self._flush_at = 0
        self._alens = array("I")
        self._aklens = array("I")
        self._avlens = array("I")

    def _open(self, manifest: Manifest | None) -> None:
        self._reset()
        try:
            if manifest is not None:
                if manifest.engine != self.engine_name:
                    msg = (
                        f"{self.data_dir} holds files of the {manifest.engine!r} engine, not "
                        f"{self.engine_name!r}; open it with that engine or use another directory"
                    )
                    raise ValueError(msg)
                index = self._index
                tomb_locs: set[int] = set()  # locations of tombstone records
                maybe_dead: set[bytes] = set()  # keys with a tombstone in some run
                for name in manifest.files:
                    run, keys, vlens, offs, ns = self._load_run(name)
                    locs = pack_locs(run.slot, offs, ns)
                    index = self._index = promoted(index, keys, len(keys))  # keyindex.py
                    store(index, keys, locs)
                    if not all(vlens):
                        dead = list(map(not_, vlens))
                        tomb_locs.update(compress(locs, dead))
                        maybe_dead.update(compress(keys, dead))
                # dead: the key's latest record (the one the index points to) is a tombstone
                self._dead = {k for k in maybe_dead if index[k] in tomb_locs}
            self._new_active()
            self._slow = self._plan_merge() is not None
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.abort()
        for buf in self._bufs[1:]:
            if isinstance(buf, mmap.mmap):
                buf.close()
        if not self._amm.closed:
            self._amm.close()
        self._reset()

    def _seal(self) -> bool:
        if not self._pos and not self._uncommitted:
            return False
        if self._pos:
            self._close_active()
        self._commit_runs()
        if self._plan_merge() is not None:
            self._slow = True  # merge on the next write, never here
        return True

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes) -> bytes:
        """Return the value of ``key``, or ``b""`` if it is missing or deleted.

        Cost: one dict lookup, one slice of the run's memory map (or of the active
        buffer) and one crc32 of the record.

        Raises:
            CorruptionError: the record fails its checksum (names the run file).
        """
        try:
            loc = self._index.get(key)
        except TypeError:  # unhashable key
            loc = None
        if loc is None:
            if type(key) is not bytes or not 0 < len(key) <= self.max_key_len:
                self._reject_key(key)
            if self._closed:
                self._ensure_open()
            return b""
        n = loc >> N_SHIFT
        off = loc >> SLOT_BITS & OFF_MASK
        rec = self._bufs[loc & SLOT_MASK][off : off + n]
        if crc32(rec) != CRC_RESIDUE:
            self._record_corrupt(loc)
        if n < SMALL_N:
            return rec[len(key) + 2 : -4]
        return rec[value_start(rec) : -4]

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes]:
        """Return the values of ``keys`` in order (``b""`` for missing ones).

        Cost: the per-key work of ``get`` done in C-level passes over the batch.
        """
        if self._closed:
            self._ensure_open()
        self._check_keys(keys)
        if not keys:
            return []
        return self._read_many(keys, get_many(self._index, keys, NULL_LOC))

    def _read_many(self, keys: Sequence[bytes], locs: list[int]) -> list[bytes]:
        """Values at ``locs`` (one per key), every record crc-checked; C-level passes."""
        recs = self._records(locs)
        crcs = list(map(crc32, recs))
        if crcs.count(CRC_RESIDUE) != len(crcs):
            for loc, crc in zip(locs, crcs, strict=True):
                if crc != CRC_RESIDUE:
                    self._record_corrupt(loc)
        if max(map(len, recs)) < SMALL_N:  # 2-byte headers: the value starts after the key
            klens = list(map(len, keys))
            if min(klens) == max(klens):
                return list(map(_cut, recs, repeat(slice(klens[0] + 2, -4))))
            return list(map(_cut, recs, map(slice, map(add, klens, repeat(2)), repeat(-4))))
        return [rec[value_start(rec) : -4] for rec in recs]

    def _records(self, locs: list[int]) -> list[bytes]:
        """The raw records at ``locs``, one bytes object each (unchecked).

        Cost: for ``_GATHER_MIN`` locations or more that fit a uint64 (records under 256
        bytes), numpy passes over them and per buffer involved one gather per record
        length (``take_values``, about 0.2 us per record); otherwise one slice each
        (about 1 us per record in a Python loop).
        """
        b = self._bufs
        if len(locs) >= _GATHER_MIN:
            try:
                arr = np.fromiter(locs, dtype=np.uint64, count=len(locs))
            except OverflowError:  # a record of 256 bytes or more
                pass
            else:
                slots = (arr & np.uint64(SLOT_MASK)).astype(np.intp)
                offs = (arr >> np.uint64(SLOT_BITS) & np.uint64(OFF_MASK)).astype(np.int64)
                ns = (arr >> np.uint64(N_SHIFT)).astype(np.int64)
                used = np.unique(slots).tolist()
                if len(used) == 1:
                    return take_values(b[used[0]], offs, ns)
                out: list[bytes] = [b""] * len(locs)
                for slot in used:
                    at = np.flatnonzero(slots == slot)
                    deque(map(out.__setitem__, at.tolist(),
                              take_values(b[slot], offs[at], ns[at])), maxlen=0)
                return out
        return [b[loc & SLOT_MASK][(o := loc >> SLOT_BITS & OFF_MASK) : o + (loc >> N_SHIFT)]
                for loc in locs]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over all live ``(key, value)`` pairs, in arbitrary (unsorted) order.

        Cost: first one crc32 pass over each closed run's records not yet verified since
        open (so damage anywhere in a run is reported, also in superseded records), then
        the work of ``multi_get`` for every key. The store must not be modified while the
        iterator is in use.
        """
        return chain.from_iterable(starmap(zip, self.item_chunks(_READ_BATCH)))

    def item_chunks(self, rows: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """The pairs of :meth:`items` as ``(keys, values)`` lists of at most ``rows``.

        Cost: the verification of :meth:`items` and a list of the index's entries, then
        per chunk the vectorized reads of ``multi_get``.
        """
        self._ensure_open()
        for run in self._runs:
            self._verify_data(run)
        return self._item_chunks(list(self._index.items()), rows)

    def _item_chunks(self, pairs: list[tuple[bytes, int]], rows: int
                     ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        for a in range(0, len(pairs), rows):
            chunk = pairs[a : a + rows]
            keys = list(map(itemgetter(0), chunk))
            values = self._read_many(keys, list(map(itemgetter(1), chunk)))
            if not all(values):  # tombstones
                keys, values = list(compress(keys, values)), list(filter(None, values))
            if keys:
                yield keys, values

    def live_keys(self) -> int:
        """Number of live keys, exact. Cost: O(1).

        The index keeps deleted keys (their tombstone) until a merge drops them, so this
        is ``len(index)`` minus the set of keys whose latest record is a tombstone, which
        every write, merge and open keeps up to date.
        """
        self._ensure_open()
        return len(self._index) - len(self._dead)

    def __sizeof__(self) -> int:
        """Estimated bytes of memory held: index, active buffer, per-record lengths. O(1).

        Key sizes are estimated from a 64-key sample; memory-mapped run files (page
        cache) are not counted.
        """
        index = self._index
        if isinstance(index, KeyIndex):
            held = index.__sizeof__()
        else:
            sample = list(islice(index, 64))
            per_key = sum(map(sys.getsizeof, sample)) / len(sample) if sample else 0.0
            per_loc = sys.getsizeof(1 << (N_SHIFT + 7))
            held = sys.getsizeof(index) + int(len(index) * (per_key + per_loc))
        return (
            object.__sizeof__(self)
            + held
            + (0 if self._amm.closed else len(self._amm))
            + 3 * sys.getsizeof(self._alens)
            + sys.getsizeof(self._bufs) * 2
            + len(self._runs) * 200
        )

    # ------------------------------------------------------------------ writes

    def set(self, key: bytes, value: bytes) -> None:
        """Insert or update ``key``; ``value == b""`` deletes it (appends a tombstone).

        Cost: one record appended to the in-memory active run and one dict store;
        amortized file writes, run closes and merges (see the class docstring).
        """
        if (
            type(key) is not bytes
            or not 0 < len(key) <= self.max_key_len
            or type(value) is not bytes
            or len(value) > self.max_value_len
        ):
            self._check_kv(key, value)
        if self._slow:
            self._before_write()
        kl = len(key)
        vl = len(value)
        self.stats.app_bytes += kl + vl
        if kl < 128 and vl < 128:
            rec = PACK_HDR2(kl, vl) + key + value
        else:
            rec = encode_varint(kl) + encode_varint(vl) + key + value
        rec += PACK_CRC(crc32(rec))
        pos = self._pos
        n = len(rec)
        end = pos + n
        if end > self._acap:
            self._grow(end)
        self._amm[pos:end] = rec
        self._pos = end
        self._alens.append(n)
        self._aklens.append(kl)
        self._avlens.append(vl)
        self._index[key] = self._abase | pos << SLOT_BITS | n << N_SHIFT
        if not vl:
            self._dead.add(key)
        elif self._dead:
            self._dead.discard(key)
        if end >= self._flush_at:
            self._after_append()

    # ------------------------------------------------------------------ invariants

    def _check(self) -> None:
        """Assert internal invariants (tests call this; cost O(keys + runs))."""
        assert not self._closed
        assert not self._amm.closed and self._bufs[self._aslot] is self._amm
        assert 0 <= self._pos < self.threshold
        assert sum(self._alens) == self._pos
        if self._pos:  # the lengths kept for the index section are the records' own
            klens, vlens, _ = record_columns(self._amm, self._alens.tolist())
            assert self._aklens.tolist() == klens and self._avlens.tolist() == vlens
        else:
            assert not self._aklens and not self._avlens
        assert self._flushed <= self._pos <= self._acap
        run_levels = levels([r.size for r in self._runs], self.max_runs_per_level)
        assert run_levels == sorted(run_levels, reverse=True), run_levels
        if not self._slow and not self._pos:  # merges are planned when a run closes, by
            # count and space (expiry merges wait for the next close); the index points
            # into the closed runs only while the active run is empty
            sizes = [r.size for r in self._runs]
            counts = [r.count for r in self._runs]
            by_space = self.expiry is None  # see RunSet._plan
            assert plan_merge(sizes, self.max_runs_per_level,
                              self._live_bytes(sizes, counts) if by_space else None) is None
            assert not (by_space and over_space(sizes, counts, len(self._index)))
        slots = {r.slot for r in self._runs} | {self._aslot}
        assert len(slots) == len(self._runs) + 1 and 0 not in slots
        for run in self._runs:
            mm = self._bufs[run.slot]
            assert isinstance(mm, mmap.mmap) and len(mm) == run.size
            assert (self.data_dir / run.name).stat().st_size == run.size
        names = [r.name for r in self._runs]
        if not self._uncommitted:
            assert sorted(self._live_files) == sorted(names)
        assert set(self._live_files) <= set(names)
        limit = {r.slot: r.data_len for r in self._runs} | {self._aslot: self._pos}
        for key, loc in self._index.items():
            slot = loc & SLOT_MASK
            off = loc >> SLOT_BITS & OFF_MASK
            n = loc >> N_SHIFT
            assert slot in slots and off + n <= limit[slot], (key, slot, off, n)
            rec = self._bufs[slot][off : off + n]
            assert crc32(rec) == CRC_RESIDUE
            klen, vlen, hsize = parse_header(rec, 0)
            assert rec[hsize : hsize + klen] == key and hsize + klen + vlen + 4 == n
            assert (vlen == 0) == (key in self._dead), ("dead key set out of date", key)
        assert all(map(self._index.__contains__, self._dead)), "dead key lacks an index entry"
