"""The LSM run file format: constants and block codec shared by the writer and the reader.

See ``raykv/engines/FORMAT.md`` ("LSM run file") for the byte layout. In short::

    [data block 0] ... [data block B-1] [index section] [bloom section] [footer, 64 B]

DO NOT CHANGE these constants or layouts in place: they are embedded in files on disk.
Bump ``RUN_VERSION`` and keep a reader for the old version instead.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from itertools import accumulate, chain
from zlib import crc32 as _crc32

import numpy as np

RUN_KIND = "run"
"""File kind (name suffix) of an LSM run file."""

RUN_MAGIC = b"RKLS"
"""Last four bytes of every run file."""

RUN_VERSION = 1
"""Format version written into the footer; readers reject newer versions."""

BLOOM_K = 4
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


class _OffsetUnpackers(dict[int, Callable[[bytes, int], tuple[int, ...]]]):
    """``n -> BLOCK_OFFSETS[n].unpack_from``: one dict lookup on the read path."""

    def __missing__(self, n: int) -> Callable[[bytes, int], tuple[int, ...]]:
        f = BLOCK_OFFSETS[n].unpack_from
        self[n] = f
        return f


UNPACK_OFFSETS = _OffsetUnpackers()


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


def encode_blocks(
    keys: Sequence[bytes], values: Sequence[bytes], n: int
) -> tuple[bytes, list[int], int] | None:
    """Encode ``len(keys) // n`` consecutive blocks of exactly ``n`` entries in one go.

    Returns the encoded blocks back to back (each with its crc), each block's size and
    the sum of the key and value lengths, or ``None`` if some block would exceed
    ``BLOCK_MAX_BYTES`` (the caller then encodes block by block). Same bytes as
    ``encode_block`` per block, but every step is a numpy or C-level ``map`` over the whole
    batch: no Python code runs per block or per entry.
    """
    total = len(keys)
    count = total // n
    header = block_header_size(n)
    lens = np.empty((count, 2 * n + 1), dtype=np.int64)
    lens[:, 0] = header
    lens[:, 1 : n + 1] = np.fromiter(map(len, keys), np.int64, total).reshape(count, n)
    lens[:, n + 1 :] = np.fromiter(map(len, values), np.int64, total).reshape(count, n)
    offsets = np.cumsum(lens, axis=1)  # offsets[:, -1] is each payload's size
    sizes = offsets[:, -1]
    if int(sizes.max()) - header > BLOCK_MAX_BYTES and n > 1:
        return None
    headers = np.empty((count, header), dtype=np.uint8)
    headers[:, 0] = n & 0xFF
    headers[:, 1] = n >> 8
    headers[:, 2:] = offsets.astype("<u4").view(np.uint8)
    hview = memoryview(headers.tobytes())
    cuts = range(0, total + 1, n)
    payloads = b"".join(
        chain.from_iterable(
            zip(
                map(hview.__getitem__, map(slice, range(0, count * header, header),
                                           range(header, (count + 1) * header, header))),
                map(b"".join, map(keys.__getitem__, map(slice, cuts, cuts[1:]))),
                map(b"".join, map(values.__getitem__, map(slice, cuts, cuts[1:]))),
                strict=True,
            )
        )
    )
    ends = np.cumsum(sizes).tolist()
    starts = [0, *ends[:-1]]
    pview = memoryview(payloads)
    blocks = list(map(pview.__getitem__, map(slice, starts, ends)))
    crcs = array("I", map(_crc32, blocks))
    if sys.byteorder == "big":  # pragma: no cover
        crcs.byteswap()
    cview = memoryview(crcs.tobytes())
    data = b"".join(
        chain.from_iterable(
            zip(blocks, map(cview.__getitem__, map(slice, range(0, 4 * count, 4),
                                                   range(4, 4 * count + 4, 4))), strict=True)
        )
    )
    return data, (sizes + CRC.size).tolist(), int(lens[:, 1:].sum())


def decode_blocks(data: bytes, starts: Sequence[int], n: int) -> tuple[list[bytes], list[bytes]]:
    """Decode checksum-verified blocks of exactly ``n`` entries each, back to back in ``data``.

    ``starts`` are the blocks' offsets in ``data``. Returns all keys and values in order.
    Cost: numpy gathers plus C-level ``map``s; no Python code per block or entry.
    """
    width = 2 * n + 1
    raw = np.frombuffer(data, dtype=np.uint8)
    begin = np.asarray(starts, dtype=np.int64)
    gather = begin[:, None] + (BLOCK_COUNT.size + np.arange(4 * width))
    offsets = raw[gather].view("<u4").astype(np.int64) + begin[:, None]
    key_starts = offsets[:, :n].ravel().tolist()
    key_ends = offsets[:, 1 : n + 1].ravel().tolist()
    value_starts = offsets[:, n : 2 * n].ravel().tolist()
    value_ends = offsets[:, n + 1 :].ravel().tolist()
    get = data.__getitem__
    return (
        list(map(get, map(slice, key_starts, key_ends))),
        list(map(get, map(slice, value_starts, value_ends))),
    )


def decode_block(block: bytes) -> tuple[list[bytes], list[bytes]]:
    """Split a checksum-verified block into its keys and values (sorted by key)."""
    n = block[0] | block[1] << 8
    off = UNPACK_OFFSETS[n](block, 2)
    get = block.__getitem__
    keys = list(map(get, map(slice, off[:n], off[1 : n + 1])))
    values = list(map(get, map(slice, off[n : 2 * n], off[n + 1 :])))
    return keys, values


def find_in_block(block: bytes, key: bytes) -> bytes | None:
    """Return the value stored for ``key`` in a checksum-verified block, or ``None``.

    Cost: one ``bytes.find`` over the block (in C), one offset-table unpack and one
    ``tuple.index`` to confirm that the match starts an entry. ``LSMTree.get`` inlines
    this common path; when the first match is not an entry (the key's bytes occur inside
    the offset table, another key or a value), ``scan_block`` searches entry by entry.
    """
    j = block.find(key, 2)
    if j < 0:
        return None
    n = block[0] | block[1] << 8
    off = UNPACK_OFFSETS[n](block, 2)
    try:
        e = off.index(j, 0, n)
    except ValueError:
        return scan_block(block, key)
    if off[e + 1] - j != len(key):
        return scan_block(block, key)
    return block[off[n + e] : off[n + e + 1]]


def scan_block(block: bytes, key: bytes) -> bytes | None:
    """Exact search of ``key`` among a verified block's keys (the slow, always-right path)."""
    n = block[0] | block[1] << 8
    off = UNPACK_OFFSETS[n](block, 2)
    end = off[n]
    klen = len(key)
    j = block.find(key, off[0], end)
    while j >= 0:
        try:
            e = off.index(j, 0, n)
        except ValueError:
            e = -1
        if e >= 0 and off[e + 1] - j == klen:
            return block[off[n + e] : off[n + e + 1]]
        j = block.find(key, j + 1, end)
    return None
