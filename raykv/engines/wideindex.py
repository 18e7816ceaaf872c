"""A hash index from short keys (1-16 bytes) to 8-byte locations, by numpy passes.

Why: ``U64Index`` holds 8-byte keys (integer and time keys). Keys of other short
lengths (names, codes, 16-byte ids) stayed in a ``dict``: at a million entries a store
of a key already present cost 0.45-0.59 µs (the dict's cache misses), and a merge that
scanned the dict's values paid about 0.1 µs per entry (one int object each, spread over
the heap): the two largest parts of a ``multi_set`` of 8-16-byte keys (issue 15). This
table is ``U64Index``'s layout widened to two words; ``keyindex.py`` puts it under the
engines' index.

Layout: a key is its bytes zero-padded to 16 and read as two ``uint64`` words, plus its
length (which tells ``b"a"`` from ``b"a"`` and a zero byte). Four arrays of a power-of-two
capacity: ``w0``, ``w1``, ``meta`` (``uint8``: the key's length 1-16, or ``EMPTY`` = 0,
a slot never used that ends a probe, or ``DELETED`` = 255, a removed key that probes go
past) and ``values``. Open addressing with linear probing from a multiplicative hash of
the words and the length. Live plus deleted slots stay at most half the capacity, as in
``U64Index``; both tables take their probe rounds, upsert order, capacity and rebuild
layout from ``probing.py`` and give only how a key is stored and compared.

Keys come in batches as ``(w0, w1, lens)`` arrays (``keywords.short_words`` makes them
from ``bytes``). Cost per key: a few numpy element operations per probe round (rounds
average under 2), no Python per key; memory 25 bytes per slot, 50-100 per key. Keys of
one call should be distinct: with duplicates the last value wins and the old value
reported for a duplicate is unspecified.
"""

from __future__ import annotations

import struct

import numpy as np

from raykv.engines.probing import ProbeTable, fit_capacity, table_zeros

EMPTY = 0
"""``meta`` of a slot never used."""

DELETED = 255
"""``meta`` of a slot whose key was removed."""

MAX_LEN = 16
"""The longest key the table holds."""

_M1 = np.uint64(0xC2B2_AE3D_27D4_EB4F)  # odd constants: mix the first word, then both
_MIX = np.uint64(0x9E37_79B9_7F4A_7C15)
_M1_INT, _MIX_INT, _M64 = int(_M1), int(_MIX), (1 << 64) - 1

Words = tuple[np.ndarray, np.ndarray, np.ndarray]
"""A batch of keys: ``(w0, w1, lens)``, uint64, uint64 and uint8 arrays of one length."""


_PAIR = struct.Struct("<QQ").unpack


def pair_of(key: bytes) -> tuple[int, int]:
    """The two words of one key of 1-16 bytes (Python ints, little-endian)."""
    return _PAIR(key.ljust(16, b"\0"))


