"""MemOnly: the whole state in a dict; ``seal()`` writes all of it (the thesis baseline).

Every seal writes one ``.snap`` file holding the entire state as a kv block (FORMAT.md),
so snapshot cost grows with the state, not with the changes: the naive baseline the
log-structured engines are measured against. With an expiry horizon (``set_expiry``), a
seal first deletes the expired entries (``expiry.py``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import NoReturn, Unpack

from raykv.engines.base import KVStore, Pairs, StoreOptions
from raykv.engines.expiry import Expiry
from raykv.engines.kvblock import decode_kv_block, encode_kv_block
from raykv.engines.manifest import Manifest
from raykv.errors import StoreClosedError

SNAP_MAGIC = b"RKMO"
SNAP_KIND = "snap"


class MemOnly(KVStore):
    """A dict-backed engine.

    Cost: ``get``/``set`` are one dict operation; ``seal()`` writes the whole state, O(state).
    Memory: the whole state. ``items()`` iterates in insertion order.
    """

    engine_name = "memonly"

    def __init__(self, data_dir: str | os.PathLike[str], **kwargs: Unpack[StoreOptions]
                 ) -> None:
        self._data: dict[bytes, bytes] = {}
        self._sealed_at = 0  # stats.app_bytes at the last seal: any write since changes it
        super().__init__(data_dir, **kwargs)

    def _open(self, manifest: Manifest | None) -> None:
        self._data = {}
        self._sealed_at = self.stats.app_bytes
        if manifest is not None and manifest.files:
            path = self.data_dir / manifest.files[0]
            keys, values = decode_kv_block(SNAP_MAGIC, path.read_bytes(), path)
            self._data = dict(zip(keys, values, strict=True))

    def _seal(self) -> bool:
        if self.stats.app_bytes == self._sealed_at:
            return False
        if self.expiry is not None and self._data:  # the snapshot is MemOnly's only "merge"
            self._expire(self.expiry)
        name = self._new_file(SNAP_KIND)
        data = encode_kv_block(SNAP_MAGIC, list(self._data), list(self._data.values()))
        (self.data_dir / name).write_bytes(data)
        self._written(name, len(data))
        self._commit([name], {})
        self._sealed_at = self.stats.app_bytes
        return True

    def _expire(self, expiry: Expiry) -> None:
        """Delete the entries ``expiry`` finds expired (``expiry.py``), counting them."""
        keys = list(self._data)
        values = list(self._data.values())
        dead = expiry.expired_values(keys, values)
        if dead.any():
            for i in dead.nonzero()[0].tolist():
                self.stats.expired_bytes += len(self._data.pop(keys[i]))
            self.stats.expired_records += int(dead.sum())

    def _release(self) -> None:
        self._data = _Closed()

    def get(self, key: bytes) -> bytes:
        """Return the value of ``key`` or ``b""``. Cost: one dict lookup."""
        value = self._data.get(key)
        if value is None:
            if type(key) is not bytes or not 0 < len(key) <= self.max_key_len:
                self._reject_key(key)
            return b""
        return value

    def set(self, key: bytes, value: bytes) -> None:
        """Insert, update or (``value == b""``) delete ``key``. Cost: one dict operation."""
        if (
            type(key) is not bytes
            or not 0 < len(key) <= self.max_key_len
            or type(value) is not bytes
            or len(value) > self.max_value_len
        ):
            self._check_kv(key, value)
        if value:
            self._data[key] = value
        else:
            self._data.pop(key, None)
        self.stats.app_bytes += len(key) + len(value)

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes]:
        """Return values for ``keys`` in order. Cost: one C-level map over the batch."""
        self._ensure_open()
        self._check_keys(keys)
        return list(map(self._data.get, keys, [b""] * len(keys)))

    def multi_set(self, pairs: Pairs) -> None:
        """Apply a validated batch of pairs; ``b""`` values delete."""
        self._ensure_open()
        batch = self._check_batch(pairs)
        data = self._data
        if all(batch.values()):
            data.update(batch)
        else:
            for k, v in batch.items():
                if v:
                    data[k] = v
                else:
                    data.pop(k, None)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over live pairs in insertion order."""
        self._ensure_open()
        return iter(list(self._data.items()))

    def live_keys(self) -> int:
        """Number of live keys (exported per shard by ``raykv.metrics``). O(1)."""
        self._ensure_open()
        return len(self._data)

    def __sizeof__(self) -> int:
        """Dict table plus two bytes objects per entry, sized from a 64-entry sample. O(1)."""
        n = len(self._data)
        sample = list(islice(self._data.items(), 64))
        per_entry = (
            sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in sample) / len(sample)
            if sample
            else 0
        )
        return object.__sizeof__(self) + sys.getsizeof(self._data) + int(n * per_entry)


class _Closed(dict[bytes, bytes]):
    """Stands in for the data dict after close: every access raises ``StoreClosedError``.

    Lets the hot paths skip an "is it open?" test on every call.
    """

    def _closed(self, *_: object) -> NoReturn:
        msg = "MemOnly engine is closed; open a new one"
        raise StoreClosedError(msg)

    # pop and update take keyword arguments: the catch-all signature is incompatible
    get = __setitem__ = pop = update = items = __getitem__ = _closed  # type: ignore[assignment]
