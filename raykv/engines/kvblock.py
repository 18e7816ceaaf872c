"""A checksummed, columnar block of key/value pairs: encode and decode at C speed.

Layout (little-endian; FORMAT.md "kv block"):

    +--------+---------+----------+-----------+----------------+--------+-------+---------+
    | magic  | version | count n  | key lens  | value lens     | keys   | values| crc32   |
    | 4 B    | u32     | u64      | n x u32   | n x u32        | concat | concat| u32     |
    +--------+---------+----------+-----------+----------------+--------+-------+---------+

The crc32 covers every byte before it. Encoding is a handful of ``array``/``bytes.join``
calls, decoding a few slices, so whole-state files (MemOnly) and sealed segments stay
cheap in Python. ``magic`` tells the file kind; each user passes its own.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from itertools import accumulate, pairwise
from pathlib import Path

from raykv.engines.fileio import crc32
from raykv.errors import CorruptionError, FormatVersionError

KVBLOCK_VERSION = 1
_HEADER = struct.Struct("<4sIQ")
_CRC = struct.Struct("<I")


def encode_kv_block(magic: bytes, keys: Sequence[bytes], values: Sequence[bytes]) -> bytes:
    """Encode ``keys``/``values`` (same length) into one block (see module docstring)."""
    body = b"".join(
        (
            _HEADER.pack(magic, KVBLOCK_VERSION, len(keys)),
            array("I", map(len, keys)).tobytes(),
            array("I", map(len, values)).tobytes(),
            b"".join(keys),
            b"".join(values),
        )
    )
    return body + _CRC.pack(crc32(body))


def decode_kv_block(
    magic: bytes, data: bytes, path: Path | str
) -> tuple[list[bytes], list[bytes]]:
    """Decode a block written by ``encode_kv_block``; verify everything first.

    Raises:
        CorruptionError: bad magic, truncated data, checksum mismatch or lengths that do
            not add up; the message names ``path``.
        FormatVersionError: a newer block version.
    """
    if len(data) < _HEADER.size + _CRC.size:
        raise CorruptionError(path, "length", detail=f"{len(data)} bytes is too short")
    found, version, n = _HEADER.unpack_from(data, 0)
    if found != magic:
        raise CorruptionError(path, "magic", offset=0, detail=f"expected {magic!r}, got {found!r}")
    (stored,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if crc32(memoryview(data)[: len(data) - _CRC.size]) != stored:
        raise CorruptionError(path, "crc", detail="kv block checksum mismatch")
    if version > KVBLOCK_VERSION:
        raise FormatVersionError(path, version, KVBLOCK_VERSION)
    pos = _HEADER.size
    klens = array("I")
    vlens = array("I")
    klens.frombytes(data[pos : pos + 4 * n])
    pos += 4 * n
    vlens.frombytes(data[pos : pos + 4 * n])
    pos += 4 * n
    koffs = list(accumulate(klens, initial=pos))
    vstart = koffs[-1]
    voffs = list(accumulate(vlens, initial=vstart))
    if voffs[-1] != len(data) - _CRC.size:
        raise CorruptionError(path, "length", detail="lengths do not match the block size")
    keys = [data[a:b] for a, b in pairwise(koffs)]
    values = [data[a:b] for a, b in pairwise(voffs)]
    return keys, values
