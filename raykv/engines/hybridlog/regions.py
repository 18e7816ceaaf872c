"""HybridLog's in-memory regions and the moves between them (a base class).

Records live, newest first, in the *mutable* region (``_mut``: updated in place), the
*read-only* region (still only in memory; an update is a read-copy-update) and the
*cached* region (durable, kept for reads). The read-only and cached regions share one
dict, ``_frozen``, in log order: the cached records, a watermark entry (``_WATERMARK``),
then the read-only records. Records enter the read-only region a page at a time once the
mutable region exceeds ``ro_lag_interval``; every ``flush_interval`` of them are written
as one run and become cached; cached records beyond ``mem_segment_len - ro_lag_interval -
flush_interval`` are evicted, oldest first.

Live count: ``_live`` counts a key whose newest record holds a value. A large batch
(``bulk.py``) leaves its newest records in the mutable region without asking the index
whether each key was live before: those keys are *pending* (``_pend``, a subset of the
mutable region) and counted as new. A pending key is settled (minus one if the index
holds a live record of it) when it leaves the mutable region: by the next large batch,
whose index stores count the keys already there, else by one lookup (a shift to the
read-only region, a delete, ``seal()``, ``live_keys()``). The index entry of a key in
memory keeps its liveness until then (merges move or drop tombstones, and expire only
keys held on disk alone).

Cost: a move is C-level dict work per record; a flush is one run file (``runset.py``)
followed by the due maintenance (``maintenance.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice
from operator import truth
from typing import Any, NoReturn, cast

from raykv.engines.hybridlog.maintenance import Maintenance
from raykv.engines.hybridlog.runfile import LEN_SHIFT
from raykv.engines.keyindex import get_many
from raykv.errors import StoreClosedError


class _Closed(dict[Any, Any]):
    """Stands in for every region dict after close: any access raises ``StoreClosedError``.

    Lets the hot paths skip an "is it open?" test on every call. Typed ``dict[Any, Any]``
    because it replaces dicts of three value types (``_mut``, ``_frozen``, ``_index``).
    """

    def _closed(self, *_: object) -> NoReturn:
        msg = "HybridLog engine is closed; open a new one"
        raise StoreClosedError(msg)

    get = __contains__ = __setitem__ = __getitem__ = __delitem__ = _closed
    # these dict methods take keyword arguments: the catch-all signature is incompatible
    pop = update = keys = items = values = _closed  # type: ignore[assignment]


_CLOSED = _Closed()
_Lookup = Callable[[bytes, object], object]  # dict.get / dict.pop with a default
# The one key of ``_frozen`` that is not bytes; typed as a key of the region dicts (a
# bytes type test tells it apart: ``_check`` counts it).
_WATERMARK = cast(bytes, type("_Watermark", (), {"__repr__": lambda self: "<watermark>"})())


class Regions(Maintenance):
    """Mutable, read-only and cached regions of a ``HybridLog`` (which sets these)."""

    ro_lag_interval: int
    flush_interval: int
    mem_segment_len: int
    _page: int
    _cache_cap: int
    _mut: dict[bytes, bytes]
    _frozen: dict[bytes, bytes | None]
    _n_ro: int
    _live: int
    _pend: set[bytes]  # keys of the mutable region whose earlier liveness is not counted

    def _settle(self, keys: Iterable[bytes] | None = None) -> None:
        """Settle the pending keys among ``keys`` (``None``: all) by one index lookup each.

        Cost: a set operation over ``keys`` and one index lookup per pending key found.
        """
        pend = self._pend
        if not pend:
            return
        if keys is None:
            hit: Iterable[bytes] = pend
            self._pend = set()
        else:
            hit = pend.intersection(keys)
            pend -= hit
        durable = map(LEN_SHIFT.__rrshift__, get_many(self._index, list(hit), 0))
        self._live -= sum(map(truth, durable))

    def _delete(self, key: bytes) -> None:
        """Delete ``key`` (validated): a read-copy-update straight into the read-only region.

        The mutable region never holds a tombstone, so an in-place update there never
        turns a deleted key live again and ``set`` counts live keys without reading the
        old value. The key's in-memory copy (mutable or frozen) is dropped; a tombstone
        record is appended to the read-only region only if a durable live record would
        otherwise show through (none is needed when nothing durable holds the key, or
        the durable record is already a tombstone).
        Cost: up to three dict operations; flushes like any record entering the region.
        """
        if self._maintenance:
            self._maintain()
        frozen = self._frozen
        old = self._mut.pop(key, None)
        if old is None:
            old = frozen.pop(key, None)
        disk = self._index.get(key, 0) >> LEN_SHIFT
        if disk if old is None else old:
            self._live -= 1
        if self._pend and key in self._pend:  # its durable record was not counted yet
            self._pend.discard(key)
            if disk:
                self._live -= 1
        if disk:
            frozen[key] = b""  # after the watermark: a dirty read-only record
            self._n_ro += 1
            if self._n_ro >= self.flush_interval:
                self._flush()

    def _shift(self) -> None:
        """Move the oldest records of the mutable region to the read-only one, a page at a time.

        Flushes the read-only region each time ``flush_interval`` records entered it.
        """
        mut, lag, page, flush = self._mut, self.ro_lag_interval, self._page, self.flush_interval
        frozen = self._frozen
        while len(mut) > lag:
            n = min(len(mut) - lag + page - 1, flush - self._n_ro, len(mut))
            old = list(islice(mut, n))
            if self._pend:
                self._settle(old)
            frozen.update(zip(old, map(mut.pop, old), strict=True))
            self._n_ro += n
            if self._n_ro >= flush:
                self._flush()

    def _read_only_records(self) -> tuple[list[bytes], list[bytes]]:
        """Return the read-only records (newest first): the entries after the watermark.

        Cost: a sequential scan of the newest ``_n_ro + 1`` entries; no hashing.
        """
        frozen = self._frozen
        n = self._n_ro + 1
        keys = list(islice(reversed(frozen), n))
        values = list(islice(reversed(frozen.values()), n))
        cut = keys.index(_WATERMARK)
        del keys[cut:], values[cut:]
        return keys, cast(list[bytes], values)  # only the watermark's value is None

    def _flush(self) -> None:
        """Write the read-only region as one run; its records become cached (clean)."""
        keys, values = self._read_only_records()
        self._write_run(keys, values, presync=True)  # on failure the records stay dirty
        frozen = self._frozen
        del frozen[_WATERMARK]
        frozen[_WATERMARK] = None
        self._n_ro = 0
        self._evict()
        self._maintain()

    def _evict(self) -> None:
        """Drop the oldest cached records beyond ``mem_segment_len - ro_lag - flush``.

        Called right after the watermark moved to the end of ``_frozen``, so every record
        before it is clean. The mutable region never exceeds ``ro_lag_interval`` records
        and the read-only one stays below ``flush_interval``, so memory never holds more
        than ``mem_segment_len`` records.
        """
        frozen = self._frozen
        excess = len(frozen) - 1 - self._cache_cap
        if excess > 0:
            deque(map(frozen.__delitem__, list(islice(frozen, excess))), maxlen=0)

    def _read_only_count(self) -> int:
        """Records in memory after the watermark. Cost: O(read-only region)."""
        return list(islice(reversed(self._frozen), self._n_ro + 1)).index(_WATERMARK)
