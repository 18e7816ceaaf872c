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

Merges are size-tiered (``merge.py``); a merge that takes every closed run is where
tombstones are dropped. Merges run on the write path, never inside ``seal()``: a seal that
leaves a level full only marks a merge as due, and the next write performs it before
appending.

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
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate, compress, islice, repeat
from operator import add, getitem, itemgetter, lshift, not_, or_
from typing import Unpack, cast

from raykv.engines.appendlog.merge import levels, live_records, plan_merge
from raykv.engines.appendlog.runfile import (
    CRC_RESIDUE,
    FOOTER,
    N_BITS,
    N_MASK,
    NULL_LOC,
    NULL_REC,
    OFF_MASK,
    PACK_CRC,
    PACK_HDR2,
    RUN_KIND,
    SLOT_SHIFT,
    SMALL_N,
    Run,
    RunWriter,
    closed_map,
    decode_index,
    encode_fixed_records,
    encode_index,
    encode_records,
    keys_in_index,
    map_file,
    pack_locs,
    parse_header,
    read_footer,
    record_columns,
    value_start,
    verify_data,
)
from raykv.engines.base import KVStore, Pairs, StoreOptions, check_int_param
from raykv.engines.fileio import crc32, encode_varint
from raykv.engines.manifest import Manifest
from raykv.errors import CorruptionError

DEFAULT_THRESHOLD = 4 * 1024 * 1024
DEFAULT_MAX_RUNS_PER_LEVEL = 10
MAX_THRESHOLD = 1 << 36
FLUSH_BYTES = 1 << 20  # the active run is written to its file in chunks of this size
_READ_BATCH = 4096
_MERGE_BATCH = 65536
# rec[s] as a function for C-level maps (operator.getitem: faster than bytes.__getitem__;
# its stub types a slice of a Sequence as a Sequence, not bytes)
_cut = cast(Callable[[bytes, slice], bytes], getitem)


