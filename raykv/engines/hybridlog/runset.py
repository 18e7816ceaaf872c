"""HybridLog's disk side: the run files, their slots and the hash index (a base class).

The index ``_index`` maps every key with a durable record to one packed location,
``slot | start << SLOT_BITS | length << LEN_SHIFT`` (``runfile.py``): the run (by slot),
where the value starts in that run's values region and its length (0: a tombstone). A
slot names an open run; a dropped run's slot is reused by the next run opened. The
index is a dict or a ``KeyIndex`` (``keyindex.py``); the functions of ``keyindex`` take
either.

Cost: writing a run is one file write (fsynced by the next commit, or in the background
for flushes) and one index update per record; reading a value is one mmap slice, plus a
crc32 of its 4 KiB page the first time that page is read.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import compress, repeat
from operator import is_
from pathlib import Path

import numpy as np

from raykv.engines.base import KVStore
from raykv.engines.fileio import write_file
from raykv.engines.hybridlog.runfile import (
    LEN_SHIFT,
    MAX_SLOTS,
    RUN_KIND,
    SLOT_BITS,
    SLOT_MASK,
    START_MASK,
    U64_MAX,
    RunFile,
    encode_run,
    pack_locs,
    segment_locs,
    value_ends,
)
from raykv.engines.keyindex import Index, get_many, store


def _presync(path: Path) -> None:
    """Fsync ``path`` ahead of the commit that must sync it (best effort, background)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # merged away and deleted already
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # the commit's own fsync will report it
    finally:
        os.close(fd)


_READ_VECTOR = 64  # multi_get reads this many disk-only keys or more vectorized


class RunView:
    """A slot whose records a merge spliced into ``run``, ``shift`` bytes further on.

    Index entries made for the spliced run keep naming this slot, so a splice moves no
    index entry (``maintenance.py``). ``values_len`` bounds the starts it serves.
    """

    __slots__ = ("run", "shift", "slot", "values_len")

    def __init__(self, run: RunFile, shift: int, slot: int, values_len: int) -> None:
        self.run = run
        self.shift = shift
        self.slot = slot
        self.values_len = values_len

    def read(self, start: int, stop: int) -> bytes:
        """Value bytes ``[start, stop)`` of the spliced run (read from ``run``)."""
        return self.run.read(start + self.shift, stop + self.shift)

    def read_many(self, starts: np.ndarray, lens: np.ndarray) -> list[bytes]:
        """``RunFile.read_many`` of the spliced run (``starts`` shifted)."""
        return self.run.read_many(starts + self.shift, lens)

    def close(self) -> None:
        """Nothing to release: ``run`` owns the file."""


