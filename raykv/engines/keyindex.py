"""An engine's key index: byte keys to int locations, with 8-byte keys in a flat table.

Why: HybridLog maps every key with a durable record to a packed int location. In a
``dict`` of a million entries each store of a key already present misses the CPU cache
several times: 0.58 µs a key, the floor under a bulk write (``benchmarks.index_ceiling``).
Every integer and time key an operator writes is 8 bytes (``raykv.keys``), so
``KeyIndex`` keeps those in a :class:`~raykv.engines.u64index.U64Index` (the key's bytes
read as a little-endian uint64; numpy passes per batch) and only the others in a dict:

* ``_d``: keys that are not 8 bytes long, as a ``dict`` (``bytes -> int``);
* ``_t``: 8-byte keys whose location fits a uint64, in the table;
* ``_big``: 8-byte keys whose location does not (HybridLog: values of 256 bytes or
  more), by their uint64 word.

A key is in exactly one of the three. ``KeyIndex`` answers the dict calls an engine makes
one key at a time (``get``, ``in``, ``del``, ``len``, iteration) and adds batch calls:
:meth:`~KeyIndex.get_many`, :meth:`~KeyIndex.swap_count`, :meth:`~KeyIndex.store`,
:meth:`~KeyIndex.delete_many`, :meth:`~KeyIndex.value_parts`. The functions at the bottom
take either a ``dict`` or a ``KeyIndex``: an engine's index stays a plain dict (C-level
``map`` calls, fastest for one key at a time) until a large batch of 8-byte keys comes
(:func:`should_promote`), then becomes a ``KeyIndex`` for good (until a reopen, which
decides again from the keys it loads).

Iteration order: the dict's keys, then the table's (slot order), then ``_big``'s; the
same for ``keys()``, ``values()`` and ``items()`` while the index does not change (a
merge pairs positions in ``value_parts()`` with ``list(index)``).

Cost per key of a batch of 8-byte keys: one ``len`` and one ``b"".join`` step (C-level),
then the table's numpy rounds: about 0.1 µs for ``swap_count`` against 0.6 µs for a dict
store at a million keys. A single ``get`` of an 8-byte key is a Python probe loop (0.3-0.5
µs against 0.05 µs for a dict). Memory: 32-64 bytes per 8-byte key (two uint64 slots at a
load of 1/4 to 1/2) against about 120 for a dict entry with its key and int objects.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice, repeat
from operator import and_, truth
from typing import Any, overload

import numpy as np

from raykv.engines.u64index import U64Index

PROMOTE_MIN_KEYS = 4096
"""Keys in a batch from which an engine's dict index becomes a ``KeyIndex`` (0: always)."""

_SAMPLE = 64  # keys of a batch looked at to decide that its keys are 8 bytes
_M64 = (1 << 64) - 1
_CHUNK = 65_536  # table entries turned into bytes keys at a time by ``items()``
_MISSING = object()


def _words(keys: list[bytes]) -> np.ndarray:
    """8-byte ``keys`` as uint64 words (read-only; little-endian, like ``word_keys``)."""
    return np.frombuffer(b"".join(keys), dtype="<u8").astype(np.uint64, copy=False)


def split_fixed(buf: bytes, width: int) -> list[bytes]:
    """Slice ``buf`` into ``width``-byte ``bytes`` objects (one C-level pass).

    About 4x faster than a list comprehension of slices; trailing zero bytes are kept.
    """
    return np.frombuffer(buf, dtype=f"V{width}").tolist()  # type: ignore[no-any-return]


def word_keys(words: np.ndarray) -> list[bytes]:
    """The 8-byte keys of ``words`` read little-endian, as a ``KeyIndex`` holds them.

    The inverse of ``_words``. Cost: one C-level pass (``split_fixed``).
    """
    return split_fixed(words.astype("<u8", copy=False).tobytes(), 8)


def distinct_words(words: np.ndarray) -> bool:
    """No word repeats in ``words``. Cost: a sort (about 1.5 ms for 40,000 words).

    An engine's array path (``multi_set_packed``) asks it first: a batch with a key
    twice must keep its later row, which the batch paths of ``multi_set`` do.
    """
    s = np.sort(words)
    return not bool((s[1:] == s[:-1]).any())


