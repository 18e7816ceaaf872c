"""HybridLog maintenance: merges of over-full levels and optional compaction.

The policy (which runs, and when) is in ``merge.py``; this module carries it out. A merge
copies the *live* records of its runs (those the index points to) into one new run that
takes the place of the newest member, moves their index entries there and drops the old
runs; tombstones are dropped only when the merged runs are the oldest ones (a prefix).
With an expiry horizon (``KVStore.set_expiry``, ``expiry.py``), live records stamped
below it are dropped from a prefix merge and written back as tombstones by any other.
Maintenance runs on the write path (the first write after a seal, or right after a
flush), never inside ``seal()``, and commits a manifest when anything changed.

A member whose every record is live and holds a value is spliced whole (``splice.py``):
its bytes are copied and its slots become views of the new run, so its index entries
stay. A run's records may thus name several slots (``RunFile.segments``).

Cost: a merge reads every member once (verifying its pages) and writes its live records
once; finding the live records and moving their index entries is vectorized; a spliced
member costs a copy of its bytes and no index store.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import compress, islice, repeat

import numpy as np
import numpy.typing as npt

from raykv.engines.expiry import STAMP_LEN, ExpiryPlanner, stamps_at
from raykv.engines.hybridlog.merge import is_prefix, over_space, pick_merge
from raykv.engines.hybridlog.runfile import (
    LEN_SHIFT,
    NO_LOC,
    RUN_VERSION,
    SLOT_MASK,
    RunFile,
    gather_values,
    same_locs,
    segment_locs,
)
from raykv.engines.hybridlog.runset import RunSet
from raykv.engines.hybridlog.splice import Splicer
from raykv.engines.keyindex import Index, KeyIndex, count_set, delete_many, get_many, store
from raykv.engines.space import pick_dead

_SCAN_RATIO = 16  # scan the whole index when a merge's records are at least 1/16 of it
_CLIP_CHUNK = 4096  # index entries per pass of ``_index_locs`` beside a big value


def _live_by_locs(held: dict[int, tuple[np.ndarray, np.ndarray]],
                  segments: list[tuple[int, int, int, int]], packed: np.ndarray
                  ) -> tuple[npt.NDArray[np.bool_], np.ndarray]:
    """Which records of a run the index points to, and where in the index.

    ``held``: per slot, the locations the index holds in it, sorted, and the positions
    of those entries in the index's iteration order. ``packed``: the location of each
    record while live (``segment_locs``). Returns the live mask and, per record, the
    position of the index entry that matched (meaningful where the mask is set).
    Exact for records with a value (their locations are distinct); tombstones (length 0)
    may share a location with a neighbour, so the caller asks the index about them by
    key.
    """
    slots = [s for s, *_ in segments]
    if len(slots) == 1:
        held_locs, held_pos = held[slots[0]]
    else:
        held_locs = np.concatenate([held[s][0] for s in slots])
        held_pos = np.concatenate([held[s][1] for s in slots])
        order = np.argsort(held_locs)
        held_locs, held_pos = held_locs[order], held_pos[order]
    if not len(held_locs):
        return np.zeros(len(packed), dtype=bool), np.zeros(len(packed), dtype=np.int64)
    at = np.minimum(np.searchsorted(held_locs, packed), len(held_locs) - 1)
    found: npt.NDArray[np.bool_] = held_locs[at] == packed
    return found, held_pos[at]


def _index_locs(index: Index) -> tuple[np.ndarray, list[int]]:
    """The index's locations (iteration order) as uint64, and the slots of the big ones.

    A location beyond a uint64 (a value of 256 bytes or more) is held as ``NO_LOC``,
    which equals no record's location; its slot is listed apart. Cost: one C-level pass
    over a dict's values (a ``KeyIndex``'s table is an array already); a second one (a
    ``min`` per entry) only for the chunks of ``_CLIP_CHUNK`` entries holding such a
    location.
    """
    if isinstance(index, KeyIndex):
        d_vals, t_vals, big_vals = index.value_parts()
        head, big = _dict_locs(d_vals, len(d_vals))
        tail = np.full(len(big_vals), NO_LOC, dtype=np.uint64)
        return (np.concatenate([head, t_vals, tail]),
                big + [loc & SLOT_MASK for loc in big_vals])
    return _dict_locs(index.values(), len(index))


def _dict_locs(values: Iterable[int], n: int) -> tuple[np.ndarray, list[int]]:
    """``_index_locs`` of ``n`` locations held as Python ints."""
    try:
        return np.fromiter(values, dtype=np.uint64, count=n), []
    except OverflowError:
        pass
    out = np.empty(n, dtype=np.uint64)
    big: list[int] = []
    it = iter(values)
    for a in range(0, n, _CLIP_CHUNK):
        chunk = list(islice(it, _CLIP_CHUNK))
        try:
            out[a : a + len(chunk)] = np.fromiter(chunk, dtype=np.uint64, count=len(chunk))
        except OverflowError:
            out[a : a + len(chunk)] = np.fromiter(map(min, chunk, repeat(NO_LOC)),
                                                  dtype=np.uint64, count=len(chunk))
            big.extend(loc & SLOT_MASK for loc in chunk if loc > NO_LOC)
    return out, big


def _select(expected: np.ndarray | list[int], mask: npt.NDArray[np.bool_]
            ) -> np.ndarray | list[int]:
    if isinstance(expected, np.ndarray):
        return expected[mask]
    return list(compress(expected, mask.tolist()))


class Maintenance(RunSet):
    """Merges and compaction of a ``HybridLog``'s runs (a base class)."""

    _live: int
    _mut: dict[bytes, bytes]
    _frozen: dict[bytes, bytes | None]

    def _maintain(self) -> None:
        """Merge over-full levels (and compact sparse runs if enabled); commit if any changed."""
        self._maintenance = True  # until done: a failed merge is retried on the next write
        changed = False
        while True:
            counts = [r.count for r in self._runs]
            # live records on disk: one per index entry; with an expiry horizon, expired
            # records are index entries until a merge drops them: the space bound cannot
            # see them, so every level is merged by count (``merge.py``)
            live = len(self._index) if self.expiry is None else None
            group = pick_merge(counts, self.max_runs_per_level, live)
            if group is None and live is not None and over_space(counts, live):
                group = pick_dead(counts, self._run_live_counts(), live) or None
            if group is None and self.compaction_enabled:
                group = self._sparse_run()
            expiring = False
            if group is None and self.expiry is not None:
                group = self._expiring_run()
                expiring = group is not None
            if group is None:
                break
            before = {r.name for r in self._runs}
            self._merge(group)
            if expiring:
                self.stats.expiry_compactions += 1
            if expiring and self.expiry is not None:
                self._planner().done({r.name for r in self._runs} - before,
                                     self.expiry.horizon)
            changed = True
        if changed:
            self._commit([r.name for r in self._runs], {"format": RUN_VERSION})
        self._maintenance = False  # only now: a failed merge is retried on the next write

    def _expiry_changed(self) -> None:
        self._maintenance = True  # the next write checks for mostly expired runs

    def _planner(self) -> ExpiryPlanner:
        planner = self.__dict__.get("_expiry_planner")
        if planner is None:
            planner = self.__dict__["_expiry_planner"] = ExpiryPlanner()
        return planner

    def _expiring_run(self) -> list[int] | None:
        """The first run whose expired records hold half its value bytes (``expiry.py``)."""
        expiry = self.expiry
        assert expiry is not None

        def stamps_of(pos: int) -> tuple[np.ndarray, np.ndarray]:
            run = self._runs[pos]
            ends = run.ends()
            lens = np.diff(ends.astype(np.int64), prepend=0)
            cand = lens >= STAMP_LEN
            starts = (ends.astype(np.int64) - lens)[cand]
            return stamps_at(run.mm, starts), lens[cand]

        pos = self._planner().pick([(r.name, r.values_len) for r in self._runs],
                                   expiry.horizon, stamps_of)
        return None if pos is None else [pos]

    def _live_counts(self) -> list[int]:
        """Index entries per slot (a list indexed by slot).

        Cost: one C-level pass over the index's values and a numpy count (was a Python
        step per entry: 16 ms per 50,000 entries, one per merge of an operator's fold).
        """
        locs, big = _index_locs(self._index)
        slots = (locs[locs != np.uint64(NO_LOC)] & np.uint64(SLOT_MASK)).astype(np.intp)
        counts: list[int] = np.bincount(slots, minlength=len(self._slots)).tolist()
        for slot in big:
            counts[slot] += 1
        return counts

    def _run_live_counts(self) -> list[int]:
        """Live records of each run (its own slot and its views'). Cost: one index pass."""
        live = self._live_counts()
        return [sum(live[slot] for slot, *_ in run.segments) for run in self._runs]

    def _sparse_run(self) -> list[int] | None:
        """Position of the first run whose live fraction is below one half, if any."""
        for pos, (run, live) in enumerate(zip(self._runs, self._run_live_counts(),
                                              strict=True)):
            if live * 2 < run.count:
                return [pos]
        return None

    def _merge(self, group: list[int]) -> None:
        """Rewrite the live records of the runs at ``group`` (ascending) into one run.

        The new run takes the place of the newest member. Tombstones are dropped only
        when ``group`` is a prefix (holds the oldest run and every run up to its newest
        member). A member whose every record is live and holds a value is *spliced*
        (``splice.py``): its values and index section are copied whole and its slots
        read from the new run, so none of its index entries moves. Cost: reads every
        member once (verifying its pages), writes the live records once; vectorized
        over records; one index store per live record of the members not spliced.
        """
        runs, index = self._runs, self._index
        members = [runs[pos] for pos in group]
        drop_tombstones = is_prefix(group)
        held = self._held_locs({s for r in members for s, *_ in r.segments},
                               sum(r.count for r in members))
        # a dict's key objects, in the scan's order (a KeyIndex would build each key)
        index_keys = list(index) if held is not None and type(index) is dict else None
        keys: list[bytes] = []
        blobs: list[bytes] = []
        lens: list[np.ndarray] = []
        dropped: list[bytes] = []
        tombs: list[bytes] = []  # expired keys written back as tombstones (not a prefix)
        splicer = Splicer(self) if self.expiry is None else None
        for run in members:
            run.verify_all()
            ends = run.ends()
            run_lens = np.diff(ends, prepend=np.uint64(0))
            expected = segment_locs(run.segments, ends)
            found = (None if held is None or not isinstance(expected, np.ndarray)
                     else _live_by_locs(held, run.segments, expected))
            at = None
            if found is None:
                run_keys = run.keys(np.ones(run.count, dtype=bool))
                live = same_locs(get_many(index, run_keys, NO_LOC), expected)
            else:
                live, at = found
                tomb = run_lens == 0  # tombstones share locations: ask the index by key
                if tomb.any():
                    tomb_keys = run.keys(tomb)
                    live[tomb] = same_locs(get_many(index, tomb_keys, NO_LOC),
                                            _select(expected, tomb))
            if splicer is not None and splicer.take(run, live, run_lens):
                continue
            if drop_tombstones:
                dead = live & (run_lens == 0)
                if dead.any():
                    dropped.extend(run.keys(dead))
                    live &= ~dead
            if self.expiry is not None:
                gone, gone_keys = self._expired(run, ends, run_lens, live)
                if gone_keys:
                    (dropped if drop_tombstones else tombs).extend(gone_keys)
                    live &= ~gone
            if not live.any():
                continue
            if index_keys is not None and at is not None and not (live & (run_lens == 0)).any():
                keys.extend(map(index_keys.__getitem__, at[live].tolist()))  # the index's own
            else:
                keys.extend(run.keys(live))
            blobs.append(gather_values(run.mm, ends, live))
            lens.append(run_lens[live])
        new_run = None
        locs: list[int] | np.ndarray
        if tombs:
            keys.extend(tombs)
            lens.append(np.zeros(len(tombs), dtype=np.uint64))
        # written before anything changes: a failure leaves the runs as they were
        if splicer is not None and splicer.spliced:
            new_run, locs = splicer.write(keys, blobs, lens)
        elif keys:
            ends_all = np.cumsum(np.concatenate(lens), dtype=np.uint64)
            new_run, locs = self._new_run(keys, b"".join(blobs), ends_all)
        where = group[-1] - (len(group) - 1)
        for pos in reversed(group):
            del runs[pos]
        if new_run is not None:
            runs.insert(where, new_run)
            store(index, keys, locs)
        delete_many(index, dropped)
        if tombs:
            self._index_tombs = True
        if dropped and self._index_tombs:  # maybe the last ones: count (a C-level pass)
            self._index_tombs = count_set(index, LEN_SHIFT) < len(index)
        for run in members:
            if splicer is not None and run in splicer.spliced:
                splicer.retire(run)
            else:
                self._drop_run(run)
        self.stats.merges += 1

    def _expired(self, run: RunFile, ends: np.ndarray, lens: np.ndarray,
                 live: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.bool_], list[bytes]]:
        """Live records of ``run`` stamped below the horizon (``expiry.py``), and their keys.

        Keys that also have a record in memory (mutable, read-only or cached region) are
        spared: only keys held on disk alone expire, so the in-memory regions and the live
        key count stay exact; they expire in a later merge, once evicted. Counts the
        expired records in the stats and in ``_live`` (they leave the index or become
        tombstones). Cost: one numpy gather of 8 bytes per live record with a value of 8+
        bytes; a key decode and two dict probes only for the expired ones.
        """
        expiry = self.expiry
        assert expiry is not None
        cand = live & (lens >= STAMP_LEN)
        dead = np.zeros(len(lens), dtype=bool)
        if not cand.any():
            return dead, []
        starts = (np.asarray(ends, dtype=np.int64) - lens.astype(np.int64))[cand]
        dead[np.flatnonzero(cand)] = expiry.expired_stamps(stamps_at(run.mm, starts))
        if not dead.any():
            return dead, []
        keys = run.keys(dead)
        mut, frozen, keep = self._mut, self._frozen, expiry.keep
        spared = [k in mut or k in frozen or k in keep for k in keys]
        if any(spared):
            at = np.flatnonzero(dead)
            dead[at[np.asarray(spared, dtype=bool)]] = False
            keys = [k for k, s in zip(keys, spared, strict=True) if not s]
        if keys:
            self.stats.expired_records += len(keys)
            self.stats.expired_bytes += int(lens[dead].sum())
            self._live -= len(keys)
        return dead, keys

    def _held_locs(self, slots: set[int], records: int
                   ) -> dict[int, tuple[np.ndarray, np.ndarray]] | None:
        """The index's locations in the runs at ``slots``, per slot: sorted, with positions.

        One sequential pass over the index's values instead of one lookup per record
        (a lookup of a key decoded from a run misses the CPU cache: a few hundred
        nanoseconds to microseconds, against tens for a sequential step). The positions
        (in the index's iteration order) let a merge reuse a dict index's own key objects,
        whose stores then find the key by identity. ``None`` when per-record lookups are
        cheaper: fewer records than the index's entries over ``_SCAN_RATIO`` (for a
        ``KeyIndex`` holding mostly 8-byte keys, whose lookups are vectorized and need no
        fixed-width conversion, times the slots: its scan is a numpy pass per slot over
        the tables' values; on the fold of ``benchmarks.engines --fold``, 50,000 hot keys,
        a merge of 11 runs took 63 ms instead of 89, under cProfile, its lookups by key
        gone; with the slot factor, keys of 8-16 bytes paid 15-20 % more on
        ``benchmarks.engines --bulk`` at batches of 10,000, 8-byte keys 5-25 % less).
        Entries of values of 256 bytes or more (locations beyond a uint64) are held as
        ``NO_LOC``, which no record's location equals; the caller asks the index by key
        about the runs holding such values (``segment_locs`` gives no array for them).
        Before, one such entry (an operator's metadata value) sent every merge to
        per-record lookups.
        """
        index = self._index
        # a numpy pass per slot; lookups of 8-byte keys are the cheapest (no conversion)
        eight = isinstance(index, KeyIndex) and 2 * index.eight_keys() >= len(index)
        factor = len(slots) if eight else 1
        if records * _SCAN_RATIO < len(index) * factor:
            return None
        locs = _index_locs(index)[0]
        slot_of = locs & np.uint64(SLOT_MASK)
        held = {}
        for s in slots:
            pos = np.flatnonzero(slot_of == s)
            order = np.argsort(locs[pos])
            held[s] = (locs[pos][order], pos[order])
        return held
