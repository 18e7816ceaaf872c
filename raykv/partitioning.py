r"""Hash partitioning: key bytes -> key group -> shard.

Every keyed stage turns its key column into canonical bytes with
:func:`raykv.keys.encode_keys`
(the engine keys of its state), hashes those bytes with mmh3 (32-bit, seed 0, unsigned)
into one of ``num_key_groups`` key groups, and sends each key group to the shard that
owns it. Shards own contiguous key-group ranges, so a restore with another shard count
only reassigns ranges (DESIGN.md invariant 7); the skew rebalancer may move single key
groups to other shards (``Partitioning.moved``, an exception list). ``num_key_groups`` is
fixed when the pipeline is first created; it and the assignment are stored in every epoch
manifest (``Partitioning.to_dict``).

Example:
    >>> p = Partitioning(num_shards=3, num_key_groups=8)
    >>> [p.group_range(s) for s in range(3)]
    [(0, 3), (3, 6), (6, 8)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import repeat
from typing import Any

import mmh3
import numpy as np
import pyarrow as pa

from raykv.keys import canonical_key_array, check_key_type, encode_key_words, encode_keys

#: Name of the key hash recorded in ``Partitioning.to_dict()``; change it if the hash or the
#: key encoding ever changes, so old checkpoints are not read with the wrong routing.
HASH = "mmh3_x86_32/seed0/unsigned"

DEFAULT_NUM_KEY_GROUPS = 4096
MAX_NUM_KEY_GROUPS = 1 << 31

# ---------------------------------------------------------------------------- hashing


def key_groups_of(keys: Sequence[bytes] | np.ndarray, num_key_groups: int) -> np.ndarray:
    """Return the key group of every key: ``mmh3.hash(key, 0, signed=False) % num_key_groups``.

    ``keys``: encoded keys, or the big-endian words of 8-byte keys
    (:func:`~raykv.keys.encode_key_words`). Cost: 8-byte keys (every number and time)
    are hashed by numpy, bit-identical to ``mmh3`` (about 15 ns a key, plus a ``join``
    when they come as ``bytes``); other keys one C-level mmh3 call each (0.1-0.2 us).

    Returns:
        ``np.ndarray`` of int64, one group per key.
    """
    if type(num_key_groups) is not int or not 1 <= num_key_groups <= MAX_NUM_KEY_GROUPS:
        msg = f"num_key_groups must be an int in 1..{MAX_NUM_KEY_GROUPS}, got {num_key_groups!r}"
        raise ValueError(msg)
    if isinstance(keys, np.ndarray):
        hashes = _mmh3_8(np.ascontiguousarray(keys, dtype=">u8").tobytes())
    elif keys and len(buf := b"".join(keys)) == 8 * len(keys) and max(map(len, keys)) == 8:
        hashes = _mmh3_8(buf)
    else:
        hashes = np.fromiter(
            map(mmh3.hash, keys, repeat(0), repeat(False)), dtype=np.int64, count=len(keys))
    return hashes.astype(np.int64) % num_key_groups


_C1, _C2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _mmh3_8(buf: bytes) -> np.ndarray:
    """MurmurHash3 x86_32, seed 0, of each 8-byte key in ``buf``, as ``uint32``.

    The reference algorithm for two 4-byte blocks (read little-endian) and no tail, in
    numpy's wrapping ``uint32`` arithmetic; tests compare it with ``mmh3.hash``.
    """
    blocks = np.frombuffer(buf, "<u4").reshape(-1, 2)
    h = np.zeros(len(blocks), np.uint32)
    for j in (0, 1):
        k = _rotl(blocks[:, j] * _C1, 15) * _C2
        h = _rotl(h ^ k, 13) * np.uint32(5) + np.uint32(0xE6546B64)
    h ^= np.uint32(8)  # the length
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


# ---------------------------------------------------------------------------- partitioning


@dataclass(frozen=True)
class Partitioning:
    """Key groups and their assignment to shards (stored in every epoch manifest).

    By default shard ``s`` owns the contiguous key groups ``group_range(s)``: group ``g``
    belongs to shard ``g * num_shards // num_key_groups``. ``moved`` is an exception list
    of ``(group, shard)`` pairs that override that default; the skew rebalancer
    (:mod:`raykv.rebalance`) writes it, and it travels with the epoch manifest, so a
    restore routes every key exactly as the epoch was written. ``num_key_groups`` must
    never change for an existing pipeline (the state's key groups depend on it);
    ``num_shards`` may change between restores (use :meth:`rescaled`).

    Attributes:
        num_shards: number of shards, 1..num_key_groups.
        num_key_groups: number of key groups (default 4096).
        moved: sorted ``(group, shard)`` exceptions to the contiguous ranges (no group
            twice; a pair equal to the default is dropped).
    """

    num_shards: int
    num_key_groups: int = DEFAULT_NUM_KEY_GROUPS
    moved: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        for name in ("num_shards", "num_key_groups"):
            value = getattr(self, name)
            if type(value) is not int:
                msg = f"Partitioning.{name} must be an int, got {type(value).__name__}"
                raise TypeError(msg)
        if not 1 <= self.num_key_groups <= MAX_NUM_KEY_GROUPS:
            msg = (
                f"Partitioning.num_key_groups={self.num_key_groups} is out of range; "
                f"allowed 1..{MAX_NUM_KEY_GROUPS}"
            )
            raise ValueError(msg)
        if not 1 <= self.num_shards <= self.num_key_groups:
            msg = (
                f"Partitioning.num_shards={self.num_shards} is out of range; allowed "
                f"1..num_key_groups={self.num_key_groups} (each shard owns at least one key group)"
            )
            raise ValueError(msg)
        moved: dict[int, int] = {}
        for pair in self.moved:
            try:
                g, s = (int(x) for x in pair)
            except (TypeError, ValueError):
                msg = f"Partitioning.moved must hold (group, shard) pairs, got {pair!r}"
                raise ValueError(msg) from None
            if not (0 <= g < self.num_key_groups and 0 <= s < self.num_shards) or g in moved:
                msg = (
                    f"Partitioning.moved has a bad or repeated pair ({g}, {s}); groups are "
                    f"0..{self.num_key_groups - 1}, shards 0..{self.num_shards - 1}"
                )
                raise ValueError(msg)
            moved[g] = s
        default = self._default_shards(np.fromiter(moved, np.int64, len(moved))).tolist()
        norm = sorted((g, s) for (g, s), d in zip(moved.items(), default, strict=True) if s != d)
        object.__setattr__(self, "moved", tuple(norm))

    def _default_shards(self, groups: np.ndarray) -> np.ndarray:
        return groups * self.num_shards // self.num_key_groups

    @cached_property
    def owners(self) -> np.ndarray:
        """The shard of every key group (int64 array). Cost: O(groups), once."""
        owners = self._default_shards(np.arange(self.num_key_groups, dtype=np.int64))
        for g, s in self.moved:
            owners[g] = s
        owners.flags.writeable = False
        return owners

    def shard_of_groups(self, groups: np.ndarray | Sequence[int]) -> np.ndarray:
        """Return the shard owning each key group. Cost: one vectorized pass."""
        g = np.asarray(groups, dtype=np.int64)
        if g.size and (g.min() < 0 or g.max() >= self.num_key_groups):
            msg = f"key groups must be in 0..{self.num_key_groups - 1}"
            raise ValueError(msg)
        return self.owners[g] if self.moved else self._default_shards(g)

    def shard_of_keys(self, keys: Sequence[bytes] | np.ndarray) -> np.ndarray:
        """Return the shard owning each encoded key (or word: :func:`key_groups_of`)."""
        return self.shard_of_groups(key_groups_of(keys, self.num_key_groups))

    def group_range(self, shard: int) -> tuple[int, int]:
        """Return the default contiguous key groups ``[lo, hi)`` of ``shard`` (not ``moved``)."""
        if not 0 <= shard < self.num_shards:
            msg = f"shard {shard} is out of range 0..{self.num_shards - 1}"
            raise ValueError(msg)
        g, s = self.num_key_groups, self.num_shards
        return (shard * g + s - 1) // s, ((shard + 1) * g + s - 1) // s

    def owned_mask(self, shard: int) -> np.ndarray:
        """Boolean array over key groups: True where ``shard`` owns the group (``moved`` too)."""
        self.group_range(shard)  # range check
        return self.owners == shard

    def with_owners(self, owners: np.ndarray | Sequence[int]) -> Partitioning:
        """The same key groups and shards with group ``g`` assigned to ``owners[g]``."""
        arr = np.asarray(owners, dtype=np.int64)
        if arr.shape != (self.num_key_groups,):
            msg = f"owners must have one shard per key group ({self.num_key_groups})"
            raise ValueError(msg)
        default = self._default_shards(np.arange(self.num_key_groups, dtype=np.int64))
        diff = np.flatnonzero(arr != default)
        return Partitioning(self.num_shards, self.num_key_groups,
                            tuple(zip(diff.tolist(), arr[diff].tolist(), strict=True)))

    def rescaled(self, num_shards: int) -> Partitioning:
        """The same key groups over ``num_shards`` contiguous ranges (``moved`` is dropped)."""
        return Partitioning(num_shards, self.num_key_groups)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (stored in the epoch manifest's metadata)."""
        out: dict[str, Any] = {
            "num_key_groups": self.num_key_groups, "num_shards": self.num_shards, "hash": HASH,
        }
        if self.moved:
            out["moved"] = [list(p) for p in self.moved]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Partitioning:
        """Inverse of :meth:`to_dict`; rejects another hash scheme or unknown fields."""
        data = dict(data)
        scheme = data.pop("hash", HASH)
        if scheme != HASH:
            msg = f"partitioning uses key hash {scheme!r}; this raykv only knows {HASH!r}"
            raise ValueError(msg)
        unknown = set(data) - {"num_key_groups", "num_shards", "moved"}
        if unknown:
            msg = (
                f"unknown partitioning fields {sorted(unknown)}; "
                "expected num_key_groups, num_shards, moved"
            )
            raise ValueError(msg)
        data["moved"] = tuple(tuple(p) for p in data.get("moved", ()))
        return cls(**data)


def split_batch(
    batch: pa.RecordBatch, key: str, partitioning: Partitioning
) -> dict[int, pa.RecordBatch]:
    """Split ``batch`` by the shard that owns each row's key.

    Keys of 8 bytes (numbers, times) are encoded and hashed by numpy, row by row; other
    keys once per distinct key (the key column is dictionary-encoded first) and the
    per-key shards mapped back to rows. Rows are grouped by shard with one stable sort
    and one ``take``: within a shard, rows keep their input order.

    Returns:
        ``{shard: sub_batch}`` for the shards that receive at least one row (an empty batch
        gives ``{}``); the sub-batches have the input schema.

    Raises:
        ValueError: ``key`` is not a column of ``batch`` or holds a null (names the column).
        TypeError: the key column's type cannot be a key.

    Cost: O(rows) vectorized (+ one mmh3 call per distinct key of other types).
    """
    if key not in batch.schema.names:
        msg = f"key column {key!r} is missing from the batch; its columns are {batch.schema.names}"
        raise ValueError(msg)
    col = batch.column(key)
    check_key_type(col.type, key)
    if col.null_count:
        encode_keys(col, key)  # raises the null error naming the row
    n = batch.num_rows
    if n == 0:
        return {}
    if partitioning.num_shards == 1:
        return {0: batch}
    col = canonical_key_array(col)
    words = encode_key_words(col, key)
    if words is not None:  # 8-byte keys: every row hashed by numpy (no hash table)
        shards = partitioning.shard_of_keys(words)
    else:
        is_bool = pa.types.is_boolean(col.type)
        encoded = (col.cast(pa.int8()) if is_bool else col).dictionary_encode()  # no bool dicts
        values = encoded.dictionary.cast(pa.bool_()) if is_bool else encoded.dictionary
        shard_of_distinct = partitioning.shard_of_keys(encode_keys(values, key))
        shards = shard_of_distinct[encoded.indices.to_numpy(zero_copy_only=False)]
    first = int(shards[0])
    if (shards == first).all():
        return {first: batch}
    small = shards.astype(np.int16) if partitioning.num_shards <= 1 << 15 else shards
    order = np.argsort(small, kind="stable")  # (16-bit integers: numpy's radix sort)
    ordered = batch.take(pa.array(order))
    counts = np.bincount(shards, minlength=partitioning.num_shards)
    out: dict[int, pa.RecordBatch] = {}
    offset = 0
    for shard in np.flatnonzero(counts).tolist():
        size = int(counts[shard])
        out[shard] = ordered.slice(offset, size)
        offset += size
    return out

