"""AppendLog merge policy: size-tiered levels over the closed runs.

A run's level is its size class, ``log_m(size / LEVEL_UNIT)`` rounded down with
``m = max_runs_per_level``, raised where needed so that levels never grow from older to
younger runs (so every level is a contiguous stretch of the age order). As soon as a
level holds ``max_runs_per_level`` runs they are merged into one, which lands about one
level up. When the runs younger than the oldest (the *base*) take ``FULL_MERGE_RATIO``
times the base's bytes, the merge takes every closed run instead, which bounds the disk
to about three times the live data and is where tombstones are dropped.
"""

from __future__ import annotations

import mmap
from collections import Counter
from collections.abc import Sequence
from itertools import compress, repeat
from operator import add, and_, eq, not_, rshift
from pathlib import Path
from typing import NamedTuple

from raykv.engines.appendlog.runfile import (
    N_BITS,
    N_MASK,
    OFF_MASK,
    SLOT_SHIFT,
    SMALL_N,
    Run,
    decode_index,
    pack_locs,
    parse_header,
)

# every closed run is merged when the runs younger than the oldest hold this many times its
# bytes: the disk holds at most about (1 + FULL_MERGE_RATIO) x the live data
FULL_MERGE_RATIO = 2
LEVEL_UNIT = 4096  # runs below LEVEL_UNIT * max_runs_per_level bytes are on level 0
SCAN_FACTOR = 4  # live records are found by scanning the index up to this index/input ratio


def levels(sizes: Sequence[int], m: int) -> list[int]:
    """Level of each run (sizes oldest first): its size class, raised to that of younger runs."""
    out = []
    level = 0
    for size in reversed(sizes):
        c = 0
        bound = LEVEL_UNIT * m
        while size >= bound:
            c += 1
            bound *= m
        level = max(level, c)
        out.append(level)
    out.reverse()
    return out


def plan_merge(sizes: Sequence[int], max_runs_per_level: int) -> tuple[int, int] | None:
    """Pick the next merge as a slice ``(first, end)`` of the runs, or ``None``.

    ``sizes`` are the closed runs' file sizes, oldest first. The youngest level holding
    ``max_runs_per_level`` runs is merged; if the runs younger than the base take
    ``FULL_MERGE_RATIO`` times the base's bytes, every closed run is merged instead.
    Cost: O(runs).
    """
    if len(sizes) < 2:
        return None
    run_levels = levels(sizes, max_runs_per_level)
    counts = Counter(run_levels)
    for level in sorted(counts):
        if counts[level] < max_runs_per_level:
            continue
        if sum(sizes[1:]) >= FULL_MERGE_RATIO * sizes[0]:
            return 0, len(sizes)
        first = run_levels.index(level)
        return first, first + counts[level]
    return None


class LiveRecords(NamedTuple):
    """The records a merge copies, in copy order, and the keys whose tombstones it drops."""

    keys: list[bytes]
    locs: list[int]
    ns: list[int]  # record lengths
    klens: list[int]
    vlens: list[int]
    gone: list[bytes]  # keys of dropped tombstones (to remove from the index)


def live_records(index: dict[bytes, int], inputs: Sequence[Run],
                 bufs: Sequence[mmap.mmap | bytes], data_dir: Path, *,
                 drop_tombstones: bool, whole: bool = False) -> LiveRecords:
    """Find the records of ``inputs`` that ``index`` points at (their live records).

    ``bufs`` maps slots to run buffers. ``whole``: the inputs are every run the index
    points into (a merge of all closed runs with the active run empty); then every entry
    is live and no selection is needed (two C-level copies of the index). Cost: when
    ``index`` holds at most ``SCAN_FACTOR`` times as many keys as the inputs have
    records, C-level passes over the index's values; otherwise the inputs' index
    sections are decoded and their keys looked up (about 4x dearer per record). Value
    lengths come from the locations alone for small records, else from one header parse
    per record.
    """
    keys: list[bytes]
    locs: list[int]
    if whole:  # every index entry points into the inputs: no selection
        keys = list(index)
        locs = list(index.values())
    elif len(index) <= SCAN_FACTOR * sum(r.count for r in inputs):
        slots = {r.slot for r in inputs}
        locs = list(index.values())
        in_merge = list(map(slots.__contains__, map(rshift, locs, repeat(SLOT_SHIFT))))
        keys = list(compress(index, in_merge))
        locs = list(compress(locs, in_merge))
    else:
        keys = []
        locs = []
        for run in inputs:
            run_keys, _, offs, ns = decode_index(data_dir / run.name, run, bufs[run.slot])
            run_locs = pack_locs(run.slot, offs, ns)
            live = list(map(eq, map(index.get, run_keys), run_locs))
            keys.extend(compress(run_keys, live))
            locs.extend(compress(run_locs, live))
    ns = list(map(and_, locs, repeat(N_MASK)))
    klens = list(map(len, keys))
    if not ns or max(ns) < SMALL_N:
        vlens = list(map(int.__sub__, ns, map(add, klens, repeat(6))))
    else:
        vlens = [parse_header(bufs[loc >> SLOT_SHIFT], loc >> N_BITS & OFF_MASK)[1]
                 for loc in locs]
    if not drop_tombstones or all(vlens):
        return LiveRecords(keys, locs, ns, klens, vlens, [])
    has_value = list(map(bool, vlens))
    return LiveRecords(
        list(compress(keys, has_value)), list(compress(locs, has_value)),
        list(compress(ns, has_value)), list(compress(klens, has_value)),
        list(compress(vlens, has_value)), list(compress(keys, map(not_, has_value))),
    )
