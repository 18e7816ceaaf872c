"""Read one immutable LSM run file: point reads through ``mmap``, batch reads with ``pread``.

Opening loads only the footer, the fence-pointer index and the bloom filter (all checked
against their crc32); data blocks are read on demand and each block's crc32 is verified
on every read, so a damaged file raises ``CorruptionError`` naming it, never wrong data.

A single block read (``get``) slices the memory map: no system call, and the pages it
touches stay mapped. Scans (``iter_chunks``, what compaction and the end-of-input
iteration read) and batch lookups (``multi_lookup``) use ``os.pread`` on the file's
descriptor instead: a compaction reads whole runs, and through the map every page it read
would count in the process's resident memory until the run is closed (about 420 MiB per
shard with 20,000,000 keys, issue 15); ``pread`` copies from the page cache and leaves
nothing mapped.
"""

from __future__ import annotations

import mmap
import os
import sys
from array import array
from collections.abc import Iterator, Sequence
from itertools import accumulate, pairwise, repeat
from pathlib import Path
from zlib import crc32

import numpy as np
import numpy.typing as npt

from raykv.engines.lsm.bloom import BloomFilter, hash_pair, mask_of
from raykv.engines.lsm.fences import fences_of
from raykv.engines.lsm.run_format import (
    BLOOM_K,
    CRC_RESIDUE,
    FOOTER,
    FOOTER_CRC_SPAN,
    FOOTER_SIZE,
    RUN_MAGIC,
    RUN_VERSION,
    decode_block,
    decode_blocks,
    find_in_block,
    scan_block,
)
from raykv.errors import CorruptionError, FormatVersionError


