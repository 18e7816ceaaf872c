"""AppendLog run files (records, index section, footer) and the locations of records.

Layout (little-endian; FORMAT.md "AppendLog")::

    +---------------------------+---------------------------+--------------------+
    | records (data area)       | index section ("hint")    | footer (44 bytes)  |
    +---------------------------+---------------------------+--------------------+

A record is ``klen varint | vlen varint | key | value | crc32`` (``vlen == 0``: a tombstone),
so ``crc32(record) == CRC_RESIDUE``. The index section lists every record's key and value
length (and, for runs of larger values, the keys), which is all a restart reads. Everything
here is free of engine state: ``engine.py`` calls it with a path and a memory map.

A location (``loc``) packs where a record lives into one int, the in-memory index entry:
``slot | offset << SLOT_BITS | record length << N_SHIFT``; ``slot`` names a buffer of the
engine (slot 0 holds ``NULL_REC``, the empty record that missing keys point at). It fits
a uint64 when the record is shorter than ``N_FITS_U64`` (256) bytes, so numpy can build
the locations of a batch of small records (in memory only: nothing on disk holds one).
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import BufferedWriter
from itertools import accumulate, repeat
from operator import add
from pathlib import Path

import numpy as np

from raykv.engines.fileio import ReadableBuffer, crc32, decode_varint, encode_varint
from raykv.engines.keywords import split_fixed
from raykv.errors import CorruptionError, FormatVersionError, RaykvError

# ---------------------------------------------------------------------- on-disk format
# DO NOT CHANGE these values: they are embedded in run files (FORMAT.md, "AppendLog").
RUN_KIND = "run"
RUN_MAGIC = b"RKAL"
RUN_VERSION = 1
INDEX_HAS_KEYS = 0x01  # index section flag: keys are stored in the index section
# footer: data_len, index_len, count, data_crc, index_crc, version, reserved, footer_crc, magic
FOOTER = struct.Struct("<QQQIIHHI4s")
FOOTER_CRC_SPAN = 36  # footer_crc covers the footer's first 36 bytes
_U32 = struct.Struct("<I")
PACK_CRC = _U32.pack
PACK_HDR2 = struct.Struct("BB").pack  # the 2-byte header of a key and a value < 128 bytes
# crc32 of (bytes + their crc32 as u32 little-endian) is this constant for any bytes, so a
# record (which ends in the crc of everything before it) checks with one crc32 call.
CRC_RESIDUE = 0x2144DF1C
_COLUMN_CODES = {1: "B", 2: "H", 4: "I"}
assert array("I").itemsize == 4 and array("H").itemsize == 2
KEYS_IN_INDEX_MIN_VALUE = 32  # average value size above which keys are copied to the index
SMALL_N = 134  # a record shorter than this has key and value < 128 bytes: a 2-byte header
_VERIFY_CHUNK = 16 << 20

# ---------------------------------------------------------------------- in-memory locations
SLOT_BITS = 16
MAX_SLOTS = 1 << SLOT_BITS
SLOT_MASK = MAX_SLOTS - 1
_OFF_BITS = 40
OFF_MASK = (1 << _OFF_BITS) - 1
N_SHIFT = SLOT_BITS + _OFF_BITS  # the record length is the location's top part
N_FITS_U64 = 1 << (64 - N_SHIFT)  # 256: a location fits a uint64 iff its record is shorter
MAX_RUN_BYTES = 1 << _OFF_BITS  # a record offset must fit its 40 bits
NULL_REC = b"\x00\x00" + PACK_CRC(crc32(b"\x00\x00"))
NULL_LOC = len(NULL_REC) << N_SHIFT  # slot 0, offset 0


def pack_locs(slot: int, offs: Sequence[int], ns: Sequence[int]) -> Sequence[int]:
    """Locations of the records at ``offs`` with lengths ``ns`` in ``slot``.

    Cost: one comprehension; a ``range`` (no per-record work) when ``offs`` is a range of
    equal-length records.
    """
    if isinstance(offs, range) and offs:
        first = slot | offs.start << SLOT_BITS | ns[0] << N_SHIFT
        step = offs.step << SLOT_BITS
        return range(first, first + step * len(offs), step)
    return [slot | off << SLOT_BITS | n << N_SHIFT for off, n in zip(offs, ns, strict=True)]


@dataclass(slots=True)
class Run:
    """A closed, immutable run file and where it sits in memory (``slot``)."""

    name: str
    slot: int
    data_len: int
    index_len: int
    count: int
    size: int
    data_crc: int
    verified: bool = False


class RunWriter:
    """Writes one run file: records (any number of ``write`` calls), then index + footer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BufferedWriter | None = None
        self.data_len = 0
        self.crc = 0

    def write(self, data: bytes) -> None:
        """Append records (opens the file on the first call)."""
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
        self.file.write(head + PACK_CRC(crc32(head)) + RUN_MAGIC)
        self.file.close()
        self.file = None
        return self.data_len + len(index) + FOOTER.size

    def abort(self) -> None:
        """Close and remove a file that will not become a run."""
        if self.file is not None:
            self.file.close()
            self.file = None
            self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------- records


