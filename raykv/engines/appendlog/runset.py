"""AppendLog's closed runs: slots, memory maps, loading, verification and merges.

A slot names a buffer of the engine (``_bufs``): a closed run's memory map, the active
run's buffer, or ``b""`` for a free slot (a stale location then fails its crc check and
never reads other data). Merges are size-tiered, or by space for the big runs of a large
store (the policy and the search for live records are in ``merge.py``): a merge copies
the live records of its runs into one new run, moves their index entries there and
commits; a merge of the oldest runs (a prefix) also drops tombstones. With an expiry
horizon, expired records leave in merges too (``expire.py``). Merges run on the write
path, never inside ``seal()``.

Cost: loading a run reads its footer and index section only; a merge verifies every
input's records once (one crc32 pass), then copies the live records.
"""

from __future__ import annotations

import mmap
from array import array
from collections.abc import Sequence
from itertools import accumulate

import numpy as np

from raykv.engines.appendlog.expire import expire_live, expiring_run, planner
from raykv.engines.appendlog.merge import (
    LiveRecords,
    live_records,
    over_space,
    plan_merge,
)
from raykv.engines.appendlog.runfile import (
    FOOTER,
    MAX_SLOTS,
    N_SHIFT,
    OFF_MASK,
    RUN_KIND,
    SLOT_BITS,
    SLOT_MASK,
    Run,
    RunWriter,
    decode_index,
    encode_index,
    encode_records,
    keys_in_index,
    map_file,
    pack_locs,
    read_footer,
    verify_data,
)
from raykv.engines.base import KVStore
from raykv.engines.keyindex import Index, KeyIndex, delete_many, store
from raykv.engines.space import pick_dead
from raykv.errors import CorruptionError

_MERGE_BATCH = 65536
_LOW = (1 << N_SHIFT) - 1  # a location without its record length: offset << 16 | slot
_OFF = OFF_MASK.bit_length()  # 40


