"""The fold of ``Aggregate``'s buffered partials into the engine (a mixin of its logic).

Contract: :meth:`AggregateFold._fold` folds the given partial tables (one per buffered
batch, or a detached epoch's) into the engine: the distinct keys are read, combined with
the partials (float sums in arrival order) and the changed ones written; they join the
epoch's changes (:class:`~raykv.operators.epoch_changes.EpochChanges`) and, with
``keep_before_images``, their before-images. Every key is read and combined before any is
written: an int64 overflow (``OverflowError`` naming column and key) writes nothing.

Memory: the partials, then one slice of ``FOLD_SLICE_KEYS`` keys at a time as Python
objects (its keys, reads and writes), plus per key of the fold its new value packed in one
``bytes`` per slice and a changed flag: the keys are encoded again for the writes, so that
a fold of many distinct keys never holds them all as ``bytes`` objects (about 250 bytes
per key when it did). Min/max multisets over a changelog and TTL stamps fold in one slice.

Cost: per slice one ``multi_get`` and one ``multi_set``; the keys encoded twice (Arrow to
bytes, vectorized for fixed-width keys); the combine in numpy (``aggkernels.py``).

The values written so far: what the folds wrote (8-byte keys, fixed-size values, no TTL,
min/max or changelog input: what :class:`~raykv.operators.packed.Packed` holds) is what
the engine holds for those keys, as nothing else writes them, so each barrier merges the
epoch's changes into a sorted cache of every key written since the logic was built
(:meth:`AggregateFold._remember`, at most ``CACHE_MAX_KEYS``; beyond it the epoch's
changes alone, or nothing) and a fold reads its keys there first: a numpy
``searchsorted`` instead of the engine's validation, index lookup and value read (about
0.9 us a key on HybridLog); only keys never written reach the engine. A fold consumes
the cache (any fold after it in the epoch reads the engine; the barrier merges the
epoch's changes into the cache as the epoch found it), and anything else that writes the
engine rebuilds the logic (rebalancing, a rollback, a restore), which drops it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from itertools import compress
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa

from raykv.keys import split_fixed
from raykv.operators.aggretract import drop_empty
from raykv.operators.packed import Packed, key_words, uniform

if TYPE_CHECKING:
    from raykv.operators.aggminmax import MinMaxMultisets
    from raykv.operators.aggstate import AggLayout
    from raykv.operators.epoch_changes import Chunk, EpochChanges

#: Distinct keys read and combined at a time by a fold: its transient memory is one
#: slice's (``multi_get`` internals, the combine's arrays), not the fold's.
FOLD_SLICE_KEYS = 65_536

#: Most keys of the cache of values written (6 MiB with a 16-byte value, three times
#: that while a barrier merges into it; module docstring). Sized for the shards of a
#: state of about a million keys that changes every epoch; kept well under the memory
#: a shard of 40M distinct keys may take (``benchmarks/memory.py``).
CACHE_MAX_KEYS = 1 << 18


class AggregateFold:
    """The fold of :class:`~raykv.operators.aggregate.AggregateLogic` (module docstring)."""

    if TYPE_CHECKING:
        layout: AggLayout | None
        key: str
        expiry: Any
        store: Any
        keep_before_images: bool
        _minmax: MinMaxMultisets | None
        _retract: bool
        _epoch_deleted: set[bytes]
        _changes: EpochChanges
        _read_stamps: list[int]
        _cache: Packed | None  # the values of the keys written so far, sorted (docstring)
        _cache_base: Packed | None  # the cache this epoch's first fold consumed

        def _state_keys(self, key_values: pa.Array | pa.ChunkedArray,
                        suffixes: Sequence[bytes] | None = None) -> list[bytes]: ...
        def _read(self, keys: Sequence[bytes]) -> list[bytes]: ...
        def _write(self, keys: Sequence[bytes], values: Sequence[bytes], *,
                   track: bool = True, extra: Sequence[tuple[bytes, bytes]] = (),
                   stamps: Sequence[int] | None = None, packed: Packed | None = None
                   ) -> None: ...
        def _note_before(self, keys: Sequence[bytes], old: Sequence[bytes]) -> None: ...
        def _name(self) -> str: ...
        def _packs_keys(self) -> bool: ...

    def _fold(self, parts: list[pa.Table], tmax: list[pa.Table],
              deltas: list[list[pa.Table]]) -> None:
        """Fold ``parts`` into the engine (module docstring).

        ``tmax``: with a TTL on event time, each batch's keys' latest event times;
        ``deltas``: over a changelog, the min/max multisets' signed counts per column.
        """
        if not parts:
            return
        layout = self.layout
        assert layout is not None
        index: np.ndarray | None = None
        if len(parts) == 1:  # the partials of one batch: one row per key
            part = parts[0]
            key_col: pa.Array | pa.ChunkedArray = part.column(self.key)
        else:
            part = pa.concat_tables(parts)
            both = pa.concat_arrays([c for p in parts for c in p.column(self.key).chunks])
            is_bool = pa.types.is_boolean(both.type)
            encoded = (both.cast(pa.int8()) if is_bool else both).dictionary_encode()
            key_col = encoded.dictionary.cast(pa.bool_()) if is_bool else encoded.dictionary
            index = encoded.indices.to_numpy(zero_copy_only=False)
        n = len(key_col)
        cache, self._cache = self._cache, None  # this fold's alone: it writes the engine
        if cache is not None:  # the barrier adds the epoch's changes to it
            self._cache_base = cache
        whole = self._minmax is not None or self.expiry is not None
        step = max(1, n) if whole else FOLD_SLICE_KEYS
        keep_old = self._minmax is not None or self.keep_before_images
        combined = []  # per slice: new values (packed), changed flags, reads (keep_old)
        for lo in range(0, max(1, n), step):
            keys = self._state_keys(key_col.slice(lo, step))
            got = self._read(keys) if cache is None else self._read_cached(keys, cache)
            base, sections = (got, []) if self._minmax is None else self._minmax.split(got)
            describe = _describer(key_col.slice(lo, step))
            if index is None:  # one row per key
                new, changed = layout.combine(base, part.slice(lo, step), describe)
            else:  # the rows of this slice's keys, in arrival order
                rows = None if step >= n else np.flatnonzero((index >= lo) & (index < lo + step))
                new, changed = layout.fold(
                    base, part if rows is None else part.take(rows),
                    index if rows is None else index[rows] - lo, describe)
            if self._minmax is not None:  # exact min/max from the multisets (one slice)
                new = self._minmax.apply(sections, new, key_col, deltas)
                changed = np.fromiter(map(bytes.__ne__, new, got), dtype=bool, count=len(new))
                self._minmax.check_sizes(new, key_col, self.store.max_value_len, self._name())
            if whole or n <= step:  # one slice: nothing else to combine before it is written
                self._write_slice(keys, new, changed, got, tmax)
                return
            combined.append((_pack(new), changed, got if keep_old else None))
        for lo, (packed, changed, reads) in zip(range(0, n, step), combined, strict=True):
            keys = self._state_keys(key_col.slice(lo, step))  # again: not held meanwhile
            self._write_slice(keys, _unpack(packed), changed, reads, tmax)

    def _read_cached(self, keys: list[bytes], cache: Packed) -> list[bytes]:
        """``_read(keys)``, with the values of the keys in ``cache`` taken from there.

        ``keys``: 8-byte state keys (``cache`` exists only for them). Cost: one ``join``
        and a sort of the key words, a ``searchsorted`` of them in sorted order (the
        fold's keys come in arrival order: searched as they come, 50,000 of them took
        5-9 ms against 2.5-3 ms sorted first), one ``bytes`` per key from the cached
        rows, and ``_read`` of the keys not found.
        """
        if not keys:
            return []
        words = key_words(keys)
        order = np.argsort(words)
        pos = np.empty(len(words), dtype=np.intp)
        pos[order] = np.searchsorted(cache.words, words[order])
        pos[pos == len(cache)] = 0
        hit = cache.words[pos] == words
        miss = np.flatnonzero(~hit)
        if len(miss) == len(keys):
            return self._read(keys)
        out: list[bytes] = split_fixed(cache.rows[pos].tobytes(), cache.rows.shape[1])
        if len(miss):
            at = miss.tolist()
            deque(map(out.__setitem__, at, self._read(list(map(keys.__getitem__, at)))),
                  maxlen=0)
        return out

    def _sorted_changes(self, changes: EpochChanges) -> list[Chunk]:
        """``changes.sorted_chunks`` as a list, remembered for the next fold (module docstring).

        Only packed chunks of an operator whose key type packs (``_packs_keys``), without
        TTL, min/max multisets or a changelog input, and at most ``CACHE_MAX_KEYS`` keys,
        are remembered. Cost: the sort, and
        one concatenation of the chunks kept.
        """
        chunks = list(changes.sorted_chunks(FOLD_SLICE_KEYS))
        self._remember(chunks)
        return chunks

    def _remember(self, chunks: list[Chunk]) -> None:
        """Add ``chunks`` to the cache when they qualify (:meth:`_sorted_changes`).

        The cache as the epoch found it (consumed by its first fold, if any) with the
        epoch's changes merged in, while that fits ``CACHE_MAX_KEYS`` (and the values
        have the cache's size: variable-size fields can pack one epoch at a time); else
        the changes alone if they fit; else nothing.
        """
        base = self._cache if self._cache is not None else self._cache_base
        self._cache = self._cache_base = None
        if (self.expiry is not None or self._minmax is not None or self._retract
                or not self._packs_keys()  # every key 8 bytes by its type, not by chance
                or not all(isinstance(c, Packed) for c in chunks)):
            return
        packed = cast(list[Packed], chunks)
        new = (None if not packed else packed[0] if len(packed) == 1 else Packed(
            np.concatenate([p.words for p in packed]), np.concatenate([p.rows for p in packed])))
        if new is not None and len(new) > CACHE_MAX_KEYS:
            return
        if base is None or (new is not None and (
                len(base) + len(new) > CACHE_MAX_KEYS  # (or values of another size:
                or base.rows.shape[1] != new.rows.shape[1])):  # variable-size fields)
            self._cache = new
        else:
            self._cache = base if new is None else merged(base, new)

    def _write_slice(self, keys: list[bytes], new: list[bytes], changed: np.ndarray,
                     old: list[bytes] | None, tmax: list[pa.Table]) -> None:
        """Write one combined slice: its changed keys (TTL: also its restamped ones)."""
        stamps: list[int] | None = None
        extra: list[tuple[bytes, bytes]] = []
        if self.expiry is not None:
            all_stamps = self._stamps(keys, tmax)
            restamp = (np.asarray(all_stamps) != np.asarray(self._read_stamps)) & ~changed
            if restamp.any():  # unchanged values with a new stamp: rewritten, not emitted
                at = np.flatnonzero(restamp).tolist()
                extra = list(zip([keys[i] for i in at], self.expiry.stamp(
                    [new[i] for i in at], [all_stamps[i] for i in at]), strict=True))
            stamps = list(compress(all_stamps, changed))
        if not changed.all():
            keys = list(compress(keys, changed))
            new = list(compress(new, changed))
            if old is not None:
                old = list(compress(old, changed))
        if self.keep_before_images:
            assert old is not None
            self._note_before(keys, old)
        if self._retract:
            assert self.layout is not None
            new = drop_empty(self.layout, keys, new, self._epoch_deleted)
        layout = self.layout
        assert layout is not None
        # the epoch's changes are kept by ``_changes`` (not the base class's changed set)
        if self._packs_keys() and not (self._minmax or self._retract or layout.var_fields):
            # 8-byte keys and fixed-size values by construction: packed once, no checks
            packed = Packed(
                key_words(keys),
                np.frombuffer(b"".join(new), np.uint8).reshape(len(new), layout.size))
            self._write(keys, new, track=False, extra=extra, stamps=stamps, packed=packed)
            self._changes.add_packed(packed)
        else:
            self._write(keys, new, track=False, extra=extra, stamps=stamps)
            self._changes.add(keys, new)


    def _stamps(self, keys: list[bytes], tables: list[pa.Table]) -> list[int]:
        """TTL stamps of the fold's ``keys``: max(old stamp, fresh).

        ``tables``: per buffered batch, each key's largest event time (event time only).
        """
        expiry = self.expiry
        assert expiry is not None
        times = None
        if expiry.event:
            both = pa.concat_tables(tables).group_by(self.key, use_threads=False).aggregate(
                [("t_max", "max")])
            latest = dict(zip(self._state_keys(both.column(self.key)),
                              both.column("t_max_max").to_pylist(), strict=True))
            times = np.fromiter(map(latest.__getitem__, keys), dtype=np.int64, count=len(keys))
        fresh = expiry.fresh_stamps(len(keys), times)
        out: list[int] = np.maximum(fresh, np.asarray(self._read_stamps, dtype=np.int64)).tolist()
        return out


def merged(old: Packed, new: Packed) -> Packed:
    """Sorted ``old`` with the pairs of sorted ``new`` put in (a key of both: ``new``'s).

    Cost: a ``searchsorted`` of ``new`` in ``old`` and one copy of both, O(n + m).
    """
    pos = np.searchsorted(old.words, new.words)
    inside = pos < len(old)
    hit = np.zeros(len(new), dtype=bool)
    hit[inside] = old.words[pos[inside]] == new.words[inside]
    rows = old.rows.copy()
    rows[pos[hit]] = new.rows[hit]
    if hit.all():
        return Packed(old.words, rows)
    miss = ~hit
    return Packed(np.insert(old.words, pos[miss], new.words[miss]),
                  np.insert(rows, pos[miss], new.rows[miss], axis=0))


def _describer(col: pa.Array | pa.ChunkedArray) -> Callable[[int], str]:
    """How an error names row ``i`` of a slice's key column."""
    return lambda i: f"key {col[i].as_py()!r}"


PackedValues = tuple[bytes, int] | list[bytes]


def _pack(values: list[bytes]) -> PackedValues:
    """A slice's new values as one ``bytes`` and their size, else the list as it is.

    Packed when every value has one size (a fixed layout: the usual case).
    """
    size = len(values[0]) if values else 0
    return (b"".join(values), size) if size and uniform(values, size) else values


def _unpack(packed: PackedValues) -> list[bytes]:
    """The values :func:`_pack` packed."""
    if isinstance(packed, list):
        return packed
    joined, size = packed
    return split_fixed(joined, size)


__all__ = ["CACHE_MAX_KEYS", "FOLD_SLICE_KEYS", "AggregateFold"]
