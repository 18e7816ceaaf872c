"""Expiry of stamped records in merges: a compaction filter that the operator drives.

An engine knows nothing about time. A user of the engine (the TTL of a keyed operator,
``raykv.operators.ttl``) writes an **expiry stamp** at a fixed place of every value it
wants to expire: the value's first ``STAMP_LEN`` (8) bytes, a little-endian int64 in
units the engine never interprets. It then tells the engine a **horizon** with
``KVStore.set_expiry(horizon, keep=...)``: from then on, every flush, merge or
compaction the engine performs treats a record whose stamp is ``< horizon`` as deleted.

Contract (every engine keeps it; ``tests/engines/test_expiry.py`` checks it):

* Only merges apply it; reads never look at stamps (the operator checks the stamp of
  every value it reads, so engine reads cost nothing more for anyone).
* A record is expired when its value is at least ``STAMP_LEN`` bytes long, its stamp is
  below the horizon and its key is not in ``keep`` (metadata keys without a stamp).
  Shorter values and tombstones are never expired.
* An expired record becomes a tombstone, like RocksDB's compaction filter ``kRemove``:
  where the merge may drop a tombstone (no older run can hold the key), it disappears
  with its key; elsewhere a key-only tombstone is written in its place, so an older
  record of the key can never come back.
* Each expired record counts in ``stats.expired_records`` and its value bytes in
  ``stats.expired_bytes``.
* The horizon lives in memory only: opening, reopening or restoring the engine
  (``swapped_out``) clears it, so a merge never applies a horizon that belongs to state
  newer than what the engine holds. The owner sets it again from its own metadata.

Cost: per merged record, one 8-byte slice (or numpy gather) and one comparison,
vectorized; a ``keep`` lookup only for the records found expired.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
import numpy.typing as npt

#: DO NOT CHANGE: the stamp is the first 8 bytes of a value, little-endian int64.
STAMP = struct.Struct("<q")
STAMP_LEN = STAMP.size
#: The largest stamp (never expires before a horizon of 2**63 - 1).
STAMP_MAX = (1 << 63) - 1
_HEAD = itemgetter(slice(0, STAMP_LEN))
_OFFSETS = np.arange(STAMP_LEN, dtype=np.int64)


@dataclass(frozen=True)
class Expiry:
    """A horizon: stamps below it are expired; keys in ``keep`` never are."""

    horizon: int
    keep: frozenset[bytes] = frozenset()

    @classmethod
    def of(cls, horizon: int, keep: Collection[bytes] = ()) -> Expiry:
        """Validate and build (``TypeError`` for a non-int horizon or non-bytes keys)."""
        if type(horizon) is not int and not isinstance(horizon, np.integer):
            msg = f"an expiry horizon must be an int, got {type(horizon).__name__}"
            raise TypeError(msg)
        keys = frozenset(keep)
        if not all(type(k) is bytes for k in keys):
            msg = "set_expiry(keep=...) must hold bytes keys"
            raise TypeError(msg)
        return cls(int(horizon), keys)

    def expired_values(self, keys: Sequence[bytes], values: Sequence[bytes]
                       ) -> npt.NDArray[np.bool_]:
        """Which of ``values`` (with their ``keys``) are expired. Vectorized."""
        n = len(values)
        lens = np.fromiter(map(len, values), dtype=np.int64, count=n)
        long = lens >= STAMP_LEN
        dead = np.zeros(n, dtype=bool)
        if long.all():
            if n:
                heads = b"".join(map(_HEAD, values))
                dead = np.frombuffer(heads, dtype="<i8") < self.horizon
        elif long.any():
            at = np.flatnonzero(long)
            heads = b"".join(map(_HEAD, map(values.__getitem__, at.tolist())))
            dead[at] = np.frombuffer(heads, dtype="<i8") < self.horizon
        return self.spare(dead, lambda mask: list(map(keys.__getitem__,
                                                      np.flatnonzero(mask).tolist())))

    def expired_stamps(self, stamps: np.ndarray) -> npt.NDArray[np.bool_]:
        """``stamps < horizon`` (int64 stamps gathered by :func:`stamps_at`)."""
        out: npt.NDArray[np.bool_] = stamps < self.horizon
        return out

    def spare(self, dead: npt.NDArray[np.bool_],
              keys_of: Callable[[npt.NDArray[np.bool_]], list[bytes]]
              ) -> npt.NDArray[np.bool_]:
        """Clear ``dead`` where the key is in ``keep``; ``keys_of(mask)`` gives those keys."""
        if not self.keep or not dead.any():
            return dead
        at = np.flatnonzero(dead)
        kept = np.fromiter(map(self.keep.__contains__, keys_of(dead)), dtype=bool,
                           count=len(at))
        if kept.any():
            dead = dead.copy()
            dead[at[kept]] = False
        return dead


def stamps_at(buf: bytes | mmap.mmap, starts: np.ndarray) -> np.ndarray:
    """The int64 stamps at byte offsets ``starts`` of ``buf`` (each needs 8 bytes).

    Cost: one numpy gather of ``8 * len(starts)`` bytes; no Python per record. The result
    does not reference ``buf`` (an mmap can be closed afterwards).
    """
    if not len(starts):
        return np.zeros(0, dtype=np.int64)
    view = np.frombuffer(buf, dtype=np.uint8)
    try:
        raw = view[np.asarray(starts, dtype=np.int64)[:, None] + _OFFSETS]
    finally:
        del view
    out: np.ndarray = raw.reshape(-1).view("<i8").copy()
    return out


class ExpiryPlanner:
    """Which run to merge because of expiry: the first one mostly expired (a base helper).

    Index engines (HybridLog, AppendLog) merge by size, so a large old run full of
    expired records might wait a long time for its merge. An engine keeps one planner:
    for each run it caches the sorted stamps of its records and their cumulative value
    bytes (computed once per run, by ``stamps_of``), and :meth:`pick` returns the first
    run whose records stamped below the horizon hold at least half of its value bytes.
    A run that an expiry merge wrote is not picked again for the same horizon
    (:meth:`done`), so a run whose expired records are all spared (keys in memory or in
    ``keep``) is not merged again and again; ``pick`` itself changes nothing.
    Memory: 16 bytes per stamped record of each run (cached in memory only).
    """

    def __init__(self) -> None:
        self._stamps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._checked: dict[str, int] = {}

    def pick(self, runs: Sequence[tuple[str, int]], horizon: int,
             stamps_of: Callable[[int], tuple[np.ndarray, np.ndarray]],
             store_fraction: float | None = None) -> int | None:
        """Position of the first of ``runs`` (``(name, value bytes)``) to merge, or ``None``.

        ``stamps_of(pos)``: the stamps of run ``pos``'s stamped records and their value
        lengths. With ``store_fraction``, also, when the expired bytes of all the runs
        reach that share of their total size, the run holding the most expired bytes
        (a whole-store trigger: many runs each a little expired add up too).
        Cost: O(runs x log(records)) once the runs' stamps are cached.
        """
        live = {name for name, _ in runs}
        if len(self._stamps) > 2 * len(runs) + 8:  # forget runs merged away
            self._stamps = {n: s for n, s in self._stamps.items() if n in live}
            self._checked = {n: h for n, h in self._checked.items() if n in live}
        expired = [0] * len(runs)
        for pos, (name, size) in enumerate(runs):
            if self._checked.get(name) == horizon:
                continue
            cached = self._stamps.get(name)
            if cached is None:
                stamps, lens = stamps_of(pos)
                order = np.argsort(stamps, kind="stable")
                cached = (stamps[order], np.cumsum(lens[order], dtype=np.int64))
                self._stamps[name] = cached
            stamps, cum = cached
            i = int(np.searchsorted(stamps, horizon))
            expired[pos] = int(cum[i - 1]) if i else 0
            if i and 2 * expired[pos] >= size:
                return pos
        total = sum(size for _, size in runs)
        if store_fraction is not None and total and sum(expired) >= store_fraction * total:
            return int(np.argmax(expired))
        return None

    def done(self, names: Collection[str], horizon: int) -> None:
        """Mark runs (new ones a merge wrote) as considered for ``horizon``."""
        for n in names:
            self._checked[n] = horizon
