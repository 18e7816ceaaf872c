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
"""

from __future__ import annotations

from collections.abc import Sequence


def run_level(records: int, base: int) -> int:
    """Return the level of a run holding ``records`` records (0 for fewer than ``base``)."""
    level = 0
    while records >= base:
        records //= base
        level += 1
    return level


def pick_merge(counts: Sequence[int], max_runs_per_level: int) -> list[int] | None:
    """Choose the runs to merge next, or ``None`` if every level is within bounds.

    Args:
        counts: record counts of the runs, oldest first.
        max_runs_per_level: most runs a level may hold.

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
        if len(levels[level]) > max_runs_per_level:
            return levels[level]
    return None


def is_prefix(positions: Sequence[int]) -> bool:
    """True when ``positions`` (ascending) are exactly the oldest runs ``0..k``.

    Only a merge of a prefix may drop tombstones: no run outside it can hold an older
    record of a deleted key.
    """
    return bool(positions) and positions[-1] == len(positions) - 1
