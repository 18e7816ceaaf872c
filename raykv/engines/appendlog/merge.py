"""AppendLog merge policy: size-tiered levels over the closed runs.

A run's level is its size class, ``log_m(size / LEVEL_UNIT)`` rounded down with
``m = max_runs_per_level``, raised where needed so that levels never grow from older to
younger runs (so every level is a contiguous stretch of the age order). As soon as a
level holds ``max_runs_per_level`` runs they are merged into one, which lands about one
level up. When the runs younger than the oldest (the *base*) take ``FULL_MERGE_RATIO``
times the base's bytes, the merge takes every closed run instead, which bounds the disk
to about three times the live data and is where tombstones are dropped.

Large stores (issue 15 item 3): rewriting runs that are still mostly live costs one index
store per live record, so once the closed runs hold ``BIG_RUN_BYTES``, levels of runs that
big which are within one level of the live data (``big_level``) are not merged by count,
and a count merge of a smaller level never escalates to a merge of every run. Dead
records are reclaimed by space instead: when the closed runs hold more than ``SPACE_AMP``
times as many records as there are live records (index entries), the runs with the lowest
live fraction are merged (``pick_dead``, not necessarily adjacent) until the disk is back
to ``TARGET_AMP`` times the live records. So a key written once per pass over the store
costs no merge until a pass has made the old runs mostly dead; the disk holds at most
about ``SPACE_AMP`` x the live records plus the run that crossed the bound. With an
expiry horizon set, the count policy applies to every level as for small stores: expired
records stay index entries until a merge drops them, so the space bound cannot see them.
"""

from __future__ import annotations

import mmap
from collections import Counter
from collections.abc import Sequence
from itertools import compress, repeat
from operator import add, and_, eq, not_, rshift
from pathlib import Path
from typing import NamedTuple

import numpy as np

from raykv.engines.appendlog.runfile import (
    N_SHIFT,
    OFF_MASK,
    SLOT_BITS,
    SLOT_MASK,
    SMALL_N,
    Run,
    decode_index,
    pack_locs,
    parse_header,
)
from raykv.engines.keyindex import Index, KeyIndex, get_many
from raykv.engines.space import SPACE_AMP

# every closed run is merged when the runs younger than the oldest hold this many times its
# bytes: the disk holds at most about (1 + FULL_MERGE_RATIO) x the live data
FULL_MERGE_RATIO = 2
LEVEL_UNIT = 4096  # runs below LEVEL_UNIT * max_runs_per_level bytes are on level 0
SCAN_FACTOR = 4  # live records are found by scanning the index up to this index/input ratio
BIG_RUN_BYTES = 1 << 20  # runs this big, in stores this big, are merged by space


def size_level(size: int, m: int) -> int:
    """Size class of a run (or of data) of ``size`` bytes: ``log_m(size / LEVEL_UNIT)``."""
    c = 0
    bound = LEVEL_UNIT * m
    while size >= bound:
        c += 1
        bound *= m
    return c


def levels(sizes: Sequence[int], m: int) -> list[int]:
    """Level of each run (sizes oldest first): its size class, raised to that of younger runs."""
    out = []
    level = 0
    for size in reversed(sizes):
        level = max(level, size_level(size, m))
        out.append(level)
    out.reverse()
    return out


def big_level(level: int, m: int, live_bytes: int) -> bool:
    """True when runs of ``level`` are merged by space only (see the module docstring).

    Its runs hold ``BIG_RUN_BYTES`` or more and it is within one level of the live data
    (``live_bytes``, an estimate).
    """
    return LEVEL_UNIT * m**level >= BIG_RUN_BYTES and level >= size_level(live_bytes, m) - 1


def plan_merge(sizes: Sequence[int], max_runs_per_level: int,
               live_bytes: int | None = None) -> tuple[int, int] | None:
    """Pick the next merge by count as a slice ``(first, end)`` of the runs, or ``None``.

    ``sizes`` are the closed runs' file sizes, oldest first. The youngest level holding
    ``max_runs_per_level`` runs is merged; if the runs younger than the base take
    ``FULL_MERGE_RATIO`` times the base's bytes, every closed run is merged instead.
    ``live_bytes`` (an estimate of the live data) turns on the large-store policy (see
    the module docstring): big levels are skipped and, in a store of ``BIG_RUN_BYTES``
    or more, a merge never escalates to every run. Cost: O(runs).
    """
    if len(sizes) < 2:
        return None
    run_levels = levels(sizes, max_runs_per_level)
    counts = Counter(run_levels)
    big_store = live_bytes is not None and sum(sizes) >= BIG_RUN_BYTES
    for level in sorted(counts):
        if counts[level] < max_runs_per_level:
            continue
        if live_bytes is not None and big_level(level, max_runs_per_level, live_bytes):
            continue
        if not big_store and sum(sizes[1:]) >= FULL_MERGE_RATIO * sizes[0]:
            return 0, len(sizes)
        first = run_levels.index(level)
        return first, first + counts[level]
    return None


