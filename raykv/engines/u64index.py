"""A hash index from 8-byte keys to 8-byte locations, updated and read by numpy passes.

Why: HybridLog and AppendLog index every key with a ``dict`` from its bytes to a packed
location. A bulk write of keys already present pays one dict store per key, and with the
keys spread over a dict of a million entries each store misses the CPU cache several
times (the slot, the entry, the stored key object, the old value): 0.58 µs a key on the
2-core machine, the floor under ``multi_set`` (``python -m benchmarks.index_ceiling``).
Every integer and time key is 8 bytes (``raykv.keys``), so those keys fit a flat table of
``uint64`` words whose probes numpy does a whole batch at a time. This module is that
table; ``keyindex.py`` puts it under HybridLog's index.

Layout: two ``uint64`` arrays of a power-of-two capacity, ``keys`` and ``values``; open
addressing with linear probing from a multiplicative hash of the key. A slot holds a key,
or one of two markers: ``EMPTY`` (never used: ends a probe) and ``DELETED`` (a removed
key: probes go on past it; only a rebuild reclaims it). The two keys equal to the
markers live in a small dict beside the table. Live plus deleted slots stay at most half
the capacity (a rebuild doubles it, or only clears the deleted slots), so probe
sequences stay short: about 1.5 slots for a hit at load 1/2.

Each call works on a batch: one round per probe step, every pending key of the batch at
once (gather, compare, scatter); keys found or placed leave the batch. Cost per key: a
few numpy element operations per round (rounds average under 2), no Python per key;
16-21M swaps (upserts returning the old values) and 18-25M lookups a second at a
million keys, batches of 100,000 (``benchmarks.index_ceiling``, over several hours of
the 2-core VM; 7-13x a dict in the same run). Memory: 16 bytes per slot, 32-64 bytes
per key.

Keys of one call should be distinct (an engine's batch is): with duplicates the last
value wins, and the old value reported for a duplicate is unspecified. The probe rounds,
the upsert order, the capacity and the rebuild layout are ``probing.py``'s (shared with
``WideIndex``); this class gives how a one-word key is stored and compared.
"""

from __future__ import annotations

import numpy as np

from raykv.engines.probing import ProbeTable, fit_capacity, table_zeros

EMPTY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
"""Marker of a slot never used (a probe for a key stops there)."""

DELETED = np.uint64(0xFFFF_FFFF_FFFF_FFFE)
"""Marker of a slot whose key was removed (probes go on past it)."""

_MIX = np.uint64(0x9E37_79B9_7F4A_7C15)  # 2^64 / golden ratio: Fibonacci hashing
_MIX_INT, _M64 = int(_MIX), (1 << 64) - 1
_EMPTY_INT, _DELETED_INT = int(EMPTY), int(DELETED)


def _as_words(a: np.ndarray, what: str) -> np.ndarray:
    """``a`` as a 1-d ``uint64`` array (no copy when it is one already)."""
    arr = np.asarray(a)
    if arr.ndim != 1 or arr.dtype != np.uint64:
        msg = f"{what} must be a 1-d numpy array of uint64, got {arr.dtype} of shape {arr.shape}"
        raise TypeError(msg)
    return arr


