"""HybridLog bulk writes: ``multi_set`` of a whole batch.

See ``regions.py`` for where records live. A batch is validated as a whole (nothing
changes if any pair is bad); deletes in it go through ``_delete`` one by one. Then:

* **small batches** (the batch does not push a flush's worth of records out of the
  mutable region): keys already in the mutable region are updated in place, the others
  are appended in batch order, with the same region moves, flushes and merges as ``set``.
* **large batches** (an operator's per-epoch fold): the log is the same, but the records
  that would pass through the read-only region on their way to a run are written to one
  run directly: the read-only records, the whole mutable region (with this batch's
  in-place updates) and the batch's appended records except the newest
  ``ro_lag_interval`` (or up to a page fewer, so that the run fills a flush), which
  become the mutable region. No record is copied between region dicts, and the run is
  one file (fewer, larger runs: fewer merges). The live count needs to know which keys
  had a live durable record: when the index holds no tombstone, that is how many keys
  one store pass did not add; otherwise the index is updated a chunk at a time right
  after each chunk's lookups, so the stores find the entries in the CPU cache. The
  keys left in the mutable region are counted as new (*pending*, ``regions.py``) and
  settled by the next large batch's stores. The batch's written records are not kept
  as cached records: tried (the newest ``mem_segment_len - ro_lag_interval -
  flush_interval`` of them), it cost 8-14 % of a bulk update (dict inserts and
  evictions, and a larger stale set each batch) and saved no measurable ``multi_get``
  time in an ``Aggregate`` fold (``benchmarks.engines --fold``): the fold writes its
  keys in first-seen order, so the newest records are the epoch's rarest keys, and the
  reads that miss memory are vectorized (``RunSet._read_missing``).

Cost of a large batch of ``n`` pairs: validation passes, two C-level set operations
against the mutable and frozen regions, one index store per key (plus one lookup, in
the same chunk, when the index holds tombstones), one run file holding about ``n``
records, then the due merges. A failure writing the run changes nothing in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import compress, islice, repeat
from operator import not_, truth
from typing import cast

import numpy as np
import numpy.typing as npt

from raykv.engines import keyindex
from raykv.engines.base import Pairs
from raykv.engines.hybridlog.regions import _WATERMARK, Regions, _Lookup
from raykv.engines.hybridlog.runfile import (
    LEN_FITS_U64,
    LEN_SHIFT,
    encode_run_columns,
    segment_locs,
)
from raykv.engines.keyindex import KeyIndex, get_many, promoted, store
from raykv.engines.keywords import distinct_words

_CHUNK = 4096  # keys per index lookup + store pass (fits the CPU cache)


class BulkWrites(Regions):
    """``multi_set`` of a ``HybridLog`` (a base class)."""

    def multi_set(self, pairs: Pairs) -> None:
        """Apply ``(key, value)`` pairs in order (later pairs win); validated as a whole first.

        Cost: C-level passes over the batch (keys already in the mutable region are
        updated in place, the others appended in batch order), then the same region
        moves, flushes and merges as ``set``; a batch that would fill a flush writes one
        run directly instead (see the module docstring): about one index store per key.

        Example:
            >>> import tempfile
            >>> from raykv.engines import HybridLog
            >>> with HybridLog(tempfile.mkdtemp(), ro_lag_interval=2, flush_interval=2,
            ...                mem_segment_len=4) as db:
            ...     db.multi_set([(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", b"4")])
            ...     db.multi_get([b"a", b"b", b"c", b"d"]), db.region_sizes()["mutable"]
            ([b'3', b'2', b'4', b''], 1)
        """
        self._ensure_open()
        batch, klens, vlens = self._check_batch_lengths(pairs)
        if not batch:
            return
        self._index = promoted(self._index, batch, len(batch))  # keys of 1-16 bytes: keyindex.py
        if self._maintenance:
            self._maintain()
        if not vlens.all():  # deletes (keys are distinct: order does not matter)
            for key in [k for k, v in batch.items() if not v]:
                self._delete(key)
            keep = vlens != 0
            batch = {k: v for k, v in batch.items() if v}
            klens, vlens = klens[keep], vlens[keep]
            if not batch:
                return
        if len(batch) >= self.ro_lag_interval and self._bulk_append(batch, klens, vlens):
            return
        frozen, mut, index = self._frozen, self._mut, self._index
        before = len(mut)
        mut.update(batch)
        added = len(mut) - before  # keys new to the mutable region: the last ``added``
        if added:  # (keys already there were live: it holds no tombstones)
            new = list(islice(reversed(mut), added))
            # each new key's newest record before the batch: its frozen value (popped:
            # read-copy-update), else its value length on disk (0: tombstone or absent)
            olds: Iterator[object] = (
                map(LEN_SHIFT.__rrshift__, get_many(index, new, 0)) if index
                else repeat(0, added)
            )
            if len(frozen) > 1:
                olds = map(cast(_Lookup, frozen.pop), new, olds)
            self._live += added - sum(map(truth, olds))
        if len(mut) > self.ro_lag_interval:
            self._shift()

    def multi_set_packed(self, words: npt.NDArray[np.uint64], rows: npt.NDArray[np.uint8]
                         ) -> None:
        """``KVStore.multi_set_packed``: a large batch on clean regions is one run, vectorized.

        The array path, taken when the batch has at least ``ro_lag_interval`` distinct
        keys, the regions hold no dirty record (as after ``seal()``: an operator's fold)
        and the index is a ``KeyIndex`` (or the batch is large enough to promote it,
        ``keyindex.py``): one run written straight from the arrays, the index updated
        from the words; no ``bytes`` per key or value, no region dict. The cached region
        is dropped (durable copies, some stale now) and the batch leaves nothing in
        memory. Any other batch goes through ``multi_set``. Cost of the array path: a
        sort of the words (distinctness), the run file, the index's rounds, then the due
        merges.
        """
        self._ensure_open()
        size = self._check_packed(words, rows)
        n = len(words)
        if (n < self.ro_lag_interval or size >= LEN_FITS_U64 or self._mut or self._n_ro
                or self._pend or (type(self._index) is dict and n < keyindex.PROMOTE_MIN_KEYS)
                or not distinct_words(words)):
            super().multi_set_packed(words, rows)
            return
        if self._maintenance:
            self._maintain()
        index = self._index
        if not isinstance(index, KeyIndex):  # every key of the batch has 8 bytes
            index = self._index = KeyIndex.of(index)
        ends = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(size)
        data = encode_run_columns(np.full(n, 8, dtype=np.int64), words.astype(">u8").tobytes(),
                                  np.ascontiguousarray(rows).tobytes(), ends)
        run = self._write_encoded(data, presync=True)
        # the run is written: from here on nothing can fail half-way
        self.stats.app_bytes += (8 + size) * n
        self._runs.append(run)
        frozen = self._frozen  # clean: the cached records and the watermark
        frozen.clear()
        frozen[_WATERMARK] = None
        locs = segment_locs([(run.slot, 0, 0, n)], ends)  # uint64: size < LEN_FITS_U64
        assert isinstance(locs, np.ndarray)
        self._live += n - index.swap_words(words.byteswap(), locs, LEN_SHIFT)  # keys read LE
        self._maintain()

    def _bulk_append(self, batch: dict[bytes, bytes], klens: np.ndarray, vlens: np.ndarray
                     ) -> bool:
        """Apply ``batch`` (validated, no deletes) with one run write; ``False``: too small.

        ``klens``/``vlens``: the lengths of its keys and values, in order. See the module
        docstring. Returns ``False`` without changing anything when the batch would not
        fill a flush (or appends fewer than ``ro_lag_interval`` records).
        """
        mut, frozen, lag = self._mut, self._frozen, self.ro_lag_interval
        in_mut = mut.keys() & batch.keys()
        if in_mut:
            fresh = ~np.fromiter(map(in_mut.__contains__, batch), dtype=bool, count=len(batch))
            new = list(compress(batch, fresh.tolist()))
            new_values = list(map(batch.__getitem__, new))
            klens, vlens = klens[fresh], vlens[fresh]
        else:  # the batch's own order: no lookup per key
            new, new_values = list(batch), list(batch.values())
        # the newest ``stay`` new records become the mutable region: ``lag`` of them, or
        # fewer (down to a page less, the least ``_shift`` leaves) so that the records
        # written fill a flush; a batch that cannot fill one takes the in-place path
        stay_n = min(lag, len(new), self._n_ro + len(mut) + len(new) - self.flush_interval)
        if stay_n < max(1, lag - self._page):
            return False
        index = self._index
        stale = frozen.keys() & batch.keys()  # read-copy-update: their copies leave memory
        ro_keys, ro_values = self._read_only_records()
        stale_live = 0
        # the index liveness of stale keys is counted below with the others; a cached
        # record is its durable record (same liveness): only read-only ones differ
        ro_stale = stale.intersection(ro_keys) if stale and ro_keys else ()
        if ro_stale:
            stale_live = sum(map(truth, map(frozen.__getitem__, ro_stale)))
            stale_live -= sum(map(truth, map(LEN_SHIFT.__rrshift__,
                                             get_many(index, list(ro_stale), 0))))
        tombs = False
        if stale:
            keep = list(map(not_, map(stale.__contains__, ro_keys)))
            ro_keys = list(compress(ro_keys, keep))
            ro_values = list(compress(ro_values, keep))
        if b"" in ro_values:  # a tombstone for a key with no durable record shadows nothing
            kept = [(k, v) for k, v in zip(ro_keys, ro_values, strict=True) if v or k in index]
            ro_keys = [k for k, _ in kept]
            ro_values = [v for _, v in kept]
            tombs = len(kept) != sum(map(truth, ro_values))
        out_new = new[: len(new) - stay_n]
        stay = new[len(new) - stay_n :]
        head = len(ro_keys) + len(mut)
        keys = [*ro_keys, *mut, *out_new]
        # the mutable region with this batch's in-place updates (its keys stay live)
        mut_values = map(batch.get, mut, mut.values()) if in_mut else mut.values()
        values = [*ro_values, *mut_values, *islice(new_values, len(out_new))]
        # the lengths: the regions' counted here, the batch's known
        lens = np.concatenate((
            np.fromiter(map(len, islice(keys, head)), dtype=np.int64, count=head),
            klens[: len(out_new)]))
        ends = np.cumsum(np.concatenate((
            np.fromiter(map(len, islice(values, head)), dtype=np.int64, count=head),
            vlens[: len(out_new)])), dtype=np.uint64)
        run, locs = self._new_run(keys, b"".join(values), ends, presync=True, klens=lens)
        # the run is written: from here on nothing can fail half-way
        self._runs.append(run)
        self._index_tombs |= tombs
        if stale:
            deque(map(frozen.__delitem__, stale), maxlen=0)
        self._store_head(keys, locs, len(ro_keys), head, lens)
        was_live = stale_live + self._swap_index(out_new, locs[head:], lens[head:])
        self._live += len(new) - was_live  # ``stay`` counted as new: pending (regions.py)
        self._mut = dict(zip(stay, new_values[len(out_new) :], strict=True))
        self._pend = set(stay)
        del frozen[_WATERMARK]  # the read-only records are clean: cached
        frozen[_WATERMARK] = None
        self._n_ro = 0
        self._evict()
        self._maintain()
        return True

    def _store_head(self, keys: list[bytes], locs: list[int] | np.ndarray, n_ro: int,
                    head: int, lens: np.ndarray) -> None:
        """Point the read-only and mutable records (``keys[:head]``) at the new run.

        The mutable region's pending keys (``regions.py``) are settled by these stores.
        ``lens``: the lengths of ``keys``.
        """
        index, pend = self._index, self._pend
        if not pend:
            store(index, keys[:head], locs[:head], lens[:head])
            return
        store(index, keys[:n_ro], locs[:n_ro], lens[:n_ro])
        mut_keys, mut_locs, mut_lens = keys[n_ro:head], locs[n_ro:head], lens[n_ro:head]
        if len(pend) < len(mut_keys):  # some keys of the region are not pending
            settled = np.fromiter(map(pend.__contains__, mut_keys), dtype=bool,
                                  count=len(mut_keys))
            unsettled = ~settled
            store(index, list(compress(mut_keys, unsettled)), _pick(mut_locs, unsettled),
                  mut_lens[unsettled])
            mut_keys = list(compress(mut_keys, settled))
            mut_locs, mut_lens = _pick(mut_locs, settled), mut_lens[settled]
        self._live -= self._swap_index(mut_keys, mut_locs, mut_lens)
        self._pend = set()

    def _swap_index(self, keys: list[bytes], locs: list[int] | np.ndarray,
                    lens: np.ndarray | None = None) -> int:
        """Point ``keys`` (distinct) at ``locs``; return how many had a live durable record.

        ``lens``: the keys' lengths, if known (a ``KeyIndex`` then skips a pass).

        When the index holds no tombstone (``_index_tombs`` is false: no deletes reached
        the disk since the open or the last merge that dropped them), that is the number
        of keys it held already, and one store pass is all the work. Otherwise chunked
        so that each chunk's stores find the entries its lookups just brought into the
        CPU cache (about half the cost of a lookup pass and a store pass).
        """
        index = self._index
        if isinstance(index, KeyIndex):  # old locations come back from the stores
            return index.swap_count(keys, locs, LEN_SHIFT, lens)
        assert isinstance(locs, list)  # (``_locs``: a dict index gets lists)
        if not self._index_tombs:  # every entry is live: count the keys already there
            before = len(index)
            index.update(zip(keys, locs, strict=True))
            return len(keys) - (len(index) - before)
        live = 0
        for a in range(0, len(keys), _CHUNK):
            chunk = keys[a : a + _CHUNK]
            olds = map(LEN_SHIFT.__rrshift__, map(index.get, chunk, repeat(0)))
            live += sum(map(truth, olds))
            index.update(zip(chunk, locs[a : a + _CHUNK], strict=True))
        return live


def _pick(locs: list[int] | np.ndarray, mask: np.ndarray) -> list[int] | np.ndarray:
    """The locations where ``mask`` (bool) is true (an array stays an array)."""
    if isinstance(locs, np.ndarray):
        return cast(np.ndarray, locs[mask])
    return list(compress(locs, mask))
