"""Storage types of the aggregation state: Arrow <-> storage casts and the variable tail.

Contract: ``to_storage`` casts a value column to its kind's storage type (int64, uint64,
float64, large_binary) and ``from_storage`` inverts it for fixed-width kinds;
``partial_numpy`` reads a partial column as numpy with nulls filled;
``sum_may_overflow`` is a cheap, conservative int64 overflow test; ``split_tail`` decodes
the variable tail (``uint32 length`` + bytes per field, ``TAIL_LEN``) of a state value.
Pure functions over Arrow/numpy values, used by ``aggstate.py`` and ``aggkernels.py``.
"""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

INT64_MAX = (1 << 63) - 1
TAIL_LEN = struct.Struct("<I")


def partial_numpy(col: pa.ChunkedArray | pa.Array, fill: int) -> np.ndarray:
    """A partial column as a numpy array, nulls replaced by ``fill``."""
    if col.null_count:
        col = pc.fill_null(col, pa.scalar(fill, col.type))
    return col.to_numpy()  # type: ignore[no-any-return]


def to_storage(arr: pa.Array, kind: str) -> pa.Array:
    """Cast a value column to its storage type (int64, uint64, float64, large_binary)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if kind == "i":
        if pa.types.is_temporal(t):
            if t.bit_width == 64:
                return arr.view(pa.int64())
            return arr.view(pa.int32()).cast(pa.int64())
        return arr if t == pa.int64() else arr.cast(pa.int64())
    if kind == "u":
        return arr if t == pa.uint64() else arr.cast(pa.uint64())
    if kind == "f":
        return arr if t == pa.float64() else arr.cast(pa.float64())
    if kind == "v":
        return arr if t == pa.large_binary() else arr.cast(pa.large_binary())
    return arr  # count only


def from_storage(arr: pa.Array, t: pa.DataType) -> pa.Array:
    """Inverse of ``to_storage`` for fixed-width kinds."""
    if pa.types.is_temporal(t):
        return arr.cast(pa.int32()).view(t) if t.bit_width == 32 else arr.view(t)
    return arr if arr.type == t else arr.cast(t)


def sum_may_overflow(arr: pa.Array) -> bool:
    """True unless ``rows * max|value|`` proves every int64 partial sum fits."""
    if len(arr) == arr.null_count:
        return False
    mm = pc.min_max(arr)
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    return bool(max(abs(lo), abs(hi)) * len(arr) > INT64_MAX)


def split_tail(tail: bytes, nvar: int) -> list[bytes]:
    """Split a variable tail into its ``nvar`` fields (empty tail: all empty)."""
    if not tail:
        return [b""] * nvar
    out = []
    pos = 0
    for _ in range(nvar):
        (n,) = TAIL_LEN.unpack_from(tail, pos)
        pos += 4
        out.append(tail[pos : pos + n])
        pos += n
    return out
