"""An engine's key index: byte keys to int locations, with short keys in flat tables.

Why: HybridLog and AppendLog map every key with a durable record to a packed int
location. In a ``dict`` of a million entries each store of a key already present misses
the CPU cache several times: 0.45-0.6 µs a key, the floor under a bulk write
(``benchmarks.index_ceiling``), and a merge that scans the dict's values pays about 0.1
µs an entry. Every integer and time key an operator writes is 8 bytes (``raykv.keys``),
and names, codes and ids are mostly 16 bytes or less, so ``KeyIndex`` keeps those in
tables whose probes numpy does a whole batch at a time, and only the others in a dict:

* ``_d``: keys of more than 16 bytes, as a ``dict`` (``bytes -> int``);
* ``_t``: 8-byte keys whose location fits a uint64, in a ``U64Index`` (one word);
* ``_w``: other keys of 1-16 bytes whose location fits, in a ``WideIndex`` (two words);
* ``_sbig`` and ``_big``: keys of 1-16 bytes whose location does not fit (HybridLog:
  values of 256 bytes or more), by their bytes and by their uint64 word (8 bytes).

A key is in exactly one of the five. ``KeyIndex`` answers the dict calls an engine makes
one key at a time (``get``, ``in``, ``del``, ``len``, iteration) and adds batch calls:
:meth:`~KeyIndex.get_many`, :meth:`~KeyIndex.swap_count`, :meth:`~KeyIndex.store`,
:meth:`~KeyIndex.delete_many`, :meth:`~KeyIndex.value_parts`. The functions at the bottom
take either a ``dict`` or a ``KeyIndex``: an engine's index stays a plain dict (C-level
``map`` calls, fastest for one key at a time) until a large batch of short keys comes
(:func:`promoted`), then becomes a ``KeyIndex`` for good (until a reopen, which decides
again from the keys it loads).

Iteration order (``keys()``, ``values()``, ``items()``, ``value_parts()``, while the index
does not change): ``_d``, ``_t`` and ``_w`` (slot order), ``_sbig``, ``_big``. Cost per
key of a batch: a ``len`` (none given the lengths), a conversion (``keywords.py``), the
tables' numpy rounds: 0.1-0.15 µs for ``swap_count``. A single ``get`` is a Python probe
loop: 1.0 (8 bytes) or 1.7 µs (others) against 0.2 µs for a dict. Memory: 32-64 bytes per
8-byte key, 50-100 per other short key, about 120 for a dict entry with its objects.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import compress, islice, repeat
from operator import truth
from typing import Any, overload

import numpy as np

from raykv.engines.keywords import (
    M64,
    count_above,
    eight_words,
    key_kinds,
    loc_array,
    short_keys,
    short_words,
    word_keys,
)
from raykv.engines.u64index import U64Index
from raykv.engines.wideindex import MAX_LEN, WideIndex, pair_of

PROMOTE_MIN_KEYS = 4096
"""Keys in a batch from which an engine's dict index becomes a ``KeyIndex`` (0: always)."""
PROMOTE_WIDE_MIN = 131_072  # entries from which other keys of 1-16 bytes promote too

_SAMPLE = 64  # keys of a batch looked at to decide that its keys are short
_CHUNK = 65_536  # table entries turned into bytes keys at a time by ``items()``
_MISSING = object()


def _with_misses(found: np.ndarray, vals: np.ndarray, default: int, side: dict[Any, int],
                 side_keys: Callable[[], list[Any]]) -> list[int]:
    """A table's answers; a missed key's from ``side`` (big locations) or ``default``."""
    if found.all():
        return vals.tolist()  # type: ignore[no-any-return]
    if not side and 0 <= default <= M64:
        vals[~found] = default
        return vals.tolist()  # type: ignore[no-any-return]
    out: list[int] = vals.tolist()
    keys = side_keys()
    for i in np.flatnonzero(~found).tolist():
        out[i] = side.get(keys[i], default)
    return out


def dict_sizeof(table: dict[Any, Any]) -> int:
    """Estimated bytes of ``table`` with its keys and values (32 entries sampled). O(1)."""
    total = sys.getsizeof(table)
    sample = list(islice(table.items(), 32))
    if sample:
        per = sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in sample) / len(sample)
        total += int(per * len(table))
    return total


