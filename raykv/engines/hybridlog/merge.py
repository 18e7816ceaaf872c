"""HybridLog merge policy: size-tiered levels over the on-disk runs.

A run's level is ``floor(log_base(records))`` with ``base = max(2, max_runs_per_level)``
(integer arithmetic, so 1,000 records with base 10 is level 3). When a level holds more
than ``max_runs_per_level`` runs, all runs of that level are merged into one, which lands
about one level higher. A record is therefore rewritten about once per level it climbs,
and small runs (one per ``seal()``) are merged with each other long before they are
merged with the large runs that hold most of the state: this keeps the bytes an
incremental checkpoint uploads close to the bytes that changed.

Runs of one level need not be adjacent in age. The engine copies only *live* records
(those the disk index points to), so the merged run may take the place of the newest
member: no record in a run after it can be older than a record it holds.

Large stores (issue 15 item 3): rewriting a run that is still mostly live costs one index
store per live record, so once a store holds ``BIG_RUN_RECORDS`` records the levels of
runs that big which are within one level of the live key count (``big_level``) are not
merged by count. Their dead records are reclaimed by space instead: when the disk holds
more than ``SPACE_AMP`` times as many records as there are live records (index entries),
the runs with the lowest live fraction are rewritten together (``pick_dead``) until the
disk is back to ``TARGET_AMP`` times the live records. So the disk holds at most about
``SPACE_AMP`` x the live records plus the flush that crossed the bound, and a key
written once per pass over the store costs no merge at all until a pass has made the old
runs mostly dead. The number of runs stays bounded: the exempt runs hold at least
``live / base**2`` records each, so there are at most ``SPACE_AMP * base**2`` of them.
A store counts as large for space merges once its disk holds ``SPACE_FLOOR_RUNS`` x
``BIG_RUN_RECORDS`` records (about 1M): below that the dead records are few in bytes, and
a small store whose keys are all rewritten every epoch (an ``Aggregate`` of 50,000 hot
keys at 0.1 s checkpoints) would otherwise rewrite its whole state every other epoch.
With an expiry horizon set, every level is merged by count as in small stores: expired
records stay index entries until a merge drops them, so the space bound cannot see them.
"""

from __future__ import annotations

from collections.abc import Sequence

from raykv.engines.space import SPACE_AMP

BIG_RUN_RECORDS = 1 << 16  # runs this big, in stores this big, are merged by space
SPACE_FLOOR_RUNS = 16  # ... and only stores of this many such runs' records at least


def run_level(records: int, base: int) -> int:
    """Return the level of a run holding ``records`` records (0 for fewer than ``base``)."""
    level = 0
    while records >= base:
        records //= base
        level += 1
    return level


def big_level(level: int, base: int, live: int) -> bool:
    """True when runs of ``level`` are merged by space only (see the module docstring).

    ``live``: live records on disk (index entries). A level is big when its runs hold at
    least ``BIG_RUN_RECORDS`` records and it is within one level of ``live``'s level.
    """
    return base**level >= BIG_RUN_RECORDS and level >= run_level(live, base) - 1


def pick_merge(counts: Sequence[int], max_runs_per_level: int,
               live: int | None = None) -> list[int] | None:
    """Choose the runs to merge by count next, or ``None`` if every level is within bounds.

    Args:
        counts: record counts of the runs, oldest first.
        max_runs_per_level: most runs a level may hold.
        live: live records on disk (index entries); when given, big levels
            (``big_level``) are left to ``over_space`` / ``pick_dead``.

    Returns:
        Positions (ascending, i.e. oldest first) of every run in the lowest level that
        holds more than ``max_runs_per_level`` runs.

    Cost: O(len(counts)).
    """
    base = max(2, max_runs_per_level)
    levels: dict[int, list[int]] = {}
    for pos, count in enumerate(counts):
        levels.setdefault(run_level(count, base), []).append(pos)
    for level in sorted(levels):
        if len(levels[level]) > max_runs_per_level and (
            live is None or not big_level(level, base, live)
        ):
            return levels[level]
    return None


def over_space(counts: Sequence[int], live: int) -> bool:
    """True when a big store holds more than ``SPACE_AMP`` x ``live`` records. O(runs).

    Big: at least ``SPACE_FLOOR_RUNS`` x ``BIG_RUN_RECORDS`` records on disk. Below that
    the count policy alone bounds the runs: a store of 50,000 hot keys that rewrites
    most of them every epoch would otherwise rewrite its live records every other epoch
    (``benchmarks.engines --fold``).
    """
    total = sum(counts)
    return total >= SPACE_FLOOR_RUNS * BIG_RUN_RECORDS and total > SPACE_AMP * live


def is_prefix(positions: Sequence[int]) -> bool:
    """True when ``positions`` (ascending) are exactly the oldest runs ``0..k``.

    Only a merge of a prefix may drop tombstones: no run outside it can hold an older
    record of a deleted key.
    """
    return bool(positions) and positions[-1] == len(positions) - 1

