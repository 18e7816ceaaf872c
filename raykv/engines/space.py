"""Merges by space, shared by the hash engines (HybridLog and AppendLog, issue 15 item 3).

A large store does not rewrite runs that are still mostly live (each live record costs
one index store). Its dead records are reclaimed when the disk holds more than
``SPACE_AMP`` times as many records as there are live records: the runs with the lowest
live fraction are rewritten (:func:`pick_dead`) until the disk is back to ``TARGET_AMP``
times the live records. When a store counts as large is each engine's ``over_space``.
"""

from __future__ import annotations

from collections.abc import Sequence

SPACE_AMP = 2  # disk records above this multiple of the live records start a space merge
TARGET_AMP = 1.5  # ... which rewrites the deadest runs until the disk is back to this


def pick_dead(counts: Sequence[int], live_counts: Sequence[int], live: int) -> list[int]:
    """The runs a space merge rewrites: the deadest first, down to ``TARGET_AMP`` x live.

    Runs are taken by ascending live fraction until the runs would hold ``TARGET_AMP`` x
    ``live`` records; never a run without dead records. ``counts[i]``/``live_counts[i]``:
    records / live records of run ``i``. Returns positions, ascending (empty when no run
    has a dead record). Cost: O(runs log runs).
    """
    total = sum(counts)
    order = sorted(range(len(counts)), key=lambda p: live_counts[p] / max(1, counts[p]))
    group = []
    for pos in order:
        if total <= TARGET_AMP * live or live_counts[pos] >= counts[pos]:
            break
        group.append(pos)
        total -= counts[pos] - live_counts[pos]
    return sorted(group)
