r"""Join state keys and bookkeeping records, and the in-memory index of expiring records.

Contract: a join's state key is ``encode_keys(key) + side byte`` (:data:`SIDES`: 0 left,
1 right), plus for time-bucketed joins an 8-byte bucket (:func:`bucket_bytes`: int64
big-endian, sign bit flipped, so byte order is numeric order). The watermark record
(``WATERMARK_KEY``) is :data:`WM_RECORD`: the epoch watermark (:data:`NONE`: none yet)
and the late count. :class:`EarliestIndex` keeps, per record, the earliest time of its
rows in memory (rebuilt from the engine when a logic is built). The metadata record
(``META_KEY``, :func:`encode_meta`) is JSON: format, operator, output key, input keys,
state layout and each side's schema (base64 Arrow IPC, ``null`` until known).
"""

from __future__ import annotations

import base64
import heapq
import json
import struct
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from raykv.operators.base import META_FORMAT, KeyedOperator
from raykv.operators.joins.rows import NO_ROWS, group_min

SIDES = (b"\x00", b"\x01")
SIDE_NAMES = ("left", "right")
#: The watermark record: epoch watermark (NONE: none yet), late events (little-endian).
WM_RECORD = struct.Struct("<qq")
NONE = -(1 << 63)
_BUCKET_FLIP = np.uint64(1 << 63)


def bucket_bytes(buckets: np.ndarray) -> list[bytes]:
    """int64 buckets as 8 big-endian bytes with the sign bit flipped (order-preserving)."""
    words = (buckets.astype(np.int64).view(np.uint64) ^ _BUCKET_FLIP).astype(">u8")
    return np.frombuffer(words.tobytes(), dtype="V8").tolist()  # type: ignore[no-any-return]


def bucket_of(raw: bytes) -> int:
    """Inverse of :func:`bucket_bytes` for one 8-byte suffix."""
    return int.from_bytes(raw, "big") - (1 << 63)


class EarliestIndex:
    """In-memory index: per state record, the earliest time (stamp) of its rows.

    A heap of ``(earliest, key)`` with lazy deletion; rebuilt from the engine when a
    logic is built. Cost: O(log n) per change, O(due log n) per :meth:`pop_due`.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, bytes]] = []
        self.earliest: dict[bytes, int] = {}

    def track(self, key: bytes, low: int | None) -> None:
        """Record ``key``'s earliest time now (``None``: it holds no rows)."""
        if low is None:
            self.earliest.pop(key, None)
        elif self.earliest.get(key) != low:
            self.earliest[key] = low
            heapq.heappush(self._heap, (low, key))

    def track_groups(self, keys: list[bytes], groups: np.ndarray, times: np.ndarray,
                     before: np.ndarray | None = None) -> None:
        """Track each record of ``keys``: its earliest time among its rows' ``times``.

        ``groups``: each row's record (an index into ``keys``); ``before``: the records'
        earliest times as tracked so far (only changes are applied). Cost: O(rows) NumPy
        plus O(log n) per changed record.
        """
        low = group_min(groups, times, len(keys))
        todo = range(len(keys)) if before is None else np.flatnonzero(low != before).tolist()
        for i in todo:
            v = int(low[i])
            self.track(keys[i], None if v == NO_ROWS else v)

    def pop_due(self, limit: int | None) -> list[bytes]:
        """Remove and return (sorted) the keys whose earliest time is ``< limit``.

        ``None``: all keys. The caller tracks them again with what stays.
        """
        if limit is None:
            due = sorted(self.earliest)
            self.earliest.clear()
            self._heap.clear()
            return due
        out: set[bytes] = set()
        while self._heap and self._heap[0][0] < limit:
            low, key = heapq.heappop(self._heap)
            if self.earliest.get(key) == low:
                del self.earliest[key]
                out.add(key)
        return sorted(out)


def encode_meta(op: KeyedOperator, layout: str, schemas: Sequence[pa.Schema | None]) -> bytes:
    """The metadata record of a join's state (module docstring)."""
    encoded = [None if s is None else base64.b64encode(s.serialize().to_pybytes()).decode()
               for s in schemas]
    meta = {"format": META_FORMAT, "operator": type(op).__name__, "key": op.key,
            "keys": list(op.input_keys()), "layout": layout, "schemas": encoded}
    return json.dumps(meta, sort_keys=True).encode()


def decode_meta(raw: bytes, op: KeyedOperator, where: str
                ) -> tuple[str, list[pa.Schema | None]]:
    """``(layout, schemas)`` of a stored metadata record written for ``op``.

    Raises:
        ValueError: unreadable, or written by another operator or keys (names ``where``).
    """
    try:
        meta = json.loads(raw)
        schemas = [None if s is None else pa.ipc.read_schema(pa.py_buffer(base64.b64decode(s)))
                   for s in meta["schemas"]]
    except (ValueError, KeyError, TypeError, pa.ArrowException) as err:
        msg = f"{where}: unreadable operator metadata ({err}); restore another epoch"
        raise ValueError(msg) from err
    if meta.get("format") != META_FORMAT:
        msg = f"{where}: operator metadata format {meta.get('format')}, expected {META_FORMAT}"
        raise ValueError(msg)
    if (meta.get("operator") != type(op).__name__ or meta.get("key") != op.key
            or meta.get("keys") != list(op.input_keys())):
        msg = (f"{where} was written by {meta.get('operator')}(key={meta.get('key')!r}, "
               f"keys={meta.get('keys')}), not by {op.name or type(op).__name__}; give each "
               "stage its own engine directory")
        raise ValueError(msg)
    return str(meta.get("layout")), schemas
