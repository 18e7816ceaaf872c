"""LSMTree: a log-structured merge-tree engine (thesis chapter 3.2).

Writes go to a sorted memtable (``memtable.py``). When its payload exceeds
``memtable_bytes_limit`` it is flushed to a new immutable run in level 0, and levels that
became full are merged into the next level, cascading (``compaction.py``). A run file
holds data blocks of ``density_factor`` entries, a blocked bloom filter, fence pointers
and a footer (``run_format.py``, FORMAT.md); only the filter and the fences are kept in
memory. A read checks the memtable, then every run from newest to oldest: one bloom probe
per run, and at most one block read per run whose filter says the key may be there.
This module holds the reads and writes; flushes, merges and the run set are in
``levels.py`` (``LevelSet``, the base class).

Lifecycle: ``open -> (get | set | multi_get | multi_set | items | seal)* -> close``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, compress, repeat, starmap
from operator import is_, is_not
from typing import Unpack, cast
from zlib import crc32

import numpy as np

from raykv.engines.base import Pairs, StoreOptions, check_int_param
from raykv.engines.lsm.bloom import TABLE12, hash_many, hash_pair, masks_of
from raykv.engines.lsm.compaction import (
    Chunk,
    chunked,
    merge_sorted_chunks,
)
from raykv.engines.lsm.levels import LevelSet, ProbeGroup, levels_from_state
from raykv.engines.lsm.memtable import Memtable, dict_setitem
from raykv.engines.lsm.run_format import (
    CRC_RESIDUE,
    MAX_DENSITY_FACTOR,
    UNPACK_OFFSETS,
    scan_block,
)
from raykv.engines.lsm.run_reader import RunReader
from raykv.engines.lsm.stamps import ExpiryCompactions
from raykv.engines.manifest import Manifest
from raykv.errors import CorruptionError

# Estimated bytes per memtable entry beyond the key and value payload: two bytes objects'
# headers (2 x 33), the dict slot and the sorted-list slot (about 45; tracemalloc, 3.11).
_MEMTABLE_ENTRY_OVERHEAD = 112
# Below this many memtable misses, multi_get probes run by run per key (no numpy setup).
_VECTOR_MIN = 32
_ITEM_ROWS = 4096  # pairs per chunk behind ``items()``



class LSMTree(LevelSet):
    """A log-structured merge-tree: sorted memtable, tiered (or leveled) immutable runs.

    Args:
        data_dir: directory owned by the engine.
        max_runs_per_level: tiering fan-out ``R``: when a level holds ``R`` runs they merge
            into one run in the next level (one that lost at least half its data to
            overwrites and deletes stays in its level). ``R = 1`` selects leveling (one run
            per level, merged into the next level's run when the level exceeds its
            capacity).
            Default 4: write-optimised tiering (each entry is rewritten about once per
            level) while a read probes at most ``R`` bloom filters per level.
        density_factor: entries per data block, i.e. the gap between fence pointers.
            Default 16: a read scans at most 16 entries (in C) and the fences of two million
            8-byte keys take 1 MiB (``fences.py``; about 7 MiB for variable-length keys).
        memtable_bytes_limit: flush the memtable when the sum of its keys' and values'
            lengths exceeds this. Default 256 KiB: ``seal()`` writes at most this much, and
            its cost grows with the entry count (about 10,000 small entries, tens of
            milliseconds); the memtable's Python objects stay a few MiB.
        size_ratio: leveling only: level ``i`` holds up to
            ``memtable_bytes_limit * size_ratio ** (i + 1)`` data bytes. Default 10.
        bloom_bits_per_key: bloom filter budget; 10 gives about 1.7 % false positives
            (0 disables the filter). Default 10.
        **kwargs: ``max_key_len``, ``max_value_len``, ``remote``, ``storage_options``
            (see ``KVStore``).

    Cost: ``set`` is one memtable insert (O(log n)) plus, amortised, the flushes and merges
    (each entry is rewritten about once per level). ``get`` is a dict lookup when the key
    is in the memtable, otherwise one hash, one bloom probe per run and at most one block
    read per run whose filter passes. ``seal()`` writes only the memtable, never merges.
    Memory: the memtable, the fences (one key per block) and the bloom filters.
    ``items()`` iterates in key order.

    Example:
        >>> import tempfile
        >>> with LSMTree(tempfile.mkdtemp(), memtable_bytes_limit=1000) as db:
        ...     db.multi_set([(b"k%03d" % i, b"v") for i in range(300)])
        ...     db.set(b"k001", b"")
        ...     (db.get(b"k000"), db.get(b"k001"), len(list(db.items())))
        (b'v', b'', 299)
    """

    engine_name = "lsm"
    live_keys_exact = False

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        max_runs_per_level: int = 4,
        density_factor: int = 16,
        memtable_bytes_limit: int = 256 * 1024,
        size_ratio: int = 10,
        bloom_bits_per_key: int = 10,
        **kwargs: Unpack[StoreOptions],
    ) -> None:
        check_int_param("LSMTree max_runs_per_level", max_runs_per_level, 1, 1000)
        check_int_param("LSMTree density_factor", density_factor, 1, MAX_DENSITY_FACTOR)
        check_int_param("LSMTree memtable_bytes_limit", memtable_bytes_limit, 1, 1 << 40)
        check_int_param("LSMTree size_ratio", size_ratio, 2, 1000)
        check_int_param("LSMTree bloom_bits_per_key", bloom_bits_per_key, 0, 64)
        self.max_runs_per_level = max_runs_per_level
        self.density_factor = density_factor
        self.memtable_bytes_limit = memtable_bytes_limit
        self.size_ratio = size_ratio
        self.bloom_bits_per_key = bloom_bits_per_key
        self._mem = Memtable()  # the same object for the engine's lifetime (cleared, not replaced)
        self._mem_get: Callable[[bytes], bytes | None] = self._mem.get
        # data blocks read by get and multi_get (each one crc-checked) since the engine opened
        self.point_block_reads = 0
        self._levels: list[list[RunReader]] = []
        self._probes: list[ProbeGroup] = []
        self._newest_first: list[RunReader] = []
        self._run_memory: dict[str, int] = {}
        self._runs_memory = 0
        self._disk_entries = 0  # entries (tombstones included) of all runs: live_keys()
        self._uncommitted = False
        self._syncer: ThreadPoolExecutor | None = None
        # set() calls _after_write() when the memtable size exceeds this; -1 forces the
        # next write to run the merges a seal left pending
        self._flush_at = memtable_bytes_limit
        self._expiry_runs = ExpiryCompactions()
        super().__init__(data_dir, **kwargs)

    # ------------------------------------------------------------------ KVStore hooks

    def _open(self, manifest: Manifest | None) -> None:
        self._mem.clear()
        self._levels = []
        self._run_memory = {}
        self._uncommitted = False
        if manifest is not None:
            names = levels_from_state(self.data_dir / manifest.name, manifest)
            try:
                for level in names:
                    self._levels.append([])
                    for name in level:
                        self._levels[-1].append(self._open_run(name))
            except BaseException:
                self._close_runs([r for level in self._levels for r in level])
                self._levels = []
                raise
            try:
                self._expiry_runs.load(manifest.state, {n for level in names for n in level})
            except ValueError as err:
                self._close_runs([r for level in self._levels for r in level])
                self._levels = []
                raise CorruptionError(self.data_dir / manifest.name, "manifest state",
                                      detail=str(err)) from err
        else:
            self._expiry_runs.load({}, set())
        self._levels_changed()
        self._flush_at = -1 if self._merge_pending() else self.memtable_bytes_limit

    def _seal(self) -> bool:
        if self._mem:
            self._flush()
        if not self._uncommitted:
            return False
        self._commit_levels()
        if self._merge_pending():
            self._flush_at = -1
        return True

    def _release(self) -> None:
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)
            self._syncer = None
        self._close_runs([r for level in self._levels for r in level])
        self._levels = []
        self._levels_changed()
        self._mem.clear()

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes) -> bytes:
        """Return the value of ``key`` or ``b""`` if it is missing or deleted.

        Cost: one dict lookup if the key is in the memtable; otherwise one 128-bit hash,
        one bloom probe per run (newest first) and, for runs whose filter passes, one
        bisect of the fences and one block read (crc verified, at most ``density_factor``
        entries scanned). Stops at the newest run holding the key.
        """
        value = self._mem_get(key)
        if value is not None:
            return value
        if type(key) is not bytes or not 0 < len(key) <= self.max_key_len:
            self._reject_key(key)
        if self._closed:
            self._ensure_open()
        probes = self._probes
        if probes:
            # One hash for all runs; the rest inlines bloom.mask_of, RunReader.read_block and
            # run_format.find_in_block: a get is the hot path and Python calls are costly.
            h1, h2 = hash_pair(key, 0)
            mask = TABLE12[h2 & 4095] | TABLE12[(h2 >> 12) & 4095]
            for word_mask, group in probes:  # runs in a row with equally sized filters
                word = h1 & word_mask
                for absent, run in group:
                    if absent[word] & mask:
                        continue  # the filter says the key is not in this run
                    position, offsets, mm, reader = run
                    i = position(key)
                    if not i:
                        continue
                    block = mm[offsets[i - 1] : offsets[i]]
                    self.point_block_reads += 1
                    if crc32(block) != CRC_RESIDUE:
                        raise reader.block_error(i - 1)
                    j = block.find(key, 2)
                    if j >= 0:
                        n = block[0] | block[1] << 8
                        off = UNPACK_OFFSETS[n](block, 2)
                        try:
                            e = off.index(j, 0, n)
                        except ValueError:
                            e = -1
                        if e >= 0 and off[e + 1] - j == len(key):
                            return block[off[n + e] : off[n + e + 1]]
                        value = scan_block(block, key)  # the match was not an entry
                        if value is not None:
                            return value
        return b""

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes]:
        """Return the values of ``keys`` in order (``b""`` for missing keys).

        Cost: one C-level pass over the memtable; the misses are hashed in one batch,
        each run's filter is probed for all of them at once (numpy), and each block is
        read once for all the keys it may hold.
        """
        self._ensure_open()
        self._check_keys(keys)
        out: list[bytes | None] = list(map(self._mem_get, keys))
        if None not in out:
            return cast(list[bytes], out)  # no None left
        miss = list(compress(range(len(out)), map(is_, out, repeat(None))))
        if not self._probes:
            for i in miss:
                out[i] = b""
            return cast(list[bytes], out)  # no None left
        if len(miss) < _VECTOR_MIN:
            get = self.get
            for i in miss:
                out[i] = get(keys[i])
            return cast(list[bytes], out)  # no None left
        mkeys = list(map(keys.__getitem__, miss))
        hashes = hash_many(mkeys)
        h1 = hashes[:, 0]
        masks = masks_of(hashes[:, 1])
        pending = np.ones(len(mkeys), dtype=bool)
        left = len(mkeys)
        for run in self._newest_first:
            cand = np.flatnonzero(pending & run.bloom.may_contain_many(h1, masks)).tolist()
            if not cand:
                continue
            reads = run.block_reads
            values = run.multi_lookup(list(map(mkeys.__getitem__, cand)))
            self.point_block_reads += run.block_reads - reads
            present = list(map(is_not, values, repeat(None)))
            found = list(compress(cand, present))
            if found:
                for j, value in zip(found, compress(values, present), strict=True):
                    out[miss[j]] = value
                pending[found] = False
                left -= len(found)
                if not left:
                    break
        for j in np.flatnonzero(pending).tolist():
            out[miss[j]] = b""
        return cast(list[bytes], out)  # no None left

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over live ``(key, value)`` pairs in increasing key order.

        A chunked k-way merge of the runs and a snapshot of the memtable; the newest value
        of a key wins and tombstones are skipped. Memory: one chunk per run. The store
        must not be modified while the iterator is in use.
        """
        return chain.from_iterable(starmap(zip, self.item_chunks(_ITEM_ROWS)))

    def item_chunks(self, rows: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """The pairs of :meth:`items` (increasing key order) as lists of at most ``rows``.

        Cost: the merge of :meth:`items`, whose chunks (a block or a few per run) are cut
        or left as they are; no Python object per pair beyond its key and value.
        """
        self._ensure_open()
        keys, values = self._mem.sorted_items()
        sources: list[Iterator[Chunk]] = [
            r.iter_chunks() for level in reversed(self._levels) for r in level
        ]
        sources.append(iter(chunked(keys, values)))
        return _live_chunks(merge_sorted_chunks(sources), rows)

    # ------------------------------------------------------------------ writes

    def set(self, key: bytes, value: bytes) -> None:
        """Insert, update or (``value == b""``) delete ``key``.

        Cost: one memtable insert, O(log n); when the memtable exceeds
        ``memtable_bytes_limit`` the write also flushes it and runs the merges that
        became due (synchronously).
        """
        if (
            type(key) is not bytes
            or not 0 < len(key) <= self.max_key_len
            or type(value) is not bytes
            or len(value) > self.max_value_len
        ):
            self._check_kv(key, value)
        if self._closed:
            self._ensure_open()
        mem = self._mem
        size = len(key) + len(value)
        self.stats.app_bytes += size
        old = mem.get(key)
        if old is None:
            mem.add_key(key)
        else:
            size = len(value) - len(old)
        dict_setitem(mem, key, value)
        mem.nbytes += size
        if mem.nbytes > self._flush_at:
            self._after_write()

    def multi_set(self, pairs: Pairs) -> None:
        """Apply ``(key, value)`` pairs in order (later pairs win; ``b""`` deletes).

        The batch is validated as a whole first. Cost: C-level passes over the batch plus
        one sorted insert per new key; then at most one flush and its merges.
        """
        self._ensure_open()
        keys, values, _, _ = self._split_pairs(pairs)
        if not keys:
            return
        self._mem.put_many(keys, values)
        if self._mem.nbytes > self._flush_at:
            self._after_write()

    def live_keys(self) -> int:
        """An upper bound on the number of live keys: run entries plus memtable entries.

        Cost: O(1) (the run total is kept when the set of runs changes). Not exact: a key
        in several runs or in a run and the memtable counts once per copy, and tombstones
        count as entries. It is exact when the memtable is empty (after ``seal()``) and at
        most one run is left (as after a merge of every run): a sole run holds no
        tombstones, since flushes and merges drop a tombstone when no older run may hold
        its key. ``live_keys_exact`` is ``False`` for this engine.
        """
        self._ensure_open()
        return self._disk_entries + len(self._mem)

    def __sizeof__(self) -> int:
        """Estimated bytes held: memtable, and every run's fences, offsets and filter.

        Run sizes are computed once when a run is opened, so this is O(1).
        """
        mem = self._mem
        return (
            object.__sizeof__(self)
            + mem.nbytes
            + len(mem) * _MEMTABLE_ENTRY_OVERHEAD
            + self._runs_memory
        )

    def _check(self) -> None:
        """Assert every invariant; reads all runs (tests call it).

        Checks the memtable's order and size, every run sorted with increasing fences and
        no bloom false negative (all keys of small runs, a sample of big ones), the level
        shape, and that live files exist and match the manifest.
        """
        self._mem.check()
        runs = [r for level in self._levels for r in level]
        for r in runs:
            r.check(sample_every=1 if r.entry_count <= 200_000 else 13)
        assert sum(len(g) for _, g in self._probes) == len(runs) == len({r.name for r in runs})
        if self._flush_at != -1:
            assert not self._merge_pending(), f"levels need a merge at rest: {self.levels}"
        else:
            extra = 1 if self.max_runs_per_level == 1 else 0
            for level in self._levels:
                assert len(level) <= self.max_runs_per_level + extra, self.levels
        if not self._uncommitted:
            assert sorted(r.name for r in runs) == sorted(self._live_files)
        for name in self._live_files:
            assert (self.data_dir / name).is_file(), f"live file {name} missing"


def _live_chunks(chunks: Iterator[Chunk], rows: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """``chunks`` without tombstones, regrouped into ``rows`` pairs a chunk (the last fewer)."""
    keys: list[bytes] = []
    values: list[bytes] = []
    for more_keys, more_values in chunks:
        if all(more_values):
            keys += more_keys
            values += more_values
        else:
            keys += compress(more_keys, more_values)
            values += filter(None, more_values)
        while len(keys) >= rows:
            yield keys[:rows], values[:rows]
            del keys[:rows], values[:rows]
    if keys:
        yield keys, values
