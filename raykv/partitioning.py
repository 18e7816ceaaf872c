r"""Canonical key encoding and hash partitioning: key bytes -> key group -> shard.

Every keyed stage turns its key column into canonical bytes with :func:`encode_keys`
(the engine keys of its state), hashes those bytes with mmh3 (32-bit, seed 0, unsigned)
into one of ``num_key_groups`` key groups, and sends each key group to the shard that
owns it. Shards own contiguous key-group ranges, so a restore with another shard count
only reassigns ranges (DESIGN.md invariant 7); the skew rebalancer may move single key
groups to other shards (``Partitioning.moved``, an exception list). ``num_key_groups`` is
fixed when the pipeline is first created; it and the assignment are stored in every epoch
manifest (``Partitioning.to_dict``).

Encoding (``decode_keys`` is its inverse; the formats are part of the checkpoint format,
DO NOT CHANGE them without a new ``HASH``/format name):

============================  ====================================================
Arrow type                    bytes
============================  ====================================================
int8/16/32/64                 8 bytes big-endian of the int64 value, sign bit flipped
uint8/16/32/64                8 bytes big-endian of the uint64 value
float16/32/64                 8 bytes: IEEE-754 float64 bits, big-endian; positive
                              values get the sign bit set, negative values all bits
                              inverted; ``-0.0`` is encoded as ``0.0`` and every NaN
                              as the canonical quiet NaN (sorts after ``+inf``)
bool                          1 byte, ``0x00`` or ``0x01``
date32/64, time32/64,         their integer storage value widened to int64, encoded
timestamp, duration           as an int64 (8 bytes)
string, large_string,         the UTF-8 bytes
string_view
binary, large_binary,         the bytes as they are
binary_view, fixed_size_binary
dictionary<any of the above>  the encoding of the dictionary value
============================  ====================================================

Byte order equals value order for every integer, float and temporal type, so engines
that iterate in key order iterate in value order. The encoding does not name the type:
``int32`` 5 and ``int64`` 5 encode alike; ``decode_keys`` takes the type.

Example:
    >>> import pyarrow as pa
    >>> encode_keys(pa.array([1, -1]), "k")
    [b'\x80\x00\x00\x00\x00\x00\x00\x01', b'\x7f\xff\xff\xff\xff\xff\xff\xff']
    >>> decode_keys([b"ab", b""], pa.string()).to_pylist()
    ['ab', '']
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
import pyarrow.compute as pc

#: Name of the key hash recorded in ``Partitioning.to_dict()``; change it if the hash or the
#: key encoding ever changes, so old checkpoints are not read with the wrong routing.
HASH = "mmh3_x86_32/seed0/unsigned"

DEFAULT_NUM_KEY_GROUPS = 4096
MAX_NUM_KEY_GROUPS = 1 << 31

_SIGN = np.uint64(1 << 63)
_ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_NAN_BITS = np.uint64(0x7FF8_0000_0000_0000)

SUPPORTED_KEY_TYPES = (
    "bool, int8..int64, uint8..uint64, float16/32/64, date32/64, time32/64, timestamp, "
    "duration, string, large_string, string_view, binary, large_binary, binary_view, "
    "fixed_size_binary, and dictionaries of these"
)


# ---------------------------------------------------------------------------- key types


def _kind(t: pa.DataType) -> str:
    """Classify a key type.

    Returns 'i', 'u', 'f', 'b' (bool), 't' (temporal), 's' (string), 'y' (binary),
    'd' (dictionary) or '' (unsupported).
    """
    if pa.types.is_signed_integer(t):
        return "i"
    if pa.types.is_unsigned_integer(t):
        return "u"
    if pa.types.is_floating(t):
        return "f"
    if pa.types.is_boolean(t):
        return "b"
    if pa.types.is_temporal(t) and not pa.types.is_interval(t):
        return "t"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "s"
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return "y"
    if pa.types.is_dictionary(t) and _kind(t.value_type) not in ("", "d"):
        return "d"
    return ""


def check_key_type(type: pa.DataType, column: str) -> None:
    """Raise ``TypeError`` naming ``column`` if ``type`` cannot be a key.

    Cost: O(1).
    """
    if not _kind(type):
        msg = (
            f"key column {column!r} has type {type}, which cannot be a key; "
            f"supported key types: {SUPPORTED_KEY_TYPES}. Cast the column first."
        )
        raise TypeError(msg)


def value_type(type: pa.DataType) -> pa.DataType:
    """The type whose encoding a key of ``type`` uses (a dictionary's value type)."""
    return type.value_type if pa.types.is_dictionary(type) else type


def is_fixed_width(type: pa.DataType) -> bool:
    """True if every key of ``type`` encodes to the same number of bytes (1 or 8)."""
    return _kind(value_type(type)) in ("i", "u", "f", "b", "t")


def is_binary_like(type: pa.DataType) -> bool:
    """True if keys of ``type`` can encode to arbitrary bytes (binary types)."""
    return _kind(value_type(type)) == "y"


def _int64_storage(arr: pa.Array) -> pa.Array:
    """The int64 storage values of a temporal array."""
    width = arr.type.bit_width
    return arr.view(pa.int64()) if width == 64 else arr.view(pa.int32()).cast(pa.int64())


def _first_null(arr: pa.Array) -> int:
    mask = arr.is_null().to_numpy(zero_copy_only=False)
    return int(np.flatnonzero(mask)[0])


def _split_fixed(buf: bytes, width: int) -> list[bytes]:
    """Slice ``buf`` into ``width``-byte ``bytes`` objects (one C-level pass)."""
    return np.frombuffer(buf, dtype=f"V{width}").tolist()  # type: ignore[no-any-return]


def canonical_key_array(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Return ``array`` with equal keys made identical (for grouping before encoding).

    Dictionaries are decoded; float ``-0.0`` becomes ``0.0`` and every NaN the same NaN.
    Other arrays are returned as they are. Grouping the result yields exactly one group per
    distinct encoded key. Cost: O(rows) for floats and dictionaries, O(1) otherwise.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_floating(array.type):
        array = pc.add(array, pa.scalar(0.0, array.type))  # -0.0 + 0.0 == +0.0
        nan = pc.is_nan(array)
        if pc.any(nan).as_py():
            array = pc.if_else(nan, pa.scalar(float("nan"), array.type), array)
    return array


# ---------------------------------------------------------------------------- encoding


def encode_keys(array: pa.Array | pa.ChunkedArray, column: str) -> list[bytes]:
    """Encode every value of ``array`` to its canonical key bytes (see the module table).

    Args:
        array: the key values; must not contain nulls.
        column: the column name, used in error messages.

    Returns:
        One ``bytes`` per value, in order. Empty strings/binaries encode to ``b""``.

    Raises:
        ValueError: ``array`` holds a null (the message names the column and row).
        TypeError: the type cannot be a key (the message names type and column).

    Cost: O(rows), vectorized (numpy/Arrow) for fixed-width types; one Arrow-to-Python
    conversion for strings and binaries. No Python call per value except the final list.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    check_key_type(array.type, column)
    if array.null_count:
        row = _first_null(array)
        msg = (
            f"key column {column!r} contains a null at row {row} "
            f"({array.null_count} nulls in {len(array)} rows); keys must not be null: "
            "filter or fill them before this stage"
        )
        raise ValueError(msg)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    kind = _kind(array.type)
    if kind in ("s", "y"):
        if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type):
            target = pa.large_binary()
        else:
            target = pa.binary()
        if array.type != target:
            array = array.cast(target)
        return array.to_pylist()  # type: ignore[no-any-return]
    if kind == "b":
        bits = array.to_numpy(zero_copy_only=False).astype(np.uint8)
        return _split_fixed(bits.tobytes(), 1)
    if kind == "t":
        array = _int64_storage(array)
        kind = "i"
    if kind == "i":
        ints = array.cast(pa.int64()).to_numpy(zero_copy_only=False)
        out = (ints.view(np.uint64) ^ _SIGN).astype(">u8")
    elif kind == "u":
        out = array.cast(pa.uint64()).to_numpy(zero_copy_only=False).astype(">u8")
    else:  # float
        floats = array.cast(pa.float64()).to_numpy(zero_copy_only=False) + 0.0  # no -0.0
        bits = floats.view(np.uint64).copy()
        bits[np.isnan(floats)] = _NAN_BITS
        neg = (bits & _SIGN).astype(bool)
        out = np.where(neg, bits ^ _ALL, bits | _SIGN).astype(">u8")
    return _split_fixed(out.tobytes(), 8)


def _fixed_words(keys: Sequence[bytes], width: int, type_: pa.DataType) -> bytes:
    buf = b"".join(keys)
    if len(buf) != width * len(keys) or any(len(k) != width for k in keys):
        bad = next(k for k in keys if len(k) != width)
        msg = f"cannot decode key {bad[:32]!r} as {type_}: expected {width} bytes, got {len(bad)}"
        raise ValueError(msg)
    return buf


def decode_keys(keys: Sequence[bytes], type: pa.DataType) -> pa.Array:
    """Decode key bytes made by :func:`encode_keys` back into an Arrow array of ``type``.

    Raises:
        ValueError: a key has the wrong length for ``type``, is not valid UTF-8 for a
            string type, or is out of range for a narrower integer type.
        TypeError: ``type`` cannot be a key type.

    Cost: O(keys), vectorized except for building the list of bytes.
    """
    check_key_type(type, "<decode>")
    if pa.types.is_dictionary(type):
        return decode_keys(keys, type.value_type).dictionary_encode().cast(type)
    kind = _kind(type)
    try:
        if kind in ("s", "y"):
            if pa.types.is_fixed_size_binary(type):
                return pa.array(keys, type)
            large = pa.types.is_large_string(type) or pa.types.is_large_binary(type)
            raw = pa.array(keys, pa.large_binary() if large else pa.binary())
            return raw if raw.type == type else raw.cast(type)
        if kind == "b":
            buf = _fixed_words(keys, 1, type)
            return pa.array(np.frombuffer(buf, dtype=np.uint8) != 0, pa.bool_())
        words = np.frombuffer(_fixed_words(keys, 8, type), dtype=">u8").astype(np.uint64)
        if kind == "u":
            return pa.array(words, pa.uint64()).cast(type)
        if kind == "f":
            neg = (words & _SIGN) == 0
            bits = np.where(neg, words ^ _ALL, words ^ _SIGN)
            return pa.array(bits.view(np.float64), pa.float64()).cast(type)
        ints = pa.array((words ^ _SIGN).view(np.int64), pa.int64())
        if kind == "i":
            return ints.cast(type)
        # temporal: int64 storage -> storage width -> view as the temporal type
        if type.bit_width == 32:
            return ints.cast(pa.int32()).view(type)
        return ints.view(type)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        msg = f"cannot decode keys as {type}: {err}"
        raise ValueError(msg) from err


# ---------------------------------------------------------------------------- hashing


def key_groups_of(keys: Sequence[bytes], num_key_groups: int) -> np.ndarray:
    """Return the key group of every key: ``mmh3.hash(key, 0, signed=False) % num_key_groups``.

    Cost: one C-level mmh3 call per key (about 0.1-0.2 us); no other per-key Python work.

    Returns:
        ``np.ndarray`` of int64, one group per key.
    """
    if type(num_key_groups) is not int or not 1 <= num_key_groups <= MAX_NUM_KEY_GROUPS:
        msg = f"num_key_groups must be an int in 1..{MAX_NUM_KEY_GROUPS}, got {num_key_groups!r}"
        raise ValueError(msg)
    hashes = np.fromiter(
        map(mmh3.hash, keys, repeat(0), repeat(False)), dtype=np.int64, count=len(keys)
    )
    return hashes % num_key_groups


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

    def shard_of_keys(self, keys: Sequence[bytes]) -> np.ndarray:
        """Return the shard owning each encoded key. Cost: one mmh3 call per key."""
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

    Each distinct key is encoded and hashed once (the key column is dictionary-encoded
    first), the per-key shards are mapped back to rows, and rows are grouped by shard with
    one stable sort and one ``take``: within a shard, rows keep their input order.

    Returns:
        ``{shard: sub_batch}`` for the shards that receive at least one row (an empty batch
        gives ``{}``); the sub-batches have the input schema.

    Raises:
        ValueError: ``key`` is not a column of ``batch`` or holds a null (names the column).
        TypeError: the key column's type cannot be a key.

    Cost: O(rows) vectorized + one mmh3 call per distinct key.
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
    is_bool = pa.types.is_boolean(col.type)
    encoded = (col.cast(pa.int8()) if is_bool else col).dictionary_encode()  # no bool dicts
    values = encoded.dictionary.cast(pa.bool_()) if is_bool else encoded.dictionary
    distinct = encode_keys(values, key)
    shard_of_distinct = partitioning.shard_of_keys(distinct)
    shards = shard_of_distinct[encoded.indices.to_numpy(zero_copy_only=False)]
    first = int(shards[0])
    if (shards == first).all():
        return {first: batch}
    order = np.argsort(shards, kind="stable")
    ordered = batch.take(pa.array(order))
    counts = np.bincount(shards, minlength=partitioning.num_shards)
    out: dict[int, pa.RecordBatch] = {}
    offset = 0
    for shard in np.flatnonzero(counts).tolist():
        size = int(counts[shard])
        out[shard] = ordered.slice(offset, size)
        offset += size
    return out