class WideIndex(ProbeTable[Words]):
    """Open-addressing hash table ``(1-16 byte key) -> uint64``, vectorized per round.

    See the module docstring. ``capacity``: slots to start with (rounded up to a power
    of two, at least 16); the table grows by itself.

    Example:
        >>> import numpy as np
        >>> w = (np.array([1, 2], dtype=np.uint64), np.zeros(2, dtype=np.uint64),
        ...      np.array([3, 9], dtype=np.uint8))
        >>> ix = WideIndex()
        >>> found, old = ix.swap(w, np.array([10, 20], dtype=np.uint64))
        >>> found.tolist(), len(ix), ix.lookup(1, 0, 3), ix.lookup(1, 0, 4)
        ([False, False], 2, 10, None)
        >>> ix.delete(w).tolist(), len(ix)
        ([True, True], 0)
    """

    def __init__(self, capacity: int = 16) -> None:
        self._alloc(fit_capacity(capacity))
        self._size = 0

    def _alloc(self, capacity: int) -> None:
        self._w0 = table_zeros(capacity, np.uint64)
        self._w1 = table_zeros(capacity, np.uint64)
        self._meta = table_zeros(capacity, np.uint8)
        self._values = table_zeros(capacity, np.uint64)
        self._set_capacity(capacity)

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes of the slot arrays."""
        return int(self._w0.nbytes + self._w1.nbytes + self._meta.nbytes + self._values.nbytes)

    def _home(self, w: Words) -> np.ndarray:
        w0, w1, lens = w
        x = (w0 * _M1) ^ w1 ^ lens.astype(np.uint64)
        return ((x * _MIX) >> self._shift).astype(np.int64)

    # the probe steps of ``ProbeTable`` (``probing.py``): ``meta`` marks the slots
    _EMPTY, _DELETED = EMPTY, DELETED

    def _marks(self, slot: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._meta[slot]
        return out

    def _same(self, marks: np.ndarray, slot: np.ndarray, w: Words, todo: np.ndarray
              ) -> np.ndarray:
        w0, w1, lens = w
        hit: np.ndarray = (marks == lens[todo]) & (self._w0[slot] == w0[todo])
        hit &= self._w1[slot] == w1[todo]
        return hit

    def _claims(self) -> np.ndarray:
        return self._w0  # (the winner's key overwrites the positions)

    def _place(self, slots: np.ndarray, w: Words, pick: np.ndarray, values: np.ndarray
               ) -> None:
        self._w0[slots] = w[0][pick]
        self._w1[slots] = w[1][pick]
        self._meta[slots] = w[2][pick]
        self._values[slots] = values[pick]

    def _count(self, w: Words) -> int:
        return len(w[2])

    def found(self, w: Words) -> tuple[np.ndarray, np.ndarray]:
        """``(found, value)`` of each key (value 0 where absent). Cost: probe rounds."""
        slots = self._find(w) if self._size else np.full(len(w[0]), -1, dtype=np.int64)
        hit = slots >= 0
        out = np.zeros(len(slots), dtype=np.uint64)
        out[hit] = self._values[slots[hit]]
        return hit, out

    def _slot_of(self, w0: int, w1: int, length: int) -> tuple[int, int]:
        """One key's slot if present, else ``-1``; and the first free slot on its probe."""
        meta, k0, k1, mask = self._meta.item, self._w0.item, self._w1.item, self._mask
        x = (((w0 * _M1_INT) & _M64) ^ w1 ^ length) * _MIX_INT & _M64
        slot, free = x >> self._shift_int, -1
        while True:
            m = meta(slot)
            if m == length and k0(slot) == w0 and k1(slot) == w1:
                return slot, free
            if m == EMPTY:
                return -1, slot if free < 0 else free
            if m == DELETED and free < 0:
                free = slot
            slot = (slot + 1) & mask

    def lookup(self, w0: int, w1: int, length: int) -> int | None:
        """The value of one key given as Python ints (``pair_of``), ``None`` if absent.

        Cost: a Python probe loop, about 1 µs (1.7 µs for ``KeyIndex.get``): for an
        engine's single reads.
        """
        slot = self._slot_of(w0, w1, length)[0]
        return None if slot < 0 else int(self._values.item(slot))

    def put(self, w0: int, w1: int, length: int, value: int) -> None:
        """Set one key to ``value`` (a uint64). Cost: a Python probe loop, as :meth:`lookup`."""
        self._reserve(1)
        slot, free = self._slot_of(w0, w1, length)
        if slot >= 0:
            self._values[slot] = value
            return
        if self._meta.item(free) == DELETED:
            self._deleted -= 1
        self._w0[free], self._w1[free], self._meta[free] = w0, w1, length
        self._values[free] = value
        self._size += 1

    def swap(self, w: Words, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Set each key to its value; return ``(found, old)`` as they were before.

        Grows the table first when the new keys could push it over half full. Cost:
        probe rounds (one pass when the table holds no deleted slot and has room for
        every key of the batch), plus a rebuild when it grows (every live key rehashed).
        """
        return self._upsert(w, values)

    def _take(self, w: Words, at: np.ndarray) -> Words:
        return w[0][at], w[1][at], w[2][at]

    def _table_items(self) -> tuple[Words, np.ndarray]:
        w0, w1, lens, values = self.items()
        return (w0, w1, lens), values

    def _mark_deleted(self, slots: np.ndarray) -> None:
        self._meta[slots] = DELETED

    def delete(self, w: Words) -> np.ndarray:
        """Remove each key; return whether it was present. Cost: probe rounds.

        The slots become ``DELETED``; a later :meth:`swap` that needs room rebuilds the
        table without them.
        """
        return self._remove(w)

    def _live(self) -> np.ndarray:
        """The slots holding a key (lengths 1-16: ``meta - 1`` wraps EMPTY to 255)."""
        return np.flatnonzero((self._meta - np.uint8(1)) < np.uint8(MAX_LEN))

    def values(self) -> np.ndarray:
        """Every value held, in slot order (no keys gathered)."""
        values: np.ndarray = self._values[self._live()]
        return values

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every key and value held: ``(w0, w1, lens, values)`` in slot order."""
        live = self._live()
        return self._w0[live], self._w1[live], self._meta[live], self._values[live]


__all__ = ["DELETED", "EMPTY", "MAX_LEN", "WideIndex", "Words", "pair_of"]
