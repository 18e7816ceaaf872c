"""Small, shared file helpers: durable writes, fsync, checksums, varints.

Every engine writes its files through these so that durability rules live in one place:
a file is written under a temporary name, fsynced, renamed to its final name, and the
directory is fsynced; a reader that sees a final name therefore sees a complete file.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

from raykv.engines.filename import TMP_SUFFIX

crc32 = zlib.crc32

ReadableBuffer = bytes | bytearray | memoryview | mmap.mmap
"""What the decoders here and the engines slice records from."""


def fsync_dir(path: Path) -> None:
    """Fsync a directory so that renames and unlinks inside it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(paths: Iterable[Path]) -> None:
    """Fsync every file in ``paths`` (cost: one open + fsync per file)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_file(path: Path, data: bytes | bytearray | memoryview, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically: temporary name, (fsync,) rename.

    With ``sync=False`` the data is left in the OS cache; the caller must fsync the file
    (``fsync_files``) before any manifest that references it is written. The directory
    itself is fsynced by the manifest commit, not here.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def encode_varint(n: int) -> bytes:
    """Encode a non-negative int as a LEB128 varint."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(buf: ReadableBuffer, pos: int) -> tuple[int, int]:
    """Decode a LEB128 varint at ``pos``; return ``(value, next_pos)``.

    Raises:
        IndexError: the buffer ends inside the varint (the caller reports corruption).
    """
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