class KeyIndex:
    """``bytes -> int`` index with short keys in vectorized tables (module docstring).

    Keys of one batch call must be distinct (an engine's batches are). Locations are
    non-negative ints of any size; a location that fits a uint64 is stored in a table.

    Example:
        >>> ix = KeyIndex()
        >>> ix.swap_count([b"12345678", b"short key", b"a key of 17 bytes"], [7 << 8, 9, 5], 8)
        0
        >>> ix.get(b"12345678"), ix.get(b"short key"), ix.get(b"a key of 17 bytes"), len(ix)
        (1792, 9, 5, 3)
        >>> ix.get_many([b"12345678", b"absent!!", b"short key"], 0)
        [1792, 0, 9]
    """

    __slots__ = ("_big", "_d", "_sbig", "_t", "_w")

    def __init__(self) -> None:
        self._d: dict[bytes, int] = {}
        self._t = U64Index()
        self._w = WideIndex()
        self._sbig: dict[bytes, int] = {}
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
        size = len(key)
        if size == 8:
            word = int.from_bytes(key, "little")
            loc = self._t.lookup(word)
            if loc is None:
                return self._big.get(word, default) if self._big else default
            return loc
        if 0 < size <= MAX_LEN:
            loc = self._w.lookup(*pair_of(key), size)
            if loc is None:
                return self._sbig.get(key, default) if self._sbig else default
            return loc
        return self._d.get(key, default)

    def __getitem__(self, key: bytes) -> int:
        loc = self.get(key)
        if loc is None:
            raise KeyError(key)
        return loc

    def __contains__(self, key: object) -> bool:
        try:
            return self.get(key) is not None  # type: ignore[call-overload]
        except (TypeError, AttributeError):  # not bytes: like a dict, not held
            return False

    def __setitem__(self, key: bytes, loc: int) -> None:
        size = len(key)
        if 0 <= loc <= M64 and 0 < size <= MAX_LEN:  # a Python probe (a batch: 10-20 µs)
            if size == 8:
                word = int.from_bytes(key, "little")
                if self._big:
                    self._big.pop(word, None)
                self._t.put(word, loc)
            else:
                if self._sbig:
                    self._sbig.pop(key, None)
                self._w.put(*pair_of(key), size, loc)
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
        return len(self._d) + len(self._t) + len(self._w) + len(self._sbig) + len(self._big)

    def eight_keys(self) -> int:
        """How many entries have 8-byte keys. O(1)."""
        return len(self._t) + len(self._big)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.keys())

    def keys(self) -> list[bytes]:
        """Every key, in iteration order (module docstring). Cost: O(keys) objects."""
        big = np.fromiter(self._big, dtype=np.uint64, count=len(self._big))
        return [*self._d, *word_keys(self._t.items()[0]), *short_keys(*self._w.items()[:3]),
                *self._sbig, *word_keys(big)]

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
        w0, w1, lens, w_vals = self._w.items()
        for a in range(0, len(lens), _CHUNK):
            part = slice(a, a + _CHUNK)
            yield from zip(short_keys(w0[part], w1[part], lens[part]), w_vals[part].tolist(),
                           strict=True)
        yield from list(self._sbig.items())
        for word, loc in list(self._big.items()):
            yield word.to_bytes(8, "little"), loc

    def table_items(self) -> tuple[np.ndarray, Callable[[np.ndarray], list[bytes]]]:
        """The tables' locations (uint64, iteration order) and their keys at given positions.

        Returns the locations of every table entry (8-byte keys, then other short ones:
        ``value_parts()``'s middle part) and a function giving the ``bytes`` keys of the
        entries at an array of positions into them, in that order. Cost: numpy passes over
        the tables; a ``bytes`` per key asked for.
        """
        t_keys, t_vals = self._t.items()
        w0, w1, lens, w_vals = self._w.items()
        n8 = len(t_keys)

        def keys_at(at: np.ndarray) -> list[bytes]:
            eight = at < n8
            if eight.all():
                return word_keys(t_keys[at])
            wide = at[~eight] - n8
            if not eight.any():
                return short_keys(w0[wide], w1[wide], lens[wide])
            out: list[bytes] = [b""] * len(at)
            for mask, ks in ((eight, word_keys(t_keys[at[eight]])),
                             (~eight, short_keys(w0[wide], w1[wide], lens[wide]))):
                deque(map(out.__setitem__, np.flatnonzero(mask).tolist(), ks), maxlen=0)
            return out

        return np.concatenate([t_vals, w_vals]), keys_at

    def side_items(self) -> list[tuple[bytes, int]]:
        """The entries outside the tables: long keys, then short keys of big locations."""
        return [*self._d.items(), *self._sbig.items(),
                *((w.to_bytes(8, "little"), loc) for w, loc in self._big.items())]

    def value_parts(self) -> tuple[list[int], np.ndarray, list[int]]:
        """The locations of ``_d``, of both tables (uint64) and of ``_sbig`` and ``_big``."""
        return (list(self._d.values()), np.concatenate([self._t.values(), self._w.values()]),
                [*self._sbig.values(), *self._big.values()])

    def __sizeof__(self) -> int:
        """Bytes held: the tables' arrays, the dicts and (sampled) their entries. O(1)."""
        return (object.__sizeof__(self) + self._t.nbytes + self._w.nbytes
                + dict_sizeof(self._d) + dict_sizeof(self._sbig) + dict_sizeof(self._big))

    # ------------------------------------------------------------ batches

    def get_many(self, keys: Sequence[bytes], default: int) -> list[int]:
        """The location of each key, ``default`` where absent."""
        keys = keys if isinstance(keys, list) else list(keys)
        if not keys:
            return []
        lens, eight, short = key_kinds(keys)
        if eight is None:
            return self._get_words(eight_words(keys), default)
        if short is None:
            return self._get_short(keys, lens, default)
        out: list[int] = list(map(self._d.get, keys, repeat(default)))
        for mask, wide in ((eight, False), (short, True)):
            at = np.flatnonzero(mask)
            if at.size:
                ks = list(map(keys.__getitem__, at.tolist()))
                found = (self._get_short(ks, lens[at], default) if wide
                         else self._get_words(eight_words(ks), default))
                deque(map(out.__setitem__, at.tolist(), found), maxlen=0)
        return out

    def _get_words(self, words: np.ndarray, default: int) -> list[int]:
        found, vals = self._t.found(words)
        return _with_misses(found, vals, default, self._big, words.tolist)

    def _get_short(self, keys: list[bytes], lens: np.ndarray, default: int) -> list[int]:
        found, vals = self._w.found(short_words(keys, lens))
        return _with_misses(found, vals, default, self._sbig, lambda: keys)

    def swap_count(self, keys: Sequence[bytes], locs: Sequence[int] | np.ndarray,
                   shift: int, lens: np.ndarray | None = None) -> int:
        """Point each key at its location; return how many had a location ``>> shift`` != 0.

        (HybridLog: how many keys had a live durable record; a tombstone's location has
        length 0 above ``shift``.) Cost: the tables' rounds for the keys of 1-16 bytes
        whose locations fit a uint64; a dict operation or two for each other key.
        ``lens``: the keys' lengths, when the caller has them (spares a pass).
        """
        keys = keys if isinstance(keys, list) else list(keys)
        if len(keys) != len(locs):
            msg = f"{len(keys)} keys but {len(locs)} locations"
            raise ValueError(msg)
        if not keys:
            return 0
        arr, big = loc_array(locs)
        lens, eight, short = key_kinds(keys, lens)
        if big is None and eight is None:
            return self._swap_words(eight_words(keys), arr, shift)
        if big is None and short is None:
            return self._swap_short(keys, lens, arr, shift)
        if big is None and eight is not None and short is not None and (eight | short).all():
            # both tables: one conversion, no lists
            w0, w1, ls = short_words(keys, lens)  # (an 8-byte key's first word is its word)
            at8, at16 = np.flatnonzero(eight), np.flatnonzero(short)
            live = self._swap_words(w0[at8], arr[at8], shift)
            if self._sbig:
                live += self._pop_sbig(list(map(keys.__getitem__, at16.tolist())), shift)
            found, old = self._w.swap((w0[at16], w1[at16], ls[at16]), arr[at16])
            return live + count_above(found, old, shift)
        n = len(keys)
        is8 = np.ones(n, dtype=bool) if eight is None else eight
        wide = np.ones(n, dtype=bool) if short is None else short
        fits = np.ones(n, dtype=bool) if big is None else ~big
        live = 0
        for mask, table in ((is8 & fits, True), (wide & fits, False)):
            at = np.flatnonzero(mask)
            if at.size:
                ks = list(map(keys.__getitem__, at.tolist()))
                live += (self._swap_words(eight_words(ks), arr[at], shift) if table
                         else self._swap_short(ks, lens[at], arr[at], shift))
        for mask, table in ((is8 & ~fits, True), (wide & ~fits, False)):
            at = np.flatnonzero(mask)
            if at.size:
                ks = list(map(keys.__getitem__, at.tolist()))
                live += self._swap_big(ks, lens[at], [int(locs[i]) for i in at.tolist()],
                                       shift, table)
        other = np.flatnonzero(~is8 & ~wide).tolist()
        if other:
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
        return live + count_above(*self._t.swap(words, locs), shift)

    def _swap_short(self, keys: list[bytes], lens: np.ndarray, locs: np.ndarray,
                    shift: int) -> int:
        live = self._pop_sbig(keys, shift) if self._sbig else 0
        return live + count_above(*self._w.swap(short_words(keys, lens), locs), shift)

    def _pop_sbig(self, keys: list[bytes], shift: int) -> int:
        """Take ``keys`` out of ``_sbig`` (their locations fit again); count the live ones."""
        olds = [old for old in map(self._sbig.pop, keys, repeat(None)) if old is not None]
        return sum(map(truth, map(shift.__rrshift__, olds)))

    def _swap_big(self, keys: list[bytes], lens: np.ndarray, locs: list[int], shift: int,
                  eight: bool) -> int:
        """Keys of 1-16 bytes whose locations exceed a uint64: out of their table."""
        words: Any = eight_words(keys) if eight else short_words(keys, lens)
        found, old = (self._t if eight else self._w).found(words)
        live = count_above(found, old, shift)
        if found.any() and eight:
            self._t.delete(words[found])
        elif found.any():
            self._w.delete((words[0][found], words[1][found], words[2][found]))
        side: dict[Any, int] = self._big if eight else self._sbig
        for key, loc in zip(words.tolist() if eight else keys, locs, strict=True):
            prev = side.get(key)
            if prev is not None:
                live += truth(prev >> shift)
            side[key] = loc
        return live

    def store(self, keys: Sequence[bytes], locs: Sequence[int] | np.ndarray,
              lens: np.ndarray | None = None) -> None:
        """Point each key at its location (:meth:`swap_count` without the count)."""
        self.swap_count(keys, locs, 0, lens)

    def delete_many(self, keys: Iterable[bytes]) -> None:
        """Remove each key (absent keys are skipped)."""
        keys = list(keys)
        if not keys:
            return
        lens, eight, short = key_kinds(keys)
        if eight is None or eight.any():
            ks = keys if eight is None else list(compress(keys, eight.tolist()))
            words = eight_words(ks)
            self._t.delete(words)
            if self._big:
                deque(map(self._big.pop, words.tolist(), repeat(None)), maxlen=0)
        if eight is None:
            return
        if short is None or short.any():
            ks = keys if short is None else list(compress(keys, short.tolist()))
            self._w.delete(short_words(ks, lens if short is None else lens[short]))
            if self._sbig:
                deque(map(self._sbig.pop, ks, repeat(None)), maxlen=0)
        if short is not None:
            other = ~eight & ~short
            if other.any():
                deque(map(self._d.pop, compress(keys, other.tolist()), repeat(None)), maxlen=0)


