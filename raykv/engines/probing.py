"""Linear probing by numpy rounds: what ``U64Index`` and ``WideIndex`` share.

Both index tables are open addressing with linear probing over power-of-two slot arrays,
kept at most half full counting deleted slots, and probed a batch at a time (one numpy
round per probe step). They differ in how a key is stored and compared (one word, or
two words and a length). This module holds what does not depend on that: the probe
rounds, the order of an upsert and the capacity bookkeeping (:class:`ProbeTable`), where
a rebuild puts the keys (:func:`fresh_layout`) and the slot arrays (:func:`table_zeros`).
"""

from __future__ import annotations

import mmap
from typing import Any, Generic, TypeVar

import numpy as np

Batch = TypeVar("Batch")
"""How a table takes a batch of keys (a uint64 array, or ``WideIndex``'s columns)."""

_SMALL_PAGES_FROM = 4 << 20  # bytes: numpy asks for huge pages from here


def table_zeros(n: int, dtype: Any) -> np.ndarray:
    """A zeroed array of ``n`` elements for a table's slots, on 4 KiB pages when large.

    Why: numpy asks the kernel for transparent huge pages for arrays of 4 MiB or more
    (``madvise``). Where THP defragmentation is ``madvise`` (Ubuntu's default), the first
    touch of such an array compacts memory synchronously when no huge page is free:
    0.31-0.37 s for a 64 MiB slot array on the 2-core VM against 0.04 s on 4 KiB pages,
    paid at every growth of a table. Probes cost 2-4 % more on small pages
    (``benchmarks.index_ceiling``, alternated). A large array is its own anonymous
    mapping (zeroed by the kernel, unmapped with the array).
    """
    nbytes = n * np.dtype(dtype).itemsize
    if nbytes < _SMALL_PAGES_FROM:
        return np.zeros(n, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype)


