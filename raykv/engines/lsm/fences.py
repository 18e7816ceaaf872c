"""A run's fence pointers: the first key of every data block, searched by bisection.

Contract: :func:`fences_of` builds them from a run's index section (the fence lengths and
the fence keys back to back, FORMAT.md) and returns one of two forms with one interface:
``position(key)`` is ``bisect_right`` of ``key`` among the fences (the number of fences
``<= key``; the key's block is ``position - 1``), ``positions(keys)`` the same for a batch,
``len``, ``[i]`` (fence ``i`` as bytes), iteration and ``nbytes`` (memory held).

* :class:`PackedFences`, when every fence has the same length ``L`` and the fences differ
  only in their last ``m <= 8`` bytes after the prefix ``P`` they all share (the fixed-width
  keys of ``raykv.keys``: every integer, float and temporal key is 8 bytes): ``P`` once
  and each fence's last ``m`` bytes as one big-endian unsigned integer, 8 bytes per block
  in an ``array('Q')``. For fences of equal length sharing ``P``, byte order is the order
  of those integers, so a key of length ``L`` starting with ``P`` is placed by one C-level
  ``bisect`` on the integers (a batch by one numpy ``searchsorted``); any other key by a
  comparison with ``P`` and one bisect (see :meth:`PackedFences.position`).
* :class:`ListFences` otherwise: one ``bytes`` object per block in a list (about 57 bytes
  per block with 8-byte keys, 7x the packed form), bisected in C as it is.

Why: the fences are what an LSM run keeps in memory besides its bloom filter, one per
``density_factor`` entries, so they grow with the state. As ``bytes`` objects they were
about 3.5 bytes per key with the default density 16, and a merge held the old runs', the
writer's and the new run's lists at once, among the merge's short-lived objects (a heap
that cannot be given back); packed they are 0.5 bytes per key, in one buffer per run.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import compress, repeat

import numpy as np

#: Tail bytes a packed fence keeps as one integer (``array('Q')``: 8).
MAX_TAIL = 8

#: Below this many keys ``positions`` bisects key by key (no numpy set-up).
_VECTOR_MIN = 16


class Fences:
    """The fences of one run (see the module docstring); built by :func:`fences_of`."""

    __slots__ = ()

    position: Callable[[bytes], int]

    def positions(self, keys: Sequence[bytes]) -> list[int]:
        """``position`` of every key of ``keys``, in order."""
        return list(map(self.position, keys))

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> bytes:
        raise NotImplementedError

    def __iter__(self) -> Iterator[bytes]:
        return map(self.__getitem__, range(len(self)))

    @property
    def nbytes(self) -> int:
        """Bytes of memory the fences hold."""
        raise NotImplementedError


class ListFences(Fences):
    """Fences as a list of ``bytes`` (any key lengths). ``position`` is a C-level bisect."""

    __slots__ = ("keys", "position")

    def __init__(self, keys: list[bytes]) -> None:
        self.keys = keys
        self.position = partial(bisect_right, keys)

    def positions(self, keys: Sequence[bytes]) -> list[int]:
        """``position`` of every key: a C-level ``map`` of ``bisect_right``."""
        return list(map(bisect_right, repeat(self.keys), keys))

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> bytes:
        return self.keys[i]

    @property
    def nbytes(self) -> int:
        """The list and its ``bytes`` objects (O(blocks) to compute)."""
        return sys.getsizeof(self.keys) + sum(map(sys.getsizeof, self.keys))


class PackedFences(Fences):
    """Fences of one length ``width`` sharing ``prefix``, their tails as integers.

    Attributes:
        prefix: the bytes every fence starts with.
        width: every fence's length (``len(prefix) + tail`` with ``tail <= MAX_TAIL``).
        tails: per fence, its bytes after ``prefix`` as a big-endian unsigned integer;
            strictly increasing.
    """

    __slots__ = ("_np", "_plen", "_tail", "prefix", "tails", "width")

    def __init__(self, prefix: bytes, width: int, tails: array[int]) -> None:
        self.prefix = prefix
        self.width = width
        self._plen = len(prefix)
        self._tail = width - len(prefix)
        self.tails = tails
        self._np = np.frombuffer(tails, dtype=np.uint64) if len(tails) else np.zeros(
            0, np.uint64)

    def position(self, key: bytes) -> int:
        """Fences ``<= key``. Cost: one C-level bisect (a compare with ``prefix`` first).

        A key of another length or prefix is placed exactly too: keys that do not start
        with ``prefix`` sort before or after every fence; otherwise its bytes after the
        prefix, cut or zero-padded to the tail length ``m``, compare with the fences'
        tails as the key does with the fences, except that a key shorter than the fences
        sorts before a fence equal to its zero-padded form (hence ``bisect_left``).
        """
        if len(key) == self.width and key.startswith(self.prefix):  # the usual key
            return bisect_right(self.tails, int.from_bytes(key[self._plen:], "big"))
        prefix = self.prefix
        if not key.startswith(prefix):
            return 0 if key < prefix else len(self.tails)
        tail = key[len(prefix):]
        m = self._tail
        if len(tail) > m:
            return bisect_right(self.tails, int.from_bytes(tail[:m], "big"))
        return bisect_left(self.tails, int.from_bytes(tail.ljust(m, b"\0"), "big"))

    def positions(self, keys: Sequence[bytes]) -> list[int]:
        """``position`` of every key, in order.

        Cost: numpy passes (one ``searchsorted``) over the keys of the fences' length
        that start with ``prefix``; the others one by one.
        """
        n = len(keys)
        if n < _VECTOR_MIN:
            return list(map(self.position, keys))
        width, plen = self.width, len(self.prefix)
        fit = np.fromiter(map(len, keys), np.int64, n) == width
        at = np.flatnonzero(fit)
        joined = b"".join(keys if len(at) == n else compress(keys, fit.tolist()))
        rows = np.frombuffer(joined, np.uint8).reshape(-1, width)
        padded = np.zeros((len(rows), 8), np.uint8)
        padded[:, 8 - self._tail:] = rows[:, plen:]
        out = np.zeros(n, np.int64)
        out[at] = np.searchsorted(self._np, padded.view(">u8").ravel().astype(np.uint64),
                                  side="right")
        if plen:  # the fences' length but another prefix: placed one by one below
            other = (rows[:, :plen] != np.frombuffer(self.prefix, np.uint8)).any(axis=1)
            fit[at[other]] = False
        for i in np.flatnonzero(~fit).tolist():
            out[i] = self.position(keys[i])
        result: list[int] = out.tolist()
        return result

    def __len__(self) -> int:
        return len(self.tails)

    def __getitem__(self, i: int) -> bytes:
        return self.prefix + self.tails[i].to_bytes(self._tail, "big")

    @property
    def nbytes(self) -> int:
        """The integers' array and the prefix."""
        return sys.getsizeof(self.tails) + sys.getsizeof(self.prefix)


