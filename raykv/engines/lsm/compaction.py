"""Merging sorted runs and choosing which level to merge next.

The merge is a k-way merge done in chunks at C speed: every round takes, from every
source, the entries up to the smallest "last key of the current chunk" among the
sources (no source can hold a smaller key later), applies them oldest source first to a
dict (so the newest value of each key wins) and sorts the dict's keys (timsort merges the
already-sorted pieces). Memory is one chunk per source. The result is the same as a
``heapq.merge`` that keeps the newest value of each key, at a fraction of the cost.

Policy (``pick_merge``):

* Tiering (``max_runs_per_level = R >= 2``): when a level holds ``R`` runs, all of them
  merge into one new run appended to the next level (cascading level by level). When the
  merge dropped at least half of its input data (overwritten values, deleted keys), the
  merged run stays in its level instead (``output_level``): the inputs held mostly the
  same keys, so the run is no bigger than that level's runs. Without this, updating a fixed
  set of keys would add a level every ``R ** i`` flushes, so memory, disk and read cost
  would grow with the number of writes; with it they are bounded by the live keys.
* Leveling (``R == 1``): a level holds one run. When a level's data bytes exceed its
  capacity ``memtable_bytes_limit * size_ratio ** (level + 1)`` its run merges with the
  next level's run into one run there; a level that holds two runs (a memtable flush
  into level 0) merges them in place.

A tombstone is dropped only when no older run outside the merge can hold its key (checked
against those runs' bloom filters, so this is exact for keys they do not hold). With an
expiry horizon (``KVStore.set_expiry``), flushes and merges first turn expired records
into tombstones, so they leave by the same rule (``expiry.py``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress

import numpy as np

from raykv.engines.expiry import Expiry
from raykv.engines.lsm.bloom import BloomFilter, hash_pair, mask_of
from raykv.engines.stats import EngineStats

Chunk = tuple[list[bytes], list[bytes]]


@dataclass(frozen=True)
class MergePlan:
    """One merge: every run of ``source`` (and of ``target`` if ``include_target``).

    The output run goes to ``target``: appended when tiering, replacing the level's runs
    when leveling (``include_target`` or ``source == target``). With ``run`` set (an
    expiry compaction, ``stamps.py``): only run ``run`` of level ``source`` is rewritten,
    and its output takes its place.
    """

    source: int
    target: int
    include_target: bool
    run: int | None = None


def pick_merge(
    level_sizes: Sequence[Sequence[int]], max_runs_per_level: int, memtable_bytes_limit: int,
    size_ratio: int,
) -> MergePlan | None:
    """Return the first merge that ``level_sizes`` needs, or ``None`` if none is due.

    ``level_sizes[i]`` lists the data bytes of level ``i``'s runs. Cost: O(levels + runs).
    """
    for level, sizes in enumerate(level_sizes):
        if max_runs_per_level >= 2:
            if len(sizes) >= max_runs_per_level:
                return MergePlan(level, level + 1, include_target=False)
        elif sizes:
            capacity = memtable_bytes_limit * size_ratio ** (level + 1)
            if sum(sizes) > capacity:
                return MergePlan(level, level + 1, include_target=True)
            if len(sizes) > 1:
                return MergePlan(level, level, include_target=False)
    return None


def output_level(plan: MergePlan, in_bytes: int, out_bytes: int, max_runs_per_level: int) -> int:
    """Level that receives the run a merge produced (see the module docstring).

    ``plan.target``, except for a tiering merge whose output (``out_bytes`` of key and
    value data) is at most half of its inputs' (``in_bytes``): then ``plan.source``.
    """
    if (
        max_runs_per_level >= 2
        and plan.target == plan.source + 1
        and not plan.include_target
        and 2 * out_bytes <= in_bytes
    ):
        return plan.source
    return plan.target


def merge_sorted_chunks(sources: Sequence[Iterator[Chunk]]) -> Iterator[Chunk]:
    """Merge sorted chunk streams (``sources`` ordered oldest first); newest value wins.

    Each source yields ``(keys, values)`` chunks whose keys increase strictly, also across
    chunks. Yields sorted chunks without duplicate keys. Tombstones (``b""``) are kept.
    Cost: O(n log k) comparisons in C for n entries from k sources, plus O(k) Python per
    chunk.
    """
    cursors = [c for c in map(_Cursor.first, sources) if c is not None]
    while len(cursors) > 1:
        bound = min(c.keys[-1] for c in cursors)
        merged: dict[bytes, bytes] = {}
        for c in cursors:  # oldest first: newer values overwrite older ones
            j = bisect_right(c.keys, bound, c.pos)
            if j > c.pos:
                merged.update(zip(c.keys[c.pos : j], c.values[c.pos : j], strict=True))
            c.pos = j
        cursors = [c for c in cursors if c.pos < len(c.keys) or c.advance()]
        out = sorted(merged)
        yield out, list(map(merged.__getitem__, out))
    if cursors:
        c = cursors[0]
        yield c.keys[c.pos :], c.values[c.pos :]
        yield from c.src


class _Cursor:
    """A position inside the current chunk of one source."""

    __slots__ = ("keys", "pos", "src", "values")

    def __init__(self, src: Iterator[Chunk], keys: list[bytes], values: list[bytes]) -> None:
        self.src = src
        self.keys = keys
        self.values = values
        self.pos = 0

    @classmethod
    def first(cls, src: Iterator[Chunk]) -> _Cursor | None:
        for keys, values in src:
            if keys:
                return cls(src, keys, values)
        return None

    def advance(self) -> bool:
        """Move to the next non-empty chunk; False when the source is exhausted."""
        for keys, values in self.src:
            if keys:
                self.keys, self.values, self.pos = keys, values, 0
                return True
        return False


def drop_tombstones(
    keys: list[bytes], values: list[bytes], older: Sequence[BloomFilter]
) -> Chunk:
    """Drop the tombstones whose key no ``older`` filter may hold; keep everything else.

    Cost: one C-level ``all`` when the chunk has no tombstone; otherwise one hash and one
    probe per older run for each tombstone.
    """
    if all(values):
        return keys, values
    if not older:
        return list(compress(keys, values)), list(filter(None, values))
    keep: list[bool] = []
    for k, v in zip(keys, values, strict=True):
        if v:
            keep.append(True)
            continue
        h1, h2 = hash_pair(k, 0)
        m = mask_of(h2)
        keep.append(not all(b.absent[h1 & b.word_mask] & m for b in older))
    return list(compress(keys, keep)), list(compress(values, keep))


def merge_into(
    sources: Sequence[Iterator[Chunk]], older: Sequence[BloomFilter],
    add: Callable[[list[bytes], list[bytes]], None],
    expiry: Expiry | None = None, stats: EngineStats | None = None,
) -> None:
    """Merge ``sources`` (oldest first) and feed the sorted chunks to ``add``.

    With ``expiry``, records it finds expired become tombstones first (counted in
    ``stats``); tombstones that no ``older`` run can need are then dropped; ``add`` is
    ``RunWriter.add``.
    """
    for keys, values in merge_sorted_chunks(sources):
        if expiry is not None:
            values = expire_chunk(keys, values, expiry, stats)
        k, v = drop_tombstones(keys, values, older)
        if k:
            add(k, v)


def expire_chunk(keys: list[bytes], values: list[bytes], expiry: Expiry,
                 stats: EngineStats | None) -> list[bytes]:
    """``values`` with the expired ones replaced by tombstones (``b""``)."""
    dead = expiry.expired_values(keys, values)
    if not dead.any():
        return values
    values = list(values)
    at = np.flatnonzero(dead).tolist()
    if stats is not None:
        stats.expired_records += len(at)
        stats.expired_bytes += sum(len(values[i]) for i in at)
    for i in at:
        values[i] = b""
    return values


def chunked(keys: Sequence[bytes], values: Sequence[bytes], size: int = 4096) -> Iterable[Chunk]:
    """Split aligned sorted sequences into chunks of ``size`` entries."""
    for i in range(0, len(keys), size):
        yield list(keys[i : i + size]), list(values[i : i + size])