def _loc_array(locs: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``locs`` as uint64, and the mask of those beyond a uint64 (``None``: none is).

    Where the mask is set the array holds garbage: those locations go elsewhere.
    """
    if isinstance(locs, np.ndarray):
        return locs.astype(np.uint64, copy=False), None
    n = len(locs)
    try:
        return np.fromiter(locs, dtype=np.uint64, count=n), None
    except OverflowError:
        big = np.fromiter(map(_M64.__lt__, locs), dtype=bool, count=n)
        return np.fromiter(map(and_, locs, repeat(_M64)), dtype=np.uint64, count=n), big


def _set_above(found: np.ndarray, old: np.ndarray, shift: int) -> int:
    """How many found keys had an old location nonzero above ``shift``."""
    return int(np.count_nonzero(found & ((old >> np.uint64(shift)) != 0)))


def dict_sizeof(table: dict[Any, Any]) -> int:
    """Estimated bytes of ``table`` with its keys and values (32 entries sampled). O(1)."""
    total = sys.getsizeof(table)
    sample = list(islice(table.items(), 32))
    if sample:
        per = sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in sample) / len(sample)
        total += int(per * len(table))
    return total


class KeyIndex:
    """``bytes -> int`` index with 8-byte keys in a vectorized table (module docstring).

    Keys of one batch call must be distinct (an engine's batches are). Locations are
    non-negative ints of any size; a location that fits a uint64 is stored in the table.

    Example:
        >>> ix = KeyIndex()
        >>> ix.swap_count([b"12345678", b"long key"], [7 << 8, 9], 8)
        0
        >>> ix.get(b"12345678"), ix.get(b"long key"), len(ix)
        (1792, 9, 2)
        >>> ix.get_many([b"12345678", b"absent!!"], 0)
        [1792, 0]
    """

    __slots__ = ("_big", "_d", "_t")

    def __init__(self) -> None:
        self._d: dict[bytes, int] = {}
        self._t = U64Index()
        self._big: dict[int, int] = {}

    @classmethod
    def of(cls, index: dict[bytes, int]) -> KeyIndex:
        """A ``KeyIndex`` holding the entries of ``index``. Cost: one batch store."""
        out = cls()
        if index:
            out.store(list(index), list(index.values()))
        return out

    # ------------------------------------------------------------ one key at a time

    @overload
    def get(self, key: bytes) -> int | None: ...
    @overload
    def get(self, key: bytes, default: int) -> int: ...

    def get(self, key: bytes, default: int | None = None) -> int | None:
        """The location of ``key``, else ``default``. Cost: a dict probe or a table probe."""
        if len(key) != 8:
            return self._d.get(key, default)
        word = int.from_bytes(key, "little")
        loc = self._t.lookup(word)
        if loc is None:
            return self._big.get(word, default) if self._big else default
        return loc

    def __getitem__(self, key: bytes) -> int:
        loc = self.get(key)
        if loc is None:
            raise KeyError(key)
        return loc

    def __contains__(self, key: object) -> bool:
        try:
            return self.get(key) is not None  # type: ignore[call-overload]
        except TypeError:  # unhashable or without a length: like a dict, not held
            return False

    def __setitem__(self, key: bytes, loc: int) -> None:
        if len(key) == 8 and 0 <= loc <= _M64:  # a Python probe (a batch call: 10-20 µs)
            word = int.from_bytes(key, "little")
            if self._big:
                self._big.pop(word, None)
            self._t.put(word, loc)
        else:
            self.store([key], [loc])

    def __delitem__(self, key: bytes) -> None:
        if key not in self:
            raise KeyError(key)
        self.delete_many([key])

    def pop(self, key: bytes, default: object = _MISSING) -> object:
        """Remove ``key`` and return its location (``default``, else ``KeyError``, if absent)."""
        loc = self.get(key)
        if loc is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        self.delete_many([key])
        return loc

    def __len__(self) -> int:
        return len(self._d) + len(self._t) + len(self._big)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.keys())

    def keys(self) -> list[bytes]:
        """Every key, in iteration order (module docstring). Cost: O(keys) objects."""
        t_keys = self._t.items()[0]
        big = np.fromiter(self._big, dtype=np.uint64, count=len(self._big))
        return [*self._d, *word_keys(t_keys), *word_keys(big)]

    def values(self) -> Iterator[int]:
        """Every location, in iteration order."""
        d_vals, t_vals, big_vals = self.value_parts()
        yield from d_vals
        for a in range(0, len(t_vals), _CHUNK):
            yield from t_vals[a : a + _CHUNK].tolist()
        yield from big_vals

    def items(self) -> Iterator[tuple[bytes, int]]:
        """Every ``(key, location)``, in iteration order; table keys made ``_CHUNK`` at a time."""
        yield from self._d.items()
        t_keys, t_vals = self._t.items()
        for a in range(0, len(t_keys), _CHUNK):
            yield from zip(word_keys(t_keys[a : a + _CHUNK]), t_vals[a : a + _CHUNK].tolist(),
                           strict=True)
        for word, loc in list(self._big.items()):
            yield word.to_bytes(8, "little"), loc

    def table_items(self) -> tuple[np.ndarray, np.ndarray]:
        """The table's keys (uint64 words, read little-endian) and locations, slot order.

        Every 8-byte key whose location fits a uint64. Cost: one numpy pass over the
        table, no Python object per key.
        """
        return self._t.items()

    def side_items(self) -> list[tuple[bytes, int]]:
        """The entries outside the table: keys of other lengths, then ``_big``'s."""
        return [*self._d.items(), *((w.to_bytes(8, "little"), loc) for w, loc in self._big.items())]

    def value_parts(self) -> tuple[list[int], np.ndarray, list[int]]:
        """The locations of the dict, the table (uint64) and ``_big``, in iteration order."""
        return list(self._d.values()), self._t.items()[1], list(self._big.values())

    def __sizeof__(self) -> int:
        """Bytes held: the table's arrays, the dicts and (sampled) their entries. O(1)."""
        return (object.__sizeof__(self) + self._t.nbytes + dict_sizeof(self._d)
                + dict_sizeof(self._big))

    # ------------------------------------------------------------ batches

    @staticmethod
    def _eight(keys: list[bytes]) -> np.ndarray | None:
        """Mask of the 8-byte keys (``None``: all are). Cost: a C-level ``len`` per key."""
        is8: np.ndarray = np.fromiter(map(len, keys), dtype=np.intp, count=len(keys)) == 8
        return None if is8.all() else is8

    def get_many(self, keys: Sequence[bytes], default: int) -> list[int]:
        """The location of each key, ``default`` where absent."""
        keys = keys if isinstance(keys, list) else list(keys)
        if not keys:
            return []
        is8 = self._eight(keys)
        if is8 is None:
            return self._get_words(_words(keys), default)
        out: list[int] = list(map(self._d.get, keys, repeat(default)))
        at = np.flatnonzero(is8).tolist()
        if at:
            found = self._get_words(_words(list(map(keys.__getitem__, at))), default)
            deque(map(out.__setitem__, at, found), maxlen=0)
        return out

    def _get_words(self, words: np.ndarray, default: int) -> list[int]:
        found, vals = self._t.found(words)
        if found.all():
            return vals.tolist()  # type: ignore[no-any-return]
        if not self._big and 0 <= default <= _M64:
            vals[~found] = default
            return vals.tolist()  # type: ignore[no-any-return]
        out: list[int] = vals.tolist()
        big = self._big
        miss = np.flatnonzero(~found)
        for i, word in zip(miss.tolist(), words[miss].tolist(), strict=True):
            out[i] = big.get(word, default)
        return out

    def swap_count(self, keys: Sequence[bytes], locs: Sequence[int] | np.ndarray,
                   shift: int) -> int:
        """Point each key at its location; return how many had a location ``>> shift`` != 0.

        (HybridLog: how many keys had a live durable record; a tombstone's location has
        length 0 above ``shift``.) Cost: the table's rounds for the 8-byte keys whose
        locations fit a uint64; a dict operation or two for each other key.
        """
        keys = keys if isinstance(keys, list) else list(keys)
        if len(keys) != len(locs):
            msg = f"{len(keys)} keys but {len(locs)} locations"
            raise ValueError(msg)
        if not keys:
            return 0
        arr, big = _loc_array(locs)
        is8 = self._eight(keys)
        if is8 is None and big is None:
            return self._swap_words(_words(keys), arr, shift)
        eight = np.ones(len(keys), dtype=bool) if is8 is None else is8
        fits = np.ones(len(keys), dtype=bool) if big is None else ~big
        live = 0
        tab = np.flatnonzero(eight & fits)
        if tab.size:
            live += self._swap_words(_words(list(map(keys.__getitem__, tab.tolist()))),
                                     arr[tab], shift)
        wide = np.flatnonzero(eight & ~fits).tolist()
        if wide:
            live += self._swap_big([keys[i] for i in wide], [int(locs[i]) for i in wide], shift)
        if is8 is not None:
            other = np.flatnonzero(~is8).tolist()
            ks = [keys[i] for i in other]
            d = self._d
            live += sum(map(truth, map(shift.__rrshift__, map(d.get, ks, repeat(0)))))
            d.update(zip(ks, [int(locs[i]) for i in other], strict=True))
        return live

    def swap_words(self, words: np.ndarray, locs: np.ndarray, shift: int) -> int:
        """:meth:`swap_count` of distinct 8-byte keys given as uint64 ``words``.

        ``words``: the keys read little-endian; ``locs``: uint64 locations. Cost: the
        table's rounds, no Python object per key.
        """
        if len(words) != len(locs):
            msg = f"{len(words)} keys but {len(locs)} locations"
            raise ValueError(msg)
        return self._swap_words(words, locs, shift) if len(words) else 0

    def _swap_words(self, words: np.ndarray, locs: np.ndarray, shift: int) -> int:
        live = 0
        big = self._big
        if big:  # keys whose location fits again leave ``_big``
            moving = np.isin(words, np.fromiter(big, dtype=np.uint64, count=len(big)))
            for word in words[moving].tolist():
                live += truth(big.pop(word) >> shift)
        return live + _set_above(*self._t.swap(words, locs), shift)

    def _swap_big(self, keys: list[bytes], locs: list[int], shift: int) -> int:
        words = _words(keys)
        found, old = self._t.found(words)
        live = _set_above(found, old, shift)
        if found.any():
            self._t.delete(words[found])
        big = self._big
        for word, loc in zip(words.tolist(), locs, strict=True):
            prev = big.get(word)
            if prev is not None:
                live += truth(prev >> shift)
            big[word] = loc
        return live

    def store(self, keys: Sequence[bytes], locs: Sequence[int] | np.ndarray) -> None:
        """Point each key at its location (:meth:`swap_count` without the count)."""
        self.swap_count(keys, locs, 0)

    def delete_many(self, keys: Iterable[bytes]) -> None:
        """Remove each key (absent keys are skipped)."""
        keys = list(keys)
        if not keys:
            return
        is8 = self._eight(keys)
        eight = keys if is8 is None else [k for k in keys if len(k) == 8]
        if eight:
            words = _words(eight)
            self._t.delete(words)
            if self._big:
                deque(map(self._big.pop, words.tolist(), repeat(None)), maxlen=0)
        if is8 is not None:
            deque(map(self._d.pop, (k for k in keys if len(k) != 8), repeat(None)), maxlen=0)


Index = dict[bytes, int] | KeyIndex
"""What an engine's ``_index`` is: a plain dict, or a ``KeyIndex`` once promoted."""


def new_index() -> Index:
    """An empty index: a dict, or a ``KeyIndex`` when ``PROMOTE_MIN_KEYS`` is 0."""
    return KeyIndex() if PROMOTE_MIN_KEYS == 0 else {}


def promoted(index: Index, keys: Iterable[bytes], n: int) -> Index:
    """``index``, or a ``KeyIndex`` of its entries to take a batch of ``n`` ``keys``.

    A ``KeyIndex`` when ``index`` is a dict, the batch holds at least
    ``PROMOTE_MIN_KEYS`` keys and at least 3/4 of a sample of ``_SAMPLE`` of them are 8
    bytes long (spread over the batch when it is a sequence, else its first ones): a
    metadata key among integer keys does not keep them in a dict. Cost: O(_SAMPLE), plus
    one batch store of the dict's entries when it promotes.
    """
    if type(index) is not dict or n < PROMOTE_MIN_KEYS:
        return index
    sample = (keys[:: max(1, n // _SAMPLE)] if isinstance(keys, Sequence)
              else list(islice(keys, _SAMPLE)))
    if 4 * sum(len(k) == 8 for k in sample) >= 3 * len(sample):
        return KeyIndex.of(index)
    return index


def get_many(index: Index, keys: Sequence[bytes], default: int) -> list[int]:
    """The location of each key in ``index`` (``default`` where absent)."""
    if isinstance(index, dict):  # (or the closed engine's stand-in, a dict that raises)
        return list(map(index.get, keys, repeat(default)))
    return index.get_many(keys, default)


def store(index: Index, keys: Sequence[bytes], locs: Sequence[int] | np.ndarray) -> None:
    """Point each key of ``index`` at its location."""
    if isinstance(index, dict):
        vals = locs.tolist() if isinstance(locs, np.ndarray) else locs
        index.update(zip(keys, vals, strict=True))
    else:
        index.store(keys, locs)


def delete_many(index: Index, keys: Iterable[bytes]) -> None:
    """Remove each key from ``index`` (each must be there when it is a dict)."""
    if isinstance(index, dict):
        deque(map(index.__delitem__, keys), maxlen=0)
    else:
        index.delete_many(keys)


def count_set(index: Index, shift: int) -> int:
    """How many locations of ``index`` are nonzero above ``shift`` (HybridLog: live keys)."""
    if isinstance(index, dict):
        return sum(map(truth, map(shift.__rrshift__, index.values())))
    d_vals, t_vals, big_vals = index.value_parts()
    return (sum(map(truth, map(shift.__rrshift__, d_vals)))
            + int(np.count_nonzero(t_vals >> np.uint64(shift)))
            + sum(map(truth, map(shift.__rrshift__, big_vals))))


__all__ = ["PROMOTE_MIN_KEYS", "Index", "KeyIndex", "count_set", "delete_many", "dict_sizeof",
           "distinct_words", "get_many", "new_index", "promoted", "split_fixed", "store",
           "word_keys"]
