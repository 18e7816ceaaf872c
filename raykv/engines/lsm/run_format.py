"""The LSM run file format: constants and block codec shared by the writer and the reader.

See ``raykv/engines/FORMAT.md`` ("LSM run file") for the byte layout. In short::

    [data block 0] ... [data block B-1] [index section] [bloom section] [footer, 64 B]

DO NOT CHANGE these constants or layouts in place: they are embedded in files on disk.
Bump ``RUN_VERSION`` and keep a reader for the old version instead.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import accumulate, chain
from zlib import crc32 as _crc32

RUN_KIND = "run"
"""File kind (name suffix) of an LSM run file."""

RUN_MAGIC = b"RKLS"
"""Last four bytes of every run file."""

RUN_VERSION = 1
"""Format version written into the footer; readers reject newer versions."""

BLOOM_K = 5
"""Bits set per key in the blocked bloom filter (all in one 64-bit word). Part of format v1."""

BLOCK_MAX_BYTES = 64 * 1024
"""A block is cut early once its entries would exceed this many payload bytes (big values)."""

MAX_DENSITY_FACTOR = 4096
"""Largest ``density_factor`` (entries per block); the entry count is stored as u16."""

CRC_RESIDUE = 0x2144DF1C
"""zlib.crc32 of any ``data + crc32(data).to_bytes(4, "little")``: checking a block is one call."""

# footer: index_offset, bloom_offset, entry_count, data_bytes, block_count, bloom_words,
#         sections_crc, version, bloom_k, footer_crc, magic
FOOTER = struct.Struct("<QQQQQQIHHI4s")
FOOTER_SIZE = FOOTER.size  # 64
FOOTER_CRC_SPAN = FOOTER_SIZE - 8  # footer_crc covers the footer bytes before it

BLOCK_COUNT = struct.Struct("<H")
CRC = struct.Struct("<I")
U32 = "I"
U64 = "Q"


class _OffsetStructs(dict[int, struct.Struct]):
    """``n -> Struct("<{2n+1}I")``: offset table of an ``n``-entry block, built on demand."""

    def __missing__(self, n: int) -> struct.Struct:
        s = struct.Struct(f"<{2 * n + 1}I")
        self[n] = s
        return s


BLOCK_OFFSETS = _OffsetStructs()


def block_header_size(n: int) -> int:
    """Bytes before the first key in a block of ``n`` entries (count + offset table)."""
    return BLOCK_COUNT.size + 4 * (2 * n + 1)


def encode_block(keys: Sequence[bytes], values: Sequence[bytes]) -> list[bytes]:
    """Encode one data block; return its parts (payload, crc) to be written in order.

    Layout: ``u16 n | (2n+1) x u32 offsets | keys | values | u32 crc32``. Offsets are
    relative to the block start: key ``i`` spans ``off[i]:off[i+1]``, value ``i`` spans
    ``off[n+i]:off[n+i+1]`` (so ``off[n]`` is where the values begin). Cost: a few C calls.
    """
    n = len(keys)
    offsets = accumulate(chain(map(len, keys), map(len, values)), initial=block_header_size(n))
    payload = b"".join(
        chain((BLOCK_COUNT.pack(n), BLOCK_OFFSETS[n].pack(*offsets)), keys, values)
    )
    return [payload, CRC.pack(_crc32(payload))]


def decode_block(block: bytes) -> tuple[list[bytes], list[bytes]]:
    """Split a checksum-verified block into its keys and values (sorted by key)."""
    n = block[0] | block[1] << 8
    off = BLOCK_OFFSETS[n].unpack_from(block, 2)
    get = block.__getitem__
    keys = list(map(get, map(slice, off[:n], off[1 : n + 1])))
    values = list(map(get, map(slice, off[n : 2 * n], off[n + 1 :])))
    return keys, values


def find_in_block(block: bytes, key: bytes) -> bytes | None:
    """Return the value stored for ``key`` in a checksum-verified block, or ``None``.

    Cost: one ``bytes.find`` over the block's keys (at most ``n`` entries, in C), one
    ``tuple.index`` to confirm the match starts an entry; a mismatch (the key occurs
    inside or across other keys) resumes the search, which is rare.
    """
    n = block[0] | block[1] << 8
    off = BLOCK_OFFSETS[n].unpack_from(block, 2)
    end = off[n]
    klen = len(key)
    j = block.find(key, off[0], end)
    while j >= 0:
        try:
            i = off.index(j, 0, n)
        except ValueError:
            i = -1
        if i >= 0 and off[i + 1] - j == klen:
            return block[off[n + i] : off[n + i + 1]]
        j = block.find(key, j + 1, end)
    return None