class U64Index(ProbeTable[np.ndarray]):
    """Open-addressing hash table ``uint64 -> uint64``, vectorized per probe round.

    See the module docstring. ``capacity``: slots to start with (rounded up to a power
    of two, at least 16); the table grows by itself.

    Example:
        >>> import numpy as np
        >>> ix = U64Index()
        >>> found, old = ix.swap(np.array([7, 9], dtype=np.uint64),
        ...                      np.array([70, 90], dtype=np.uint64))
        >>> found.tolist(), len(ix)
        ([False, False], 2)
        >>> ix.get(np.array([9, 8], dtype=np.uint64), default=0).tolist()
        [90, 0]
        >>> ix.delete(np.array([7], dtype=np.uint64)).tolist(), len(ix)
        ([True], 1)
    """

    def __init__(self, capacity: int = 16) -> None:
        self._alloc(fit_capacity(capacity))
        self._special: dict[int, int] = {}  # keys equal to EMPTY or DELETED
        self._size = 0  # live keys in the table (not in _special)

    def _alloc(self, capacity: int) -> None:
        self._keys = table_zeros(capacity, np.uint64)
        self._keys.fill(EMPTY)
        self._values = table_zeros(capacity, np.uint64)
        self._set_capacity(capacity)

    def __len__(self) -> int:
        return self._size + len(self._special)

    @property
    def nbytes(self) -> int:
        """Bytes of the two slot arrays (the dict of marker keys aside)."""
        return int(self._keys.nbytes + self._values.nbytes)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        """Each key's first slot: the top bits of ``key * _MIX`` (Fibonacci hashing)."""
        return ((keys * _MIX) >> self._shift).astype(np.int64)

    def _home_int(self, key: int) -> int:
        """:meth:`_home` of one key, in Python ints."""
        return ((key * _MIX_INT) & _M64) >> self._shift_int

    @staticmethod
    def _split(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the keys that go to the table, and of the marker-valued ones."""
        special = keys >= DELETED
        if not special.any():
            return np.arange(len(keys)), np.empty(0, dtype=np.int64)
        return np.flatnonzero(~special), np.flatnonzero(special)

    # the probe steps of ``ProbeTable`` (``probing.py``), for keys that are one word
    _EMPTY, _DELETED = EMPTY, DELETED

    def _marks(self, slot: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._keys[slot]
        return out

    def _same(self, marks: np.ndarray, slot: np.ndarray, keys: np.ndarray, todo: np.ndarray
              ) -> np.ndarray:
        out: np.ndarray = marks == keys[todo]
        return out

    def _claims(self) -> np.ndarray:
        return self._keys  # (positions are below DELETED: never read as a marker)

    def _place(self, slots: np.ndarray, keys: np.ndarray, pick: np.ndarray,
               values: np.ndarray) -> None:
        self._keys[slots] = keys[pick]
        self._values[slots] = values[pick]

    def _count(self, keys: np.ndarray) -> int:
        return len(keys)

    def get(self, keys: np.ndarray, default: int = 0) -> np.ndarray:
        """The value of each key, ``default`` where it is absent. Cost: probe rounds."""
        found, out = self.found(keys)
        out[~found] = default
        return out

    def lookup(self, key: int) -> int | None:
        """The value of one key (a Python int), ``None`` if absent.

        Cost: a Python probe loop (about 1.5 slots at load 1/2), 0.3-0.5 µs: for the
        single reads of an engine; batches go through :meth:`get`.
        """
        if key >= _DELETED_INT:
            return self._special.get(key)
        keys, mask = self._keys, self._mask
        slot = self._home_int(key)
        while True:
            held = keys.item(slot)
            if held == key:
                return int(self._values.item(slot))
            if held == _EMPTY_INT:
                return None
            slot = (slot + 1) & mask

    def put(self, key: int, value: int) -> None:
        """Set one key (Python ints) to ``value``. Cost: a Python probe loop, as :meth:`lookup`."""
        if key >= _DELETED_INT:
            self._special[key] = value
            return
        self._reserve(1)
        keys, mask = self._keys, self._mask
        slot = self._home_int(key)
        free = -1  # the first deleted slot on the probe: the key goes there if absent
        while True:
            held = keys.item(slot)
            if held == key:
                self._values[slot] = value
                return
            if held == _EMPTY_INT:
                break
            if held == _DELETED_INT and free < 0:
                free = slot
            slot = (slot + 1) & mask
        if free >= 0:
            slot = free
            self._deleted -= 1
        keys[slot] = key
        self._values[slot] = value
        self._size += 1

    def found(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found, value)`` of each key (value 0 where absent). Cost: probe rounds."""
        keys = _as_words(keys, "keys")
        found = np.zeros(len(keys), dtype=bool)
        out = np.zeros(len(keys), dtype=np.uint64)
        table, special = self._split(keys)
        if table.size:
            ks = keys if table.size == len(keys) else keys[table]
            slots = self._find(ks)
            hit = slots >= 0
            found[table[hit]] = True
            out[table[hit]] = self._values[slots[hit]]
        for i in special.tolist():
            k = int(keys[i])
            if k in self._special:
                found[i], out[i] = True, self._special[k]
        return found, out

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Whether each key is present (a bool array). Cost: probe rounds."""
        return self.found(keys)[0]

    def swap(self, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Set each key to its value; return ``(found, old)`` as they were before.

        ``found[i]``: the key was present; ``old[i]``: its value then (0 where absent).
        Grows the table first when the new keys could push it over half full. Cost:
        probe rounds, plus a rebuild when it grows (every live key rehashed).
        """
        keys, values = _as_words(keys, "keys"), _as_words(values, "values")
        if len(keys) != len(values):
            msg = f"{len(keys)} keys but {len(values)} values"
            raise ValueError(msg)
        found = np.zeros(len(keys), dtype=bool)
        old = np.zeros(len(keys), dtype=np.uint64)
        table, special = self._split(keys)
        for i in special.tolist():
            k = int(keys[i])
            if k in self._special:
                found[i], old[i] = True, self._special[k]
            self._special[k] = int(values[i])
        if not table.size:
            return found, old
        ks, vs = (keys, values) if table.size == len(keys) else (keys[table], values[table])
        f, o = self._upsert(ks, vs)
        found[table], old[table] = f, o
        return found, old

    def _table_items(self) -> tuple[np.ndarray, np.ndarray]:
        live = self._keys < DELETED
        return self._keys[live], self._values[live]

    def _mark_deleted(self, slots: np.ndarray) -> None:
        self._keys[slots] = DELETED

    def _take(self, keys: np.ndarray, at: np.ndarray) -> np.ndarray:
        out: np.ndarray = keys[at]
        return out

    def delete(self, keys: np.ndarray) -> np.ndarray:
        """Remove each key; return whether it was present before the call. Cost: probe rounds.

        The slots become ``DELETED``; a later :meth:`swap` that needs room rebuilds the
        table without them.
        """
        keys = _as_words(keys, "keys")
        found = np.zeros(len(keys), dtype=bool)
        table, special = self._split(keys)
        marked = [int(keys[i]) for i in special.tolist()]
        found[special] = [k in self._special for k in marked]  # as before the call
        for k in marked:
            self._special.pop(k, None)
        if table.size:
            found[table] = self._remove(keys[table])
        return found

    def values(self) -> np.ndarray:
        """Every value held, in the order of :meth:`items` (no keys gathered)."""
        values = self._values[self._keys < DELETED]
        if self._special:
            values = np.concatenate(
                [values, np.array(list(self._special.values()), dtype=np.uint64)])
        return values

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Every ``(key, value)`` held, as two arrays (slot order, marker keys last)."""
        live = self._keys < DELETED
        keys, values = self._keys[live], self._values[live]
        if self._special:
            keys = np.concatenate([keys, np.array(list(self._special), dtype=np.uint64)])
            values = np.concatenate(
                [values, np.array(list(self._special.values()), dtype=np.uint64)])
        return keys, values


__all__ = ["DELETED", "EMPTY", "U64Index"]