def fresh_layout(home: np.ndarray, mask: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where linear probing puts distinct keys into an empty table, without probe rounds.

    ``home``: each key's first slot; ``mask``: the capacity minus one. Sorted by home
    slot, each key takes the first slot at or after its home that the keys before it
    left free: ``pos[i] = max(home[i], pos[i-1] + 1)``, a running maximum of ``home - i``
    plus ``i``. Returns ``(order, pos, fits)``: the keys in that order, the slot of each
    that fits, and which fit (the others, pushed past the last slot, must wrap round
    through a probing insert). Cost: one sort and a few passes.
    """
    order = np.argsort(home, kind="stable")
    step = np.arange(len(home))
    pos = np.maximum.accumulate(home[order] - step) + step
    fits = pos <= mask
    return order, pos[fits], fits


def fit_capacity(capacity: int) -> int:
    """The power of two at least ``capacity`` (and at least 16): a table's slot count."""
    cap = 16
    while cap < capacity:
        cap <<= 1
    return cap


class ProbeTable(Generic[Batch]):
    """Probe rounds, upsert order and capacity of a linear-probing table (a base class).

    A subclass keeps ``_size`` (live keys in its slots), ``_deleted`` (deleted slots),
    ``_mask`` (capacity - 1) and ``_values`` (the slots' values), and gives what depends
    on how a key is stored: ``_home`` (each key's first slot), ``_marks`` (the slot
    array that tells empty and deleted slots, gathered at some slots: ``_EMPTY`` /
    ``_DELETED`` there), ``_same`` (whether a slot holds the key), ``_claims`` (a uint64
    slot array that a round may scribble positions into before ``_place`` overwrites
    them), ``_place`` (write keys and values into claimed slots), ``_alloc`` (fresh slot
    arrays), ``_table_items`` (the live keys and values in the slots), ``_mark_deleted``
    (mark slots deleted), ``_take`` (a batch's keys at positions) and ``_count`` (how
    many keys a batch holds).
    """

    _size: int
    _deleted: int
    _mask: int
    _values: np.ndarray
    _EMPTY: Any
    _DELETED: Any

    @property
    def capacity(self) -> int:
        """Slots of the table."""
        return self._mask + 1

    def _set_capacity(self, capacity: int) -> None:
        """Mask, hash shift and deleted count for fresh slot arrays of ``capacity``."""
        self._mask = capacity - 1
        self._shift = np.uint64(64 - (capacity.bit_length() - 1))  # Fibonacci hashing
        self._shift_int = int(self._shift)
        self._deleted = 0

    def _home(self, keys: Batch) -> np.ndarray:
        raise NotImplementedError

    def _marks(self, slot: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _same(self, marks: np.ndarray, slot: np.ndarray, keys: Batch, todo: np.ndarray
              ) -> np.ndarray:
        raise NotImplementedError

    def _claims(self) -> np.ndarray:
        raise NotImplementedError

    def _place(self, slots: np.ndarray, keys: Batch, pick: np.ndarray, values: np.ndarray
               ) -> None:
        raise NotImplementedError

    def _alloc(self, capacity: int) -> None:
        raise NotImplementedError

    def _table_items(self) -> tuple[Batch, np.ndarray]:
        raise NotImplementedError

    def _mark_deleted(self, slots: np.ndarray) -> None:
        raise NotImplementedError

    def _take(self, keys: Batch, at: np.ndarray) -> Batch:
        raise NotImplementedError

    def _count(self, keys: Batch) -> int:
        raise NotImplementedError

    def _find(self, keys: Batch) -> np.ndarray:
        """The slot of each key (``-1``: absent). Cost: probe rounds (under 2 on average)."""
        n = self._count(keys)
        out = np.full(n, -1, dtype=np.int64)
        slot, todo, mask = self._home(keys), np.arange(n), self._mask
        while todo.size:
            marks = self._marks(slot)
            hit = self._same(marks, slot, keys, todo)
            out[todo[hit]] = slot[hit]
            go = ~hit & (marks != self._EMPTY)
            slot, todo = (slot[go] + 1) & mask, todo[go]
        return out

    def _insert(self, keys: Batch, values: np.ndarray, found: np.ndarray, old: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """Place keys that are absent (but may repeat in the batch), with room for them all.

        Each key takes the first empty or deleted slot of its probe. Keys of a round that
        probe the same free slot all write their position into it (``_claims``), in
        reverse, so the first of them stays there and takes it (one scatter and one
        gather, no sort); the others look at that slot again next round, where a repeat
        of the key finds it placed and updates it (the last value of a repeated key
        wins). ``found``/``old`` come back set for such repeats (and, from ``_upsert``'s
        one-pass case, for keys already present).
        """
        todo = np.arange(len(values))
        slot, mask, claims = self._home(keys), self._mask, self._claims()
        while todo.size:
            marks = self._marks(slot)
            free = (marks == self._EMPTY) | (marks == self._DELETED)
            same = self._same(marks, slot, keys, todo)  # a key placed before
            if same.any():
                at = slot[same]
                found[todo[same]] = True
                old[todo[same]] = self._values[at]
                self._values[at] = values[todo[same]]
            placed = same.copy()
            if free.any():
                cand = np.flatnonzero(free)
                where = slot[cand]
                mark = cand.astype(np.uint64)
                claims[where[::-1]] = mark[::-1]  # the last write wins: the first of a repeat
                won = claims[where] == mark
                winners, claimed = cand[won], where[won]
                self._deleted -= int(np.count_nonzero(marks[winners] == self._DELETED))
                self._place(claimed, keys, todo[winners], values)
                self._size += len(claimed)
                placed[winners] = True
            # the losers of a free slot look at it again (it holds another key now)
            step = ~placed & ~free
            slot = np.where(step, (slot + 1) & mask, slot)
            keep = ~placed
            slot, todo = slot[keep], todo[keep]
        return found, old

    def _upsert(self, keys: Batch, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Set each key to its value; return ``(found, old)`` as they were before.

        With no deleted slot and room for every key, one pass of ``_insert`` (a key's
        probe then meets the key before any empty slot, so the pass updates the keys
        present and places the others). Otherwise first the keys already present
        (updated where they are, wherever deleted slots lie), then room for the others
        only (a batch of updates never grows the table), then their insertion.
        """
        n = len(values)
        found = np.zeros(n, dtype=bool)
        old = np.zeros(n, dtype=np.uint64)
        if not self._deleted and 2 * (self._size + n) <= self.capacity:
            return self._insert(keys, values, found, old)
        slots = self._find(keys) if self._size else np.full(n, -1, dtype=np.int64)
        hit = slots >= 0
        if hit.any():
            at = slots[hit]
            found[hit] = True
            old[hit] = self._values[at]
            self._values[at] = values[hit]
            if hit.all():
                return found, old
            miss = np.flatnonzero(~hit)
            self._reserve(len(miss))
            f, o = self._insert(self._take(keys, miss), values[miss], found[miss], old[miss])
            found[miss], old[miss] = f, o
            return found, old
        self._reserve(n)
        return self._insert(keys, values, found, old)

    def _rebuild(self, capacity: int) -> None:
        """Rehash every live key into a table of ``capacity`` slots (deleted slots go)."""
        keys, values = self._table_items()
        self._alloc(capacity)
        self._size = 0
        if len(values):
            self._place_fresh(keys, values)

    def _place_fresh(self, keys: Batch, values: np.ndarray) -> None:
        """Place distinct keys into an empty table, without probe rounds.

        ``fresh_layout``: the layout linear probing builds (every slot from a key's home
        to its own is taken), so lookups find each key. The few pushed past the last
        slot wrap round through :meth:`_insert`. Cost: one sort and a few passes (a third
        of the probe rounds' time at a million keys).
        """
        order, where, fits = fresh_layout(self._home(keys), self._mask)
        at = order[fits]
        self._place(where, keys, at, values)
        self._size = len(at)
        if len(at) < len(values):
            rest = order[~fits]
            self._insert(self._take(keys, rest), values[rest], np.zeros(len(rest), dtype=bool),
                         np.zeros(len(rest), dtype=np.uint64))

    def _remove(self, keys: Batch) -> np.ndarray:
        """Remove each key from the slots; return whether it was there. Cost: probe rounds.

        The slots become deleted ones; a later upsert that needs room rebuilds the table
        without them.
        """
        n = self._count(keys)
        slots = self._find(keys) if self._size else np.full(n, -1, dtype=np.int64)
        hit = slots >= 0
        at = np.unique(slots[hit])  # a key given twice is removed once
        self._mark_deleted(at)
        self._values[at] = 0
        self._size -= len(at)
        self._deleted += len(at)
        return hit

    def _reserve(self, extra: int) -> None:
        """Make room for ``extra`` more keys at load <= 1/2 (rebuild if needed)."""
        if 2 * (self._size + self._deleted + extra) <= self.capacity:
            return
        cap = self.capacity
        while 2 * (self._size + extra) > cap:
            cap <<= 1
        self._rebuild(cap)


__all__ = ["Batch", "ProbeTable", "fit_capacity", "fresh_layout", "table_zeros"]