def fences_of(lens: Sequence[int], keys: bytes) -> Fences:
    """The fences whose lengths are ``lens`` and whose bytes are ``keys`` (back to back).

    Packed when every fence has one length and they differ in at most ``MAX_TAIL`` bytes
    after their common prefix (that of the first and the last, the fences being sorted);
    a list otherwise. Cost: O(blocks) numpy work, or one slice per fence for a list.
    """
    n = len(lens)
    lengths = np.asarray(lens, dtype=np.int64)
    width = int(lengths[0]) if n else 0
    if n and bool((lengths == width).all()):
        first, last = (np.frombuffer(k, np.uint8) for k in (keys[:width], keys[-width:]))
        differ = np.flatnonzero(first != last)  # the fences are sorted: all share this
        prefix = keys[: int(differ[0]) if len(differ) else width]
        tail = width - len(prefix)
        if tail <= MAX_TAIL:
            rows = np.frombuffer(keys, np.uint8).reshape(n, width)
            padded = np.zeros((n, 8), np.uint8)
            padded[:, 8 - tail:] = rows[:, len(prefix):]
            native = padded.view(np.uint64).ravel()
            if sys.byteorder == "little":
                native.byteswap(inplace=True)  # big-endian bytes to values, in place
            tails = array("Q")
            tails.frombytes(native.data.cast("B"))
            return PackedFences(prefix, width, tails)
    ends = np.concatenate(([0], np.cumsum(lengths))).tolist()
    return ListFences(list(map(keys.__getitem__, map(slice, ends[:-1], ends[1:]))))


__all__ = ["MAX_TAIL", "Fences", "ListFences", "PackedFences", "fences_of"]