def varint_size(n: int) -> int:
    """Bytes of the LEB128 varint of ``n``."""
    return 1 if n < 128 else (n.bit_length() + 6) // 7


def parse_header(buf: ReadableBuffer, off: int) -> tuple[int, int, int]:
    """Return ``(key length, value length, header size)`` of the record at ``off``."""
    klen, pos = decode_varint(buf, off)
    vlen, pos = decode_varint(buf, pos)
    return klen, vlen, pos - off


def value_start(rec: bytes) -> int:
    """Offset of the value in the record ``rec``."""
    klen, _, hsize = parse_header(rec, 0)
    return hsize + klen


def record_columns(buf: ReadableBuffer, ns: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Key lengths, value lengths and key offsets of the records of lengths ``ns`` in ``buf``.

    Cost: C-level passes when every record is shorter than ``SMALL_N`` (a 1-byte varint is
    the length itself), else one header parse per record.
    """
    offs = list(accumulate(ns[:-1], initial=0))
    if max(ns) < SMALL_N:
        klens = list(map(buf.__getitem__, offs))
        vlens = list(map(add, map(int.__sub__, ns, klens), repeat(-6)))
        return klens, vlens, list(map(add, offs, repeat(2)))
    heads = [parse_header(buf, off) for off in offs]
    kstarts = [off + h[2] for off, h in zip(offs, heads, strict=True)]
    return [h[0] for h in heads], [h[1] for h in heads], kstarts


# ---------------------------------------------------------------------- files


def closed_map() -> mmap.mmap:
    """An anonymous map that is already closed: the active buffer of a closed engine."""
    mm = mmap.mmap(-1, 1)
    mm.close()
    return mm


def map_file(path: Path) -> mmap.mmap:
    """Memory-map a whole file read-only (the mapping keeps its own descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size == 0:
            raise CorruptionError(path, "length", detail="file is empty")
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)


def read_footer(path: Path, mm: mmap.mmap) -> Run:
    """Check a run's footer and index section crc; return it (``slot`` 0: not placed yet).

    Raises:
        CorruptionError: too short, bad magic, footer crc, sizes or index crc.
        FormatVersionError: written by a newer raykv.
    """
    size = len(mm)
    if size < FOOTER.size:
        raise CorruptionError(path, "length", detail=f"{size} bytes is too short")
    foot = size - FOOTER.size
    (data_len, index_len, count, data_crc, index_crc, version, _, footer_crc,
     magic) = FOOTER.unpack_from(mm, foot)
    if magic != RUN_MAGIC:
        raise CorruptionError(path, "magic", offset=size - 4,
                              detail=f"expected {RUN_MAGIC!r}, got {magic!r}")
    if crc32(mm[foot : foot + FOOTER_CRC_SPAN]) != footer_crc:
        raise CorruptionError(path, "crc", offset=foot, detail="footer checksum mismatch")
    if version > RUN_VERSION:
        raise FormatVersionError(path, version, RUN_VERSION)
    if data_len + index_len + FOOTER.size != size or not count:
        raise CorruptionError(path, "length", offset=foot,
                              detail="footer lengths do not match the file size")
    if crc32(mm[data_len:foot]) != index_crc:
        raise CorruptionError(path, "crc", offset=data_len,
                              detail="index section checksum mismatch")
    return Run(path.name, 0, data_len, index_len, count, size, data_crc)


def verify_data(path: Path, run: Run, mm: mmap.mmap | bytes) -> None:
    """Check the crc of all of ``run``'s records, once (C speed; sets ``run.verified``)."""
    if run.verified:
        return
    crc = 0
    for a in range(0, run.data_len, _VERIFY_CHUNK):
        crc = crc32(mm[a : min(a + _VERIFY_CHUNK, run.data_len)], crc)
    if crc != run.data_crc:
        raise CorruptionError(path, "crc", detail="records checksum mismatch")
    run.verified = True


def decode_index(
    path: Path, run: Run, mm: mmap.mmap | bytes
) -> tuple[list[bytes], list[int], Sequence[int], list[int]]:
    """Decode a run's index section: keys, value lengths, record offsets and lengths.

    Cost: a few C-level passes over the records' lengths (offsets are a ``range`` when
    all records have one length). Keys are sliced from the index section, or, for runs
    of small values, from the records themselves after one crc32 pass over all the
    run's records (so a damaged key is never indexed).
    """
    count = run.count
    idx = mm[run.data_len : run.data_len + run.index_len]
    try:
        flags = idx[0]
        klens, pos, kconst = decode_column(idx, 1, count, path)
        vlens, pos, vconst = decode_column(idx, pos, count, path)
    except (IndexError, struct.error):
        raise CorruptionError(path, "length", offset=run.data_len,
                              detail="index section is malformed") from None
    offs: Sequence[int]
    kstarts: Sequence[int]
    kends_in_records: Iterable[int]
    hsizes: Iterable[int]
    if kconst is not None and vconst is not None:  # one record length: ranges
        hsize = varint_size(kconst) + varint_size(vconst)
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
            hsizes = list(map(add, map(varint_size, klens), map(varint_size, vlens)))
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
        verify_data(path, run, mm)
        keys = list(map(mm.__getitem__, map(slice, kstarts, kends_in_records)))
    return keys, vlens, offs, ns


# ---------------------------------------------------------------------- index section


def encode_column(values: Sequence[int] | np.ndarray) -> bytes:
    """One column of u32s: width byte 0 + one u32 if all equal, else width 1/2/4 + values.

    Cost: numpy passes (an ``array("I")`` is read in place, a list converted once).
    """
    col = np.asarray(values, dtype=np.uint32)
    lo, hi = int(col.min()), int(col.max())
    if lo == hi:
        return b"\x00" + _U32.pack(lo)
    width = 1 if hi < 1 << 8 else 2 if hi < 1 << 16 else 4
    return bytes((width,)) + col.astype(f"<u{width}").tobytes()


def decode_column(
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


def keys_in_index(vlens: Sequence[int] | np.ndarray) -> bool:
    """Whether a run's keys are copied into its index section (values average > 32 B)."""
    total = int(vlens.sum()) if isinstance(vlens, np.ndarray) else sum(vlens)
    return total > KEYS_IN_INDEX_MIN_VALUE * len(vlens)


def encode_index(klens: Sequence[int] | np.ndarray, vlens: Sequence[int] | np.ndarray,
                 keys: list[bytes] | None) -> bytes:
    """Encode a run's index section (FORMAT.md): flags, length columns, keys if given."""
    head = bytes((INDEX_HAS_KEYS if keys is not None else 0,))
    parts = [head, encode_column(klens), encode_column(vlens)]
    if keys is not None:
        parts.append(b"".join(keys))
    return b"".join(parts)


# ---------------------------------------------------------------------- encoding records


def encode_records(keys: Sequence[bytes], values: Sequence[bytes], klens: list[int],
                   vlens: list[int]) -> list[bytes]:
    """The records of ``keys``/``values`` (lengths ``klens``/``vlens``), crc included.

    Cost: C-level ``map`` passes (2-byte headers when every key and value is < 128 bytes).
    """
    heads: Iterable[bytes]
    if max(klens) < 128 and max(vlens) < 128:
        heads = map(PACK_HDR2, klens, vlens)
    else:
        heads = map(add, map(encode_varint, klens), map(encode_varint, vlens))
    bodies = list(map(add, map(add, heads, keys), values))
    return list(map(add, bodies, map(PACK_CRC, map(crc32, bodies))))


def encode_fixed_records(keys: Sequence[bytes], values: Sequence[bytes], kl: int, vl: int
                         ) -> memoryview:
    """The records of keys of ``kl`` bytes and values of ``vl`` bytes (both < 128), back to back.

    Each is ``kl + vl + 6`` bytes. Cost: numpy assembles them; the crcs are one C-level
    ``map`` (each record's crc continues the header's and the key's).
    """
    count = len(keys)
    head = PACK_HDR2(kl, vl)
    recs = _fixed_bodies(np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(count, kl),
                         np.frombuffer(b"".join(values), dtype=np.uint8).reshape(count, vl))
    return _with_crcs(recs, map(crc32, values, map(crc32, keys, repeat(crc32(head)))))


def encode_packed_records(words: np.ndarray, rows: np.ndarray) -> memoryview:
    """``encode_fixed_records`` of 8-byte keys and values of one size (< 128), as arrays.

    ``words``: the keys read big-endian (``KVStore.multi_set_packed``); ``rows``: one
    value per row. Cost: numpy assembles the records; one ``bytes`` per record for its
    crc (C-level), none per key or value.
    """
    recs = _fixed_bodies(words.astype(">u8").view(np.uint8).reshape(len(words), 8), rows)
    width = recs.shape[1] - 4
    return _with_crcs(recs, map(crc32, split_fixed(recs[:, :width].tobytes(), width)))


def _fixed_bodies(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Records of a key matrix and a value matrix (both < 128 bytes wide), crcs unset."""
    count, kl = keys.shape
    vl = values.shape[1]
    recs = np.empty((count, kl + vl + 6), dtype=np.uint8)
    recs[:, :2] = np.frombuffer(PACK_HDR2(kl, vl), dtype=np.uint8)
    recs[:, 2 : 2 + kl] = keys
    recs[:, 2 + kl : -4] = values
    return recs


def _with_crcs(recs: np.ndarray, crcs: Iterable[int]) -> memoryview:
    """``recs`` with ``crcs`` (one per record) in their last 4 bytes, as one buffer."""
    count = len(recs)
    recs[:, -4:] = np.fromiter(crcs, dtype="<u4", count=count).view(np.uint8).reshape(count, 4)
    return recs.data.cast("B")
