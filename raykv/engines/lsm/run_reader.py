"""Read one immutable LSM run file through ``mmap``.

Opening loads only the footer, the fence-pointer index and the bloom filter (all checked
against their crc32); data blocks are read on demand and each block's crc32 is verified
on every read, so a damaged file raises ``CorruptionError`` naming it, never wrong data.
"""

from __future__ import annotations

import mmap
import os
import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate, pairwise
from pathlib import Path
from zlib import crc32

from raykv.engines.lsm.bloom import BloomFilter, hash_pair, mask_of
from raykv.engines.lsm.run_format import (
    BLOOM_K,
    CRC_RESIDUE,
    FOOTER,
    FOOTER_CRC_SPAN,
    FOOTER_SIZE,
    RUN_MAGIC,
    RUN_VERSION,
    decode_block,
    find_in_block,
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
        fences: first key of every data block, increasing (a plain list for ``bisect``).
        block_offsets: start offset of every block plus the end of the last one.
        bloom: the run's bloom filter.
        block_reads: data blocks read so far (each read verifies the block's crc).
    """

    __slots__ = (
        "_mm",
        "block_offsets",
        "block_reads",
        "bloom",
        "data_bytes",
        "entry_count",
        "fences",
        "file_size",
        "name",
        "path",
    )

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.block_reads = 0
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < FOOTER_SIZE:
                raise CorruptionError(
                    path, "length", detail=f"{size} bytes is shorter than the run footer"
                )
            self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self.file_size = size
        try:
            self._load_index(size)
        except BaseException:
            self._mm.close()
            raise

    def _load_index(self, size: int) -> None:
        mm = self._mm
        path = self.path
        footer_at = size - FOOTER_SIZE
        footer = mm[footer_at:size]
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
        ):
            raise CorruptionError(path, "footer", offset=footer_at,
                                  detail="section offsets do not fit the file size")
        sections = mm[index_off:footer_at]
        if crc32(sections) != sections_crc:
            raise CorruptionError(path, "index crc", offset=index_off,
                                  detail="fence index or bloom filter damaged")
        offsets = array("Q")
        offsets.frombytes(sections[: 8 * (block_count + 1)])
        lens = array("I")
        lens.frombytes(sections[8 * (block_count + 1) : index_size])
        if sys.byteorder == "big":  # pragma: no cover
            offsets.byteswap()
            lens.byteswap()
        key_ends = list(accumulate(lens, initial=index_size))
        if offsets[0] != 0 or offsets[-1] != index_off or key_ends[-1] != bloom_off - index_off:
            raise CorruptionError(path, "index", offset=index_off,
                                  detail="block offsets or fence lengths are inconsistent")
        get = sections.__getitem__
        self.fences = list(map(get, map(slice, key_ends[:-1], key_ends[1:])))
        self.block_offsets = offsets
        self.bloom = BloomFilter.from_bytes(sections[bloom_off - index_off :])
        self.entry_count = entries
        self.data_bytes = data_bytes

    # ------------------------------------------------------------------ reads

    def read_block(self, i: int) -> bytes:
        """Return data block ``i`` after verifying its crc32. Cost: one mmap slice + crc."""
        offs = self.block_offsets
        start = offs[i]
        block = self._mm[start : offs[i + 1]]
        self.block_reads += 1
        if crc32(block) != CRC_RESIDUE:
            raise CorruptionError(self.path, "block crc", offset=start,
                                  detail=f"data block {i} of {len(self.fences)}")
        return block

    def lookup(self, i: int, key: bytes) -> bytes | None:
        """Return ``key``'s value from block ``i`` (``b""`` for a tombstone) or ``None``.

        Cost: one block read (crc verified) and a scan of at most ``density_factor``
        entries in C (``run_format.find_in_block``).
        """
        offs = self.block_offsets
        start = offs[i]
        block = self._mm[start : offs[i + 1]]
        self.block_reads += 1
        if crc32(block) != CRC_RESIDUE:
            raise CorruptionError(self.path, "block crc", offset=start,
                                  detail=f"data block {i} of {len(self.fences)}")
        return find_in_block(block, key)

    def get(self, key: bytes) -> bytes | None:
        """Return ``key``'s value in this run (``b""``: tombstone), or ``None`` if absent.

        Cost: one bloom probe; if it passes, one bisect of the fences and one block read.
        """
        h1, h2 = hash_pair(key, 0)
        if not self.bloom.may_contain_hashed(h1, mask_of(h2)):
            return None
        i = bisect_right(self.fences, key)
        return self.lookup(i - 1, key) if i else None

    def multi_lookup(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Look up sorted ``keys`` (bloom already passed); each needed block is read once.

        Returns values (``b""`` for tombstones) or ``None`` for keys not in the run.
        """
        out: list[bytes | None] = []
        fences = self.fences
        blocks = [bisect_right(fences, k) - 1 for k in keys]
        cached = -1
        table: dict[bytes, bytes] = {}
        for k, b in zip(keys, blocks, strict=True):
            if b < 0:
                out.append(None)
                continue
            if b != cached:
                ks, vs = decode_block(self.read_block(b))
                table = dict(zip(ks, vs, strict=True))
                cached = b
            out.append(table.get(k))
        return out

    def iter_chunks(self, min_entries: int = 4096) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """Yield the run's entries in key order as ``(keys, values)`` chunks.

        Each chunk holds whole blocks, at least ``min_entries`` entries except the last.
        Every block's crc is verified. Memory: one chunk.
        """
        keys: list[bytes] = []
        values: list[bytes] = []
        for i in range(len(self.fences)):
            ks, vs = decode_block(self.read_block(i))
            keys += ks
            values += vs
            if len(keys) >= min_entries:
                yield keys, values
                keys, values = [], []
        if keys:
            yield keys, values

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
        fences = self.fences
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
        """Unmap the file (idempotent)."""
        self._mm.close()

    def __sizeof__(self) -> int:
        """Memory held for this run: fences, offsets and bloom words (computed in O(blocks))."""
        fences = self.fences
        return (
            object.__sizeof__(self)
            + sys.getsizeof(fences)
            + sum(map(sys.getsizeof, fences))
            + sys.getsizeof(self.block_offsets)
            + sys.getsizeof(self.bloom)
        )

    def __repr__(self) -> str:
        return f"RunReader({self.name!r}, entries={self.entry_count}, blocks={len(self.fences)})"
