"""HybridLog run files: a values region, page checksums, an index section and a footer.

Layout (little-endian; FORMAT.md "HybridLog"):

    +------------------+ 0
    | values           |  V bytes: value_0 | value_1 | ... (a tombstone is an empty value)
    +------------------+ V
    | page crcs        |  P x u32, P = ceil(V / 4096): crc32 of each 4 KiB page of the values
    | key lens         |  n x (u8 | u16 | u32): width ``key_width`` from the footer
    | keys             |  the n keys, concatenated
    | value ends       |  n x (u32 | u64): width ``end_width``; value i is [end_{i-1}, end_i)
    +------------------+
    | footer (32 B)    |  n u64 | V u64 | key_width u8 | end_width u8 | reserved u16 |
    |                  |  version u32 | crc32 u32 | magic "RKHL"
    +------------------+

The footer crc covers everything from offset V up to (not including) the crc itself, so
the index section and footer are verified once at open; values are verified page by page
on their first read (``RunFile.read``) or all at once (``RunFile.verify_all``). Keeping
keys and lengths out of the values region keeps a record at ``len(key) + len(value) +
width(key len) + width(end)`` bytes, and lets an open load the index without touching
values.

A location (``loc``) packs where a value lives into one int, the disk index entry:
``slot | start << 16 | length << 56`` where ``slot`` names the open run (``RunFile.slot``).
It is a Python int of any size: a value of 256 bytes or more makes it exceed 64 bits, so
vectorized code may hold locations in a uint64 array only after checking that they fit
(``segment_locs``, ``same_locs``).
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from array import array
from collections import deque
from collections.abc import Sequence
from itertools import repeat
from operator import eq, lshift, or_
from pathlib import Path

import numpy as np
import numpy.typing as npt

from raykv.engines.fileio import crc32
from raykv.errors import CorruptionError, FormatVersionError

RUN_KIND = "hlog"
RUN_MAGIC = b"RKHL"
RUN_VERSION = 1
PAGE_BITS = 12
PAGE_SIZE = 1 << PAGE_BITS
FOOTER = struct.Struct("<QQBBHII4s")
_FOOTER_HEAD = struct.Struct("<QQBBHI")  # the footer bytes the crc covers

SLOT_BITS = 16
MAX_SLOTS = 1 << SLOT_BITS
SLOT_MASK = MAX_SLOTS - 1
START_BITS = 40
START_MASK = (1 << START_BITS) - 1
LEN_SHIFT = SLOT_BITS + START_BITS
MAX_VALUES_LEN = 1 << START_BITS
U64_MAX = (1 << 64) - 1
LEN_FITS_U64 = 1 << (64 - LEN_SHIFT)  # 256: a location fits a uint64 iff its length is below
NO_LOC = U64_MAX  # never a location: its start + length (2**40 - 1 + 255) pass MAX_VALUES_LEN

_WIDTH_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
_GATHER_MAX = 64  # values up to this long are gathered by numpy (``take_values``)
_GATHER_WIDTHS = 8  # ... when they come in at most this many distinct lengths
_LITTLE = sys.byteorder == "little"


def _width_for(largest: int) -> int:
    if largest < 1 << 8:
        return 1
    if largest < 1 << 16:
        return 2
    return 4 if largest < 1 << 32 else 8


def encode_run(keys: Sequence[bytes], blob: bytes, ends: Sequence[int] | np.ndarray,
               klens: np.ndarray | None = None) -> bytes:
    """Encode one run file from its keys, their values concatenated, and the value ends.

    ``ends[i]`` is the offset in ``blob`` where value ``i`` ends (value ``i`` starts where
    value ``i - 1`` ends); ``klens``: the keys' lengths, if known. Cost: a few C-level
    passes over the records (joins, numpy), one crc32 per 4 KiB of values and one over
    the index section.
    """
    if klens is None:
        klens = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    return encode_run_columns(klens, b"".join(keys), blob, ends)


def encode_run_columns(klens: np.ndarray, keys: bytes, blob: bytes,
                       ends: Sequence[int] | np.ndarray) -> bytes:
    """``encode_run`` from the key lengths and the keys concatenated (``RunFile.columns``).

    Cost: numpy passes over the records, one crc32 per 4 KiB of values and one over the
    index section; no per-record Python step.
    """
    n = len(klens)
    vlen = len(blob)
    if vlen >= MAX_VALUES_LEN:
        msg = f"a HybridLog run holds at most {MAX_VALUES_LEN} value bytes, got {vlen}"
        raise ValueError(msg)
    if len(ends) != n or (n and int(ends[-1]) != vlen):
        msg = "value ends do not match the keys and the values blob"
        raise ValueError(msg)
    view = memoryview(blob)
    pages = np.array([crc32(view[i : i + PAGE_SIZE]) for i in range(0, vlen, PAGE_SIZE)],
                     dtype="<u4")
    key_width = _width_for(int(klens.max()) if n else 0)
    end_width = 4 if vlen < 1 << 32 else 8
    index = b"".join((
        pages.tobytes(),
        klens.astype(f"<u{key_width}").tobytes(),
        keys,
        np.asarray(ends, dtype=np.uint64).astype(f"<u{end_width}").tobytes(),
    ))
    head = _FOOTER_HEAD.pack(n, vlen, key_width, end_width, 0, RUN_VERSION)
    crc = crc32(head, crc32(index))
    return b"".join((blob, index, head, struct.pack("<I4s", crc, RUN_MAGIC)))


def value_ends(values: Sequence[bytes]) -> np.ndarray:
    """Return the end offsets of ``values`` laid end to end (a uint64 array)."""
    return np.cumsum(np.fromiter(map(len, values), dtype=np.uint64, count=len(values)),
                     dtype=np.uint64)


def gather_values(mm: mmap.mmap | bytes, ends: np.ndarray, keep: np.ndarray) -> bytes:
    """Concatenate the values whose ``keep`` flag is set (``ends`` as in the index section).

    Cost: vectorized (numpy gather) for small values, one slice per kept value otherwise.
    The caller has verified the pages.
    """
    total = int(ends[-1]) if len(ends) else 0
    if keep.all():
        return bytes(mm[:total])
    starts = np.concatenate((np.zeros(1, np.uint64), ends[:-1])).astype(np.int64)
    lens = ends.astype(np.int64) - starts
    sel_starts, sel_lens = starts[keep], lens[keep]
    kept_bytes = int(sel_lens.sum())
    if kept_bytes == 0:
        return b""
    if kept_bytes > 64 * len(sel_lens):  # large values: slicing beats a byte-index gather
        return b"".join([mm[a : a + b] for a, b in zip(sel_starts.tolist(), sel_lens.tolist(),
                                                       strict=True)])
    buf = np.frombuffer(mm, dtype=np.uint8, count=total)
    try:
        shift = np.repeat(sel_starts - (np.cumsum(sel_lens) - sel_lens), sel_lens)
        return buf[shift + np.arange(kept_bytes)].tobytes()
    finally:
        del buf  # release the buffer export so the mmap can close


def take_values(mm: mmap.mmap | bytes, starts: np.ndarray, lens: np.ndarray) -> list[bytes]:
    """The values ``mm[starts[i] : starts[i] + lens[i]]`` as a list (lengths above 0).

    Cost: values of at most ``_GATHER_MAX`` bytes in few distinct lengths are gathered by
    numpy, one fancy-index pass and one ``tolist`` per length (about 0.2 us per value
    against 0.4 us for a slice each); otherwise one slice per value. The caller has
    verified the pages.
    """
    n = len(starts)
    if not n:
        return []
    widths = np.unique(lens) if int(lens.max()) <= _GATHER_MAX else None
    if widths is None or len(widths) > _GATHER_WIDTHS:
        return [mm[a : a + b] for a, b in zip(starts.tolist(), lens.tolist(), strict=True)]
    buf = np.frombuffer(mm, dtype=np.uint8)
    try:
        if len(widths) == 1:
            width = int(widths[0])
            grid = starts[:, None] + np.arange(width)
            same: list[bytes] = buf[grid].view(f"V{width}").ravel().tolist()
            return same
        out: list[bytes] = [b""] * n
        for width in widths.tolist():
            at = np.flatnonzero(lens == width)
            grid = starts[at][:, None] + np.arange(width)
            deque(map(out.__setitem__, at.tolist(),
                      buf[grid].view(f"V{width}").ravel().tolist()), maxlen=0)
        return out
    finally:
        del buf  # release the buffer export so the mmap can close


def pack_locs(slot: int, ends: Sequence[int] | np.ndarray) -> list[int]:
    """Return the packed locations of values ending at ``ends`` in the run in ``slot``.

    A location is ``slot | start << SLOT_BITS | length << LEN_SHIFT``: ``slot | start``
    always fits 56 bits, but the whole location fits a uint64 only for values shorter than
    ``LEN_FITS_U64`` (256) bytes. Cost: vectorized either way: numpy builds the whole
    locations when every value is shorter than 256 bytes; otherwise numpy builds
    ``slot | start`` and two C-level ``map`` passes add the lengths as Python ints.
    """
    locs = segment_locs([(slot, 0, 0, len(ends))], np.asarray(ends, dtype=np.uint64))
    return locs.tolist() if isinstance(locs, np.ndarray) else locs


def segment_locs(segments: Sequence[tuple[int, int, int, int]], ends: np.ndarray
                 ) -> np.ndarray | list[int]:
    """The location the index holds for each record of a run while it is live.

    ``segments`` as in ``RunFile.segments``, ``ends`` the run's value ends. A uint64 array
    when every value is shorter than ``LEN_FITS_U64``, else a list of Python ints.
    Cost: numpy passes per segment.
    """
    e = np.asarray(ends, dtype=np.uint64)
    lens = np.diff(e, prepend=np.uint64(0))
    starts = e - lens
    where = np.empty(len(e), dtype=np.uint64)
    for slot, shift, lo, hi in segments:
        where[lo:hi] = ((starts[lo:hi] - np.uint64(shift)) << np.uint64(SLOT_BITS)
                        | np.uint64(slot))
    if not len(e) or int(lens.max()) < LEN_FITS_U64:
        packed: np.ndarray = where | (lens << np.uint64(LEN_SHIFT))
        return packed
    return list(map(or_, where.tolist(), map(lshift, lens.tolist(), repeat(LEN_SHIFT))))


def same_locs(found: list[int], expected: np.ndarray | list[int]) -> npt.NDArray[np.bool_]:
    """Which records are live: ``found[i] == expected[i]`` per record.

    ``found[i]`` is what the index holds for record ``i``'s key (``NO_LOC`` for nothing),
    ``expected[i]`` the record's location while live (``segment_locs``).

    ``found[i]`` may be any location: the index can point the key at a record in another
    run, with a value of any size, so the check must not assume that ``found`` fits a
    uint64 just because this run's values do (issue 11).

    Cost: one C-level ``max`` over ``found``, then a vectorized uint64 comparison when
    every location involved fits a uint64 (the common case); otherwise one Python int
    comparison per record (a C-level ``map``), which is exact for any location.
    """
    n = len(found)
    if isinstance(expected, np.ndarray) and (not n or max(found) <= U64_MAX):
        same: npt.NDArray[np.bool_] = np.fromiter(found, np.uint64, n) == expected
        return same
    exp = expected.tolist() if isinstance(expected, np.ndarray) else expected
    return np.fromiter(map(eq, found, exp), dtype=bool, count=n)


class RunFile:
    """One open, immutable run file, memory-mapped for reads.

    Attributes:
        name: file name in the data directory.
        path: full path (named in every ``CorruptionError``).
        slot: small int naming this run inside packed locations.
        segments: ``(slot, shift, first, end)`` per stretch of records ``[first, end)``
            whose locations name ``slot`` and start ``shift`` bytes before the value's
            offset in this run. One ``(slot, 0, 0, count)`` unless a merge spliced
            other runs into this one (``maintenance.py``); in memory only.
        count: number of records (``n`` in the footer).
        values_len: bytes in the values region.
        nbytes: file size.
    """

    __slots__ = (
        "_end_width", "_file", "_index_at", "_key_width", "_page_crcs", "_unverified",
        "count", "mm", "name", "nbytes", "path", "pending", "segments", "slot", "values_len",
    )

    def __init__(self, path: Path, slot: int) -> None:
        """Open ``path`` and verify its footer and index section (not its values).

        Raises:
            CorruptionError: the file is too short, its magic, sizes or index crc are wrong.
            FormatVersionError: written by a newer raykv.
        """
        self.path = path
        self.name = path.name
        self.slot = slot
        self._file = open(path, "rb")  # noqa: SIM115 - lives as long as the mmap
        try:
            self.nbytes = os.fstat(self._file.fileno()).st_size
            if self.nbytes < FOOTER.size:
                raise CorruptionError(path, "length", detail=f"{self.nbytes} bytes is too short")
            self.mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._check_footer()
            self.segments: list[tuple[int, int, int, int]] = [(slot, 0, 0, self.count)]
        except BaseException:
            self.close()
            raise

    def _check_footer(self) -> None:
        mm, path, size = self.mm, self.path, self.nbytes
        n, vlen, kw, ew, _, version, crc, magic = FOOTER.unpack_from(mm, size - FOOTER.size)
        if magic != RUN_MAGIC:
            raise CorruptionError(path, "magic", offset=size - 4,
                                  detail=f"expected {RUN_MAGIC!r}, got {magic!r}")
        if kw not in _WIDTH_CODES or ew not in (4, 8) or vlen > size:
            raise CorruptionError(path, "footer", offset=size - FOOTER.size,
                                  detail="impossible widths or sizes")
        n_pages = -(-vlen // PAGE_SIZE)
        index_at = vlen + 4 * n_pages
        if index_at + n * (kw + ew) > size - FOOTER.size:
            raise CorruptionError(path, "length", detail="index section does not fit the file")
        if crc32(memoryview(mm)[vlen : size - 8]) != crc:
            raise CorruptionError(path, "crc", offset=vlen,
                                  detail="index section checksum mismatch")
        if version > RUN_VERSION:
            raise FormatVersionError(path, version, RUN_VERSION)
        self.count = n
        self.values_len = vlen
        self._key_width = kw
        self._end_width = ew
        self._index_at = index_at
        pages = array("I")
        pages.frombytes(mm[vlen:index_at])
        if not _LITTLE:  # pragma: no cover
            pages.byteswap()
        self._page_crcs = pages
        self._unverified = bytearray(b"\x01") * n_pages
        self.pending = n_pages  # pages not yet verified; 0 = all values checked

    def index(self) -> tuple[list[bytes], np.ndarray]:
        """Decode the index section: ``(keys, value ends)``. Reads no values.

        Cost: a few vectorized passes; about one microsecond per key.

        Raises:
            CorruptionError: key lengths or value ends do not add up.
        """
        klens, pos, ends = self._columns()
        return self._keys(klens, pos, None), ends

    def ends(self) -> np.ndarray:
        """The value ends of the index section (uint64), checked as in ``index``."""
        return self._columns()[2]

    def columns(self) -> tuple[np.ndarray, bytes, np.ndarray]:
        """``(key lengths, the keys concatenated, value ends)``: the index section, raw.

        Cost: numpy views and one copy of the keys; no per-record step.
        """
        klens, pos, ends = self._columns()
        return klens, self.mm[pos : pos + int(klens.sum())], ends

    def keys(self, select: npt.NDArray[np.bool_]) -> list[bytes]:
        """The keys of the records whose ``select`` flag is set, in record order.

        Cost: vectorized; one slice per selected key when key lengths vary.
        """
        klens, pos, _ = self._columns()
        return self._keys(klens, pos, select)

    def _columns(self) -> tuple[np.ndarray, int, np.ndarray]:
        """``(key lengths, offset of the keys, value ends)``, validated."""
        mm, n, kw, ew = self.mm, self.count, self._key_width, self._end_width
        pos = self._index_at
        klens = np.frombuffer(mm, dtype=f"<u{kw}", count=n, offset=pos).astype(np.int64)
        total = int(klens.sum())
        end_at = pos + n * kw + total
        if end_at + n * ew != self.nbytes - FOOTER.size:
            raise CorruptionError(self.path, "length", offset=pos + n * kw,
                                  detail="key lengths do not match the index size")
        ends = np.frombuffer(mm, dtype=f"<u{ew}", count=n, offset=end_at).astype(np.uint64)
        if n and (
            int(ends[-1]) != self.values_len or bool((np.diff(ends.astype(np.int64)) < 0).any())
        ):
            raise CorruptionError(self.path, "length", offset=end_at,
                                  detail="value ends are not increasing up to the values size")
        if n and int(klens.min()) == 0:
            raise CorruptionError(self.path, "length", offset=pos + n * kw, detail="empty key")
        return klens, pos + n * kw, ends

    def _keys(self, klens: np.ndarray, pos: int, select: npt.NDArray[np.bool_] | None
              ) -> list[bytes]:
        mm, n = self.mm, self.count
        if n and int(klens.min()) == int(klens.max()):
            width = int(klens[0])
            keys = np.frombuffer(mm, dtype=np.dtype((np.void, width)), count=n, offset=pos)
            found: list[bytes] = (keys if select is None else keys[select]).tolist()
            return found
        starts = np.cumsum(klens) - klens + pos
        if select is not None:
            starts, klens = starts[select], klens[select]
        return [mm[a : a + b] for a, b in zip(starts.tolist(), klens.tolist(), strict=True)]

    def verify_pages(self, first: int, last: int) -> None:
        """Check the crc of value pages ``first..last`` (inclusive) that are not yet verified.

        Raises:
            CorruptionError: a page's crc does not match.
        """
        flags = self._unverified
        mm = self.mm
        for p in range(first, last + 1):
            if flags[p]:
                start = p << PAGE_BITS
                stop = min(start + PAGE_SIZE, self.values_len)
                if crc32(mm[start:stop]) != self._page_crcs[p]:
                    raise CorruptionError(self.path, "crc", offset=start,
                                          detail=f"value page {p} checksum mismatch")
                flags[p] = 0
                self.pending -= 1

    def verify_all(self) -> None:
        """Verify every value page (cost: one crc32 pass over the values region)."""
        if self.pending:
            self.verify_pages(0, len(self._unverified) - 1)

    def read_many(self, starts: np.ndarray, lens: np.ndarray) -> list[bytes]:
        """Values at ``starts`` (int64) of ``lens`` bytes (above 0): ``read`` vectorized.

        Verifies the pages they touch that are not yet verified. Cost: numpy passes, a
        crc32 per new page and ``take_values``.
        """
        if self.pending and len(starts):
            first = starts >> PAGE_BITS
            last = (starts + lens - 1) >> PAGE_BITS
            pages = np.union1d(first, last)
            flags = np.frombuffer(self._unverified, dtype=np.uint8)
            todo = pages[flags[pages] != 0].tolist()
            del flags  # release the export
            for p in todo:
                self.verify_pages(p, p)
            wide = np.flatnonzero(last - first > 1)  # values spanning 3+ pages
            for i in wide.tolist():
                self.verify_pages(int(first[i]), int(last[i]))
        return take_values(self.mm, starts, lens)

    def read(self, start: int, stop: int) -> bytes:
        """Return value bytes ``[start, stop)``, verifying their pages on first touch."""
        if self.pending and stop > start:
            self.verify_pages(start >> PAGE_BITS, (stop - 1) >> PAGE_BITS)
        return self.mm[start:stop]

    def close(self) -> None:
        """Unmap and close the file (idempotent); reads of a closed run raise ``ValueError``."""
        mm = getattr(self, "mm", None)
        if mm is not None:
            mm.close()
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
        self._page_crcs = array("I")  # a closed run may stay in its slot: keep it small
        self._unverified = bytearray()
