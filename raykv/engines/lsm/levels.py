"""LSMTree levels: flushes of the memtable to runs, merges between levels, the run set.

Run files are immutable; a flush writes the memtable as one new level-0 run, and a merge
(``compaction.py`` picks it) rewrites the runs of one level, or of two, into one run of
the next. Every change of the run set rebuilds the newest-first probe list that reads
walk (``_levels_changed``); a merge commits the new layout (a manifest with ``levels``),
a flush does not (``seal()`` commits it).

Cost: a flush writes the memtable once; tiered merges rewrite each entry about once per
level (leveling: up to ``size_ratio`` times per level). Every new run is fsynced on a
helper thread right away, so the commit that lists it rarely waits for the disk.
"""

from __future__ import annotations

import mmap
import os
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from raykv.engines.base import KVStore
from raykv.engines.lsm.compaction import (
    Chunk,
    MergePlan,
    chunked,
    merge_into,
    output_level,
    pick_merge,
)
from raykv.engines.lsm.memtable import Memtable
from raykv.engines.lsm.run_format import RUN_KIND
from raykv.engines.lsm.run_reader import RunReader
from raykv.engines.lsm.run_writer import RunWriter
from raykv.engines.lsm.stamps import ExpiryCompactions, StampCollector
from raykv.engines.manifest import Manifest
from raykv.errors import CorruptionError

# What get() walks, newest run first: runs in a row whose filters have the same number of
# words share one word index. A run is (bloom's complemented words, (its fences' position,
# block offsets, mmap, reader)).
RunProbe = tuple["array[int]", tuple[Callable[[bytes], int], "array[int]", mmap.mmap,
                                     RunReader]]
ProbeGroup = tuple[int, list[RunProbe]]


