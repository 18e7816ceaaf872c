"""A blocked bloom filter: all ``BLOOM_K`` bits of a key live in one 64-bit word.

A key is hashed once with 128-bit MurmurHash3 (``mmh3``, seed 0) into two unsigned 64-bit
halves ``h1, h2``. The filter has a power-of-two number of words; the key's word is
``h1 & (nwords - 1)`` and its mask sets bit ``(h2 >> 6*j) & 63`` for ``j < BLOOM_K``. A
probe is one index, one AND and one compare, so a ``get`` hashes the key once and reuses
``(h1, mask)`` for the filter of every run. ``nwords`` is rounded up to a power of two, so
a filter gets between 1x and 2x ``bits_per_key``; at 10 bits per key the measured false
positive rate is about 1.7 % (a classic bloom would give 0.8 %; the blocked layout trades
that for a probe that touches one word, and k=4 is as good as k=5..6 for 64-bit blocks
while its mask is two table lookups). Building is vectorised with numpy.

The filter is stored as ``nwords`` little-endian u64 words (FORMAT.md, "LSM run file").
``nwords == 1`` with all bits set means "no filter" (``bits_per_key=0``).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from itertools import repeat

import mmh3
import numpy as np
import numpy.typing as npt

from raykv.engines.lsm.run_format import BLOOM_K

hash_pair = mmh3.mmh3_x64_128_utupledigest
"""``hash_pair(key, 0) -> (h1, h2)``: the two unsigned 64-bit hash halves of ``key``."""

_digest = mmh3.mmh3_x64_128_digest
_U64 = np.dtype("<u8")
ALL_ONES = (1 << 64) - 1

# TABLE12[x] = mask of the two bits encoded by the 12-bit chunk x (two 6-bit positions)
TABLE12: list[int] = [(1 << (x & 63)) | (1 << (x >> 6)) for x in range(4096)]


def mask_of(h2: int) -> int:
    """Return the ``BLOOM_K``-bit probe mask for hash half ``h2`` (``BLOOM_K == 4``).

    Same function as ``masks_of`` below, written as two 12-bit table lookups so that a
    ``get`` computes it in a handful of bytecodes.
    """
    return TABLE12[h2 & 4095] | TABLE12[(h2 >> 12) & 4095]


def masks_of(h2: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Vectorised ``mask_of`` for an array of ``h2`` values."""
    one = np.uint64(1)
    m = np.zeros_like(h2)
    for j in range(BLOOM_K):
        m |= one << ((h2 >> np.uint64(6 * j)) & np.uint64(63))
    return m


def hash_many(keys: Sequence[bytes]) -> npt.NDArray[np.uint64]:
    """Return an ``(n, 2)`` uint64 array of ``(h1, h2)`` for ``keys``. Cost: C speed."""
    buf = b"".join(map(_digest, keys, repeat(0)))
    return np.frombuffer(buf, dtype=_U64).reshape(-1, 2)


