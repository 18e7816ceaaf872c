"""Hot-key and load tracking per shard: Space-Saving top-k and key-group update counts.

A shard feeds every input batch's key column to its :class:`LoadTracker` (after the
operator has processed it). The tracker never looks at single rows from Python: Arrow's
``value_counts`` reduces the batch to its distinct keys and their counts, and only those
are used:

* **hot keys**: a :class:`SpaceSaving` summary of ``k`` counters (Metwally, Agrawal and
  El Abbadi, "Efficient computation of frequent and top-k elements in data streams",
  2005). A batch is folded in as a *summary merge* (Cafaro et al., "A parallel space
  saving algorithm", 2016; Agarwal et al., "Mergeable summaries", 2012): the batch's
  own top ``k`` keys with their exact counts are merged with the running counters, so
  only ``k`` keys per batch are ever encoded. Memory is O(k).
* **key-group loads** (only when the pipeline rebalances): the update count of every key
  group this shard received, exact (one ``np.bincount`` over the distinct keys' groups).
  ``num_key_groups`` is small and fixed (4096 by default), so the counts need no sketch.

``LoadTracker.report()`` hands both to the coordinator with each epoch's acknowledgement
and starts the next epoch's group counts from zero (the hot-key summary keeps running).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raykv.keys import (
    canonical_key_array,
    decode_keys,
    encode_key_words,
    encode_keys,
    split_fixed,
)
from raykv.partitioning import key_groups_of

#: Hot keys a report carries per shard (into the epoch manifest and the run summary).
REPORTED_HOT_KEYS = 5


@dataclass(frozen=True)
class HotKey:
    """One Space-Saving counter.

    Attributes:
        key: the encoded key.
        count: the estimated number of updates: never below the true count.
        error: how much ``count`` may overestimate (``count - error <= true <= count``).
    """

    key: bytes
    count: int
    error: int


class SpaceSaving:
    """The top-``k`` most frequent keys of a weighted stream in O(k) memory.

    Guarantees (for ``total`` updates seen): every estimate ``count`` satisfies
    ``count - error <= true count <= count``, and every key whose true count exceeds
    ``total / k`` is monitored.

    Example:
        >>> ss = SpaceSaving(2)
        >>> ss.update([b"a", b"b"], [5, 1], floor=0)
        >>> ss.update([b"a", b"c"], [2, 2], floor=1)
        >>> [(h.key, h.count, h.error) for h in ss.top()]
        [(b'a', 7, 0), (b'c', 3, 1)]
    """

    def __init__(self, k: int) -> None:
        if type(k) is not int or k < 1:
            msg = f"SpaceSaving needs k >= 1 counters, got {k!r}"
            raise ValueError(msg)
        self.k = k
        self.total = 0
        self._count: dict[bytes, int] = {}
        self._error: dict[bytes, int] = {}

    def _floor(self) -> int:
        """What an unmonitored key may have had: the smallest counter once all k are used."""
        return min(self._count.values()) if len(self._count) >= self.k else 0

    def update(self, keys: Sequence[bytes], counts: Sequence[int] | np.ndarray, floor: int) -> None:
        """Merge a batch summary: ``keys`` with their exact ``counts`` in the batch.

        Args:
            keys: at most ``k`` distinct keys of the batch (its most frequent ones).
            counts: their exact counts in the batch.
            floor: an upper bound of the count of any key of the batch *not* in ``keys``
                (the largest count left out; 0 if ``keys`` is the whole batch). The
                batch's rows are counted separately, with :meth:`add_total`.

        The merge (a key missing on one side is charged that side's floor, as its count
        could have been that high), then the ``k`` largest estimates are kept. Cost:
        O(k log k).
        """
        floor_old = self._floor()
        count, error = self._count, self._error
        merged_c: dict[bytes, int] = {}
        merged_e: dict[bytes, int] = {}
        for key, c in zip(keys, counts, strict=True):
            merged_c[key] = count.get(key, floor_old) + int(c)
            merged_e[key] = error.get(key, floor_old)
        for key, c in count.items():
            if key not in merged_c:
                merged_c[key] = c + floor
                merged_e[key] = error[key] + floor
        if len(merged_c) > self.k:
            kept = sorted(merged_c, key=merged_c.__getitem__, reverse=True)[: self.k]
            merged_c = {key: merged_c[key] for key in kept}
            merged_e = {key: merged_e[key] for key in kept}
        self._count, self._error = merged_c, merged_e

    def discard(self, keys: Sequence[bytes]) -> None:
        """Stop monitoring ``keys`` (e.g. moved to another shard). Cost: O(len(keys))."""
        for key in keys:
            self._count.pop(key, None)
            self._error.pop(key, None)

    def add_total(self, n: int) -> None:
        """Count ``n`` updates of the stream (the batch's rows)."""
        self.total += n

    def top(self, n: int | None = None) -> list[HotKey]:
        """The ``n`` (default all ``k``) largest counters, largest first."""
        keys = sorted(self._count, key=lambda k: (-self._count[k], k))[:n]
        return [HotKey(k, self._count[k], self._error[k]) for k in keys]


def counts_of(logic: object) -> tuple[pa.Array | pa.ChunkedArray, np.ndarray] | None:
    """``logic.key_counts()`` (``OperatorLogic``), or ``None`` for a logic without it."""
    key_counts = getattr(logic, "key_counts", None)  # logics need not subclass the ABC
    return key_counts() if key_counts is not None else None


class LoadTracker:
    """Per-shard updates, hot keys and (optionally) key-group loads of one stage's input.

    Args:
        key: the stage's key column.
        num_key_groups: the pipeline's key groups.
        hot_keys: Space-Saving counters (``k``).
        track_groups: also count updates per key group (needed by the rebalancer).

    Cost per batch: one Arrow ``value_counts`` over the key column (none when the operator
    counted the keys: ``observe(counted=)``), a top-``k`` selection,
    encoding ``k`` keys; with ``track_groups`` also encoding and hashing every distinct
    key of the batch (numpy passes for 8-byte keys, else one mmh3 call each).
    """

    def __init__(self, key: str, num_key_groups: int, hot_keys: int, *,
                 track_groups: bool) -> None:
        self.key = key
        self.num_key_groups = num_key_groups
        self.hot = SpaceSaving(hot_keys)
        self.track_groups = track_groups
        self.rows_total = 0
        self._rows = 0
        self._groups = np.zeros(num_key_groups if track_groups else 0, dtype=np.int64)
        self._type: pa.DataType | None = None

    def observe(self, column: pa.Array | pa.ChunkedArray,
                counted: tuple[pa.Array | pa.ChunkedArray, np.ndarray] | None = None) -> None:
        """Count one batch's key column (already validated by the operator).

        ``counted``: the column's distinct canonical keys and their row counts, when the
        operator counted them already (``OperatorLogic.key_counts``): no ``value_counts``.
        """
        n = len(column)
        if n == 0:
            return
        if counted is None:
            vc = pc.value_counts(canonical_key_array(column))
            values, counts = vc.field("values"), vc.field("counts").to_numpy(zero_copy_only=False)
        else:
            values, counts = counted
        self._type = values.type
        k = self.hot.k
        if len(counts) > k:
            part = np.argpartition(-counts, k)
            top, floor = part[:k], int(counts[part[k]])
        else:
            top, floor = np.arange(len(counts)), 0
        if self.track_groups:
            words = encode_key_words(values, self.key)  # 8-byte keys: no bytes per key
            keys = encode_keys(values, self.key) if words is None else words
            groups = key_groups_of(keys, self.num_key_groups)
            self._groups += np.bincount(groups, weights=counts, minlength=self.num_key_groups
                                        ).astype(np.int64)
            top_keys = ([keys[i] for i in top.tolist()] if words is None
                        else split_fixed(words[top].tobytes(), 8))
        else:
            top_keys = encode_keys(values.take(pa.array(top)), self.key)
        self.hot.update(top_keys, counts[top], floor)
        self.hot.add_total(n)
        self._rows += n
        self.rows_total += n

    def retain_groups(self, owned: np.ndarray) -> None:
        """Forget the hot keys whose key group is not ``owned[group]`` (after a rebalance)."""
        keys = [h.key for h in self.hot.top()]
        groups = key_groups_of(keys, self.num_key_groups)
        self.hot.discard([k for k, ok in zip(keys, owned[groups].tolist(), strict=True) if not ok])

    def describe_key(self, key: bytes) -> str:
        """A key for people: its decoded value as text (the raw bytes if it cannot be decoded)."""
        if self._type is not None:
            try:
                return str(decode_keys([key], self._type)[0].as_py())
            except (ValueError, TypeError):
                pass
        return repr(key)

    def report(self) -> dict[str, Any]:
        """This epoch's load (then reset it) and the hot keys so far.

        Returns:
            ``{"rows": rows this epoch, "rows_total": rows since the shard started,
            "hot_keys": [[key text, count, error], ...] (largest first),
            "groups": int64 array of the key groups updated this epoch (only with
            ``track_groups``), "group_counts": their update counts}``.
        """
        out: dict[str, Any] = {
            "rows": self._rows,
            "rows_total": self.rows_total,
            "hot_keys": [[self.describe_key(h.key), h.count, h.error]
                         for h in self.hot.top(REPORTED_HOT_KEYS)],
        }
        if self.track_groups:
            nz = np.flatnonzero(self._groups)
            out["groups"], out["group_counts"] = nz, self._groups[nz].copy()
            self._groups[nz] = 0
        self._rows = 0
        return out


def format_hot_keys(hot: Sequence[Sequence[Any]], n: int = 3) -> str:
    """``"key ~count, ..."`` for the first ``n`` reported ``[key, count, error]`` ("-": none)."""
    return ", ".join(f"{k} ~{c:,}" for k, c, _ in hot[:n]) or "-"


__all__ = ["REPORTED_HOT_KEYS", "HotKey", "LoadTracker", "SpaceSaving", "format_hot_keys"]
