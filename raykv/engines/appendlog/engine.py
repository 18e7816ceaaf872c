"""AppendLog: a Bitcask-style engine, an append-only log of runs plus an in-memory hash index.

Every write appends one checksummed record to the *active run*; a dict (the *index*) maps
each key to the location of its latest record. A read is one dict lookup plus one slice
of a memory map, checked against the record's crc. The byte layouts are in ``FORMAT.md``
("AppendLog").

Life of a run::

    active (anonymous memory map, written out to its file in 1 MiB chunks)
      --(reaches ``threshold`` bytes, or a non-idle ``seal()``)-->
    closed (file = records | index section | footer; immutable, read through ``mmap``)
      --(its level reaches max_runs_per_level runs)-->
    merged (its live records are copied into a new run; the commit deletes it)

Merges are size-tiered. A run's level is its size class, ``log_m(size / 4 KiB)`` rounded
down with ``m = max_runs_per_level``, raised where needed so that levels never grow from
older to younger runs (so every level is a contiguous stretch of the age order). As soon
as a level holds ``max_runs_per_level`` runs they are merged into one, which lands about
one level up. When the runs younger than the oldest (the *base*) take ``FULL_MERGE_RATIO``
(2) times the base's bytes, the merge takes every closed run instead, which bounds the disk
to about three times the live data and is where tombstones are dropped. Merges run on the
write path, never inside ``seal()``: a seal that leaves a level full only marks a merge as
due, and the next write performs it before appending.

Restart reads each run's footer and index section (never its records one by one) and
rebuilds the dict with C-level passes. After a crash the directory holds the state of the
last commit (a seal, or a merge, which commits all closed runs): the unsealed active run
is not in any manifest and is deleted on open, so a torn tail is never read.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from io import BufferedWriter
from itertools import accumulate, compress, islice, repeat
from operator import add, and_, eq, getitem, itemgetter, lshift, not_, or_, rshift
from pathlib import Path
from typing import Unpack, cast

import numpy as np

from raykv.engines.base import KVStore, Pairs, StoreOptions
from raykv.engines.fileio import ReadableBuffer, crc32, decode_varint, encode_varint
from raykv.engines.manifest import Manifest
from raykv.errors import CorruptionError, FormatVersionError, RaykvError

# ---------------------------------------------------------------------- on-disk format
# DO NOT CHANGE these values: they are embedded in run files (FORMAT.md, "AppendLog").
RUN_KIND = "run"
RUN_MAGIC = b"RKAL"
RUN_VERSION = 1
INDEX_HAS_KEYS = 0x01  # index section flag: keys are stored in the index section
# footer: data_len, index_len, count, data_crc, index_crc, version, reserved, footer_crc, magic
_FOOTER = struct.Struct("<QQQIIHHI4s")
_FOOTER_CRC_SPAN = 36  # footer_crc covers the footer's first 36 bytes
_U32 = struct.Struct("<I")
_PACK_CRC = _U32.pack
_PACK_HDR2 = struct.Struct("BB").pack
# crc32 of (bytes + their crc32 as u32 little-endian) is this constant for any bytes, so a
# record (which ends in the crc of everything before it) checks with one crc32 call.
CRC_RESIDUE = 0x2144DF1C
_COLUMN_CODES = {1: "B", 2: "H", 4: "I"}
assert array("I").itemsize == 4 and array("H").itemsize == 2

# ---------------------------------------------------------------------- in-memory locations
# A location is one int: slot << 71 | offset << 31 | record length. ``slot`` indexes
# ``self._bufs`` (slot 0 holds a constant empty record that missing keys point at).
_N_BITS = 31
_N_MASK = (1 << _N_BITS) - 1
_OFF_BITS = 40
_OFF_MASK = (1 << _OFF_BITS) - 1
_SLOT_SHIFT = _N_BITS + _OFF_BITS
MAX_RUN_BYTES = 1 << _OFF_BITS
_SMALL_N = 134  # a record shorter than this has key and value < 128 bytes: a 2-byte header
_NULL_REC = b"\x00\x00" + _PACK_CRC(crc32(b"\x00\x00"))
_NULL_LOC = len(_NULL_REC)  # slot 0, offset 0
# rec[s] as a function for C-level maps (operator.getitem: faster than bytes.__getitem__;
# its stub types a slice of a Sequence as a Sequence, not bytes)
_cut = cast(Callable[[bytes, slice], bytes], getitem)

DEFAULT_THRESHOLD = 4 * 1024 * 1024
DEFAULT_MAX_RUNS_PER_LEVEL = 10
MAX_THRESHOLD = 1 << 36
FLUSH_BYTES = 1 << 20  # the active run is written to its file in chunks of this size
# every closed run is merged when the runs younger than the oldest hold this many times its
# bytes: the disk holds at most about (1 + FULL_MERGE_RATIO) x the live data
FULL_MERGE_RATIO = 2
LEVEL_UNIT = 4096  # runs below LEVEL_UNIT * max_runs_per_level bytes are on level 0
KEYS_IN_INDEX_MIN_VALUE = 32  # average value size above which keys are copied to the index
_SCAN_FACTOR = 4  # merges find live records by scanning the index up to this index/input ratio
_READ_BATCH = 4096
_MERGE_BATCH = 65536
_VERIFY_CHUNK = 16 << 20


@dataclass(slots=True)
class _Run:
    """A closed, immutable run file and where it sits in memory."""

    name: str
    slot: int
    data_len: int
    index_len: int
    count: int
    size: int
    data_crc: int
    verified: bool = False


class _RunWriter:
    """Writes one run file: records (any number of ``write`` calls), then index + footer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BufferedWriter | None = None
        self.data_len = 0
        self.crc = 0

    def write(self, data: bytes) -> None:
        if self.file is None:
            self.file = open(self.path, "wb")  # noqa: SIM115 - closed by finish/abort
        if self.data_len + len(data) > MAX_RUN_BYTES:
            msg = f"run {self.path} would exceed {MAX_RUN_BYTES} bytes; lower threshold"
            raise RaykvError(msg)
        self.file.write(data)
        self.crc = crc32(data, self.crc)
        self.data_len += len(data)

    def finish(self, count: int, index: bytes) -> int:
        """Append the index section and footer, close the file; return its size."""
        assert self.file is not None
        head = struct.pack(
            "<QQQIIHH", self.data_len, len(index), count, self.crc, crc32(index), RUN_VERSION, 0
        )
        self.file.write(index)
        self.file.write(head + _PACK_CRC(crc32(head)) + RUN_MAGIC)
        self.file.close()
        self.file = None
        return self.data_len + len(index) + _FOOTER.size

    def abort(self) -> None:
        """Close and remove a file that will not become a run."""
        if self.file is not None:
            self.file.close()
            self.file = None
            self.path.unlink(missing_ok=True)


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
    included until a merge drops their tombstone), the active run buffer (about
    ``threshold`` bytes) and 4 bytes per record of the active run. Closed runs are
    memory-mapped (page cache, not counted by ``__sizeof__``), one mapping per run.

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
        _check_param("threshold", threshold, 1, MAX_THRESHOLD, "bytes per run before it closes")
        _check_param(
            "max_runs_per_level", max_runs_per_level, 2, 1 << 20, "runs per level before a merge"
        )
        self.threshold = threshold
        self.max_runs_per_level = max_runs_per_level
        self._amm = _closed_map()  # the active run's buffer, allocated by _new_active
        self._reset()
        super().__init__(data_dir, **kwargs)

    # ------------------------------------------------------------------ lifecycle

    def _reset(self) -> None:
        """Empty in-memory state (no files touched)."""
        self._index: dict[bytes, int] = {}
        # slot -> a run's mmap or the active buffer (slot 0: the null record; free: b"")
        self._bufs: list[mmap.mmap | bytes] = [_NULL_REC]
        self._slot_names: list[str | None] = ["<none>"]
        self._free_slots: list[int] = []
        self._runs: list[_Run] = []  # closed runs, oldest first
        self._uncommitted = False  # closed runs not yet listed in a manifest
        self._slow = True  # set() must call _before_write(): closed, or a merge is due
        self._writer: _RunWriter | None = None
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
                for name in manifest.files:
                    run, keys, offs, ns = self._load_run(name)
                    index.update(zip(keys, _pack(run.slot, offs, ns), strict=True))
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
        n = loc & _N_MASK
        off = loc >> _N_BITS & _OFF_MASK
        rec = self._bufs[loc >> _SLOT_SHIFT][off : off + n]
        if crc32(rec) != CRC_RESIDUE:
            self._record_corrupt(loc)
        if n < _SMALL_N:
            return rec[len(key) + 2 : -4]
        return rec[_value_start(rec) : -4]

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes]:
        """Return the values of ``keys`` in order (``b""`` for missing ones).

        Cost: the per-key work of ``get`` done in C-level passes over the batch.
        """
        if self._closed:
            self._ensure_open()
        self._check_keys(keys)
        if not keys:
            return []
        return self._read_many(keys, list(map(self._index.get, keys, repeat(_NULL_LOC))))

    def _read_many(self, keys: Sequence[bytes], locs: list[int]) -> list[bytes]:
        """Values at ``locs`` (one per key), every record crc-checked; C-level passes."""
        b = self._bufs
        recs = [b[loc >> _SLOT_SHIFT][(o := loc >> _N_BITS & _OFF_MASK) : o + (loc & _N_MASK)]
                for loc in locs]
        crcs = list(map(crc32, recs))
        if crcs.count(CRC_RESIDUE) != len(crcs):
            for loc, crc in zip(locs, crcs, strict=True):
                if crc != CRC_RESIDUE:
                    self._record_corrupt(loc)
        if max(map(len, recs)) < _SMALL_N:  # 2-byte headers: the value starts after the key
            klens = list(map(len, keys))
            if min(klens) == max(klens):
                return list(map(_cut, recs, repeat(slice(klens[0] + 2, -4))))
            return list(map(_cut, recs, map(slice, map(add, klens, repeat(2)), repeat(-4))))
        return [rec[_value_start(rec) : -4] for rec in recs]

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

    def __sizeof__(self) -> int:
        """Estimated bytes of memory held: index, active buffer, per-record lengths. O(1).

        Key sizes are estimated from a 64-key sample; memory-mapped run files (page
        cache) are not counted.
        """
        index = self._index
        sample = list(islice(index, 64))
        per_key = sum(map(sys.getsizeof, sample)) / len(sample) if sample else 0.0
        per_loc = sys.getsizeof(1 << (_SLOT_SHIFT + 1))
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
            rec = _PACK_HDR2(kl, vl) + key + value
        else:
            rec = encode_varint(kl) + encode_varint(vl) + key + value
        rec += _PACK_CRC(crc32(rec))
        pos = self._pos
        n = len(rec)
        end = pos + n
        if end > self._acap:
            self._grow(end)
        self._amm[pos:end] = rec
        self._pos = end
        self._alens.append(n)
        self._index[key] = self._abase | pos << _N_BITS | n
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
            self._append_fixed(keys, values, kmax, vmax)
            return
        if kmax < 128 and vmax < 128:
            heads: Iterator[bytes] = map(_PACK_HDR2, klens, vlens)
        else:
            heads = map(add, map(encode_varint, klens), map(encode_varint, vlens))
        bodies = list(map(add, map(add, heads, keys), values))
        recs = list(map(add, bodies, map(_PACK_CRC, map(crc32, bodies))))
        self._append_many(keys, recs)

    def _append_fixed(
        self, keys: Sequence[bytes], values: Sequence[bytes], kl: int, vl: int
    ) -> None:
        """Append records whose keys all have ``kl`` bytes and values ``vl`` (< 128 each)."""
        count = len(keys)
        n = kl + vl + 6
        head = _PACK_HDR2(kl, vl)
        crcs = map(crc32, values, map(crc32, keys, repeat(crc32(head))))
        recs = np.empty((count, n), dtype=np.uint8)
        recs[:, :2] = np.frombuffer(head, dtype=np.uint8)
        recs[:, 2 : 2 + kl] = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(count, kl)
        recs[:, 2 + kl : n - 4] = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(
            count, vl)
        recs[:, n - 4 :] = np.fromiter(crcs, dtype="<u4", count=count).view(np.uint8).reshape(
            count, 4)
        data = recs.data.cast("B")
        index = self._index
        step = n << _N_BITS
        i = 0
        while i < count:
            pos = self._pos
            take = min(count - i, -(-(self.threshold - pos) // n))  # up to the threshold
            end = pos + take * n
            if end > self._acap:
                self._grow(end)
            self._amm[pos:end] = data[i * n : (i + take) * n]
            first = self._abase | pos << _N_BITS | n
            chunk = keys if take == count else keys[i : i + take]
            index.update(zip(chunk, range(first, first + step * take, step), strict=True))
            self._alens.extend(repeat(n, take))
            self._pos = end
            i += take
            if end >= self._flush_at:
                self._after_append()

    def _append_many(self, keys: Sequence[bytes], recs: list[bytes]) -> None:
        """Append records, closing the active run each time it reaches ``threshold``."""
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
            locs = map(or_, map(or_, map(lshift, offs, repeat(_N_BITS)), chunk_ns),
                       repeat(self._abase))
            index.update(zip(keys[i:j], locs, strict=True))
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
        self._abase = self._aslot << _SLOT_SHIFT
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
            self._writer = _RunWriter(self.data_dir / self._aname)
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
        offs = list(accumulate(ns[:-1], initial=0))
        amm = self._amm
        if max(ns) < _SMALL_N:
            klens = list(map(amm.__getitem__, offs))  # a 1-byte varint is the length itself
            vlens = list(map(add, map(int.__sub__, ns, klens), repeat(-6)))
            kstarts = list(map(add, offs, repeat(2)))
        else:
            heads = [_parse_header(amm, off) for off in offs]
            klens = [h[0] for h in heads]
            vlens = [h[1] for h in heads]
            kstarts = [off + h[2] for off, h in zip(offs, heads, strict=True)]
        keys: list[bytes] | None = None
        if _keys_in_index(vlens):
            keys = list(map(amm.__getitem__, map(slice, kstarts, map(add, kstarts, klens))))
        size = self._writer.finish(len(ns), _encode_index(klens, vlens, keys))
        name = self._aname
        self._written(name, size)
        run = _Run(name, self._aslot, self._pos, size - self._pos - _FOOTER.size, len(ns),
                   size, self._writer.crc, verified=True)
        self._bufs[self._aslot] = _map_file(self.data_dir / name)
        self._slot_names[self._aslot] = name
        self._runs.append(run)
        self._uncommitted = True
        self._writer = None
        self._new_active()

    # ------------------------------------------------------------------ merges

    def _plan_merge(self) -> tuple[int, int] | None:
        """Pick the next merge as a slice ``(first, end)`` of ``self._runs``, or ``None``.

        The youngest level holding ``max_runs_per_level`` runs is merged; if the runs
        younger than the base take ``FULL_MERGE_RATIO`` times the base's bytes, every
        closed run is merged instead. Cost: O(runs).
        """
        runs = self._runs
        if len(runs) < 2:
            return None
        levels = _levels([r.size for r in runs], self.max_runs_per_level)
        counts = Counter(levels)
        for level in sorted(counts):
            if counts[level] < self.max_runs_per_level:
                continue
            if sum(r.size for r in runs[1:]) >= FULL_MERGE_RATIO * runs[0].size:
                return 0, len(runs)
            first = levels.index(level)
            return first, first + counts[level]
        return None

    def _run_merges(self) -> None:
        """Perform due merges (the active run is empty), then leave the slow path."""
        while (plan := self._plan_merge()) is not None:
            self._merge(*plan)
        self._slow = self._closed

    def _merge(self, first: int, end: int) -> None:
        """Copy the live records of ``self._runs[first:end]`` into one new run and commit.

        A record is live when the index points at it. Live records are found by scanning
        the index (C-level passes over its values) unless it holds more than
        ``_SCAN_FACTOR`` times as many keys as the inputs have records; then by decoding
        the inputs' index sections and looking their keys up (about 4x dearer per record).
        Tombstones are dropped (and their keys leave the index) only when the merge
        includes the oldest run: then no older run can still hold the key. Every input's
        records are crc-verified (one C-level pass) before anything is copied.
        """
        assert not self._pos
        inputs = self._runs[first:end]
        for run in inputs:
            self._verify_data(run)
        index = self._index
        if len(index) <= _SCAN_FACTOR * sum(r.count for r in inputs):
            slots = {r.slot for r in inputs}
            locs = list(index.values())
            in_merge = list(map(slots.__contains__, map(rshift, locs, repeat(_SLOT_SHIFT))))
            keys = list(compress(index, in_merge))
            locs = list(compress(locs, in_merge))
        else:
            keys = []
            locs = []
            for run in inputs:
                run_keys, _, offs, ns = self._run_table(run, self._bufs[run.slot])
                run_locs = _pack(run.slot, offs, ns)
                live = list(map(eq, map(index.get, run_keys), run_locs))
                keys.extend(compress(run_keys, live))
                locs.extend(compress(run_locs, live))
        ns = list(map(and_, locs, repeat(_N_MASK)))
        klens = list(map(len, keys))
        if not ns or max(ns) < _SMALL_N:
            vlens = list(map(int.__sub__, ns, map(add, klens, repeat(6))))
        else:
            bufs = self._bufs
            vlens = [_parse_header(bufs[loc >> _SLOT_SHIFT], loc >> _N_BITS & _OFF_MASK)[1]
                     for loc in locs]
        gone: list[bytes] = []
        if first == 0 and not all(vlens):
            has_value = list(map(bool, vlens))
            gone = list(compress(keys, map(not_, has_value)))
            keys = list(compress(keys, has_value))
            locs = list(compress(locs, has_value))
            ns = list(compress(ns, has_value))
            klens = list(compress(klens, has_value))
            vlens = list(compress(vlens, has_value))
        name = self._new_file(RUN_KIND)
        writer = _RunWriter(self.data_dir / name)
        new: list[_Run] = []
        try:
            if keys:
                for a in range(0, len(locs), _MERGE_BATCH):
                    writer.write(self._read_records(locs[a : a + _MERGE_BATCH]))
                size = writer.finish(len(keys), _encode_index(
                    klens, vlens, keys if _keys_in_index(vlens) else None))
                self._written(name, size)
                slot = self._alloc_slot(_map_file(self.data_dir / name), name)
                new.append(_Run(name, slot, writer.data_len,
                                size - writer.data_len - _FOOTER.size, len(keys), size,
                                writer.crc, verified=True))
                new_offs: Sequence[int]
                if min(ns) == max(ns):
                    new_offs = range(0, ns[0] * len(ns), ns[0])
                else:
                    new_offs = list(accumulate(ns[:-1], initial=0))
                index.update(zip(keys, _pack(slot, new_offs, ns), strict=True))
        except BaseException:
            writer.abort()
            raise
        for key in gone:
            del index[key]
        self._runs[first:end] = new
        for run in inputs:
            self._free_slot(run.slot)
        self.stats.merges += 1
        self._commit_runs()

    def _read_records(self, locs: list[int]) -> bytes:
        """The raw records at ``locs``, concatenated (one slice per record)."""
        b = self._bufs
        return b"".join(
            [b[loc >> _SLOT_SHIFT][(o := loc >> _N_BITS & _OFF_MASK) : o + (loc & _N_MASK)]
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

    def _load_run(self, name: str) -> tuple[_Run, list[bytes], Sequence[int], list[int]]:
        """Map run ``name``, check footer and index section; return it and its records."""
        path = self.data_dir / name
        mm = _map_file(path)
        try:
            size = len(mm)
            if size < _FOOTER.size:
                raise CorruptionError(path, "length", detail=f"{size} bytes is too short")
            foot = size - _FOOTER.size
            (data_len, index_len, count, data_crc, index_crc, version, _, footer_crc,
             magic) = _FOOTER.unpack_from(mm, foot)
            if magic != RUN_MAGIC:
                raise CorruptionError(path, "magic", offset=size - 4,
                                      detail=f"expected {RUN_MAGIC!r}, got {magic!r}")
            if crc32(mm[foot : foot + _FOOTER_CRC_SPAN]) != footer_crc:
                raise CorruptionError(path, "crc", offset=foot, detail="footer checksum mismatch")
            if version > RUN_VERSION:
                raise FormatVersionError(path, version, RUN_VERSION)
            if data_len + index_len + _FOOTER.size != size or not count:
                raise CorruptionError(path, "length", offset=foot,
                                      detail="footer lengths do not match the file size")
            if crc32(mm[data_len:foot]) != index_crc:
                raise CorruptionError(path, "crc", offset=data_len,
                                      detail="index section checksum mismatch")
            run = _Run(name, 0, data_len, index_len, count, size, data_crc)
            keys, _, offs, ns = self._run_table(run, mm)
        except BaseException:
            mm.close()
            raise
        run.slot = self._alloc_slot(mm, name)
        self._runs.append(run)
        return run, keys, offs, ns

    def _run_table(
        self, run: _Run, mm: mmap.mmap | bytes
    ) -> tuple[list[bytes], list[int], Sequence[int], list[int]]:
        """Decode a run's index section: keys, value lengths, record offsets and lengths.

        Cost: a few C-level passes over the records' lengths (offsets are a ``range`` when
        all records have one length). Keys are sliced from the index section, or, for runs
        of small values, from the records themselves after one crc32 pass over all the
        run's records (so a damaged key is never indexed).
        """
        path = self.data_dir / run.name
        count = run.count
        idx = mm[run.data_len : run.data_len + run.index_len]
        try:
            flags = idx[0]
            klens, pos, kconst = _decode_column(idx, 1, count, path)
            vlens, pos, vconst = _decode_column(idx, pos, count, path)
        except (IndexError, struct.error):
            raise CorruptionError(path, "length", offset=run.data_len,
                                  detail="index section is malformed") from None
        offs: Sequence[int]
        kstarts: Sequence[int]
        kends_in_records: Iterable[int]
        hsizes: Iterable[int]
        if kconst is not None and vconst is not None:  # one record length: ranges
            hsize = _varint_size(kconst) + _varint_size(vconst)
            n = hsize + kconst + vconst + 4
            ns = [n] * count
            offs = range(0, n * count, n)
            total = n * count
            kstarts = range(hsize, total + hsize, n)
            kends_in_records = range(hsize + kconst, total + hsize + kconst, n)
        else:
            if max(klens) < 128 and max(vlens) < 128:
                hsizes = repeat(2)
                ns = list(map(add, map(add, klens, vlens), repeat(6)))
            else:
                hsizes = list(map(add, map(_varint_size, klens), map(_varint_size, vlens)))
                ns = list(map(add, map(add, hsizes, klens), map(add, vlens, repeat(4))))
            offs = list(accumulate(ns, initial=0))
            total = offs.pop()
            kstarts = list(map(add, offs, hsizes))
            kends_in_records = map(add, kstarts, klens)
        if total != run.data_len or min(klens) < 1:
            raise CorruptionError(path, "length", offset=run.data_len,
                                  detail="record lengths in the index do not add up")
        ksum = kconst * count if kconst is not None else sum(klens)
        if (pos + ksum if flags & INDEX_HAS_KEYS else pos) != len(idx):
            raise CorruptionError(path, "length", offset=run.data_len,
                                  detail="index section size does not match its columns")
        if flags & INDEX_HAS_KEYS:
            if kconst is not None:
                kstarts = range(pos, pos + ksum, kconst)
                kends: Sequence[int] = range(pos + kconst, pos + ksum + kconst, kconst)
            else:
                kstarts = list(accumulate(klens, initial=pos))
                kends = kstarts[1:]
            keys = list(map(idx.__getitem__, map(slice, kstarts, kends)))
        else:
            self._verify_data(run, mm)
            keys = list(map(mm.__getitem__, map(slice, kstarts, kends_in_records)))
        return keys, vlens, offs, ns

    def _verify_data(self, run: _Run, mm: mmap.mmap | bytes | None = None) -> None:
        """Check the crc of all of ``run``'s records once per open (C speed)."""
        if run.verified:
            return
        if mm is None:
            mm = self._bufs[run.slot]
        crc = 0
        for a in range(0, run.data_len, _VERIFY_CHUNK):
            crc = crc32(mm[a : min(a + _VERIFY_CHUNK, run.data_len)], crc)
        if crc != run.data_crc:
            raise CorruptionError(self.data_dir / run.name, "crc",
                                  detail="records checksum mismatch")
        run.verified = True

    def _record_corrupt(self, loc: int) -> None:
        slot = loc >> _SLOT_SHIFT
        name = self._slot_names[slot] or "<unknown run>"
        raise CorruptionError(self.data_dir / name, "crc", offset=loc >> _N_BITS & _OFF_MASK,
                              detail="record checksum mismatch")

    # ------------------------------------------------------------------ invariants

    def _check(self) -> None:
        """Assert internal invariants (tests call this; cost O(keys + runs))."""
        assert not self._closed
        assert not self._amm.closed and self._bufs[self._aslot] is self._amm
        assert 0 <= self._pos < self.threshold
        assert sum(self._alens) == self._pos
        assert self._flushed <= self._pos <= self._acap
        levels = _levels([r.size for r in self._runs], self.max_runs_per_level)
        assert levels == sorted(levels, reverse=True), levels
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
            slot = loc >> _SLOT_SHIFT
            off = loc >> _N_BITS & _OFF_MASK
            n = loc & _N_MASK
            assert slot in slots and off + n <= limit[slot], (key, slot, off, n)
            rec = self._bufs[slot][off : off + n]
            assert crc32(rec) == CRC_RESIDUE
            klen, vlen, hsize = _parse_header(rec, 0)
            assert rec[hsize : hsize + klen] == key and hsize + klen + vlen + 4 == n


# ---------------------------------------------------------------------- helpers


def _check_param(name: str, value: object, low: int, high: int, what: str) -> None:
    if type(value) is not int:
        msg = f"{name} ({what}) must be an int, got {type(value).__name__}"
        raise TypeError(msg)
    if not low <= value <= high:
        msg = f"{name}={value} ({what}) is out of range; allowed {low}..{high}"
        raise ValueError(msg)


def _pack(slot: int, offs: Sequence[int], ns: Sequence[int]) -> Sequence[int]:
    """Locations of the records at ``offs`` with lengths ``ns`` in ``slot``.

    Cost: one comprehension; a ``range`` (no per-record work) when ``offs`` is a range of
    equal-length records.
    """
    base = slot << _SLOT_SHIFT
    if isinstance(offs, range) and offs:
        first = base | offs.start << _N_BITS | ns[0]
        step = offs.step << _N_BITS
        return range(first, first + step * len(offs), step)
    return [base | off << _N_BITS | n for off, n in zip(offs, ns, strict=True)]


def _levels(sizes: list[int], m: int) -> list[int]:
    """Level of each run (oldest first): its size class, raised to that of younger runs."""
    out = []
    level = 0
    for size in reversed(sizes):
        c = 0
        bound = LEVEL_UNIT * m
        while size >= bound:
            c += 1
            bound *= m
        level = max(level, c)
        out.append(level)
    out.reverse()
    return out


def _varint_size(n: int) -> int:
    return 1 if n < 128 else (n.bit_length() + 6) // 7


def _parse_header(buf: ReadableBuffer, off: int) -> tuple[int, int, int]:
    """Return ``(key length, value length, header size)`` of the record at ``off``."""
    klen, pos = decode_varint(buf, off)
    vlen, pos = decode_varint(buf, pos)
    return klen, vlen, pos - off


def _value_start(rec: bytes) -> int:
    klen, _, hsize = _parse_header(rec, 0)
    return hsize + klen


def _closed_map() -> mmap.mmap:
    """An anonymous map that is already closed: the active buffer of a closed engine."""
    mm = mmap.mmap(-1, 1)
    mm.close()
    return mm


def _map_file(path: Path) -> mmap.mmap:
    """Memory-map a whole file read-only (the mapping keeps its own descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size == 0:
            raise CorruptionError(path, "length", detail="file is empty")
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)


def _encode_column(values: Sequence[int]) -> bytes:
    """One column of u32s: width byte 0 + one u32 if all equal, else width 1/2/4 + values."""
    lo, hi = min(values), max(values)
    if lo == hi:
        return b"\x00" + _U32.pack(lo)
    width = 1 if hi < 1 << 8 else 2 if hi < 1 << 16 else 4
    arr = array(_COLUMN_CODES[width], values)
    if sys.byteorder == "big":
        arr.byteswap()
    return bytes((width,)) + arr.tobytes()


def _decode_column(
    buf: bytes, pos: int, count: int, path: Path
) -> tuple[list[int], int, int | None]:
    """Decode one column at ``pos``: ``(values, next pos, the value if all are equal)``."""
    width = buf[pos]
    pos += 1
    if width == 0:
        value = _U32.unpack_from(buf, pos)[0]
        return [value] * count, pos + 4, value
    code = _COLUMN_CODES.get(width)
    end = pos + width * count
    if code is None or end > len(buf):
        raise CorruptionError(path, "length", detail=f"bad index column (width {width})")
    arr = array(code)
    arr.frombytes(buf[pos:end])
    if sys.byteorder == "big":
        arr.byteswap()
    return arr.tolist(), end, None


def _keys_in_index(vlens: list[int]) -> bool:
    """Whether a run's keys are copied into its index section (values average > 32 B)."""
    return sum(vlens) > KEYS_IN_INDEX_MIN_VALUE * len(vlens)


def _encode_index(klens: list[int], vlens: list[int], keys: list[bytes] | None) -> bytes:
    """Encode a run's index section (FORMAT.md): flags, length columns, keys if given."""
    head = bytes((INDEX_HAS_KEYS if keys is not None else 0,))
    parts = [head, _encode_column(klens), _encode_column(vlens)]
    if keys is not None:
        parts.append(b"".join(keys))
    return b"".join(parts)