class RunReader:
    """An open run: fence pointers and bloom filter in memory, data blocks on disk.

    Attributes:
        path: the run file.
        name: its file name (what manifests list).
        entry_count: entries in the run (tombstones included).
        data_bytes: sum of key and value lengths (the size used by leveling).
        file_size: bytes on disk.
        fences: first key of every data block, increasing (``fences.py``: packed for
            fixed-width keys, 8 bytes per block).
        block_offsets: start offset of every block plus the end of the last one.
        bloom: the run's bloom filter.
        block_reads: data blocks read so far through this object (each read verifies the
            block's crc). ``LSMTree.get`` reads blocks inline and counts them itself.
        mm: the read-only memory map of the file (point reads).
        fd: the file's open descriptor (``pread`` for scans and batch lookups).
    """

    __slots__ = (
        "block_offsets",
        "block_reads",
        "bloom",
        "data_bytes",
        "entry_count",
        "fd",
        "fences",
        "file_size",
        "mm",
        "name",
        "path",
    )

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.block_reads = 0
        self.fd = fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < FOOTER_SIZE:
                raise CorruptionError(
                    path, "length", detail=f"{size} bytes is shorter than the run footer"
                )
            self.mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except BaseException:
            os.close(fd)
            raise
        self.file_size = size
        try:
            self._load_index(size)
        except BaseException:
            self.close()
            raise

    def _load_index(self, size: int) -> None:
        path = self.path
        footer_at = size - FOOTER_SIZE
        footer = self._pread(footer_at, FOOTER_SIZE)
        (index_off, bloom_off, entries, data_bytes, block_count, nwords, sections_crc,
         version, bloom_k, footer_crc, magic) = FOOTER.unpack(footer)
        if magic != RUN_MAGIC:
            raise CorruptionError(path, "magic", offset=size - 4,
                                  detail=f"expected {RUN_MAGIC!r}, got {magic!r}")
        if crc32(footer[:FOOTER_CRC_SPAN]) != footer_crc:
            raise CorruptionError(path, "footer crc", offset=footer_at)
        if version > RUN_VERSION:
            raise FormatVersionError(path, version, RUN_VERSION)
        if bloom_k != BLOOM_K:
            detail = f"format {version} uses k={BLOOM_K}, the footer says {bloom_k}"
            raise CorruptionError(path, "bloom k", offset=footer_at, detail=detail)
        index_size = 8 * (block_count + 1) + 4 * block_count
        if not (
            0 < block_count <= entries
            and index_off + index_size <= bloom_off
            and bloom_off + 8 * nwords == footer_at
            and nwords & (nwords - 1) == 0
        ):
            raise CorruptionError(path, "footer", offset=footer_at,
                                  detail="section offsets do not fit the file size")
        # read, not mapped (no RSS kept); each section straight into the array that keeps
        # it, so that opening a run costs its index and filter about once (a merge opens
        # one as big as the state)
        offsets = self._pread_array("Q", index_off, block_count + 1)
        lens = self._pread_array("I", index_off + 8 * (block_count + 1), block_count)
        fence_keys = self._pread(index_off + index_size, bloom_off - index_off - index_size)
        words = self._pread_array("Q", bloom_off, nwords)
        if crc32(words, crc32(fence_keys, crc32(lens, crc32(offsets)))) != sections_crc:
            raise CorruptionError(path, "index crc", offset=index_off,
                                  detail="fence index or bloom filter damaged")
        if sys.byteorder == "big":  # pragma: no cover
            offsets.byteswap()
            lens.byteswap()
            words.byteswap()
        fence_bytes = int(np.frombuffer(lens, dtype=np.uint32).sum(dtype=np.int64))
        if offsets[0] != 0 or offsets[-1] != index_off or fence_bytes != len(fence_keys):
            raise CorruptionError(path, "index", offset=index_off,
                                  detail="block offsets or fence lengths are inconsistent")
        self.fences = fences_of(lens, fence_keys)
        self.block_offsets = offsets  # an array: in a random read mix as fast as a list
        self.bloom = BloomFilter(words)
        self.entry_count = entries
        self.data_bytes = data_bytes

    # ------------------------------------------------------------------ reads

    def read_block(self, i: int) -> bytes:
        """Return data block ``i`` after verifying its crc32. Cost: one mmap slice + crc."""
        offs = self.block_offsets
        start = offs[i]
        block = self.mm[start : offs[i + 1]]
        self.block_reads += 1
        if crc32(block) != CRC_RESIDUE:
            raise self.block_error(i)
        return block

    def block_error(self, i: int) -> CorruptionError:
        """The error to raise when block ``i`` fails its crc check."""
        return CorruptionError(self.path, "block crc", offset=self.block_offsets[i],
                               detail=f"data block {i} of {len(self.block_offsets) - 1}")

    def lookup(self, i: int, key: bytes) -> bytes | None:
        """Return ``key``'s value from block ``i`` (``b""`` for a tombstone) or ``None``.

        Cost: one block read (crc verified) and a scan of at most ``density_factor``
        entries in C (``run_format.find_in_block``).
        """
        return find_in_block(self.read_block(i), key)

    def get(self, key: bytes) -> bytes | None:
        """Return ``key``'s value in this run (``b""``: tombstone), or ``None`` if absent.

        Cost: one bloom probe; if it passes, one bisect of the fences and one block read.
        """
        h1, h2 = hash_pair(key, 0)
        if not self.bloom.may_contain_hashed(h1, mask_of(h2)):
            return None
        i = self.fences.position(key)
        return self.lookup(i - 1, key) if i else None

    def multi_lookup(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Look up ``keys`` (in any order); each block that may hold one is read once.

        Returns values (``b""`` for tombstones) or ``None`` for keys not in the run. Cost:
        one bisect per key and C-level ``map``s and numpy passes over the batch: blocks
        that serve several keys each are decoded whole, otherwise each key is found in its
        block with ``bytes.find`` and its entry located in the block's offset table.
        """
        positions = self.fences.positions(keys)  # block index + 1
        wanted = dict.fromkeys(positions)
        wanted.pop(0, None)  # keys before the first fence
        if not wanted:
            return [None] * len(keys)
        if len(keys) >= _DECODE_WHEN_KEYS_PER_BLOCK * len(wanted):
            found, values = self.read_blocks_at(list(map(_minus1, wanted)))
            return list(map(dict(zip(found, values, strict=True)).get, keys))
        return self._lookup_sparse(keys, positions, list(wanted))

    def _lookup_sparse(
        self, keys: Sequence[bytes], positions: list[int], wanted: list[int]
    ) -> list[bytes | None]:
        """``multi_lookup`` when blocks serve few keys: vectorised ``find_in_block``."""
        indices = list(map(_minus1, wanted))
        blocks = self._pread_blocks(indices)
        data = b"".join(blocks)
        starts = np.fromiter(accumulate(map(len, blocks), initial=0), np.int64, len(blocks) + 1)
        row_of = dict(zip(wanted, range(len(wanted)), strict=True))
        rows = np.fromiter(map(row_of.get, positions, repeat(-1)), np.int64, len(positions))
        out: list[bytes | None] = [None] * len(keys)
        todo = np.flatnonzero(rows >= 0)  # keys whose fence range holds them
        rows = rows[todo]
        todo_keys = list(map(keys.__getitem__, todo.tolist()))
        # where each key occurs first in its block (absolute offsets in data), -1 if absent
        found_at = np.fromiter(
            map(data.find, todo_keys, (starts[rows] + 2).tolist(), starts[rows + 1].tolist()),
            np.int64, len(todo_keys),
        )
        raw = np.frombuffer(data, dtype=np.uint8)
        counts = raw[starts[:-1]].astype(np.int64) | raw[starts[:-1] + 1].astype(np.int64) << 8
        n = int(np.bincount(counts).argmax())  # the usual entry count (density_factor)
        usual = np.flatnonzero(counts == n)
        table_row = np.full(len(blocks), -1, dtype=np.int64)
        table_row[usual] = np.arange(len(usual))
        width = 2 * n + 1
        gather = starts[usual][:, None] + (2 + np.arange(4 * width))
        tables = raw[gather].view("<u4").astype(np.int64) + starts[usual][:, None]
        fast = np.flatnonzero((found_at >= 0) & (table_row[rows] >= 0))
        t = tables[table_row[rows[fast]]]  # (k, 2n+1) offset tables of those keys' blocks
        at = found_at[fast]
        match = t[:, :n] == at[:, None]
        entry = match.argmax(axis=1)
        lens = np.fromiter(map(len, map(todo_keys.__getitem__, fast.tolist())), np.int64, len(fast))
        pick = np.arange(len(fast))
        good = match.any(axis=1) & (t[pick, entry + 1] - at == lens)
        for i, value in zip(
            todo[fast[good]].tolist(),
            map(data.__getitem__, map(slice, t[pick, n + entry][good].tolist(),
                                      t[pick, n + entry + 1][good].tolist())),
            strict=True,
        ):
            out[i] = value
        # the rest: the key's bytes occur elsewhere first, or its block has another count
        slow = np.ones(len(todo), dtype=bool)
        slow[fast[good]] = False
        slow &= found_at >= 0
        for j in np.flatnonzero(slow).tolist():
            r = int(rows[j])
            out[int(todo[j])] = scan_block(data[starts[r] : starts[r + 1]], todo_keys[j])
        return out

    def iter_chunks(self, min_entries: int = 4096) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """Yield the run's entries in key order as ``(keys, values)`` chunks.

        Each chunk holds whole blocks, at least ``min_entries`` entries except the last.
        Every block's crc is verified. Memory: one chunk.
        """
        nblocks = len(self.block_offsets) - 1
        per = max(1, min_entries * nblocks // max(1, self.entry_count))
        offsets = np.frombuffer(self.block_offsets, dtype=np.uint64)  # a view: no copy
        for first in range(0, nblocks, per):
            last = min(first + per, nblocks)
            yield self._read_blocks(first, last, offsets[first : last + 1].astype(np.int64))

    def _read_blocks(
        self, first: int, last: int, offsets: npt.NDArray[np.int64]
    ) -> tuple[list[bytes], list[bytes]]:
        """Read, verify and decode blocks ``first..last-1`` with one ``pread``."""
        base = int(offsets[0])
        data = self._pread(base, int(offsets[-1]) - base)
        rel = (offsets - base).tolist()
        view = memoryview(data)
        crcs = list(map(crc32, map(view.__getitem__, map(slice, rel[:-1], rel[1:]))))
        view.release()
        self._verify(crcs, range(first, last))
        return _decode_joined(data, rel)

    def read_blocks_at(self, indices: Sequence[int]) -> tuple[list[bytes], list[bytes]]:
        """Read, verify and decode the blocks ``indices`` (any order, no duplicates).

        Cost: one ``pread`` per block, C-level ``map``s over the blocks and numpy decoding;
        no Python per entry.
        """
        blocks = self._pread_blocks(indices)
        return _decode_joined(b"".join(blocks), list(accumulate(map(len, blocks), initial=0)))

    def _pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; a short read (file truncated under us) raises."""
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise CorruptionError(self.path, "length", offset=offset,
                                  detail=f"read {len(data)} of {length} bytes")
        return data

    def _pread_array(self, typecode: str, offset: int, count: int) -> array[int]:
        """``count`` items of ``typecode`` at ``offset``, read into a new ``array``.

        No copy in between. The items are in the file's byte order: the caller swaps them
        on a big-endian machine.
        """
        out = array(typecode, [0]) * count
        size = out.itemsize * count
        got = os.preadv(self.fd, [out], offset) if count else 0
        if got != size:
            raise CorruptionError(self.path, "length", offset=offset,
                                  detail=f"read {got} of {size} bytes")
        return out

    def _pread_blocks(self, indices: Sequence[int]) -> list[bytes]:
        """Blocks ``indices`` (crc verified), one ``pread`` each."""
        offs = self.block_offsets
        starts = list(map(offs.__getitem__, indices))
        lens = list(map(int.__sub__, map(offs.__getitem__, map(_plus1, indices)), starts))
        blocks = list(map(os.pread, repeat(self.fd), lens, starts))
        self._verify(list(map(crc32, blocks)), indices)
        return blocks

    def _verify(self, crcs: list[int], indices: Sequence[int]) -> None:
        """Count the block reads; raise for the first block whose crc check failed."""
        self.block_reads += len(crcs)
        if crcs.count(CRC_RESIDUE) != len(crcs):
            bad = next(j for j, c in enumerate(crcs) if c != CRC_RESIDUE)
            raise self.block_error(indices[bad])

    def release_probes(self) -> None:
        """Drop the filter and the fences: this run is a merge's input from now on.

        A merge reads its inputs only through :meth:`iter_chunks` (block offsets and
        ``pread``), so their probe structures, about 2.6 bytes per entry, need not stay
        in memory while the merge writes a run as big as they are and opens it. Point
        and batch reads of this run fail until :meth:`reload_probes`.
        """
        del self.bloom, self.fences

    @property
    def probes_released(self) -> bool:
        """Whether :meth:`release_probes` dropped the filter and fences (not reloaded)."""
        return not hasattr(self, "bloom")

    def reload_probes(self) -> None:
        """Read the filter and fences again after :meth:`release_probes` (a merge failed).

        Cost: what opening the run costs (footer, index and filter read, crc checked).
        A run whose probes are in memory is left as it is.
        """
        if self.probes_released:
            self._load_index(self.file_size)

    def may_contain(self, key: bytes) -> bool:
        """Bloom probe only: False means ``key`` is certainly not in this run."""
        return self.bloom.may_contain(key)

    # ------------------------------------------------------------------ housekeeping

    def check(self, sample_every: int = 1) -> None:
        """Assert the run's invariants; reads the whole run.

        Keys strictly increasing, fences equal to each block's first key, offsets
        increasing, entry count and sizes as in the footer, and no bloom false negative
        for every ``sample_every``-th key.
        """
        fences = list(self.fences)
        assert fences == sorted(set(fences)), f"{self.name}: fence keys not increasing"
        offs = self.block_offsets
        assert all(a < b for a, b in pairwise(offs)), "block offsets"
        prev: bytes | None = None
        count = 0
        data = 0
        for i in range(len(fences)):
            ks, vs = decode_block(self.read_block(i))
            assert ks and ks[0] == fences[i], f"{self.name}: fence {i} is not its block's first key"
            assert prev is None or prev < ks[0], f"{self.name}: block {i} overlaps the previous"
            assert all(a < b for a, b in pairwise(ks)), f"{self.name}: unsorted"
            prev = ks[-1]
            count += len(ks)
            data += sum(map(len, ks)) + sum(map(len, vs))
            for k in ks[::sample_every]:
                assert self.bloom.may_contain(k), f"{self.name}: bloom false negative {k!r}"
        assert count == self.entry_count, f"{self.name}: {count} entries, footer differs"
        assert data == self.data_bytes, f"{self.name}: data bytes mismatch"

    def close(self) -> None:
        """Unmap and close the file (idempotent)."""
        self.mm.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __sizeof__(self) -> int:
        """Memory held for this run: fences, offsets and bloom words (computed in O(blocks)).

        After :meth:`release_probes`: the offsets only.
        """
        held = object.__sizeof__(self) + sys.getsizeof(self.block_offsets)
        if not self.probes_released:
            held += self.fences.nbytes + sys.getsizeof(self.bloom)
        return held

    def __repr__(self) -> str:
        blocks = len(self.block_offsets) - 1
        return f"RunReader({self.name!r}, entries={self.entry_count}, blocks={blocks})"


# multi_lookup decodes whole blocks when they serve at least this many keys each on average
_DECODE_WHEN_KEYS_PER_BLOCK = 4
_plus1 = (1).__add__
_minus1 = (-1).__add__


def _decode_joined(data: bytes, rel: list[int]) -> tuple[list[bytes], list[bytes]]:
    """Decode verified blocks laid back to back in ``data``; block ``j`` is ``rel[j]:rel[j+1]``.

    Vectorised over each stretch of consecutive blocks with equal entry counts.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    starts = np.asarray(rel[:-1], dtype=np.int64)
    counts = raw[starts].astype(np.int64) | raw[starts + 1].astype(np.int64) << 8
    cuts = [0, *(np.flatnonzero(np.diff(counts)) + 1).tolist(), len(rel) - 1]
    keys: list[bytes] = []
    values: list[bytes] = []
    for a, b in pairwise(cuts):
        ks, vs = decode_blocks(data, rel[a:b], int(counts[a]))
        keys += ks
        values += vs
    return keys, values
