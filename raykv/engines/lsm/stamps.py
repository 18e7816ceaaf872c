"""Expiry stamps per LSM run: summaries, and which run to rewrite because of expiry.

Tiering leaves most data in the deepest level, whose runs merge only when enough new runs
reach it; with an expiry horizon (``KVStore.set_expiry``, ``engines/expiry.py``) their
expired records would stay on disk until then. So each run carries a
:class:`StampSummary` of the expiry stamps of its records, and once the horizon passes
``EXPIRED_FRACTION`` of a run's data bytes, the run is rewritten alone, in place
(:class:`ExpiryCompactions`): its expired records leave (or become key-only tombstones
where an older run may hold the key), the rest is copied.

A summary is computed while a run is written when a horizon is set (``StampCollector``:
a numpy gather of the 8-byte heads per chunk), or else on first need by one scan of the
run (runs written before ``set_expiry`` after an open, and runs of manifests without
summaries: backward compatible). Summaries are stored in the engine manifest's state
(``"stamps"``, ``engines/FORMAT.md``) so a reopen does not scan again.

Summary: records with a value of 8+ bytes (the stamped ones), sorted by stamp, cut into
at most ``SUMMARY_POINTS`` pieces of about equal bytes; for each cut, the stamp of its
last record and the key + value bytes of all records up to it. ``expired_bytes(h)`` is
then a lower bound, exact to within one piece (1/32 of the run), of the bytes of records
stamped below ``h``. Cost: O(records log records) numpy per run once; O(runs x log 32) per
planning step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from raykv.engines.expiry import STAMP_LEN
from raykv.engines.lsm.run_reader import RunReader

#: Cuts per summary (a summary is exact to within 1/SUMMARY_POINTS of its run's bytes).
SUMMARY_POINTS = 32
#: A run is rewritten when records stamped below the horizon hold this share of its
#: data bytes (key + value lengths).
EXPIRED_FRACTION = 0.25
_HEAD = itemgetter(slice(0, STAMP_LEN))


@dataclass(frozen=True)
class StampSummary:
    """Cut points ``(stamp, cumulative bytes)`` of a run's stamped records (see above)."""

    stamps: tuple[int, ...]
    cum: tuple[int, ...]

    @classmethod
    def of(cls, stamps: np.ndarray, sizes: np.ndarray) -> StampSummary:
        """The summary of records with ``stamps`` and ``sizes`` (key + value bytes)."""
        if not len(stamps):
            return cls((), ())
        order = np.argsort(stamps, kind="stable")
        s = np.asarray(stamps, dtype=np.int64)[order]
        cum = np.cumsum(np.asarray(sizes, dtype=np.int64)[order])
        total = int(cum[-1])
        goals = np.arange(1, SUMMARY_POINTS + 1, dtype=np.float64) * (total / SUMMARY_POINTS)
        at = np.unique(np.minimum(np.searchsorted(cum, goals), len(cum) - 1))
        # a cut must end a run of equal stamps, or its stamp would not bound its records
        at = np.unique(np.searchsorted(s, s[at], side="right") - 1)
        return cls(tuple(s[at].tolist()), tuple(cum[at].tolist()))

    def expired_bytes(self, horizon: int) -> int:
        """Bytes of records surely stamped below ``horizon`` (a lower bound)."""
        i = int(np.searchsorted(np.asarray(self.stamps, dtype=np.int64), horizon))
        return self.cum[i - 1] if i else 0

    def to_json(self) -> list[list[int]]:
        """``[[stamps], [cumulative bytes]]`` for the manifest."""
        return [list(self.stamps), list(self.cum)]

    @classmethod
    def from_json(cls, obj: Any) -> StampSummary:
        """Parse :meth:`to_json` output (``ValueError`` if malformed)."""
        if (
            isinstance(obj, list) and len(obj) == 2
            and all(isinstance(x, list) and all(type(v) is int for v in x) for x in obj)
            and len(obj[0]) == len(obj[1])
            and obj[0] == sorted(obj[0]) and obj[1] == sorted(obj[1])
        ):
            return cls(tuple(obj[0]), tuple(obj[1]))
        msg = f"malformed stamp summary {str(obj)[:80]!r}"
        raise ValueError(msg)