class LevelSet(KVStore):
    """The run files of an ``LSMTree`` by level, with flushes and merges (a base class).

    ``LSMTree`` sets every attribute declared here in its ``__init__``.
    """

    max_runs_per_level: int
    density_factor: int
    memtable_bytes_limit: int
    size_ratio: int
    bloom_bits_per_key: int
    _mem: Memtable
    _levels: list[list[RunReader]]
    _probes: list[ProbeGroup]
    _newest_first: list[RunReader]
    _run_memory: dict[str, int]
    _runs_memory: int
    _disk_entries: int
    _uncommitted: bool
    _syncer: ThreadPoolExecutor | None
    _flush_at: int
    _expiry_runs: ExpiryCompactions

    def _after_write(self) -> None:
        """Flush a full memtable, then run every merge that is due (cascading)."""
        if self._mem.nbytes > self.memtable_bytes_limit:
            self._flush()
        while (plan := self._next_merge()) is not None:
            self._merge(plan)
        self._flush_at = self.memtable_bytes_limit

    def _flush(self) -> None:
        """Write the memtable to a new level-0 run (no merge, no commit)."""
        mem = self._mem
        keys, values = mem.sorted_items()
        older = self._newest_first
        run = self._write_run([iter(chunked(keys, values))], older, len(keys))
        mem.clear()
        if run is not None:
            if not self._levels:
                self._levels.append([])
            self._levels[0].append(run)
            self._levels_changed()

    def _merge(self, plan: MergePlan) -> None:
        """Carry out one merge and commit the new level layout (deletes the inputs)."""
        levels = self._levels
        while len(levels) <= plan.target:
            levels.append([])
        if plan.run is not None:
            self._rewrite(plan.source, plan.run)
            return
        if plan.source == plan.target:
            inputs = list(levels[plan.source])
        elif plan.include_target:
            inputs = levels[plan.target] + levels[plan.source]
        else:
            inputs = list(levels[plan.source])
        older = [r for level in levels[plan.source + 1 :] for r in level if r not in inputs]
        run = self._write_run(
            [r.iter_chunks() for r in inputs], older, sum(r.entry_count for r in inputs),
            inputs=inputs,
        )
        levels[plan.source] = []
        if plan.include_target or plan.source == plan.target:
            levels[plan.target] = []
        if run is not None:
            in_bytes = sum(r.data_bytes for r in inputs)
            level = output_level(plan, in_bytes, run.data_bytes, self.max_runs_per_level)
            levels[level].append(run)
        while levels and not levels[-1]:
            levels.pop()
        self.stats.merges += 1
        self._levels_changed()
        self._commit_levels()
        self._close_runs(inputs)

    def _rewrite(self, level: int, pos: int) -> None:
        """Rewrite run ``pos`` of ``level`` alone (an expiry compaction) and commit."""
        runs = self._levels[level]
        old = runs[pos]
        older = runs[:pos] + [r for lv in self._levels[level + 1 :] for r in lv]
        run = self._write_run([old.iter_chunks()], older, old.entry_count, inputs=[old])
        runs[pos : pos + 1] = [] if run is None else [run]
        while self._levels and not self._levels[-1]:
            self._levels.pop()
        self.stats.merges += 1
        self.stats.expiry_compactions += 1
        self._levels_changed()
        self._commit_levels()
        self._close_runs([old])

    def _write_run(
        self, sources: list[Iterator[Chunk]], older: Sequence[RunReader], expected: int,
        inputs: Sequence[RunReader] = (),
    ) -> RunReader | None:
        """Merge ``sources`` (oldest first) into a new run file; ``None`` if it is empty.

        ``inputs``: the runs ``sources`` read (a merge). Their filters and fences leave
        memory until the caller swaps in the new run (the merge reads them through their
        block offsets; nothing reads the engine meanwhile), so that a merge as big as the
        state holds the new run's probes, not both runs' (``tracemalloc``, two runs of 1M
        8-byte keys merged: peak 6.7 -> 4.1 bytes per input entry above the open runs).
        If the merge fails they are read again.
        With an expiry horizon, also notes the new run's stamp summary (``stamps.py``).
        """
        if inputs:
            self._levels_changed(without=inputs)
            for r in inputs:
                r.release_probes()
        try:
            return self._write_new_run(sources, older, expected)
        except BaseException:
            for r in inputs:
                r.reload_probes()
            self._levels_changed()
            raise

    def _write_new_run(
        self, sources: list[Iterator[Chunk]], older: Sequence[RunReader], expected: int
    ) -> RunReader | None:
        """:meth:`_write_run`'s merge and open (no bookkeeping of inputs)."""
        name = self._new_file(RUN_KIND)
        path = self.data_dir / name
        writer = RunWriter(path, density_factor=self.density_factor,
                           bits_per_key=self.bloom_bits_per_key, expected_keys=expected)
        collector = None if self.expiry is None else StampCollector()

        def add(keys: list[bytes], values: list[bytes]) -> None:
            writer.add(keys, values)
            if collector is not None:
                collector.add(keys, values)

        try:
            merge_into(sources, [r.bloom for r in older], add, self.expiry, self.stats)
            if not writer.entry_count:
                writer.abort()
                return None
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        self._written(name, writer.file_size)
        self._expiry_runs.written(name, None if collector is None else collector.summary(),
                                  None if self.expiry is None else self.expiry.horizon)
        self._uncommitted = True
        self._sync_in_background(path)
        return self._open_run(name)

    def _sync_in_background(self, path: Path) -> None:
        """Start fsyncing a new run on a helper thread (fsync releases the GIL).

        The manifest commit still fsyncs every file it lists; this only makes that fsync
        cheap, so ``seal()`` after many writes does not wait for all their data to reach
        the disk at once.
        """
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="raykv-lsm-fsync")
        self._syncer.submit(_fsync_if_present, path)

    # ------------------------------------------------------------------ bookkeeping

    def _open_run(self, name: str) -> RunReader:
        run = RunReader(self.data_dir / name)
        self._run_memory[name] = sys.getsizeof(run)
        return run

    def _close_runs(self, runs: list[RunReader]) -> None:
        for r in runs:
            self._run_memory.pop(r.name, None)
            r.close()

    def _levels_changed(self, without: Sequence[RunReader] = ()) -> None:
        """Rebuild the newest-first probe list after the set of runs changed.

        ``without``: runs left out (a merge's inputs, whose probes it releases).
        """
        newest = [r for level in self._levels for r in reversed(level) if r not in without]
        self._newest_first = newest
        groups: list[ProbeGroup] = []
        for r in newest:
            probe = (r.bloom.absent, (r.fences.position, r.block_offsets, r.mm, r))
            if groups and groups[-1][0] == r.bloom.word_mask:
                groups[-1][1].append(probe)
            else:
                groups.append((r.bloom.word_mask, [probe]))
        self._probes = groups
        self._runs_memory = sum(self._run_memory.get(r.name, 0) for r in newest)
        self._disk_entries = sum(r.entry_count for r in newest)

    def _next_merge(self) -> MergePlan | None:
        """The size policy's next merge, else a run mostly expired (``stamps.py``)."""
        plan = pick_merge(
            [[r.data_bytes for r in level] for level in self._levels],
            self.max_runs_per_level, self.memtable_bytes_limit, self.size_ratio,
        )
        if plan is None and self.expiry is not None:
            found = self._expiry_runs.pick(self._levels, self.expiry.horizon)
            if found is not None:
                return MergePlan(found[0], found[0], include_target=False, run=found[1])
        return plan

    def _expiry_changed(self) -> None:
        self._flush_at = -1  # the next write checks for mostly expired runs

    def _merge_pending(self) -> bool:
        return self._next_merge() is not None

    def _commit_levels(self) -> None:
        names = [[r.name for r in level] for level in self._levels]
        flat = [n for level in names for n in level]
        state: dict[str, object] = {"levels": names}
        stamps = self._expiry_runs.state(flat)
        if stamps:
            state["stamps"] = stamps
        self._commit(flat, state)
        self._uncommitted = False

    @property
    def levels(self) -> list[list[str]]:
        """Run file names by level (level 0 first; oldest run of a level first)."""
        return [[r.name for r in level] for level in self._levels]


def _fsync_if_present(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # merged away and deleted before its turn came
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def levels_from_state(path: os.PathLike[str], manifest: Manifest) -> list[list[str]]:
    """Validate the manifest's ``levels`` against its file list."""
    levels = manifest.state.get("levels", [])
    if not (
        isinstance(levels, list)
        and all(isinstance(lv, list) and all(isinstance(n, str) for n in lv) for lv in levels)
        and sorted(n for lv in levels for n in lv) == sorted(manifest.files)
    ):
        raise CorruptionError(path, "manifest state",
                              detail="LSM levels do not match the manifest's file list")
    return levels
