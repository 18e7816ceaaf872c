"""Keys and locations as numpy words: what ``KeyIndex`` converts a batch with.

``KeyIndex`` (``keyindex.py``) holds 8-byte keys as one little-endian ``uint64`` word
(``U64Index``) and other keys of 1-16 bytes as two words and a length (``WideIndex``),
with their locations as ``uint64``. These functions sort a batch's keys by kind, build
those columns from ``bytes`` keys and int locations and give the keys back, each in
C-level passes (no Python step per key).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import repeat
from operator import and_

import numpy as np

from raykv.engines.wideindex import MAX_LEN, Words

M64 = (1 << 64) - 1
"""The largest location a table holds (a uint64)."""


def split_fixed(buf: bytes, width: int) -> list[bytes]:
    """Slice ``buf`` into ``width``-byte ``bytes`` objects (one C-level pass).

    About 4x faster than a list comprehension of slices; trailing zero bytes are kept.
    """
    return np.frombuffer(buf, dtype=f"V{width}").tolist()  # type: ignore[no-any-return]


def eight_words(keys: list[bytes]) -> np.ndarray:
    """8-byte ``keys`` as uint64 words (read-only; little-endian, like ``word_keys``)."""
    return np.frombuffer(b"".join(keys), dtype="<u8").astype(np.uint64, copy=False)


def word_keys(words: np.ndarray) -> list[bytes]:
    """The 8-byte keys of ``words`` read little-endian, as a ``KeyIndex`` holds them.

    The inverse of ``eight_words``. Cost: one C-level pass (``split_fixed``).
    """
    return split_fixed(words.astype("<u8", copy=False).tobytes(), 8)


def short_words(keys: list[bytes], lens: np.ndarray) -> Words:
    """Keys of 1-16 bytes (``lens``: their lengths) as ``WideIndex`` columns.

    Each key zero-padded to 16 bytes (numpy's fixed-width ``S16`` conversion, about 35
    ns a key) and read as two little-endian words. Inverse: ``short_keys``.
    """
    pairs = np.array(keys, dtype="S16").view("<u8").astype(np.uint64, copy=False)
    return pairs[0::2], pairs[1::2], lens.astype(np.uint8, copy=False)


def short_keys(w0: np.ndarray, w1: np.ndarray, lens: np.ndarray) -> list[bytes]:
    """The ``bytes`` keys of ``WideIndex`` columns. Cost: C-level passes per distinct length."""
    n = len(lens)
    raw = np.empty((n, 2), dtype="<u8")
    raw[:, 0], raw[:, 1] = w0, w1
    rows = raw.view(np.uint8).reshape(n, 16)
    sizes = np.unique(lens).tolist()
    if len(sizes) == 1:
        return split_fixed(rows[:, : sizes[0]].tobytes(), sizes[0])
    out: list[bytes] = [b""] * n
    for size in sizes:
        at = np.flatnonzero(lens == size)
        deque(map(out.__setitem__, at.tolist(), split_fixed(rows[at, :size].tobytes(), size)),
              maxlen=0)
    return out


def key_kinds(keys: list[bytes], lens: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The keys' lengths, the mask of 8-byte keys and of other short ones (1-16 bytes).

    A mask is ``None`` when every key is of its kind. ``lens``: the lengths when the
    caller has them. Cost: a C-level ``len`` per key (none with ``lens``), numpy passes.
    """
    if lens is None:
        lens = np.fromiter(map(len, keys), dtype=np.intp, count=len(keys))
    eight = lens == 8
    if eight.all():
        return lens, None, np.zeros(len(keys), dtype=bool)
    short = (lens > 0) & (lens <= MAX_LEN) & ~eight
    return lens, eight, None if short.all() else short


def loc_array(locs: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``locs`` as uint64, and the mask of those beyond a uint64 (``None``: none is).

    Where the mask is set the array holds garbage: those locations go elsewhere.
    """
    if isinstance(locs, np.ndarray):
        return locs.astype(np.uint64, copy=False), None
    n = len(locs)
    try:
        return np.fromiter(locs, dtype=np.uint64, count=n), None
    except OverflowError:
        big = np.fromiter(map(M64.__lt__, locs), dtype=bool, count=n)
        return np.fromiter(map(and_, locs, repeat(M64)), dtype=np.uint64, count=n), big


def count_above(found: np.ndarray, old: np.ndarray, shift: int) -> int:
    """How many found keys had an old location nonzero above ``shift``."""
    return int(np.count_nonzero(found & ((old >> np.uint64(shift)) != 0)))


def distinct_words(words: np.ndarray) -> bool:
    """No word repeats in ``words``. Cost: a sort (about 1.5 ms for 40,000 words).

    An engine's array path (``multi_set_packed``) asks it first: a batch with a key
    twice must keep its later row, which the batch paths of ``multi_set`` do.
    """
    s = np.sort(words)
    return not bool((s[1:] == s[:-1]).any())


__all__ = ["M64", "count_above", "distinct_words", "eight_words", "key_kinds", "loc_array",
           "short_keys", "short_words", "split_fixed", "word_keys"]
