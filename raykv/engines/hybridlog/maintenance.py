"""HybridLog maintenance: merges of over-full levels and optional compaction.

The policy (which runs, and when) is in ``merge.py``; this module carries it out. A merge
copies the *live* records of its runs (those the index points to) into one new run that
takes the place of the newest member, moves their index entries there and drops the old
runs; tombstones are dropped only when the merged runs are the oldest ones (a prefix).
Maintenance runs on the write path (the first write after a seal, or right after a
flush), never inside ``seal()``, and commits a manifest when anything changed.

Cost: a merge reads every member once (verifying its pages) and writes its live records
once; finding the live records and moving their index entries is vectorized.
"""

from __future__ import annotations

from collections import Counter
from itertools import repeat
from operator import eq

import numpy as np
import numpy.typing as npt

from raykv.engines.hybridlog.merge import is_prefix, pick_merge
from raykv.engines.hybridlog.runfile import (
    LEN_FITS_U64,
    LEN_SHIFT,
    NO_LOC,
    RUN_VERSION,
    SLOT_BITS,
    SLOT_MASK,
    gather_values,
    live_mask,
)
from raykv.engines.hybridlog.runset import RunSet

_SCAN_RATIO = 16  # scan the whole index when a merge's records are at least 1/16 of it


def _live_by_locs(held: tuple[np.ndarray, np.ndarray], slot: int, ends: np.ndarray
                  ) -> tuple[npt.NDArray[np.bool_], np.ndarray] | None:
    """Which records of the run in ``slot`` the index points to, and where in the index.

    ``held``: the locations the index holds in ``slot``, sorted, and the positions of
    those entries in the index's iteration order. Returns the live mask and, per record,
    the position of the index entry that matched (meaningful where the mask is set).
    Exact for records with a value (their locations are distinct); tombstones (length 0)
    may share a location with a neighbour, so the caller asks the index about them by
    key. ``None`` when a location of this run does not fit a uint64.
    """
    held_locs, held_pos = held
    e = np.asarray(ends, dtype=np.uint64)
    lens = np.diff(e, prepend=np.uint64(0))
    if len(lens) and int(lens.max()) >= LEN_FITS_U64:
        return None
    packed = (((e - lens) << np.uint64(SLOT_BITS)) | (lens << np.uint64(LEN_SHIFT))
              | np.uint64(slot))
    if not len(held_locs):
        return np.zeros(len(packed), dtype=bool), np.zeros(len(packed), dtype=np.int64)
    at = np.minimum(np.searchsorted(held_locs, packed), len(held_locs) - 1)
    found: npt.NDArray[np.bool_] = held_locs[at] == packed
    return found, held_pos[at]


def _tomb_locs(slot: int, ends: np.ndarray, tomb: npt.NDArray[np.bool_]) -> list[int]:
    """Packed locations of the tombstones (``tomb``) of the run in ``slot``."""
    starts = np.asarray(ends, dtype=np.uint64)[tomb]  # a tombstone ends where it starts
    located: list[int] = ((starts << np.uint64(SLOT_BITS)) | np.uint64(slot)).tolist()
    return located