class StampCollector:
    """Gathers the stamps of the records of a run being written (``add`` per chunk)."""

    def __init__(self) -> None:
        self._stamps: list[np.ndarray] = []
        self._sizes: list[np.ndarray] = []

    def add(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Note a written chunk. Cost: a ``len`` per record and one join of 8-byte heads."""
        n = len(values)
        vlens = np.fromiter(map(len, values), dtype=np.int64, count=n)
        long = np.flatnonzero(vlens >= STAMP_LEN)
        if not len(long):
            return
        klens = np.fromiter(map(len, keys), dtype=np.int64, count=n)
        picked = values if len(long) == n else [values[i] for i in long.tolist()]
        heads = b"".join(map(_HEAD, picked))
        self._stamps.append(np.frombuffer(heads, dtype="<i8"))
        self._sizes.append((klens + vlens)[long])

    def summary(self) -> StampSummary:
        """The summary of everything added."""
        if not self._stamps:
            return StampSummary((), ())
        return StampSummary.of(np.concatenate(self._stamps), np.concatenate(self._sizes))


def scan(run: RunReader) -> StampSummary:
    """The summary of an existing run: one pass over its records."""
    collector = StampCollector()
    for keys, values in run.iter_chunks():
        collector.add(keys, values)
    return collector.summary()


class ExpiryCompactions:
    """Stamp summaries of the live runs and the choice of the next run to rewrite.

    A run rewritten for a horizon (or written by any merge under it) is not picked
    again for the same horizon, so records spared by ``keep`` or kept as tombstones do
    not cause a loop of rewrites. Memory: ``2 x SUMMARY_POINTS`` ints per run.
    """

    def __init__(self) -> None:
        self.summaries: dict[str, StampSummary] = {}
        self._checked: dict[str, int] = {}

    def load(self, state: Mapping[str, Any], live: set[str]) -> None:
        """Take the summaries of ``live`` runs from a manifest state (``ValueError``)."""
        self.summaries = {}
        self._checked = {}
        found = state.get("stamps", {})
        if not isinstance(found, dict):
            msg = "manifest 'stamps' must be an object"
            raise ValueError(msg)
        for name, obj in found.items():
            if name not in live:
                msg = f"manifest 'stamps' names {name!r}, which is not a live run"
                raise ValueError(msg)
            self.summaries[name] = StampSummary.from_json(obj)

    def state(self, live: Sequence[str]) -> dict[str, list[list[int]]]:
        """The manifest's ``"stamps"`` for the ``live`` runs (forgets the others)."""
        self.summaries = {n: s for n, s in self.summaries.items() if n in set(live)}
        self._checked = {n: h for n, h in self._checked.items() if n in self.summaries}
        return {n: self.summaries[n].to_json() for n in live if n in self.summaries}

    def written(self, name: str, summary: StampSummary | None, horizon: int | None) -> None:
        """Record a new run (its summary if collected; ``horizon``: it is expired up to it)."""
        if summary is not None:
            self.summaries[name] = summary
        if horizon is not None:
            self._checked[name] = horizon

    def pick(self, levels: Sequence[Sequence[RunReader]], horizon: int) -> tuple[int, int] | None:
        """``(level, position)`` of the first run to rewrite for ``horizon``, or ``None``.

        Deepest level first. Scans a run without a summary (once).
        """
        for level in range(len(levels) - 1, -1, -1):
            for pos, run in enumerate(levels[level]):
                if self._checked.get(run.name) == horizon:
                    continue
                summary = self.summaries.get(run.name)
                if summary is None:
                    summary = self.summaries[run.name] = scan(run)
                if summary.expired_bytes(horizon) >= EXPIRED_FRACTION * run.data_bytes > 0:
                    return level, pos
                self._checked[run.name] = horizon  # below the bar: not looked at again
        return None
