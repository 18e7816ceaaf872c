"""Packed state pairs: 8-byte keys as numpy words, fixed-size values as numpy rows.

Contract: :func:`pack` turns distinct state keys of 8 bytes each (every integer, float
and temporal key, ``raykv.keys``) and values of one size into a :class:`Packed` pair of
arrays, or returns ``None`` when the pairs do not all have those sizes. The key bytes are
read big-endian, so the words sort in the keys' byte order (:func:`sort_packed`), and
:func:`raykv.keys.decode_words` turns them into the key column without a ``bytes`` per
key; :func:`unpack` gives the lists back.

Why: an operator that emits many keys (``Aggregate``'s epoch output and end of input)
otherwise builds a ``bytes`` object per key and value several times over (sort, gather,
decode, render: each a Python-level pass); packed, those are numpy passes.

Cost: :func:`pack` two ``join``s and two C-level length passes; the rest numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from raykv.keys import split_fixed

KEY_WIDTH = 8  # the packed keys' length (raykv.keys: fixed-width keys but bool)


@dataclass(frozen=True)
class Packed:
    """Keys as words (``uint64`` of the big-endian key bytes) and values as rows."""

    words: npt.NDArray[np.uint64]
    rows: npt.NDArray[np.uint8]  # shape (len(words), value size)

    def __len__(self) -> int:
        return len(self.words)

    def take(self, at: npt.NDArray[np.intp] | slice) -> Packed:
        """The pairs at positions ``at`` (an index array or a slice)."""
        return Packed(self.words[at], self.rows[at])


def uniform(items: Sequence[bytes], size: int) -> bool:
    """Every item (at least one) is ``size`` bytes long (two C-level passes)."""
    return min(map(len, items)) == size == max(map(len, items))


def key_words(keys: Sequence[bytes]) -> npt.NDArray[np.uint64]:
    """8-byte ``keys`` as the words of :class:`Packed` (big-endian: byte order sorts).

    The caller knows every key is 8 bytes. Cost: one ``join``, one numpy conversion.
    """
    return np.frombuffer(b"".join(keys), ">u8").astype(np.uint64)


def pack(keys: Sequence[bytes], values: Sequence[bytes], size: int | None = None
         ) -> Packed | None:
    """``keys``/``values`` packed (module docstring), or ``None`` if they do not fit.

    ``size``: the values' required size (default: the first value's; 0 never fits).
    """
    if not keys:
        return None
    size = len(values[0]) if size is None else size
    if not (size and uniform(keys, KEY_WIDTH) and uniform(values, size)):
        return None
    words = key_words(keys)
    rows = np.frombuffer(b"".join(values), np.uint8).reshape(len(keys), size)
    return Packed(words, rows)


def sort_packed(p: Packed) -> Packed:
    """``p`` in ascending key order (a stable numpy sort of the words)."""
    return p.take(np.argsort(p.words, kind="stable"))


def unpack(p: Packed) -> tuple[list[bytes], list[bytes]]:
    """The keys and values of ``p`` as ``bytes`` lists (one C-level pass each)."""
    return (split_fixed(p.words.astype(">u8").tobytes(), KEY_WIDTH),
            split_fixed(np.ascontiguousarray(p.rows).tobytes(), p.rows.shape[1]))


__all__ = ["KEY_WIDTH", "Packed", "key_words", "pack", "sort_packed", "uniform", "unpack"]