def nwords_for(nkeys: int, bits_per_key: int) -> int:
    """Words for ``nkeys`` keys at ``bits_per_key``: the next power of two (at least one)."""
    return 1 << (max(1, (nkeys * bits_per_key + 63) // 64) - 1).bit_length()


class BloomFilter:
    """An immutable blocked bloom filter over the keys of one run.

    In memory the words are kept complemented, so that a probe is ``not absent[i] & mask``
    (one AND and a truth test) instead of ``words[i] & mask == mask``.

    Attributes:
        absent: the complemented words, an ``array('Q')`` (measured: in a real read mix a
            list of ints is no faster, its scattered int objects miss the cache): a key may
            be present iff ``absent[h1 & word_mask] & mask`` is 0.
        nwords: number of words, a power of two.
        word_mask: ``nwords - 1``: a key's word is ``h1 & word_mask``.
    """

    __slots__ = ("_np", "absent", "nwords", "word_mask")

    def __init__(self, words: array[int]) -> None:
        """A filter of ``words`` (as stored, native byte order).

        The filter takes ``words`` over and complements them in place: no copy, so a
        run's filter costs its size once, also while it is being opened.
        """
        self.nwords = len(words)
        if self.nwords & (self.nwords - 1) or not self.nwords:
            msg = f"a bloom filter needs a power-of-two number of words, got {self.nwords}"
            raise ValueError(msg)
        self.word_mask = self.nwords - 1
        # the vectorised probes' view of the same words (one copy in memory, not two)
        self._np = np.frombuffer(words, dtype=np.uint64)
        np.invert(self._np, out=self._np)
        self.absent = words

    @property
    def words(self) -> array[int]:
        """The filter words as stored on disk (native byte order)."""
        return array("Q", (~self._np).tobytes())

    @classmethod
    def build(cls, hashes: npt.NDArray[np.uint64], bits_per_key: int) -> BloomFilter:
        """Build a filter from an ``(n, 2)`` hash array (``hash_many``). Cost: O(n), numpy."""
        builder = BloomBuilder(len(hashes), bits_per_key)
        builder.add(hashes)
        return builder.build(len(hashes))

    @classmethod
    def _of(cls, words: npt.NDArray[np.uint64]) -> BloomFilter:
        out = array("Q")
        out.frombytes(words.tobytes())
        return cls(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> BloomFilter:
        """Load the on-disk form (little-endian u64 words)."""
        words = array("Q")
        words.frombytes(data)
        if sys.byteorder == "big":  # pragma: no cover - little-endian hosts only in CI
            words.byteswap()
        return cls(words)

    def to_bytes(self) -> bytes:
        """Return the on-disk form (little-endian u64 words)."""
        words = self.words
        if sys.byteorder == "big":  # pragma: no cover
            words.byteswap()
        return words.tobytes()

    def may_contain(self, key: bytes) -> bool:
        """False if ``key`` is certainly absent; True if it may be present. Cost: one hash."""
        h1, h2 = hash_pair(key, 0)
        return not self.absent[h1 & self.word_mask] & mask_of(h2)

    def may_contain_hashed(self, h1: int, mask: int) -> bool:
        """``may_contain`` for a key already hashed to ``(h1, mask_of(h2))``."""
        return not self.absent[h1 & self.word_mask] & mask

    def may_contain_many(
        self, h1: npt.NDArray[np.uint64], masks: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_]:
        """Vectorised probe: a boolean array, True where the key may be present."""
        absent = self._np[(h1 & np.uint64(self.word_mask)).astype(np.intp)]
        maybe: npt.NDArray[np.bool_] = (absent & masks) == 0
        return maybe

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + 8 * self.nwords + 200


class BloomBuilder:
    """Builds the filter of a run chunk by chunk, in the memory of the filter itself.

    Sized for ``max_keys`` (an upper bound on the keys added); :meth:`build` folds the
    words down to the size ``nkeys`` keys get (``nwords_for``). Folding is exact: with a
    power-of-two ``nwords`` a key's word in the half-size filter is its word modulo the
    half, so ORing the two halves gives bit for bit the filter built at the smaller size
    from the same keys. A writer thus keeps about ``bits_per_key / 8`` to twice that
    bytes per key (not the 16 bytes per key of a hash buffer). More keys than
    ``max_keys`` give a filter with fewer bits per key (more false positives, never a
    false negative). Cost: one numpy OR-scatter per chunk, one OR per fold.
    """

    __slots__ = ("_bits", "_words")

    def __init__(self, max_keys: int, bits_per_key: int) -> None:
        self._bits = bits_per_key
        self._words = np.zeros(nwords_for(max_keys, bits_per_key) if bits_per_key else 0,
                               dtype=np.uint64)

    def add(self, hashes: npt.NDArray[np.uint64]) -> None:
        """Add the keys of an ``(n, 2)`` hash array (``hash_many``)."""
        if len(hashes) and len(self._words):
            idx = (hashes[:, 0] & np.uint64(len(self._words) - 1)).astype(np.intp)
            np.bitwise_or.at(self._words, idx, masks_of(hashes[:, 1]))

    def finish(self, nkeys: int) -> npt.NDArray[np.uint64]:
        """The words of the filter of the ``nkeys`` keys added (the builder is spent)."""
        if not self._bits:
            return np.array([ALL_ONES], dtype=np.uint64)
        words, self._words = self._words, np.zeros(0, dtype=np.uint64)
        target = nwords_for(nkeys, self._bits)
        while len(words) > target:
            half = len(words) // 2
            words = words[:half] | words[half:]
        return words

    def build(self, nkeys: int) -> BloomFilter:
        """:meth:`finish` as a :class:`BloomFilter`."""
        return BloomFilter._of(self.finish(nkeys))