def over_space(sizes: Sequence[int], counts: Sequence[int], live: int) -> bool:
    """True when a big store's runs hold more than ``SPACE_AMP`` x ``live`` records.

    ``sizes``/``counts``: bytes and records of each closed run. Cost: O(runs).
    """
    return sum(sizes) >= BIG_RUN_BYTES and sum(counts) > SPACE_AMP * live


class LiveRecords(NamedTuple):
    """The records a merge copies, in copy order, and the keys whose tombstones it drops."""

    keys: list[bytes]
    locs: list[int]
    ns: list[int]  # record lengths
    klens: list[int]
    vlens: list[int]
    gone: list[bytes]  # keys of dropped tombstones (to remove from the index)


def _table_scan(index: KeyIndex, slots: set[int]) -> tuple[list[bytes], list[int]]:
    """The entries of ``index`` in the runs at ``slots``: keys and locations.

    The tables' part in record order (run, then offset: the merge then reads adjacent
    records as one slice), then the entries outside the tables. Cost: numpy passes over
    the tables, a ``bytes`` and an int per selected entry, a Python step per entry
    outside the tables.
    """
    tlocs, keys_at = index.table_items()
    slot = tlocs & np.uint64(SLOT_MASK)
    pick = np.flatnonzero(np.isin(slot, np.fromiter(slots, dtype=np.uint64, count=len(slots))))
    offset = tlocs[pick] >> np.uint64(SLOT_BITS) & np.uint64(OFF_MASK)
    where = slot[pick] << np.uint64(OFF_MASK.bit_length()) | offset
    pick = pick[np.argsort(where)]
    keys = keys_at(pick)
    locs: list[int] = tlocs[pick].tolist()
    for key, loc in index.side_items():
        if loc & SLOT_MASK in slots:
            keys.append(key)
            locs.append(loc)
    return keys, locs


def live_records(index: Index, inputs: Sequence[Run],
                 bufs: Sequence[mmap.mmap | bytes], data_dir: Path, *,
                 drop_tombstones: bool, whole: bool = False) -> LiveRecords:
    """Find the records of ``inputs`` that ``index`` points at (their live records).

    ``bufs`` maps slots to run buffers. ``whole``: the inputs are every run the index
    points into (a merge of all closed runs with the active run empty); then every entry
    is live and no selection is needed (two C-level copies of the index). Cost: when
    ``index`` holds at most ``SCAN_FACTOR`` times as many keys as the inputs have
    records, C-level passes over the index's values (numpy passes over a ``KeyIndex``'s
    table, ``_table_scan``: on ``benchmarks.engines --fold appendlog``, 50,000 hot keys,
    the merges took 0.97 s of CPU instead of 1.78 s; they decoded every input's keys
    and looked each up); otherwise the inputs' index
    sections are decoded and their keys looked up (about 4x dearer per record). Value
    lengths come from the locations alone for records under ``SMALL_N`` bytes, else from
    one header parse per such record (an operator's one long metadata value no longer
    makes every record's header parsed).
    """
    keys: list[bytes]
    locs: list[int]
    if whole:  # every index entry points into the inputs: no selection
        keys = list(index)
        locs = list(index.values())
    elif len(index) <= SCAN_FACTOR * sum(r.count for r in inputs):
        slots = {r.slot for r in inputs}
        if isinstance(index, KeyIndex):
            keys, locs = _table_scan(index, slots)
        else:
            locs = list(index.values())
            in_merge = list(map(slots.__contains__, map(and_, locs, repeat(SLOT_MASK))))
            keys = list(compress(index, in_merge))
            locs = list(compress(locs, in_merge))
    else:
        keys = []
        locs = []
        for run in inputs:
            run_keys, _, offs, ns = decode_index(data_dir / run.name, run, bufs[run.slot])
            run_locs = pack_locs(run.slot, offs, ns)
            live = list(map(eq, get_many(index, run_keys, 0), run_locs))  # 0: no record
            keys.extend(compress(run_keys, live))
            locs.extend(compress(run_locs, live))
    ns = list(map(rshift, locs, repeat(N_SHIFT)))
    klens = list(map(len, keys))
    # a record under SMALL_N bytes has a 2-byte header: its value length is what is left
    vlens = list(map(int.__sub__, ns, map(add, klens, repeat(6))))
    if ns and max(ns) >= SMALL_N:  # parse the headers of the longer records only (before:
        for i in compress(range(len(ns)), map(SMALL_N.__le__, ns)):  # of every record)
            loc = locs[i]
            vlens[i] = parse_header(bufs[loc & SLOT_MASK], loc >> SLOT_BITS & OFF_MASK)[1]
    if not drop_tombstones or all(vlens):
        return LiveRecords(keys, locs, ns, klens, vlens, [])
    has_value = list(map(bool, vlens))
    return LiveRecords(
        list(compress(keys, has_value)), list(compress(locs, has_value)),
        list(compress(ns, has_value)), list(compress(klens, has_value)),
        list(compress(vlens, has_value)), list(compress(keys, map(not_, has_value))),
    )
