"""Write one immutable LSM run file from sorted chunks of entries.

Call order: ``RunWriter(path, ...) (add)* (finish | abort)``. ``add`` takes sorted chunks
(keys strictly increasing, also across chunks) and streams full data blocks to a
temporary file, so a merge of any size holds only one chunk, the fence pointers and the
bloom filter being built (``BloomBuilder``: 1.25-2.5 bytes per key at 10 bits per key)
in memory. ``finish`` appends the index, the bloom filter and the
footer and renames the file to its final name (FORMAT.md, "LSM run file"). The file is not
fsynced here: the engine's manifest commit fsyncs it before any manifest refers to it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from array import array
from collections.abc import Sequence
from functools import reduce
from itertools import accumulate
from pathlib import Path
from zlib import crc32

from raykv.engines.filename import TMP_SUFFIX
from raykv.engines.lsm.bloom import BloomBuilder, hash_many
from raykv.engines.lsm.run_format import (
    BLOCK_MAX_BYTES,
    BLOOM_K,
    FOOTER,
    FOOTER_CRC_SPAN,
    RUN_MAGIC,
    RUN_VERSION,
    encode_block,
    encode_blocks,
)

_WRITE_BUFFER = 1 << 20


def _crc_of(crc: int, part: bytes | array[int]) -> int:
    """``crc32`` of ``part`` continuing ``crc`` (a ``reduce`` step over the index pieces)."""
    return crc32(part, crc)


class RunWriter:
    """Streams sorted entries into a new run file (see module docstring for call order).

    Args:
        path: final file name; data goes to ``path + ".tmp"`` until ``finish``.
        density_factor: entries per data block (the last block may hold fewer; a block
            is also cut early when it would exceed ``BLOCK_MAX_BYTES``).
        bits_per_key: bloom filter budget (0: a filter that always answers "maybe").
        expected_keys: an upper bound on the number of entries (sizes the bloom filter
            being built; exceeding it gives a filter with fewer bits per key).

    Attributes:
        entry_count: entries written so far (tombstones included).
        data_bytes: sum of key and value lengths of the blocks written so far.
        file_size: total bytes of the finished file (0 before ``finish``).
    """

    def __init__(
        self, path: Path, *, density_factor: int, bits_per_key: int, expected_keys: int
    ) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + TMP_SUFFIX)
        self._density = density_factor
        self._f = open(self._tmp, "wb")  # noqa: SIM115 - closed in finish/abort
        self._parts: list[bytes] = []
        self._buffered = 0
        self._offset = 0
        self._block_offsets = array("Q")
        self._fence_keys: list[bytes] = []  # the fences back to back, a chunk per item
        self._fence_lens = array("I")
        self._pending_keys: list[bytes] = []
        self._pending_values: list[bytes] = []
        self._bloom = BloomBuilder(max(expected_keys, 1), bits_per_key)
        self._last_key: bytes | None = None
        self.entry_count = 0
        self.data_bytes = 0
        self.file_size = 0

    def add(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Append a sorted chunk; its first key must be greater than the last one added.

        Cost: O(len(keys)) in C-level calls plus a few microseconds of Python per block.
        """
        n = len(keys)
        if not n:
            return
        if self._last_key is not None and keys[0] <= self._last_key:
            msg = f"run entries must be added in increasing key order ({self.path})"
            raise ValueError(msg)
        self._last_key = keys[-1]
        self._bloom.add(hash_many(keys))
        self.entry_count += n
        if self._pending_keys:
            keys = self._pending_keys + list(keys)
            values = self._pending_values + list(values)
            n = len(keys)
        full = n - n % self._density
        self._emit_blocks(keys, values, full)
        self._pending_keys = list(keys[full:])
        self._pending_values = list(values[full:])

    def _emit_blocks(self, keys: Sequence[bytes], values: Sequence[bytes], end: int) -> None:
        """Write the first ``end`` entries as blocks of ``density_factor`` entries.

        ``end`` is a multiple of the density factor, or the whole (final) tail.
        """
        if not end:
            return
        d = min(self._density, end)
        if end < len(keys):
            keys, values = keys[:end], values[:end]
        encoded = encode_blocks(keys, values, d)
        if encoded is not None:
            data, sizes, data_bytes = encoded
            self.data_bytes += data_bytes
            fences = keys[0:end:d]
            self._fence_keys.append(b"".join(fences))
            self._fence_lens.extend(map(len, fences))
            self._block_offsets.extend(accumulate(sizes[:-1], initial=self._offset))
            size = sum(sizes)
            self._offset += size
            self._parts.append(data)
            self._buffered += size
            if self._buffered >= _WRITE_BUFFER:
                self._f.writelines(self._parts)  # no joined copy
                self._parts.clear()
                self._buffered = 0
            return
        for i in range(0, end, d):
            ks = keys[i : i + d]
            vs = values[i : i + d]
            if len(ks) > 1 and sum(map(len, ks)) + sum(map(len, vs)) > BLOCK_MAX_BYTES:
                self._emit_split(ks, vs)
            else:
                self._emit(ks, vs)

    def _emit_split(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Cut a block with big entries into blocks of at most ``BLOCK_MAX_BYTES`` each."""
        start = 0
        size = 0
        for j, (k, v) in enumerate(zip(keys, values, strict=True)):
            s = len(k) + len(v)
            if j > start and size + s > BLOCK_MAX_BYTES:
                self._emit(keys[start:j], values[start:j])
                start, size = j, 0
            size += s
        self._emit(keys[start:], values[start:])

    def _emit(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        payload, crc = encode_block(keys, values)
        self.data_bytes += sum(map(len, keys)) + sum(map(len, values))
        self._fence_keys.append(keys[0])
        self._fence_lens.append(len(keys[0]))
        self._block_offsets.append(self._offset)
        size = len(payload) + len(crc)
        self._offset += size
        self._parts += (payload, crc)
        self._buffered += size
        if self._buffered >= _WRITE_BUFFER:
            self._f.writelines(self._parts)  # no joined copy
            self._parts.clear()
            self._buffered = 0

    def finish(self) -> None:
        """Write the last block, index, bloom filter and footer; rename to the final name.

        Raises:
            ValueError: nothing was added (an empty run is never written; call ``abort``).
        """
        if not self.entry_count:
            msg = f"refusing to write an empty run {self.path}; call abort()"
            raise ValueError(msg)
        if self._pending_keys:
            self._emit_blocks(self._pending_keys, self._pending_values, len(self._pending_keys))
            self._pending_keys, self._pending_values = [], []
        index_offset = self._offset
        f = self._f
        if self._parts:
            f.writelines(self._parts)
            self._parts.clear()
        # the index and the filter are written piece by piece, never joined: a merge's
        # new run must not cost its index and filter twice more while it is written
        offsets, fence_lens = self._block_offsets, self._fence_lens
        end = array("Q", [index_offset])  # not appended: growing the array may copy it
        if sys.byteorder == "big":  # pragma: no cover
            offsets.byteswap()
            end.byteswap()
            fence_lens.byteswap()
        index: list[bytes | array[int]] = [offsets, end, fence_lens, *self._fence_keys]
        fence_bytes = sum(map(len, self._fence_keys))
        index_size = 8 * (len(offsets) + 1) + 4 * len(fence_lens) + fence_bytes
        words = self._bloom.finish(self.entry_count).astype("<u8", copy=False)
        bloom = words.data  # a memoryview of the words: written and checksummed, not copied
        sections_crc = crc32(bloom, reduce(_crc_of, index, 0))
        fields = [
            index_offset, index_offset + index_size, self.entry_count, self.data_bytes,
            len(fence_lens), len(words), sections_crc, RUN_VERSION, BLOOM_K, 0, RUN_MAGIC,
        ]
        footer = FOOTER.pack(*fields)
        fields[9] = crc32(footer[:FOOTER_CRC_SPAN])
        footer = FOOTER.pack(*fields)
        for part in index:
            f.write(part)
        f.write(bloom)
        f.write(footer)
        f.close()
        self.file_size = index_offset + index_size + words.nbytes + len(footer)
        # spent: what the writer held per block goes before the new run is opened
        self._fence_keys, self._fence_lens, self._block_offsets = [], array("I"), array("Q")
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Discard the partly written file."""
        self._f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)
