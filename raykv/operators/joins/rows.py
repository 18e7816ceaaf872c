"""Join state rows: a compact, vectorized row encoding and the per-state-key row blob.

Contract: a join keeps the rows it may still match as *blobs*, one engine value per state
key (a user key, a side, and for time-bucketed joins a bucket). :class:`RowCodec` turns
the stored columns of one side (every column but that side's key column) into row bytes
and back, and :class:`BlobSet` reads many blobs at once.

Blob layout (little-endian, no padding)::

    uint32 n                      rows in the blob
    n x int64 time                per row: the event time (or TTL stamp) the join uses
    n x uint8 flag                per row: 1 once a left row matched (left joins), else 0
    n x uint32 length             per row: bytes of its encoded row
    rows                          the encoded rows, back to back, in arrival order

Row layout: ``ceil(columns / 8)`` validity bytes (bit ``i`` set: column ``i`` is not
null), then every fixed-width column's value bytes (its Arrow storage: ints, floats,
temporals, decimals, fixed-size binaries; bool as one byte; null columns nothing), then
one ``uint32`` length
per variable-width column (strings, binaries), then those columns' bytes. Dictionary
columns are stored decoded and re-encoded on output.

Cost: encoding and decoding are numpy over whole batches (no Python per row); Python
work is per blob (header parse, slicing), not per row. Appending rows to a blob is a
bytes concatenation of headers and rows, without decoding.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_N = struct.Struct("<I")
_EMPTY_I64 = np.zeros(0, dtype=np.int64)

SUPPORTED_COLUMN_TYPES = (
    "ints, uints, floats, bool, decimals, date/time/timestamp/duration, fixed-size binary, "
    "string, binary (also large), null and dictionaries of these"
)


def _fixed_width(t: pa.DataType) -> int:
    """Bytes per value of a fixed-width storage type, 0 if ``t`` is not one."""
    if pa.types.is_boolean(t):
        return 1
    if pa.types.is_fixed_size_binary(t):
        return int(t.byte_width)
    if (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
            or (pa.types.is_temporal(t) and not pa.types.is_interval(t))):
        return int(t.bit_width) // 8
    return 0


def _var_storage(t: pa.DataType) -> pa.DataType | None:
    """The large type a variable-width column is stored as, ``None`` if not one."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.large_string()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pa.large_binary()
    return None


def check_column_type(t: pa.DataType, column: str, owner: str) -> None:
    """Raise ``TypeError`` naming ``column`` if a join cannot keep values of type ``t``."""
    v = t.value_type if pa.types.is_dictionary(t) else t
    if not (_fixed_width(v) or _var_storage(v) is not None or pa.types.is_null(v)):
        msg = (
            f"{owner}: column {column!r} has type {t}, which a join cannot keep in its "
            f"state; supported column types: {SUPPORTED_COLUMN_TYPES}. Cast or drop the "
            "column before the join"
        )
        raise TypeError(msg)


