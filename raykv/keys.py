r"""Canonical key encoding: a key column's values <-> the bytes that key engine state.

Every keyed stage turns its key column into canonical bytes with :func:`encode_keys`;
those bytes are the engine keys of its state and the input of the key-group hash
(:mod:`raykv.partitioning`).

Encoding (``decode_keys`` is its inverse; the formats are part of the checkpoint format,
DO NOT CHANGE them without a new ``raykv.partitioning.HASH``/format name):

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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# re-exported for the operators (its home is in engines/, which may not import this module)
from raykv.engines.keywords import split_fixed as split_fixed

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
    array, kind = _checked(array, column)
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
        return split_fixed(bits.tobytes(), 1)
    return split_fixed(_words(array, kind).tobytes(), 8)


def encode_key_words(array: pa.Array | pa.ChunkedArray, column: str) -> np.ndarray | None:
    """The keys of an 8-byte key type as big-endian words (``>u8``), else ``None``.

    What :func:`encode_keys` returns, without a ``bytes`` object per key: the array's
    memory is the keys' bytes, one after the other. ``None`` for string, binary and bool
    keys. Raises like :func:`encode_keys`. Cost: a few numpy passes.
    """
    array, kind = _checked(array, column)
    return None if kind in ("s", "y", "b") else _words(array, kind)


def _checked(array: pa.Array | pa.ChunkedArray, column: str) -> tuple[pa.Array, str]:
    """``array`` as one array of its value type, and its kind; raises on a bad type or null."""
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
    return array, _kind(array.type)


def _words(array: pa.Array, kind: str) -> np.ndarray:
    """The big-endian key words of an integer, unsigned, float or temporal array."""
    if kind == "t":
        array = _int64_storage(array)
        kind = "i"
    if kind == "i":
        ints = array.cast(pa.int64()).to_numpy(zero_copy_only=False)
        return (ints.view(np.uint64) ^ _SIGN).astype(">u8")
    if kind == "u":
        return array.cast(pa.uint64()).to_numpy(zero_copy_only=False).astype(">u8")
    floats = array.cast(pa.float64()).to_numpy(zero_copy_only=False) + 0.0  # no -0.0
    bits = floats.view(np.uint64).copy()
    bits[np.isnan(floats)] = _NAN_BITS
    neg = (bits & _SIGN).astype(bool)
    return np.where(neg, bits ^ _ALL, bits | _SIGN).astype(">u8")


def _fixed_words(keys: Sequence[bytes], width: int, type_: pa.DataType) -> bytes:
    buf = b"".join(keys)
    # the total is right and none is longer: then none is shorter either
    if len(buf) != width * len(keys) or (keys and max(map(len, keys)) != width):
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
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        msg = f"cannot decode keys as {type}: {err}"
        raise ValueError(msg) from err
    return decode_words(np.frombuffer(_fixed_words(keys, 8, type), dtype=">u8"), type)


def decode_words(words: np.ndarray, type: pa.DataType) -> pa.Array:
    """Decode 8-byte keys given as their words (``uint64``, or ``>u8`` over the key bytes).

    ``type``: a numeric or temporal key type other than ``bool`` (the keys that
    :func:`encode_keys` makes 8 bytes long). The form of :func:`decode_keys` for keys
    kept packed in numpy (no ``bytes`` per key). Raises ``ValueError`` like it.
    Cost: a few numpy passes.
    """
    if pa.types.is_dictionary(type):
        return decode_words(words, type.value_type).dictionary_encode().cast(type)
    kind = _kind(type)
    words = words.astype(np.uint64)
    try:
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
