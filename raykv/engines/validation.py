"""Argument checks shared by every engine: key and value limits, batches, parameters.

``Validation`` is a base class of ``KVStore``: engines test the common case inline (a
``bytes`` key of an allowed length) and call these methods only to raise the precise
error, or to check a whole ``multi_set`` batch before applying any of it. Errors are
``TypeError`` (wrong type) and ``ValueError`` (empty or oversized), naming the limit.

Cost: a batch is checked with C-level passes (a fold into a dict, then a type and a
length pass over the keys and over the values), no Python loop per pair unless a pair
is bad.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import numpy as np

from raykv.engines.stats import EngineStats

DEFAULT_MAX_KEY_LEN = 1024
DEFAULT_MAX_VALUE_LEN = 16 * 1024 * 1024
KEY_LEN_CEILING = 1024 * 1024
VALUE_LEN_CEILING = 1024 * 1024 * 1024

Pairs = Iterable[tuple[bytes, bytes]] | Mapping[bytes, bytes]


class Validation:
    """Checks of keys, values and ``multi_set`` batches (a base class of ``KVStore``)."""

    max_key_len: int
    max_value_len: int
    stats: EngineStats

    def _reject_key(self, key: object) -> None:
        """Raise the error that explains why ``key`` is not acceptable."""
        if not isinstance(key, bytes):
            msg = (
                f"key must be bytes, got {type(key).__name__}; "
                "encode it first (e.g. str.encode())"
            )
            raise TypeError(msg)
        if not key:
            msg = "key must not be empty (1.." + f"{self.max_key_len} bytes)"
            raise ValueError(msg)
        if len(key) > self.max_key_len:
            msg = (
                f"key of {len(key)} bytes exceeds max_key_len={self.max_key_len} "
                f"(key starts {key[:32]!r}); raise max_key_len or shorten the key"
            )
            raise ValueError(msg)

    def _reject_value(self, key: object, value: object) -> None:
        """Raise the error that explains why ``value`` (stored under ``key``) is not acceptable."""
        head = key[:32] if isinstance(key, bytes) else key
        if not isinstance(value, bytes):
            msg = (
                f"value for key {head!r} must be bytes, got {type(value).__name__}; "
                "serialize it first"
            )
            raise TypeError(msg)
        msg = (
            f"value of {len(value)} bytes for key {head!r} exceeds "
            f"max_value_len={self.max_value_len}; raise max_value_len or store less"
        )
        raise ValueError(msg)

    def _check_kv(self, key: object, value: object) -> None:
        """Validate one pair (raises on the first problem)."""
        if type(key) is not bytes or not 0 < len(key) <= self.max_key_len:
            self._reject_key(key)
        if type(value) is not bytes or len(value) > self.max_value_len:
            self._reject_value(key, value)

    def _check_keys(self, keys: Collection[bytes]) -> int:
        """Validate a batch of keys with C-speed passes; return their total length.

        Raises the precise error for the first bad key. Cost: a type pass, a length pass
        and a count of the first length, all C-level (small batches of ``multi_get``
        pay no numpy call); when lengths vary, :meth:`_key_lengths`.
        """
        if not keys:
            return 0
        self._check_key_types(keys)
        lens = list(map(len, keys))
        first = lens[0]
        if lens.count(first) == len(lens):  # one length (common): no comparisons
            if not 0 < first <= self.max_key_len:
                self._reject_key(next(iter(keys)))
            return first * len(lens)
        return int(self._check_key_lengths(keys, np.array(lens, dtype=np.int64)).sum())

    def _key_lengths(self, keys: Collection[bytes]) -> np.ndarray:
        """Validate a batch of keys; return their lengths (int64, in order).

        Raises the precise error for the first bad key. Cost: a C-level type pass and a
        length pass into numpy (about 45 ns a key), then numpy's min and max.
        """
        self._check_key_types(keys)
        return self._check_key_lengths(
            keys, np.fromiter(map(len, keys), dtype=np.int64, count=len(keys)))

    def _check_key_types(self, keys: Collection[bytes]) -> None:
        """Raise for the first key that is not ``bytes``. Cost: one C-level type pass."""
        if keys and set(map(type, keys)) != _BYTES_ONLY:
            for k in keys:
                if type(k) is not bytes:
                    self._reject_key(k)

    def _check_key_lengths(self, keys: Collection[bytes], lens: np.ndarray) -> np.ndarray:
        """``lens`` (of ``keys``, all ``bytes``); raises for the first key of a bad length."""
        if len(lens) and (lens.min() == 0 or lens.max() > self.max_key_len):
            for k in keys:
                self._reject_key(k)
        return lens

    def _check_batch(self, pairs: Pairs) -> dict[bytes, bytes]:
        """Validate a whole batch and return it as a dict; raises before any change.

        Pairs are folded into a dict first (one C-level pass that also checks that every
        item is a pair), so a key repeated in the batch appears once with its last value:
        the same result as applying the pairs in order. A ``dict`` argument is returned
        as is (not copied): callers must not modify it. Engines that apply a batch to
        their own dicts do it with ``dict.update(batch)``, the cheapest C-level merge.
        Cost: the fold, then a type and a length pass over the keys and the values.
        """
        return self._check_batch_lengths(pairs)[0]

    def _check_batch_lengths(self, pairs: Pairs
                             ) -> tuple[dict[bytes, bytes], np.ndarray, np.ndarray]:
        """:meth:`_check_batch`, and the lengths of its keys and of its values (int64)."""
        if type(pairs) is dict:
            batch = pairs
        else:
            try:
                batch = dict(pairs.items() if isinstance(pairs, Mapping) else pairs)
            except (TypeError, ValueError):
                for item in pairs.items() if isinstance(pairs, Mapping) else pairs:
                    if not isinstance(item, tuple | list) or len(item) != 2:
                        msg = (
                            "multi_set expects (key, value) pairs or a mapping of bytes to "
                            f"bytes, got item {item!r:.60}"
                        )
                        raise TypeError(msg) from None
                    self._check_kv(item[0], item[1])
                raise
        klens = self._key_lengths(batch.keys())
        values = batch.values()
        if batch and set(map(type, values)) != _BYTES_ONLY:
            for k, v in batch.items():
                if type(v) is not bytes:
                    self._reject_value(k, v)
        vlens = np.fromiter(map(len, values), dtype=np.int64, count=len(batch))
        if batch and vlens.max() > self.max_value_len:
            for k, v in batch.items():
                if len(v) > self.max_value_len:
                    self._reject_value(k, v)
        self.stats.app_bytes += int(klens.sum()) + int(vlens.sum())
        return batch, klens, vlens

    def _check_packed(self, words: object, rows: object) -> int:
        """Validate a packed batch (``KVStore.multi_set_packed``); return its value size.

        Counts nothing in ``stats`` (the write path that applies the batch does).

        Raises before any change: ``TypeError`` for arrays of the wrong kind or shape,
        ``ValueError`` for 8-byte keys above ``max_key_len`` or values above
        ``max_value_len`` or of size 0 (a delete: ``multi_set`` takes those).
        """
        if not (isinstance(words, np.ndarray) and words.dtype == np.uint64
                and words.ndim == 1):
            msg = ("multi_set_packed expects keys as a 1-d uint64 array (each key's 8 bytes "
                   f"read big-endian), got {type(words).__name__} "
                   f"{getattr(words, 'dtype', '')}")
            raise TypeError(msg)
        if not (isinstance(rows, np.ndarray) and rows.dtype == np.uint8 and rows.ndim == 2
                and rows.shape[0] == len(words)):
            msg = (f"multi_set_packed expects values as a uint8 array of shape ({len(words)}, "
                   f"value size), got {type(rows).__name__} {getattr(rows, 'shape', '')}")
            raise TypeError(msg)
        size = int(rows.shape[1])
        if len(words) and self.max_key_len < 8:
            msg = f"8-byte keys exceed max_key_len={self.max_key_len}; raise max_key_len"
            raise ValueError(msg)
        if len(words) and not 0 < size <= self.max_value_len:
            msg = (f"multi_set_packed values of {size} bytes: each must be 1..max_value_len="
                   f"{self.max_value_len} bytes (deletes go through multi_set)")
            raise ValueError(msg)
        return size

    def _split_pairs(self, pairs: Pairs) -> tuple[list[bytes], list[bytes], np.ndarray,
                                                   np.ndarray]:
        """Validate a whole batch; return ``(keys, values, key lengths, value lengths)``.

        Same checks and folding as ``_check_batch`` (a key repeated in the batch appears
        once, with its last value), plus two C-level passes to list keys and values.
        Raises before any change.
        """
        batch, klens, vlens = self._check_batch_lengths(pairs)
        return list(batch), list(batch.values()), klens, vlens


_BYTES_ONLY = {bytes}


def check_int_param(name: str, value: object, low: int, high: int | None = None,
                    what: str = "") -> int:
    """Return ``value`` if it is an int in ``low..high`` (no upper bound when ``None``).

    Raises:
        TypeError: not an int (``bool`` is not accepted either).
        ValueError: out of range; the message names the parameter, what it means
            (``what``), the value and the allowed range.
    """
    label = f"{name} ({what})" if what else name
    if type(value) is not int:
        msg = f"{label} must be an int, got {type(value).__name__}"
        raise TypeError(msg)
    if high is None and value < low:
        msg = f"{name}={value} must be >= {low}"
        raise ValueError(msg)
    if high is not None and not low <= value <= high:
        msg = f"{name}={value}{f' ({what})' if what else ''} is out of range; allowed {low}..{high}"
        raise ValueError(msg)
    return value