class Maintenance(RunSet):
    """Merges and compaction of a ``HybridLog``'s runs (a base class)."""

    def _maintain(self) -> None:
        """Merge over-full levels (and compact sparse runs if enabled); commit if any changed."""
        changed = False
        while True:
            group = pick_merge([r.count for r in self._runs], self.max_runs_per_level)
            if group is None and self.compaction_enabled:
                group = self._sparse_run()
            if group is None:
                break
            self._merge(group)
            changed = True
        if changed:
            self._commit([r.name for r in self._runs], {"format": RUN_VERSION})
        self._maintenance = False  # only now: a failed merge is retried on the next write

    def _live_counts(self) -> Counter[int]:
        """Live records per run slot. Cost: one C-level pass over the index."""
        return Counter(map(SLOT_MASK.__and__, self._index.values()))

    def _sparse_run(self) -> list[int] | None:
        """Position of the first run whose live fraction is below one half, if any."""
        live = self._live_counts()
        for pos, run in enumerate(self._runs):
            if live.get(run.slot, 0) * 2 < run.count:
                return [pos]
        return None

    def _merge(self, group: list[int]) -> None:
        """Rewrite the live records of the runs at ``group`` (ascending) into one run.

        The new run takes the place of the newest member. Tombstones are dropped only
        when ``group`` is a prefix (holds the oldest run and every run up to its newest
        member). Cost: reads every member once (verifying its pages), writes the live
        records once; vectorized over records.
        """
        runs, index = self._runs, self._index
        members = [runs[pos] for pos in group]
        drop_tombstones = is_prefix(group)
        held = self._held_locs({r.slot for r in members},
                               sum(r.count for r in members))
        index_keys = list(index) if held is not None else []  # same order as the scan
        keys: list[bytes] = []
        blobs: list[bytes] = []
        lens: list[np.ndarray] = []
        dropped: list[bytes] = []
        for run in members:
            run.verify_all()
            ends = run.ends()
            run_lens = np.diff(ends, prepend=np.uint64(0))
            found = None if held is None else _live_by_locs(held[run.slot], run.slot, ends)
            at = None
            if found is None:
                run_keys = run.keys(np.ones(run.count, dtype=bool))
                live = live_mask(list(map(index.get, run_keys, repeat(NO_LOC))), run.slot, ends)
            else:
                live, at = found
                tomb = run_lens == 0  # tombstones share locations: ask the index by key
                if tomb.any():
                    tomb_keys = run.keys(tomb)
                    live[tomb] = np.fromiter(
                        map(eq, map(index.get, tomb_keys, repeat(NO_LOC)),
                            _tomb_locs(run.slot, ends, tomb)),
                        dtype=bool, count=len(tomb_keys))
            if drop_tombstones:
                dead = live & (run_lens == 0)
                if dead.any():
                    dropped.extend(run.keys(dead))
                    live &= ~dead
            if not live.any():
                continue
            if at is not None and not (live & (run_lens == 0)).any():
                keys.extend(map(index_keys.__getitem__, at[live].tolist()))  # the index's own
            else:
                keys.extend(run.keys(live))
            blobs.append(gather_values(run.mm, ends, live))
            lens.append(run_lens[live])
        new_run = None
        if keys:  # written before anything changes: a failure leaves the runs as they were
            ends_all = np.cumsum(np.concatenate(lens), dtype=np.uint64)
            new_run, locs = self._new_run(keys, b"".join(blobs), ends_all)
        where = group[-1] - (len(group) - 1)
        for pos in reversed(group):
            del runs[pos]
        if new_run is not None:
            runs.insert(where, new_run)
            index.update(zip(keys, locs, strict=True))
        for key in dropped:
            del index[key]
        if dropped and self._index_tombs:  # maybe the last ones: count (a C-level pass)
            self._index_tombs = not all(map(LEN_SHIFT.__rrshift__, index.values()))
        for run in members:
            self._drop_run(run)
        self.stats.merges += 1

    def _held_locs(self, slots: set[int], records: int
                   ) -> dict[int, tuple[np.ndarray, np.ndarray]] | None:
        """The index's locations in the runs at ``slots``, per slot: sorted, with positions.

        One sequential pass over the index's values instead of one lookup per record
        (a lookup of a key decoded from a run misses the CPU cache: a few hundred
        nanoseconds to microseconds, against tens for a sequential step). The positions
        (in the index's iteration order) let a merge reuse the index's own key objects,
        whose stores then find the key by identity. ``None`` when per-record lookups are
        cheaper (few records against a large index) or when a location does not fit a
        uint64 (a value of 256 bytes or more).
        """
        index = self._index
        if records * _SCAN_RATIO < len(index):
            return None
        try:
            locs = np.fromiter(index.values(), dtype=np.uint64, count=len(index))
        except OverflowError:
            return None
        slot_of = locs & np.uint64(SLOT_MASK)
        held = {}
        for s in slots:
            pos = np.flatnonzero(slot_of == s)
            order = np.argsort(locs[pos])
            held[s] = (locs[pos][order], pos[order])
        return held