Index = dict[bytes, int] | KeyIndex
"""What an engine's ``_index`` is: a plain dict, or a ``KeyIndex`` once promoted."""


def new_index() -> Index:
    """An empty index: a dict, or a ``KeyIndex`` when ``PROMOTE_MIN_KEYS`` is 0."""
    return KeyIndex() if PROMOTE_MIN_KEYS == 0 else {}


def promoted(index: Index, keys: Iterable[bytes], n: int) -> Index:
    """``index``, or a ``KeyIndex`` of its entries to take a batch of ``n`` ``keys``.

    A ``KeyIndex`` when ``index`` is a dict, the batch holds at least ``PROMOTE_MIN_KEYS``
    keys and 3/4 of a sample of ``_SAMPLE`` of them are 8 bytes long, or 1-16 bytes once
    index and batch hold ``PROMOTE_WIDE_MIN`` entries (below that a dict of such keys stays
    in the CPU cache: ``get_many`` of 5-byte keys 87 against 129 ns a key at 10,000
    entries, 143 / 149 at 100,000, 258 / 166 at 1,000,000). The sample is spread over a
    sequence batch, else its first keys. Cost: O(_SAMPLE), plus one batch store of the
    dict's entries when it promotes.
    """
    if type(index) is not dict or n < PROMOTE_MIN_KEYS:
        return index
    sample = [len(k) for k in (keys[:: max(1, n // _SAMPLE)] if isinstance(keys, Sequence)
                               else islice(keys, _SAMPLE))]
    short = (sample.count(8) if len(index) + n < PROMOTE_WIDE_MIN
             else sum(0 < size <= MAX_LEN for size in sample))
    return KeyIndex.of(index) if 4 * short >= 3 * len(sample) else index


def get_many(index: Index, keys: Sequence[bytes], default: int) -> list[int]:
    """The location of each key in ``index`` (``default`` where absent)."""
    if isinstance(index, dict):  # (or the closed engine's stand-in, a dict that raises)
        return list(map(index.get, keys, repeat(default)))
    return index.get_many(keys, default)


def store(index: Index, keys: Sequence[bytes], locs: Sequence[int] | np.ndarray,
          lens: np.ndarray | None = None) -> None:
    """Point each key of ``index`` at its location (``lens``: the keys' lengths, if known)."""
    if isinstance(index, dict):
        vals = locs.tolist() if isinstance(locs, np.ndarray) else locs
        index.update(zip(keys, vals, strict=True))
    else:
        index.store(keys, locs, lens)


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


__all__ = ["PROMOTE_MIN_KEYS", "PROMOTE_WIDE_MIN", "Index", "KeyIndex", "count_set",
           "delete_many", "dict_sizeof", "get_many", "new_index", "promoted", "store"]