class RunSet(KVStore):
    """Run files, slots and the disk index of a ``HybridLog`` (which sets these attributes)."""

    max_runs_per_level: int
    compaction_enabled: bool
    _presyncer: ThreadPoolExecutor | None
    _index: Index  # ``keyindex.py``: a dict, or a KeyIndex once short keys came in bulk
    _runs: list[RunFile]
    _slots: list[RunFile | RunView]
    _free_slots: list[int]
    _maintenance: bool
    #: the index may hold tombstones (length 0); false: every entry is a live key
    _index_tombs: bool

    def _release_runs(self) -> None:
        for run in getattr(self, "_slots", ()):
            run.close()
        self._runs = []
        self._slots = []
        self._free_slots = []

    def _read_loc(self, loc: int) -> bytes:
        start = loc >> SLOT_BITS & START_MASK
        return self._slots[loc & SLOT_MASK].read(
            start, start + (loc >> LEN_SHIFT)
        )

    def _read_missing(self, keys: Sequence[bytes], res: list[bytes | None]) -> None:
        """Fill each ``None`` of ``res`` with the durable value of ``keys[i]`` (``b""``: none).

        Cost: one index lookup per such key, then :meth:`_values_at`.
        """
        miss = list(compress(range(len(res)), map(is_, res, repeat(None))))
        locs = get_many(self._index, list(map(keys.__getitem__, miss)), 0)
        deque(map(res.__setitem__, miss, self._values_at(locs)), maxlen=0)

    def _values_at(self, locs: list[int]) -> list[bytes]:
        """The values at index locations ``locs`` (length 0: ``b""``); ``locs`` may change.

        Cost: for ``_READ_VECTOR`` locations or more, numpy passes and one
        ``RunFile.read_many`` per run involved (a value of 256 bytes or more, whose
        location does not fit a uint64, is read apart); for fewer one ``_read_loc`` each.
        """
        read = self._read_loc
        if len(locs) < _READ_VECTOR:
            return [read(loc) if loc >> LEN_SHIFT else b"" for loc in locs]
        big: list[tuple[int, int]] = []
        try:
            arr = np.fromiter(locs, dtype=np.uint64, count=len(locs))
        except OverflowError:  # values of 256+ bytes: read apart, the rest vectorized
            big = [(i, loc) for i, loc in enumerate(locs) if loc > U64_MAX]
            for i, _ in big:
                locs[i] = 0
            arr = np.fromiter(locs, dtype=np.uint64, count=len(locs))
        values = self._read_locs(arr)
        for i, loc in big:
            values[i] = read(loc)
        return values

    def _read_locs(self, locs: np.ndarray) -> list[bytes]:
        """The values at packed uint64 ``locs`` (length 0: ``b""``), one pass per run."""
        slots = (locs & np.uint64(SLOT_MASK)).astype(np.intp)
        starts = (locs >> np.uint64(SLOT_BITS) & np.uint64(START_MASK)).astype(np.int64)
        lens = (locs >> np.uint64(LEN_SHIFT)).astype(np.int64)
        some = lens > 0
        used = np.unique(slots[some])
        if len(used) == 1 and bool(some.all()):
            return self._slots[int(used[0])].read_many(starts, lens)
        out: list[bytes] = [b""] * len(locs)
        for slot in used.tolist():
            at = np.flatnonzero((slots == slot) & some)
            got = self._slots[slot].read_many(starts[at], lens[at])
            deque(map(out.__setitem__, at.tolist(), got), maxlen=0)
        return out

    def _open_run(self, name: str) -> RunFile:
        """Open run file ``name`` in a free slot (a dropped run's, else a new one)."""
        reuse = bool(self._free_slots)
        slot = self._free_slots.pop() if reuse else len(self._slots)
        if slot >= MAX_SLOTS:  # pragma: no cover - bounded by max_runs_per_level
            msg = f"HybridLog at {self.data_dir} has {slot} runs; lower max_runs_per_level"
            raise RuntimeError(msg)
        try:
            run = RunFile(self.data_dir / name, slot)
        except BaseException:
            if reuse:
                self._free_slots.append(slot)
            raise
        if reuse:
            self._slots[slot] = run
        else:
            self._slots.append(run)
        return run

    def _drop_run(self, run: RunFile) -> None:
        """Close ``run``, free its slot and its views' (the closed run stays in them)."""
        run.close()
        for slot, *_ in run.segments:
            if slot != run.slot:
                self._free_slot(slot, run)
        self._free_slot(run.slot, run)

    def _free_slot(self, slot: int, run: RunFile) -> None:
        """Free ``slot``; it holds the closed ``run`` until it is reused."""
        self._slots[slot] = run
        self._free_slots.append(slot)

    def _slots_in_use(self) -> int:
        return len(self._slots) - len(self._free_slots)

    def _locs(self, slot: int, ends: Sequence[int] | np.ndarray) -> list[int] | np.ndarray:
        """The packed locations of values ending at ``ends`` in ``slot``, as the index takes them.

        A list of ints for a dict index (``pack_locs``); for a ``KeyIndex`` the uint64 array
        when every location fits one (no list of ints to build).
        """
        if isinstance(self._index, dict):
            return pack_locs(slot, ends)
        return segment_locs([(slot, 0, 0, len(ends))], np.asarray(ends, dtype=np.uint64))

    def _new_run(self, keys: list[bytes], blob: bytes, ends: Sequence[int] | np.ndarray,
                 *, presync: bool = False, klens: np.ndarray | None = None
                 ) -> tuple[RunFile, list[int] | np.ndarray]:
        """Write a new run file; return it and the packed locations of its values (``_locs``).

        The next commit fsyncs the file (durability never depends on anything else).
        ``presync=True`` (flushes) also starts that fsync now on a background thread, so
        neither the write path nor the next ``seal()`` waits for the disk. ``klens``: the
        keys' lengths, if known.
        """
        run = self._write_encoded(encode_run(keys, blob, ends, klens), presync=presync)
        return run, self._locs(run.slot, ends)

    def _write_encoded(self, data: bytes, *, presync: bool = False) -> RunFile:
        """Write the encoded run ``data`` to a new file and open it (see ``_new_run``)."""
        name = self._new_file(RUN_KIND)
        path = self.data_dir / name
        write_file(path, data, sync=False)
        self._written(name, len(data))
        if presync:
            if self._presyncer is None:
                self._presyncer = ThreadPoolExecutor(1, thread_name_prefix="hybridlog-fsync")
            self._presyncer.submit(_presync, path)
        return self._open_run(name)

    def _write_run(self, keys: list[bytes], values: list[bytes], *, presync: bool = False
                   ) -> None:
        """Append a run of dirty records and point the index at it.

        A tombstone for a key with no durable record is not written: nothing to shadow.
        """
        index = self._index
        if b"" in values:
            kept = [(k, v) for k, v in zip(keys, values, strict=True) if v or k in index]
            keys = [k for k, _ in kept]
            values = [v for _, v in kept]
            self._index_tombs |= b"" in values
        if not keys:
            return
        run, locs = self._new_run(keys, b"".join(values), value_ends(values), presync=presync)
        self._runs.append(run)
        store(index, keys, locs)
