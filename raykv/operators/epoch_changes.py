"""What an epoch's folds wrote, kept until its barrier emits it (``Aggregate``).

Contract: :meth:`EpochChanges.add` takes one fold's written keys (distinct) and their new
values; a key added again by a later fold of the same epoch takes its later value.
:meth:`EpochChanges.sorted_chunks` hands back the latest value of every key, in ascending
key order (bytewise), a bounded chunk at a time, and empties the object. Values ``b""``
(a deleted key) are left out.

Memory: an epoch may change far more keys than a fold holds (``Aggregate`` folds every
``max_buffered_bytes`` of partials, an epoch lasts as long as the checkpoint interval),
and as Python objects every key costs two ``bytes`` and two list slots, about 115 bytes
with an 8-byte key and a 16-byte value, plus a heap fragmented by millions of them. When
every key is 8 bytes (every integer, float and temporal key) and every value has one
size, the changes are kept *compact* (``Aggregate`` adds once per fold slice of
``FOLD_SLICE_KEYS`` keys, packed already when it can): numpy rows of ``8 + value size``
bytes per key (24 for sum+count); Python objects exist only for the chunk being emitted.
Any add that does not fit (variable-length keys or values, deletes) switches the epoch to
lists.

Cost: an add two C-level length passes over the keys (and values), then one ``join`` of
each if they fit (nothing for an add given :class:`~raykv.operators.packed.Packed`);
``sorted_chunks`` one stable numpy sort of the key words (O(n log n)) and numpy gathers,
handing back :class:`~raykv.operators.packed.Packed` chunks (no ``bytes`` per key). The
list form sorts with :func:`~raykv.operators.keyed_state.key_order`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from raykv.operators.keyed_state import key_order
from raykv.operators.packed import Packed, pack, unpack

#: A chunk of :meth:`EpochChanges.sorted_chunks`: packed, or the keys and values.
Chunk = Packed | tuple[list[bytes], list[bytes]]


class EpochChanges:
    """One epoch's written keys and latest values (module docstring)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._words: list[npt.NDArray[np.uint64]] = []  # compact: per add, the key words
        self._rows: list[npt.NDArray[np.uint8]] = []  # and the values, one row per key
        self._size = -1  # the compact values' size (-1: no compact add yet)
        self._keys: list[bytes] = []  # the first add as given, or the list form
        self._values: list[bytes] = []
        self._merge = False  # the list form holds more than one add (a key may repeat)

    def __bool__(self) -> bool:
        return bool(self._words or self._keys)

    def add(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """One fold's writes: distinct ``keys``, their new ``values`` (``b""``: deleted).

        Packed if they fit (and the epoch is not in the list form already).
        """
        if not keys:
            return
        if not self._keys and self._pack(keys, values):
            return
        self._to_lists()
        self._merge = bool(self._keys)  # a key may repeat from here on
        self._keys += keys
        self._values += values

    def add_packed(self, p: Packed) -> None:
        """:meth:`add` of pairs already packed (no length checks: the caller knows them)."""
        if not len(p):
            return
        if self._keys or 0 <= self._size != p.rows.shape[1]:  # the list form, or a new size
            self.add(*unpack(p))  # (a new size does not pack: lists)
            return
        self._append(p)

    def _pack(self, keys: Sequence[bytes], values: Sequence[bytes]) -> bool:
        """Add ``keys``/``values`` in the compact form if they fit it (else ``False``)."""
        p = pack(keys, values, None if self._size < 0 else self._size)
        if p is None:
            return False
        self._append(p)
        return True

    def _append(self, p: Packed) -> None:
        """Add packed pairs to the compact form (their values have its size, if any)."""
        self._size = p.rows.shape[1]
        self._words.append(p.words)
        self._rows.append(p.rows)

    def _to_lists(self) -> None:
        """Switch to the list form (keeps what was added, in the order of the adds)."""
        if not self._words:
            return
        keys: list[bytes] = []
        values: list[bytes] = []
        for words, rows in zip(self._words, self._rows, strict=True):
            more_keys, more_values = unpack(Packed(words, rows))
            keys += more_keys
            values += more_values
        self._keys, self._values = keys, values
        self._merge = True
        self._words, self._rows = [], []

    def sorted_chunks(self, rows: int) -> Iterator[Chunk]:
        """The latest value of every key added, ascending, at most ``rows`` keys a chunk.

        Compact changes come as :class:`Packed` chunks, the list form as ``(keys,
        values)``; :func:`as_lists` turns either into lists. Empties the object first
        (the chunks are taken from what it held).
        """
        words, values_rows = self._words, self._rows
        keys, values, merge = self._keys, self._values, self._merge
        self._reset()  # empty: the next epoch starts here
        if words:
            every = np.concatenate(words)
            order = np.argsort(every, kind="stable")  # equal keys stay in order of adds
            ordered = every[order]
            latest = np.ones(len(order), dtype=bool)
            latest[:-1] = ordered[1:] != ordered[:-1]  # the last of each run of equal keys
            pick = order[latest]
            del ordered, latest, order
            table = np.concatenate(values_rows) if len(values_rows) > 1 else values_rows[0]
            for lo in range(0, len(pick), rows):
                at = pick[lo:lo + rows]
                yield Packed(every[at], table[at])
            return
        if merge:  # a key written by two folds: its later value
            latest_of = dict(zip(keys, values, strict=True))
            keys, values = list(latest_of), list(latest_of.values())
        if not all(values):  # deleted keys are not emitted as values
            live = list(map(bool, values))
            keys = [k for k, ok in zip(keys, live, strict=True) if ok]
            values = [v for v, ok in zip(values, live, strict=True) if ok]
        positions = key_order(keys)
        for lo in range(0, len(positions), rows):
            chunk = positions[lo:lo + rows]
            yield [keys[i] for i in chunk], [values[i] for i in chunk]


def as_lists(chunk: Chunk) -> tuple[list[bytes], list[bytes]]:
    """The keys and values of a chunk of :meth:`EpochChanges.sorted_chunks`."""
    return unpack(chunk) if isinstance(chunk, Packed) else chunk


__all__ = ["Chunk", "EpochChanges", "as_lists"]