def _segments(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Positions ``starts[i] + 0..lens[i]-1`` for every ``i``, concatenated."""
    total = int(lens.sum())
    if not total:
        return _EMPTY_I64
    base = np.repeat(starts - np.cumsum(lens) + lens, lens)
    return base + np.arange(total, dtype=np.int64)


def _validity(arr: pa.Array) -> np.ndarray:
    if not arr.null_count:
        return np.ones(len(arr), dtype=bool)
    out: np.ndarray = arr.is_valid().to_numpy(zero_copy_only=False)
    return out


class RowCodec:
    """Encode a side's stored columns (``schema``) to row bytes and back (module docstring).

    Args:
        schema: the stored columns, in order (a side's input schema without its key).
        owner: the operator's name, for error messages.

    Raises:
        TypeError: a column type the encoding does not support (names the column).
    """

    def __init__(self, schema: pa.Schema, owner: str) -> None:
        self.schema = schema
        self._fixed: list[tuple[int, int]] = []  # (column index, width)
        self._var: list[int] = []
        for i, f in enumerate(schema):
            check_column_type(f.type, f.name, owner)
            v = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
            w = _fixed_width(v)
            if w:
                self._fixed.append((i, w))
            elif not pa.types.is_null(v):
                self._var.append(i)
        self._nbytes = (len(schema) + 7) // 8
        self._fixed_size = self._nbytes + sum(w for _, w in self._fixed) + 4 * len(self._var)

    # ------------------------------------------------------------------ encode

    def encode(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        """Encode every row of ``batch`` (exactly :attr:`schema`'s columns).

        Returns ``(data, lens)``: the rows back to back (uint8) and each row's length
        (uint32). Cost: O(bytes) numpy.
        """
        n = batch.num_rows
        cols = [batch.column(i) for i in range(batch.num_columns)]
        cols = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in cols]
        parts: list[np.ndarray] = []
        if self._nbytes:
            valid = np.stack([_validity(c) for c in cols], axis=1) if cols else None
            bits = np.packbits(valid, axis=1, bitorder="little") if valid is not None else None
            if bits is not None:
                parts.append(bits)
        for i, w in self._fixed:
            parts.append(_fixed_bytes(cols[i], w))
        var_lens: list[np.ndarray] = []
        var_data: list[tuple[np.ndarray, np.ndarray]] = []
        for i in self._var:
            starts, lens, data = _var_bytes(cols[i])
            var_lens.append(lens)
            var_data.append((starts, data))
            parts.append(lens.astype("<u4").view(np.uint8).reshape(n, 4))
        fixed = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.uint8)
        row_lens = np.full(n, self._fixed_size, dtype=np.int64)
        for lens in var_lens:
            row_lens += lens
        row_start = np.cumsum(row_lens) - row_lens
        out = np.empty(int(row_lens.sum()), dtype=np.uint8)
        if self._fixed_size:
            out[(row_start[:, None] + np.arange(self._fixed_size)).ravel()] = fixed.ravel()
        dest = row_start + self._fixed_size
        for lens, (starts, data) in zip(var_lens, var_data, strict=True):
            out[_segments(dest, lens)] = data[_segments(starts, lens)]
            dest = dest + lens
        return out, row_lens.astype(np.uint32)

    # ------------------------------------------------------------------ decode

    def decode(self, data: np.ndarray, starts: np.ndarray) -> pa.RecordBatch:
        """The rows starting at byte offsets ``starts`` of ``data`` as a batch of :attr:`schema`.

        Cost: O(bytes of the selected rows) numpy.
        """
        m = len(starts)
        fixed = data[(starts[:, None] + np.arange(self._fixed_size)).ravel()].reshape(
            m, self._fixed_size)
        ncols = len(self.schema)
        valid = np.unpackbits(fixed[:, : self._nbytes], axis=1, bitorder="little",
                              count=ncols).astype(bool) if ncols else np.ones((m, 0), bool)
        arrays: list[pa.Array] = [pa.nulls(m, f.type) for f in self.schema]  # null columns
        pos = self._nbytes
        for i, w in self._fixed:
            raw = np.ascontiguousarray(fixed[:, pos : pos + w])
            arrays[i] = _fixed_array(self.schema.field(i).type, raw, valid[:, i])
            pos += w
        dest = starts + self._fixed_size
        for i in self._var:
            lens = np.ascontiguousarray(fixed[:, pos : pos + 4]).view("<u4").ravel().astype(
                np.int64)
            pos += 4
            body = data[_segments(dest, lens)]
            dest = dest + lens
            arrays[i] = _var_array(self.schema.field(i).type, body, lens, valid[:, i])
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def _fixed_bytes(col: pa.Array, w: int) -> np.ndarray:
    n = len(col)
    if pa.types.is_boolean(col.type):
        vals: np.ndarray = pc.fill_null(col, False).to_numpy(zero_copy_only=False)
        return vals.astype(np.uint8).reshape(n, 1)
    buf = col.buffers()[1]
    raw = np.frombuffer(buf, dtype=np.uint8) if buf is not None else np.zeros(0, np.uint8)
    return raw[col.offset * w : (col.offset + n) * w].reshape(n, w)


def _var_bytes(col: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(starts, lens, data)`` of a string/binary column (nulls: length 0)."""
    target = _var_storage(col.type)
    assert target is not None
    if col.type != target:
        col = col.cast(target)
    n = len(col)
    offsets_buf, data_buf = col.buffers()[1], col.buffers()[2]
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[col.offset : col.offset + n + 1]
    data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
            else np.zeros(0, np.uint8))
    starts = offsets[:-1].astype(np.int64)
    lens = np.diff(offsets).astype(np.int64)
    if col.null_count:
        lens = np.where(_validity(col), lens, 0)
    return starts, lens, data


def _null_buffer(valid: np.ndarray) -> pa.Buffer | None:
    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())


def _fixed_array(t: pa.DataType, raw: np.ndarray, valid: np.ndarray) -> pa.Array:
    v = t.value_type if pa.types.is_dictionary(t) else t
    m = len(valid)
    if pa.types.is_boolean(v):
        arr = pa.array(raw.ravel() != 0, pa.bool_(), mask=None if valid.all() else ~valid)
    else:
        arr = pa.Array.from_buffers(v, m, [_null_buffer(valid), pa.py_buffer(raw.tobytes())])
    return arr.dictionary_encode().cast(t) if v is not t else arr


def _var_array(t: pa.DataType, body: np.ndarray, lens: np.ndarray, valid: np.ndarray
               ) -> pa.Array:
    v = t.value_type if pa.types.is_dictionary(t) else t
    storage = _var_storage(v)
    assert storage is not None
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    arr = pa.Array.from_buffers(storage, len(lens), [
        _null_buffer(valid), pa.py_buffer(offsets.tobytes()), pa.py_buffer(body.tobytes())])
    if storage != v:
        arr = arr.cast(v)
    return arr.dictionary_encode().cast(t) if v is not t else arr


# ---------------------------------------------------------------------------- blobs


def make_blob(times: np.ndarray, flags: np.ndarray, lens: np.ndarray, rows: bytes) -> bytes:
    """A blob of ``len(times)`` rows (module docstring); ``b""`` (a delete) when empty."""
    n = len(times)
    if not n:
        return b""
    return b"".join((_N.pack(n), times.astype("<i8").tobytes(), flags.astype(np.uint8).tobytes(),
                     lens.astype("<u4").tobytes(), rows))


def blob_times(raw: bytes) -> np.ndarray:
    """The per-row times of one stored blob (``b""``: none). Cost: one numpy view."""
    if not raw:
        return _EMPTY_I64
    (n,) = _N.unpack_from(raw, 0)
    return np.frombuffer(raw, "<i8", n, _N.size).astype(np.int64)


class BlobSet:
    """Many blobs parsed at once, their rows numbered globally (for vectorized matching).

    Args:
        raws: stored values (``b""`` for none).
        groups: per blob, the group (e.g. key id) its rows belong to.

    Per global row (blob after blob, each in its order): ``group``, ``blob``, ``times``,
    ``flags``, ``lens`` and ``starts`` (offset of the encoded row in ``buf``, the blobs
    concatenated). Per blob: ``counts`` and ``first`` (its first global row). Cost:
    one ``bytes.join`` and O(rows) numpy; no Python per blob beyond its length.
    """

    def __init__(self, raws: Sequence[bytes], groups: Sequence[int] | np.ndarray) -> None:
        nb = len(raws)
        sizes = np.fromiter(map(len, raws), dtype=np.int64, count=nb)
        self.buf = np.frombuffer(b"".join(raws), dtype=np.uint8)
        off = np.cumsum(sizes) - sizes
        n = np.zeros(nb, dtype=np.int64)
        full = np.flatnonzero(sizes)
        if len(full):
            head = self.buf[(off[full, None] + np.arange(4)).ravel()]
            n[full] = head.view("<u4").astype(np.int64)
        self.counts = n
        self.first = np.cumsum(n) - n
        total = int(n.sum())
        self.blob = np.repeat(np.arange(nb, dtype=np.int64), n)
        self.group = np.asarray(groups, dtype=np.int64)[self.blob] if nb else _EMPTY_I64
        i = np.arange(total, dtype=np.int64) - self.first[self.blob]
        base = off[self.blob] + 4
        nn = n[self.blob]
        buf = self.buf
        self.times = buf[((base + 8 * i)[:, None] + np.arange(8)).ravel()].view("<i8").astype(
            np.int64)
        self.flags = buf[base + 8 * nn + i]
        self.lens = buf[((base + 9 * nn + 4 * i)[:, None] + np.arange(4)).ravel()].view(
            "<u4").astype(np.int64)
        cum = np.cumsum(self.lens) - self.lens
        within = cum - cum[self.first[self.blob]] if total else _EMPTY_I64
        self.starts = base + 13 * nn + within

    def __len__(self) -> int:
        return len(self.times)

    def decode(self, codec: RowCodec, rows: np.ndarray) -> pa.RecordBatch:
        """The global ``rows`` (any order, repeats allowed) decoded with ``codec``."""
        if not len(rows):
            return pa.RecordBatch.from_pylist([], schema=codec.schema)
        return codec.decode(self.buf, self.starts[rows])

    def rewrite(self, keep: np.ndarray, flags: np.ndarray | None = None) -> list[bytes | None]:
        """Per blob: its new value with rows ``keep`` (global mask) and ``flags``.

        ``None`` for a blob that does not change (all rows kept, flags equal); ``b""``
        for one left empty. Cost: O(bytes kept) numpy, one slice per blob.
        """
        nb = len(self.counts)
        flags = self.flags if flags is None else flags
        sel = np.flatnonzero(keep)
        counts = np.bincount(self.blob[sel], minlength=nb)
        changed = counts != self.counts
        if flags is not self.flags:
            changed |= np.bincount(self.blob, weights=flags != self.flags, minlength=nb) > 0
        out = build_blobs(counts, self.times[sel], flags[sel], self.lens[sel], self.buf,
                          self.starts[sel])
        return [v if c else None for v, c in zip(out, changed.tolist(), strict=True)]

    def append(self, group: np.ndarray, times: np.ndarray, flags: np.ndarray,
               data: np.ndarray, lens: np.ndarray, keep: np.ndarray | None = None
               ) -> list[bytes]:
        """Per blob: its value with new rows appended (row ``r`` to blob ``group[r]``).

        ``data``/``lens`` are the new rows' encodings (``RowCodec.encode``), ``keep`` an
        optional mask over the old rows then the new ones (the rest are dropped). Old
        rows first, then the new ones in their order. Cost: O(bytes) numpy.
        """
        nb = len(self.counts)
        starts = np.cumsum(lens.astype(np.int64)) - lens + len(self.buf)
        all_group = np.concatenate([self.blob, group])
        order = np.argsort(all_group, kind="stable")
        if keep is not None:
            order = order[keep[order]]
        buf = np.concatenate([self.buf, data]) if len(data) else self.buf
        times_all = np.concatenate([self.times, times])
        flags_all = np.concatenate([self.flags, flags.astype(np.uint8)])
        lens_all = np.concatenate([self.lens, lens.astype(np.int64)])
        starts_all = np.concatenate([self.starts, starts])
        counts = np.bincount(all_group[order], minlength=nb)
        return build_blobs(counts, times_all[order], flags_all[order], lens_all[order], buf,
                           starts_all[order])


def build_blobs(counts: np.ndarray, times: np.ndarray, flags: np.ndarray, lens: np.ndarray,
                buf: np.ndarray, starts: np.ndarray) -> list[bytes]:
    """Blobs of ``counts[b]`` rows each (rows given blob after blob, in order).

    Row ``r`` has ``times[r]``, ``flags[r]`` and its encoding at ``buf[starts[r]:][:lens[r]]``.
    Returns one value per blob (``b""`` for an empty one). Cost: O(bytes) numpy and one
    slice per blob.
    """
    nb = len(counts)
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    lens = lens.astype(np.int64)
    blob = np.repeat(np.arange(nb, dtype=np.int64), counts)
    body = np.bincount(blob, weights=lens, minlength=nb).astype(np.int64)
    size = np.where(counts > 0, 4 + 13 * counts + body, 0)
    off = np.cumsum(size) - size
    out = np.empty(int(size.sum()), dtype=np.uint8)
    full = np.flatnonzero(counts)
    out[(off[full, None] + np.arange(4)).ravel()] = counts[full].astype("<u4").view(np.uint8)
    first = np.cumsum(counts) - counts
    i = np.arange(total, dtype=np.int64) - first[blob]
    base = off[blob] + 4
    n = counts[blob]
    out[((base + 8 * i)[:, None] + np.arange(8)).ravel()] = times.astype("<i8").view(np.uint8)
    out[base + 8 * n + i] = flags
    out[((base + 9 * n + 4 * i)[:, None] + np.arange(4)).ravel()] = lens.astype("<u4").view(
        np.uint8)
    cum = np.cumsum(lens) - lens
    within = cum - cum[first[blob]] if total else _EMPTY_I64
    out[_segments(base + 13 * n + within, lens)] = buf[_segments(starts, lens)]
    raw = out.tobytes()
    return [raw[a : a + z] for a, z in zip(off.tolist(), size.tolist(), strict=True)]


#: :func:`group_min` of a group without rows.
NO_ROWS = np.iinfo(np.int64).max


def group_min(groups: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per group ``0..n-1`` the smallest of its ``values`` (:data:`NO_ROWS` if none)."""
    out = np.full(n, NO_ROWS, dtype=np.int64)
    np.minimum.at(out, groups, values)
    return out


def latest_per_group(groups: np.ndarray, times: np.ndarray, eligible: np.ndarray
                     ) -> np.ndarray:
    """Mask of, per group, the eligible row with the largest time (ties: the last row)."""
    out = np.zeros(len(groups), dtype=bool)
    pos = np.flatnonzero(eligible)
    if not len(pos):
        return out
    order = pos[np.lexsort((pos, times[pos], groups[pos]))]
    g = groups[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = g[1:] != g[:-1]
    out[order[last]] = True
    return out
