"""AppendLog merges with an expiry horizon: find the live records stamped below it.

A merge (``runset.py``) copies the live records of its runs; with a horizon set
(``KVStore.set_expiry``, the contract in ``engines/expiry.py``) the records whose value
starts with a stamp below it are taken out of the copy first. A merge that includes the
oldest run (the one that drops tombstones) drops them and their keys leave the index;
any other merge writes a key-only tombstone for each, so no older record of the key can
come back on a reopen.

Cost: per live record with a value of 8+ bytes, one numpy gather of its 8-byte stamp
from the run's buffer (value offset from the location, key length and header size);
a ``keep`` lookup only for the expired ones.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from itertools import compress
from typing import Any

import numpy as np

from raykv.engines.appendlog.merge import LiveRecords
from raykv.engines.appendlog.runfile import OFF_MASK, SLOT_BITS, SLOT_MASK, decode_index
from raykv.engines.expiry import STAMP_LEN, Expiry, ExpiryPlanner, stamps_at
from raykv.engines.stats import EngineStats

#: Merge the most expired run once expired records hold this share of all closed runs'
#: bytes (``ExpiryPlanner.pick``'s ``store_fraction``).
STORE_FRACTION = 0.15


def _varint_len(x: np.ndarray) -> np.ndarray:
    """Bytes of the LEB128 varints of non-negative ints ``x``."""
    n = np.ones(len(x), dtype=np.int64)
    for bits in (7, 14, 21, 28, 35):
        n += x >= (1 << bits)
    return n


def expire_live(rec: LiveRecords, bufs: Sequence[mmap.mmap | bytes], expiry: Expiry,
                stats: EngineStats, *, drop: bool) -> tuple[LiveRecords, list[bytes]]:
    """Take the expired records out of ``rec`` (the live records a merge copies).

    Returns the records left to copy and the keys to write back as tombstones (none when
    ``drop``: the expired keys join ``rec.gone`` and leave the index). Counts them in
    ``stats``.
    """
    if not rec.keys:
        return rec, []
    n = len(rec.locs)
    klens = np.array(rec.klens, dtype=np.int64)
    vlens = np.array(rec.vlens, dtype=np.int64)
    cand = vlens >= STAMP_LEN
    dead = np.zeros(n, dtype=bool)
    if not cand.any():
        return rec, []
    # locations may exceed 64 bits: unpack them with C-level maps over Python ints
    slots = np.fromiter(map(SLOT_MASK.__and__, rec.locs), dtype=np.int64, count=n)
    offs = np.fromiter(map(OFF_MASK.__and__, map(SLOT_BITS.__rrshift__, rec.locs)),
                       dtype=np.int64, count=n)
    starts = offs + _varint_len(klens) + _varint_len(vlens) + klens
    for slot in np.unique(slots[cand]).tolist():
        sel = cand & (slots == slot)
        dead[sel] = expiry.expired_stamps(stamps_at(bufs[slot], starts[sel]))
    dead = expiry.spare(dead, lambda m: list(compress(rec.keys, m.tolist())))
    if not dead.any():
        return rec, []
    keep = (~dead).tolist()
    gone = list(compress(rec.keys, dead.tolist()))
    stats.expired_records += len(gone)
    stats.expired_bytes += int(vlens[dead].sum())
    left = LiveRecords(
        list(compress(rec.keys, keep)), list(compress(rec.locs, keep)),
        list(compress(rec.ns, keep)), list(compress(rec.klens, keep)),
        list(compress(rec.vlens, keep)), rec.gone + gone if drop else rec.gone,
    )
    return left, [] if drop else gone


def planner(engine: Any) -> ExpiryPlanner:
    """The engine's expiry planner (created on first use; in memory only)."""
    found = engine.__dict__.get("_expiry_planner")
    if found is None:
        found = engine.__dict__["_expiry_planner"] = ExpiryPlanner()
    return found  # type: ignore[no-any-return]


def expiring_run(engine: Any, horizon: int) -> int | None:
    """Position of the next closed run to merge alone because of expiry, or ``None``.

    The first run whose expired records hold half its bytes; else, when the expired
    records of all closed runs hold ``STORE_FRACTION`` of their bytes, the run with the
    most expired bytes.

    Cost: once per run, a decode of its index section and a gather of its stamps.
    """
    runs = engine._runs

    def stamps_of(pos: int) -> tuple[np.ndarray, np.ndarray]:
        run = runs[pos]
        buf = engine._bufs[run.slot]
        keys, vlens, offs, _ = decode_index(engine.data_dir / run.name, run, buf)
        klens = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
        v = np.asarray(vlens, dtype=np.int64)
        starts = np.asarray(offs, dtype=np.int64) + _varint_len(klens) + _varint_len(v) + klens
        cand = v >= STAMP_LEN
        return stamps_at(buf, starts[cand]), v[cand]

    return planner(engine).pick([(r.name, r.size) for r in runs], horizon, stamps_of,
                                store_fraction=STORE_FRACTION)