class RunSet(KVStore):
    """Closed runs, their slots and memory maps, and merges (``AppendLog`` sets these)."""

    threshold: int
    max_runs_per_level: int
    _index: Index  # ``keyindex.py``: a dict, or a KeyIndex once short keys came in bulk
    _dead: set[bytes]
    _bufs: list[mmap.mmap | bytes]
    _slot_names: list[str | None]
    _free_slots: list[int]
    _runs: list[Run]
    _uncommitted: bool
    _slow: bool
    _writer: RunWriter | None
    _aname: str | None
    _aslot: int
    _abase: int
    _pos: int
    _flushed: int
    _flush_at: int
    _acap: int
    _alens: array[int]
    _aklens: array[int]
    _avlens: array[int]
    _amm: mmap.mmap

    def _alloc_slot(self, buf: mmap.mmap | bytes, name: str) -> int:
        if not self._free_slots and len(self._bufs) >= MAX_SLOTS:  # pragma: no cover
            msg = f"AppendLog at {self.data_dir} has {MAX_SLOTS} runs; raise threshold"
            raise RuntimeError(msg)
        if self._free_slots:
            slot = self._free_slots.pop()
            self._bufs[slot] = buf
            self._slot_names[slot] = name
            return slot
        self._bufs.append(buf)
        self._slot_names.append(name)
        return len(self._bufs) - 1

    def _free_slot(self, slot: int) -> None:
        buf = self._bufs[slot]
        if isinstance(buf, mmap.mmap) and buf is not self._amm:
            buf.close()
        self._bufs[slot] = b""  # a stale location would fail its crc check, never read data
        self._slot_names[slot] = None
        self._free_slots.append(slot)

    def _load_run(
        self, name: str
    ) -> tuple[Run, list[bytes], list[int], Sequence[int], list[int]]:
        """Map run ``name``, check footer and index section; return it and its records.

        Returns the run, then its records' keys, value lengths, offsets and lengths.
        """
        path = self.data_dir / name
        mm = map_file(path)
        try:
            run = read_footer(path, mm)
            keys, vlens, offs, ns = decode_index(path, run, mm)
            run.slot = self._alloc_slot(mm, name)
        except BaseException:
            mm.close()
            raise
        self._runs.append(run)
        return run, keys, vlens, offs, ns

    def _verify_data(self, run: Run) -> None:
        """Check the crc of all of ``run``'s records once per open (C speed)."""
        verify_data(self.data_dir / run.name, run, self._bufs[run.slot])

    def _record_corrupt(self, loc: int) -> None:
        slot = loc & SLOT_MASK
        name = self._slot_names[slot] or "<unknown run>"
        raise CorruptionError(self.data_dir / name, "crc", offset=loc >> SLOT_BITS & OFF_MASK,
                              detail="record checksum mismatch")

    def _read_records(self, locs: list[int]) -> bytes:
        """The raw records at ``locs``, concatenated.

        Records that follow each other in one buffer are read as one slice: a merge
        passes live records in index order, which follows a run's record order for
        keys written in order (a bulk load), so a dense run costs a few slices.
        Cost: two C-level passes over ``locs``, vectorized block detection, one slice
        per block of adjacent records.
        """
        if not locs:
            return b""
        n = len(locs)
        # slot << 40 | offset: records adjacent in one buffer are adjacent numbers
        low = np.fromiter(map(_LOW.__and__, locs), dtype=np.uint64, count=n)
        where = (low & np.uint64(SLOT_MASK)) << np.uint64(_OFF) | low >> np.uint64(SLOT_BITS)
        ends = where + np.fromiter(map(N_SHIFT.__rrshift__, locs), dtype=np.uint64, count=n)
        cut = np.flatnonzero(ends[:-1] != where[1:]) + 1  # a block starts after each gap
        firsts = where[np.concatenate(([0], cut))].tolist()
        lasts = ends[np.concatenate((cut - 1, [n - 1]))].tolist()
        b, mask = self._bufs, OFF_MASK
        return b"".join([b[w >> _OFF][w & mask : e & mask]
                         for w, e in zip(firsts, lasts, strict=True)])

    def _commit_runs(self) -> None:
        """Commit every closed run, oldest first, as the live set."""
        self._commit([r.name for r in self._runs], {})
        self._uncommitted = False

    def _plan_merge(self) -> list[int] | None:
        """The next merge as positions in ``self._runs`` (ascending), or ``None``."""
        return self._plan()[0]

    def _plan(self) -> tuple[list[int] | None, str]:
        """The next merge (see ``merge.py``) and its kind.

        Kinds: ``"count"``, ``"space"``, ``"dead"`` (a space merge of runs without a live
        record), ``"expiry"``; ``(None, "")`` when none is due. By count first, then by
        space (the active run is empty whenever merges are planned, so the index entries
        are the closed runs' live records), then, with an expiry horizon, a run merged
        alone because of expiry (``expire.py``: half of it expired, or a share of the
        whole store). Cost: O(runs), plus one pass over the index when a space merge is
        due.
        """
        sizes = [r.size for r in self._runs]
        counts = [r.count for r in self._runs]
        live = len(self._index)
        # with an expiry horizon, expired records are index entries until a merge drops
        # them: the space bound cannot see them, so every level is merged by count
        by_space = self.expiry is None
        plan = plan_merge(sizes, self.max_runs_per_level,
                          self._live_bytes(sizes, counts) if by_space else None)
        if plan is not None:
            return list(range(*plan)), "count"
        if by_space and over_space(sizes, counts, live):
            live_counts = self._run_live_counts()
            group = pick_dead(counts, live_counts, live)
            if group:
                return group, "space" if any(live_counts[pos] for pos in group) else "dead"
        if self.expiry is not None:
            pos = expiring_run(self, self.expiry.horizon)
            if pos is not None:
                return [pos], "expiry"
        return None, ""

    def _live_bytes(self, sizes: list[int], counts: list[int]) -> int:
        """Estimate of the live data's bytes: live records x the mean closed record."""
        return len(self._index) * sum(sizes) // max(1, sum(counts))

    def _run_live_counts(self) -> list[int]:
        """Live records (index entries) of each closed run. Cost: one index pass."""
        index = self._index
        if isinstance(index, KeyIndex):
            d_vals, t_vals, big_vals = index.value_parts()
            slots = np.concatenate([
                np.fromiter(map(SLOT_MASK.__and__, [*d_vals, *big_vals]), dtype=np.int64,
                            count=len(d_vals) + len(big_vals)),
                (t_vals & np.uint64(SLOT_MASK)).astype(np.int64)])
        else:
            slots = np.fromiter(map(SLOT_MASK.__and__, index.values()), dtype=np.int64,
                                count=len(index))
        live = np.bincount(slots, minlength=len(self._bufs)).tolist()
        return [live[r.slot] for r in self._runs]

    def _expiry_changed(self) -> None:
        if not self._pos:  # merges need an empty active run; else the next close plans
            self._slow = True  # the next write checks for runs to merge because of expiry

    def _run_merges(self) -> None:
        """Perform due merges (the active run is empty), then leave the slow path."""
        while True:
            group, kind = self._plan()
            if group is None:
                break
            before = {r.name for r in self._runs}
            if kind == "expiry":
                self.stats.expiry_compactions += 1
            self._merge_runs(group, dead=kind == "dead")
            if self.expiry is not None:  # a run it wrote is not merged again for expiry
                planner(self).done({r.name for r in self._runs} - before,
                                   self.expiry.horizon)
        self._slow = self._closed

    def _merge(self, first: int, end: int) -> None:
        """``_merge_runs`` of the runs ``self._runs[first:end]``."""
        self._merge_runs(range(first, end))

    def _merge_runs(self, group: Sequence[int], *, dead: bool = False) -> None:
        """Copy the live records of the runs at ``group`` (ascending) into one run; commit.

        A record is live when the index points at it (``merge.live_records``). The new
        run takes the place of the newest member: no run after it holds a record of a
        key it holds (that record would be the live one). Tombstones are dropped (and
        their keys leave the index) only when ``group`` is a prefix (the oldest runs):
        then no older run can still hold the key. Every input's records are
        crc-verified (one C-level pass) before anything is copied. ``dead``: the caller
        counted no live record in ``group`` (``_plan``): the runs are dropped, unread.
        """
        assert not self._pos
        runs = self._runs
        inputs = [runs[pos] for pos in group]
        prefix = group[-1] == len(group) - 1
        index = self._index
        if dead:  # every record is superseded: nothing to copy, no tombstone to drop
            rec = LiveRecords([], [], [], [], [], [])
        else:
            for run in inputs:
                self._verify_data(run)
            rec = live_records(
                index, inputs, self._bufs, self.data_dir, drop_tombstones=prefix,
                whole=prefix and len(group) == len(runs))
        tombs: list[bytes] = []
        trecs: list[bytes] = []
        if self.expiry is not None:
            rec, tombs = expire_live(rec, self._bufs, self.expiry, self.stats,
                                     drop=prefix)
        keys, locs, ns, klens, vlens, gone = rec
        if tombs:  # expired records outside an oldest-run merge: key-only tombstones
            tklens = list(map(len, tombs))
            trecs = encode_records(tombs, [b""] * len(tombs), tklens, [0] * len(tombs))
            keys = keys + tombs
            ns = ns + list(map(len, trecs))
            klens = klens + tklens
            vlens = vlens + [0] * len(tombs)
        name = self._new_file(RUN_KIND)
        writer = RunWriter(self.data_dir / name)
        new: list[Run] = []
        try:
            if keys:
                for a in range(0, len(locs), _MERGE_BATCH):
                    writer.write(self._read_records(locs[a : a + _MERGE_BATCH]))
                if tombs:
                    writer.write(b"".join(trecs))
                size = writer.finish(len(keys), encode_index(
                    klens, vlens, keys if keys_in_index(vlens) else None))
                self._written(name, size)
                slot = self._alloc_slot(map_file(self.data_dir / name), name)
                new.append(Run(name, slot, writer.data_len,
                                size - writer.data_len - FOOTER.size, len(keys), size,
                                writer.crc, verified=True))
                new_offs: Sequence[int]
                if min(ns) == max(ns):
                    new_offs = range(0, ns[0] * len(ns), ns[0])
                else:
                    new_offs = list(accumulate(ns[:-1], initial=0))
                store(index, keys, pack_locs(slot, new_offs, ns))
        except BaseException:
            writer.abort()
            raise
        delete_many(index, gone)
        self._dead.difference_update(gone)
        self._dead.update(tombs)
        where = group[-1] - (len(group) - 1)  # the newest member's place, once they leave
        for pos in reversed(group):
            del runs[pos]
        runs[where:where] = new
        for run in inputs:
            self._free_slot(run.slot)
        self.stats.merges += 1
        self._commit_runs()