class AppendLog(KVStore):
    """A Bitcask-style engine: append-only runs on disk, a hash index of every key in memory.

    Args:
        data_dir: directory owned by this engine; created if missing.
        threshold: bytes of records after which the active run is closed and a new one
            started (thesis ``threshold``; default 4 MiB). Larger: fewer, bigger runs and
            merges; the active run is held in memory, so this also bounds that buffer.
        max_runs_per_level: number of runs of one size class (level) that triggers their
            merge into one run (thesis ``max_runs_per_level``; default 10, at least 2).
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

    ``items()`` yields pairs in arbitrary order (the order keys were first written, except
    after a restart or a merge); it is not sorted and offers no ordered iteration.
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
        self._index: dict[bytes, int] = {}
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
                    index.update(zip(keys, locs, strict=True))
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
        n = loc & N_MASK
        off = loc >> N_BITS & OFF_MASK
        rec = self._bufs[loc >> SLOT_SHIFT][off : off + n]
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
        return self._read_many(keys, list(map(self._index.get, keys, repeat(NULL_LOC))))

    def _read_many(self, keys: Sequence[bytes], locs: list[int]) -> list[bytes]:
        """Values at ``locs`` (one per key), every record crc-checked; C-level passes."""
        b = self._bufs
        recs = [b[loc >> SLOT_SHIFT][(o := loc >> N_BITS & OFF_MASK) : o + (loc & N_MASK)]
                for loc in locs]
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

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over all live ``(key, value)`` pairs, in arbitrary (unsorted) order.

        Cost: first one crc32 pass over each closed run's records not yet verified since
        open (so damage anywhere in a run is reported, also in superseded records), then
        the work of ``multi_get`` for every key. The store must not be modified while the
        iterator is in use.
        """
        self._ensure_open()
        for run in self._runs:
            self._verify_data(run)
        return self._iter_items(list(self._index.items()))

    def _iter_items(self, pairs: list[tuple[bytes, int]]) -> Iterator[tuple[bytes, bytes]]:
        for a in range(0, len(pairs), _READ_BATCH):
            chunk = pairs[a : a + _READ_BATCH]
            keys = list(map(itemgetter(0), chunk))
            values = self._read_many(keys, list(map(itemgetter(1), chunk)))
            yield from filter(itemgetter(1), zip(keys, values, strict=True))

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
        sample = list(islice(index, 64))
        per_key = sum(map(sys.getsizeof, sample)) / len(sample) if sample else 0.0
        per_loc = sys.getsizeof(1 << (SLOT_SHIFT + 1))
        return (
            object.__sizeof__(self)
            + sys.getsizeof(index)
            + int(len(index) * (per_key + per_loc))
            + (0 if self._amm.closed else len(self._amm))
            + sys.getsizeof(self._alens)
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
        self._index[key] = self._abase | pos << N_BITS | n
        if not vl:
            self._dead.add(key)
        elif self._dead:
            self._dead.discard(key)
        if end >= self._flush_at:
            self._after_append()

    def multi_set(self, pairs: Pairs) -> None:
        """Apply ``(key, value)`` pairs in order (later pairs win; ``b""`` deletes).

        The whole batch is validated before anything is applied. Cost: the records are
        built, checksummed and appended with C-level passes over the batch; when every key
        has one length and every value one length (under 128 bytes), numpy assembles the
        records and the locations are a ``range``.
        """
        if self._closed:
            self._ensure_open()
        keys, values = self._split_pairs(pairs)  # before any merge: a bad batch changes nothing
        if not keys:
            return
        if self._slow:
            self._before_write()
        klens = list(map(len, keys))
        vlens = list(map(len, values))
        kmax = max(klens)
        vmax = max(vlens)
        if kmax < 128 and vmax < 128 and min(klens) == kmax and min(vlens) == vmax:
            self._append_fixed(keys, encode_fixed_records(keys, values, kmax, vmax),
                               kmax + vmax + 6, tombstones=not vmax)
        else:
            self._append_many(keys, encode_records(keys, values, klens, vlens),
                              None if all(vlens) else vlens)

    def _mark_dead(self, keys: Sequence[bytes], vlens: Sequence[int] | None,
                   tombstones: bool = False) -> None:
        """Update the dead key set for ``keys`` just indexed (before any merge runs).

        ``vlens``: their value lengths when some are 0; ``None`` and ``tombstones``: all
        or none of them are tombstones. Cost: nothing when no key is dead and the batch
        deletes nothing; else C-level set passes.
        """
        dead = self._dead
        if tombstones:
            dead.update(keys)
            return
        if dead:
            dead.difference_update(keys)
        if vlens is not None:
            dead.update(compress(keys, map(not_, vlens)))

    def _append_fixed(self, keys: Sequence[bytes], data: memoryview, n: int, *,
                      tombstones: bool) -> None:
        """Append records of ``n`` bytes each (``data``, in the order of ``keys``).

        ``tombstones``: every record is one (else none is).
        """
        count = len(keys)
        index = self._index
        step = n << N_BITS
        i = 0
        while i < count:
            pos = self._pos
            take = min(count - i, -(-(self.threshold - pos) // n))  # up to the threshold
            end = pos + take * n
            if end > self._acap:
                self._grow(end)
            self._amm[pos:end] = data[i * n : (i + take) * n]
            first = self._abase | pos << N_BITS | n
            chunk = keys if take == count else keys[i : i + take]
            index.update(zip(chunk, range(first, first + step * take, step), strict=True))
            self._mark_dead(chunk, None, tombstones)
            self._alens.extend(repeat(n, take))
            self._pos = end
            i += take
            if end >= self._flush_at:
                self._after_append()

    def _append_many(self, keys: Sequence[bytes], recs: list[bytes],
                     vlens: list[int] | None) -> None:
        """Append records, closing the active run each time it reaches ``threshold``.

        ``vlens``: the value lengths when some records are tombstones, else ``None``.
        """
        ns = list(map(len, recs))
        ends = list(accumulate(ns))
        total = len(recs)
        i = 0
        done = 0  # batch bytes before record i
        index = self._index
        while i < total:
            pos = self._pos
            # the first record whose end reaches the threshold closes this run
            j = min(bisect_left(ends, done + self.threshold - pos, i) + 1, total)
            data = b"".join(recs[i:j])
            end = pos + len(data)
            if end > self._acap:
                self._grow(end)
            self._amm[pos:end] = data
            chunk_ns = ns[i:j]
            offs = accumulate(chunk_ns[:-1], initial=pos)
            locs = map(or_, map(or_, map(lshift, offs, repeat(N_BITS)), chunk_ns),
                       repeat(self._abase))
            index.update(zip(keys[i:j], locs, strict=True))
            self._mark_dead(keys[i:j], None if vlens is None else vlens[i:j])
            self._alens.extend(chunk_ns)
            self._pos = end
            done = ends[j - 1]
            i = j
            if end >= self._flush_at:
                self._after_append()

    def _before_write(self) -> None:
        """Slow path of every write: refuse if closed, run a due merge."""
        self._ensure_open()
        self._run_merges()

    def _after_append(self) -> None:
        """The active run reached a flush point: close it at ``threshold``, else flush."""
        if self._pos >= self.threshold:
            self._close_active()
            if self._plan_merge() is not None:
                self._slow = True
                self._run_merges()
        else:
            self._flush_chunk()

    # ------------------------------------------------------------------ the active run

    def _new_active(self) -> None:
        if self._amm.closed:
            self._acap = min(self.threshold, 1 << 26) + (1 << 16)
            self._amm = mmap.mmap(-1, self._acap)
        self._aslot = self._alloc_slot(self._amm, "<active run, in memory>")
        self._abase = self._aslot << SLOT_SHIFT
        self._aname = None
        self._writer = None
        self._pos = 0
        self._flushed = 0
        self._flush_at = min(self.threshold, FLUSH_BYTES)
        self._alens = array("I")

    def _grow(self, end: int) -> None:
        """Replace the active buffer by a larger one holding the same bytes."""
        cap = max(2 * self._acap, end + (1 << 16))
        new = mmap.mmap(-1, cap)
        new[: self._pos] = self._amm[: self._pos]
        self._amm.close()
        self._amm = new
        self._acap = cap
        self._bufs[self._aslot] = new

    def _flush_chunk(self) -> None:
        """Write the active run's unwritten bytes to its file (the name is taken lazily)."""
        if self._writer is None:
            self._aname = self._new_file(RUN_KIND)
            self._writer = RunWriter(self.data_dir / self._aname)
        if self._pos > self._flushed:
            self._writer.write(self._amm[self._flushed : self._pos])
            self._flushed = self._pos
        self._flush_at = min(self.threshold, self._pos + FLUSH_BYTES)

    def _close_active(self) -> None:
        """Make the (non-empty) active run an immutable run; start a new one.

        Cost: the unwritten tail, an index section (a few C-level passes over the run's
        record lengths) and a footer are written; no merge.
        """
        assert self._pos
        self._flush_chunk()
        assert self._writer is not None and self._aname is not None
        ns = self._alens.tolist()
        amm = self._amm
        klens, vlens, kstarts = record_columns(amm, ns)
        keys: list[bytes] | None = None
        if keys_in_index(vlens):
            keys = list(map(amm.__getitem__, map(slice, kstarts, map(add, kstarts, klens))))
        size = self._writer.finish(len(ns), encode_index(klens, vlens, keys))
        name = self._aname
        self._written(name, size)
        run = Run(name, self._aslot, self._pos, size - self._pos - FOOTER.size, len(ns),
                   size, self._writer.crc, verified=True)
        self._bufs[self._aslot] = map_file(self.data_dir / name)
        self._slot_names[self._aslot] = name
        self._runs.append(run)
        self._uncommitted = True
        self._writer = None
        self._new_active()

    # ------------------------------------------------------------------ merges

    def _plan_merge(self) -> tuple[int, int] | None:
        """The next merge as a slice ``(first, end)`` of ``self._runs`` (see ``merge.py``)."""
        return plan_merge([r.size for r in self._runs], self.max_runs_per_level)

    def _run_merges(self) -> None:
        """Perform due merges (the active run is empty), then leave the slow path."""
        while (plan := self._plan_merge()) is not None:
            self._merge(*plan)
        self._slow = self._closed

    def _merge(self, first: int, end: int) -> None:
        """Copy the live records of ``self._runs[first:end]`` into one new run and commit.

        A record is live when the index points at it (``merge.live_records``). Tombstones
        are dropped (and their keys leave the index) only when the merge includes the
        oldest run: then no older run can still hold the key. Every input's records are
        crc-verified (one C-level pass) before anything is copied.
        """
        assert not self._pos
        inputs = self._runs[first:end]
        for run in inputs:
            self._verify_data(run)
        index = self._index
        keys, locs, ns, klens, vlens, gone = live_records(
            index, inputs, self._bufs, self.data_dir, drop_tombstones=first == 0)
        name = self._new_file(RUN_KIND)
        writer = RunWriter(self.data_dir / name)
        new: list[Run] = []
        try:
            if keys:
                for a in range(0, len(locs), _MERGE_BATCH):
                    writer.write(self._read_records(locs[a : a + _MERGE_BATCH]))
                size = writer.finish(len(keys), encode_index(
                    klens, vlens, keys if keys_in_index(vlens) else None))
                self._written(name, size)
                slot = self._alloc_slot(map_file(self.data_dir / name), name)
                new.append(Run(name, slot, writer.data_len,
                                size - writer.data_len - FOOTER.size, len(keys), size,
                                writer.crc, verified=True))
                new_offs: Sequence[int]
                if min(ns) == max(ns):
                    new_offs = range(0, ns[0] * len(ns), ns[0])
                else:
                    new_offs = list(accumulate(ns[:-1], initial=0))
                index.update(zip(keys, pack_locs(slot, new_offs, ns), strict=True))
        except BaseException:
            writer.abort()
            raise
        for key in gone:
            del index[key]
        self._dead.difference_update(gone)
        self._runs[first:end] = new
        for run in inputs:
            self._free_slot(run.slot)
        self.stats.merges += 1
        self._commit_runs()

    def _read_records(self, locs: list[int]) -> bytes:
        """The raw records at ``locs``, concatenated (one slice per record)."""
        b = self._bufs
        return b"".join(
            [b[loc >> SLOT_SHIFT][(o := loc >> N_BITS & OFF_MASK) : o + (loc & N_MASK)]
             for loc in locs]
        )

    def _commit_runs(self) -> None:
        """Commit every closed run, oldest first, as the live set."""
        self._commit([r.name for r in self._runs], {})
        self._uncommitted = False

    # ------------------------------------------------------------------ run files

    def _alloc_slot(self, buf: mmap.mmap | bytes, name: str) -> int:
        if self._free_slots:
            slot = self._free_slots.pop()
            self._bufs[slot] = buf
            self._slot_names[slot] = name
            return slot
        self._bufs.append(buf)
        self._slot_names.append(name)
        return len(self._bufs) - 1

    def _free_slot(self, slot: int) -> None:
        buf = self._bufs[slot]
        if isinstance(buf, mmap.mmap) and buf is not self._amm:
            buf.close()
        self._bufs[slot] = b""  # a stale location would fail its crc check, never read data
        self._slot_names[slot] = None
        self._free_slots.append(slot)

    def _load_run(
        self, name: str
    ) -> tuple[Run, list[bytes], list[int], Sequence[int], list[int]]:
        """Map run ``name``, check footer and index section; return it and its records.

        Returns the run, then its records' keys, value lengths, offsets and lengths.
        """
        path = self.data_dir / name
        mm = map_file(path)
        try:
            run = read_footer(path, mm)
            keys, vlens, offs, ns = decode_index(path, run, mm)
        except BaseException:
            mm.close()
            raise
        run.slot = self._alloc_slot(mm, name)
        self._runs.append(run)
        return run, keys, vlens, offs, ns

    def _verify_data(self, run: Run) -> None:
        """Check the crc of all of ``run``'s records once per open (C speed)."""
        verify_data(self.data_dir / run.name, run, self._bufs[run.slot])

    def _record_corrupt(self, loc: int) -> None:
        slot = loc >> SLOT_SHIFT
        name = self._slot_names[slot] or "<unknown run>"
        raise CorruptionError(self.data_dir / name, "crc", offset=loc >> N_BITS & OFF_MASK,
                              detail="record checksum mismatch")

    # ------------------------------------------------------------------ invariants

    def _check(self) -> None:
        """Assert internal invariants (tests call this; cost O(keys + runs))."""
        assert not self._closed
        assert not self._amm.closed and self._bufs[self._aslot] is self._amm
        assert 0 <= self._pos < self.threshold
        assert sum(self._alens) == self._pos
        assert self._flushed <= self._pos <= self._acap
        run_levels = levels([r.size for r in self._runs], self.max_runs_per_level)
        assert run_levels == sorted(run_levels, reverse=True), run_levels
        if not self._slow:
            assert self._plan_merge() is None
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
            slot = loc >> SLOT_SHIFT
            off = loc >> N_BITS & OFF_MASK
            n = loc & N_MASK
            assert slot in slots and off + n <= limit[slot], (key, slot, off, n)
            rec = self._bufs[slot][off : off + n]
            assert crc32(rec) == CRC_RESIDUE
            klen, vlen, hsize = parse_header(rec, 0)
            assert rec[hsize : hsize + klen] == key and hsize + klen + vlen + 4 == n
            assert (vlen == 0) == (key in self._dead), ("dead key set out of date", key)
        assert self._dead <= self._index.keys(), "dead key set holds a key the index lacks"



# ---------------------------------------------------------------------- helpers


