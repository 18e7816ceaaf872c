"""AppendLog bulk writes: ``multi_set`` appends a whole batch to the active run.

``multi_set_packed`` appends a batch of distinct 8-byte keys given as arrays the same
way, its records assembled from the arrays and its index entries set from the words.

The batch is validated as a whole first (nothing changes if any pair is bad), a key
repeated in it keeps its last value, and ``b""`` deletes (a tombstone record). The
records are built and checksummed with C-level passes (numpy when every value has one
length: per key length, a large batch's keys being distinct, its records may be written
grouped by key length), copied into the active run a run's worth at a time
(the active run closes at ``threshold`` bytes) and indexed with one ``dict.update`` per
run's worth.

Cost per pair: the record's encoding and crc32, one copy into the active buffer and one
index store; amortized file writes, run closes and merges.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, compress, pairwise, repeat
from operator import lshift, not_, or_

import numpy as np
import numpy.typing as npt

from raykv.engines import keyindex
from raykv.engines.appendlog.active import ActiveRun
from raykv.engines.appendlog.runfile import (
    N_FITS_U64,
    N_SHIFT,
    SLOT_BITS,
    encode_fixed_records,
    encode_packed_records,
    encode_records,
)
from raykv.engines.base import Pairs
from raykv.engines.keyindex import KeyIndex, promoted, store
from raykv.engines.keywords import distinct_words, word_keys

_GROUP_MIN = 256  # batches of varied key lengths at least this long are grouped by length
_PACKED_MAX_VALUE = 127  # the array path's largest value (a 2-byte record header)


class BulkWrites(ActiveRun):
    """``multi_set`` of an ``AppendLog`` (a base class)."""

    def multi_set(self, pairs: Pairs) -> None:
        """Apply ``(key, value)`` pairs in order (later pairs win; ``b""`` deletes).

        The whole batch is validated before anything is applied. Cost: the records are
        built, checksummed and appended with C-level passes over the batch; when every key
        has one length and every value one length (under 128 bytes), numpy assembles the
        records and the locations are a ``range``; when only the values have one length,
        a large batch is grouped by key length and numpy assembles each group.
        """
        if self._closed:
            self._ensure_open()
        # before any merge: a bad batch changes nothing; the lengths as numpy arrays
        keys, values, klens, vlens = self._split_pairs(pairs)
        n = len(keys)
        if not n:
            return
        self._index = promoted(self._index, keys, n)  # keys of 1-16 bytes: keyindex.py
        if self._slow:
            self._before_write()
        kmax, vmax = int(klens.max()), int(vlens.max())
        one_vlen = int(vlens.min()) == vmax
        if kmax < 128 and vmax < 128 and int(klens.min()) == kmax and one_vlen:
            self._append_fixed(keys, encode_fixed_records(keys, values, kmax, vmax), kmax, vmax)
        elif kmax < 128 and vmax < 128 and one_vlen and n >= _GROUP_MIN:
            self._append_grouped(keys, values, klens, vmax)
        else:
            recs = encode_records(keys, values, klens.tolist(), vlens.tolist())
            ns = np.fromiter(map(len, recs), dtype=np.int64, count=n)
            self._append_many(keys, b"".join(recs), ns, klens, vlens)

    def multi_set_packed(self, words: npt.NDArray[np.uint64], rows: npt.NDArray[np.uint8]
                         ) -> None:
        """``KVStore.multi_set_packed``: distinct keys appended straight from the arrays.

        The array path, taken when the batch's keys are distinct, its values are under 128
        bytes and the index is a ``KeyIndex`` (or the batch has at least
        ``keyindex.PROMOTE_MIN_KEYS`` keys to promote it): the records are assembled
        from the arrays (``encode_packed_records``) and the index is updated from the
        words (``KeyIndex.swap_words``); a ``bytes`` per record for its crc, none per
        key or value. Any other batch goes through ``multi_set``. Cost of the array path:
        a sort of the words (distinctness), the records and their crcs, the index's
        rounds; the keys as ``bytes`` only while some key of the store is deleted (its
        dead-key set).
        """
        if self._closed:
            self._ensure_open()
        size = self._check_packed(words, rows)
        n = len(words)
        if (not n or size > _PACKED_MAX_VALUE
                or (type(self._index) is dict and n < keyindex.PROMOTE_MIN_KEYS)
                or not distinct_words(words)):
            super().multi_set_packed(words, rows)
            return
        if not isinstance(self._index, KeyIndex):  # every key of the batch has 8 bytes
            self._index = KeyIndex.of(self._index)
        if self._slow:
            self._before_write()
        data = encode_packed_records(words, np.ascontiguousarray(rows))
        self._append_fixed(words.byteswap(), data, 8, size)  # KeyIndex reads keys LE

    def _append_grouped(self, keys: Sequence[bytes], values: Sequence[bytes],
                        klens: np.ndarray, vl: int) -> None:
        """Append records of keys under 128 bytes and values of ``vl`` bytes (< 128).

        The keys of a batch are distinct, so their records may go to the log in any
        order: they are grouped by key length (a stable sort) and each group is
        assembled by numpy (``encode_fixed_records``). Cost: a sort of the key lengths,
        two list gathers, then numpy per group and two crc32 calls per record (about
        0.7x the cost of ``encode_records``).
        """
        order = np.argsort(klens, kind="stable")
        pick = order.tolist()
        ks = list(map(keys.__getitem__, pick))
        vs = list(map(values.__getitem__, pick))
        lens = klens[order]
        cuts = [0, *(np.flatnonzero(np.diff(lens)) + 1).tolist(), len(ks)]
        data = b"".join([encode_fixed_records(ks[a:b], vs[a:b], int(lens[a]), vl)
                         for a, b in pairwise(cuts)])
        self._append_many(ks, data, lens + (vl + 6), lens, np.full(len(ks), vl))

    def _mark_dead(self, keys: Sequence[bytes], vlens: Sequence[int] | np.ndarray | None,
                   tombstones: bool = False) -> None:
        """Update the dead key set for ``keys`` just indexed (before any merge runs).

        ``vlens``: their value lengths when some are 0; ``None`` and ``tombstones``: all
        or none of them are tombstones. Cost: nothing when no key is dead and the batch
        deletes nothing; else C-level set passes.
        """
        dead = self._dead
        if tombstones:
            dead.update(keys)
            return
        if dead:
            dead.difference_update(keys)
        if vlens is not None:
            dead.update(compress(keys, map(not_, vlens)))

    def _append_fixed(self, keys: Sequence[bytes] | np.ndarray, data: memoryview, kl: int,
                      vl: int) -> None:
        """Append records of keys of ``kl`` and values of ``vl`` bytes (``data``, in order).

        ``vl == 0``: every record is a tombstone (else none is). ``keys``: ``bytes``, or
        (the array path: 8-byte keys, values, a ``KeyIndex``) uint64 words that read
        the keys little-endian, as ``KeyIndex.swap_words`` takes them.
        """
        n = kl + vl + 6
        tombstones = not vl
        count = len(keys)
        index = self._index
        step = n << SLOT_BITS
        i = 0
        while i < count:
            pos = self._pos
            take = min(count - i, -(-(self.threshold - pos) // n))  # up to the threshold
            end = pos + take * n
            if end > self._acap:
                self._grow(end)
            self._amm[pos:end] = data[i * n : (i + take) * n]
            first = self._abase | pos << SLOT_BITS | n << N_SHIFT
            part = keys if take == count else keys[i : i + take]
            chunk: Sequence[bytes]
            if isinstance(part, np.ndarray):  # the array path (n < N_FITS_U64)
                assert isinstance(index, KeyIndex)
                index.swap_words(part, np.uint64(first) + np.arange(take, dtype=np.uint64)
                                 * np.uint64(step), 0)
                chunk = word_keys(part) if self._dead else []
            elif isinstance(index, dict) or n >= N_FITS_U64:
                chunk = part
                store(index, chunk, range(first, first + step * take, step))
            else:  # (numpy: no int per key)
                chunk = part
                store(index, chunk, np.uint64(first)
                      + np.arange(take, dtype=np.uint64) * np.uint64(step),
                      np.full(take, kl, dtype=np.int64))
            self._mark_dead(chunk, None, tombstones)
            self._alens.extend(repeat(n, take))
            self._aklens.extend(repeat(kl, take))
            self._avlens.extend(repeat(vl, take))
            self._pos = end
            i += take
            if end >= self._flush_at:
                self._after_append()

    def _locs(self, ns: np.ndarray, pos: int) -> list[int] | np.ndarray:
        """Locations of records of lengths ``ns`` appended to the active run at ``pos``.

        Cost: numpy builds them when every record is shorter than ``N_FITS_U64`` bytes
        (the location fits a uint64): an array for a ``KeyIndex``, else one ``tolist``;
        otherwise three C-level maps.
        """
        if int(ns.max()) < N_FITS_U64:
            lens = ns.astype(np.uint64)
            offs = np.cumsum(lens) - lens + np.uint64(pos)
            locs = (offs << np.uint64(SLOT_BITS) | lens << np.uint64(N_SHIFT)
                    | np.uint64(self._abase))
            return locs.tolist() if isinstance(self._index, dict) else locs
        nl: list[int] = ns.tolist()
        return list(map(or_, map(or_, map(lshift, accumulate(nl[:-1], initial=pos),
                                     repeat(SLOT_BITS)),
                            map(lshift, nl, repeat(N_SHIFT))), repeat(self._abase)))

    def _append_many(self, keys: Sequence[bytes], data: bytes, ns: np.ndarray,
                     klens: np.ndarray, vlens: np.ndarray) -> None:
        """Append records (``data``, lengths ``ns``), closing the active run at ``threshold``.

        ``klens``/``vlens``: the records' key and value lengths (kept for the run's index
        section, so closing the run need not parse the records again; the index takes
        ``klens`` too). All three are int64 arrays.
        """
        ends = np.cumsum(ns)
        total = len(ns)
        tombstones = not vlens.all()
        view = memoryview(data)
        i = 0
        done = 0  # batch bytes before record i
        index = self._index
        while i < total:
            pos = self._pos
            # the first record whose end reaches the threshold closes this run
            j = min(max(int(np.searchsorted(ends, done + self.threshold - pos)), i) + 1, total)
            last = int(ends[j - 1])
            end = pos + last - done
            if end > self._acap:
                self._grow(end)
            self._amm[pos:end] = view[done:last]
            chunk = keys if not i and j == total else keys[i:j]
            store(index, chunk, self._locs(ns[i:j], pos), klens[i:j])
            self._mark_dead(chunk, vlens[i:j] if tombstones else None)
            self._alens.frombytes(ns[i:j].astype(np.uint32).tobytes())
            self._aklens.frombytes(klens[i:j].astype(np.uint32).tobytes())
            self._avlens.frombytes(vlens[i:j].astype(np.uint32).tobytes())
            self._pos = end
            done = last
            i = j
            if end >= self._flush_at:
                self._after_append()
