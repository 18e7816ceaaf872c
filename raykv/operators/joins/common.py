r"""The logic base of the joins: input checks, output schema, watermark, emission.

The config base is ``config.py``; state keys and records ``state.py``.

Contract:

* :class:`JoinLogic` is the logic base. Per side, the first batch fixes the side's schema
  (stored with the state under ``META_KEY``, so it holds after a restart); later batches
  must have the same columns. It checks each batch (a ``RecordBatch``, the side's key
  column present, non-null and of the other side's key type, the time column present,
  non-null, a signed integer or timestamp of the other side's time type), keeps the
  *epoch watermark* (the watermark of the last ``on_barrier``, with the late count,
  under ``WATERMARK_KEY``), and collects each epoch's output.
* **Output schema**: the key column named ``key`` (the left key's type, dictionaries
  decoded), then the join's extra columns (``WindowJoin``: ``window_start``,
  ``window_end``), then the left columns other than the left key, then the right columns
  other than the right key. A right column whose name is already taken gets the suffix
  ``_right``; a left column named like the key or an extra column, or a right column
  whose suffixed name is still taken, is refused (``ValueError``: rename it upstream).
* **State keys**: ``encode_keys(key) + side byte (0 left, 1 right) [+ 8-byte bucket]``,
  so :meth:`KeyedOperator.routing_key` (the state key minus ``key_suffix_len`` bytes) is
  the encoded user key both sides were partitioned by; values are row blobs
  (``rows.py``). The suffix makes every state key differ from the 3-byte reserved keys.

Watermarks: ``advance_watermark(wm)`` only records ``wm``; ``on_barrier`` applies it
(emits what it closes, deletes what can no longer match) and from then on it is the
epoch watermark against which rows are late. Between barriers the watermark is
constant, so the result does not depend on how the two sides interleave within an
epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raykv.engines.base import KVStore
from raykv.keys import canonical_key_array, check_key_type, decode_keys, encode_keys, value_type
from raykv.operators.base import (
    META_KEY,
    META_KEYS,
    WATERMARK_KEY,
    OperatorLogic,
)
from raykv.operators.joins.config import JoinOperator
from raykv.operators.joins.rows import BlobSet, RowCodec
from raykv.operators.joins.state import NONE, SIDE_NAMES, WM_RECORD, decode_meta, encode_meta
from raykv.operators.schemas import same_columns, schema_mismatch
from raykv.operators.watermark import int64_times

RIGHT_SUFFIX = "_right"
#: Event times must lie strictly within +-TIME_LIMIT (room for bound arithmetic).
TIME_LIMIT = 1 << 62


@dataclass
class KeyedBatch:
    """A batch's distinct keys: ``uniq`` (canonical values), ``ids`` per row, ``enc``."""

    uniq: pa.Array
    ids: np.ndarray
    enc: list[bytes]


class JoinLogic(OperatorLogic):
    """Logic base of the joins (see the module docstring).

    Subclasses implement :meth:`_apply` (a checked, non-empty batch of one side),
    :meth:`_close` (apply a new watermark, ``None``: end of input) and :meth:`_index`
    (rebuild in-memory indexes from one stored pair at build).
    """

    #: Extra output columns after the key: ``[(name, type)]`` (set once schemas are known).
    extra_fields: list[pa.Field]

    def __init__(self, op: JoinOperator, store: KVStore) -> None:
        self.op = op
        self.store = store
        self.name = op.name or f"{type(op).__name__}(key={op.key!r})"
        self.input_keys = op.input_keys()
        self.time_names = op.time_columns()
        self.schemas: list[pa.Schema | None] = [None, None]
        self.codecs: list[RowCodec | None] = [None, None]
        self.extra_fields = []
        self._pending: dict[bytes, bytes] = {}
        self._late_pending = 0
        self._out: list[pa.RecordBatch] = []
        self._out_schema: pa.Schema | None = None
        self._right_names: list[str] = []
        #: The watermark of the last barrier (``None``: none yet); rows are late against it.
        self.watermark: int | None = None
        self._next_wm: int | None = None
        #: Rows dropped as late (behind the epoch watermark on arrival); survives restore.
        self.late_events = 0
        self._finished = False
        raw = store.get(META_KEY)
        if raw:
            self._load_meta(raw)
        raw = store.get(WATERMARK_KEY)
        if raw:
            wm, self.late_events = WM_RECORD.unpack(raw)
            self.watermark = None if wm == NONE else wm
            self._next_wm = self.watermark
        if any(s is not None for s in self.schemas):
            for k, v in store.items():
                if k not in META_KEYS:
                    self._index(k, v)

    # ------------------------------------------------------------------ hooks

    def _layout(self) -> str:
        """A string naming the state encoding (stored, compared on reopen)."""
        return type(self.op).__name__

    def _setup_times(self, t: pa.DataType) -> None:
        """Convert spans to units of the time type ``t`` (both sides have it)."""

    def _apply(self, batch: pa.RecordBatch, side: int) -> None:
        raise NotImplementedError

    def _close(self, wm: int | None) -> None:
        raise NotImplementedError

    def _index(self, state_key: bytes, value: bytes) -> None:
        """Rebuild in-memory indexes from one stored pair (called at build)."""

    # ------------------------------------------------------------------ protocol

    def process(self, batch: pa.RecordBatch, side: int = 0) -> None:
        """Check ``batch`` of input ``side`` (0 left, 1 right) and apply it.

        Raises:
            TypeError: not a ``RecordBatch``, a bad side, or a column of an unusable type.
            ValueError: a missing key/time column, a null key or time, another schema
                than the side's first batch, key or time types that differ between the
                sides, clashing output names. State is unchanged.
        """
        if side not in (0, 1):
            msg = f"{self.name}: side must be 0 (left) or 1 (right), got {side!r}"
            raise TypeError(msg)
        adopted = self._check(batch, side)
        try:
            if batch.num_rows:
                self._apply(batch, side)
            elif self._pending:
                self._write({})
        except BaseException:
            if adopted:
                self._forget(side)
            self._pending.pop(WATERMARK_KEY, None)
            self._late_pending = 0
            raise

    def advance_watermark(self, watermark: int | None) -> None:
        """The shard's watermark (time-column units), applied at the next ``on_barrier``.

        A watermark behind the current one is ignored. Cost: O(1).
        """
        if watermark is None:
            return
        if type(watermark) is not int and not isinstance(watermark, np.integer):
            msg = f"a watermark must be an int (time-column units), got {watermark!r}"
            raise TypeError(msg)
        if self._next_wm is None or watermark > self._next_wm:
            self._next_wm = int(watermark)

    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        """The epoch's output: the rows found since the last barrier, then what closes.

        What the new watermark closes: expired left rows of left joins, windows, due
        lookups.
        """
        wm = self._next_wm
        if wm is not None and (self.watermark is None or wm > self.watermark) \
                and not self._finished:
            self._close(wm)
            self.watermark = wm
            self.store.set(WATERMARK_KEY, self._wm_record())
        return self._take_output()

    def finish(self) -> pa.RecordBatch | None:
        """End of input (the watermark is +infinity): emit everything still pending."""
        if not self._finished:
            self._close(None)
            self._finished = True
        return self._take_output()

    def output_schema(self) -> pa.Schema | None:
        """Key, extra columns, left then right columns; ``None`` until both sides are known.

        At ``finish`` with a right side never seen: key, extras and left columns only.
        """
        return self._out_schema

    # ------------------------------------------------------------------ checks

    def _check(self, batch: pa.RecordBatch, side: int) -> bool:
        """Validate ``batch``; adopt its schema if it is the side's first.

        Returns whether it adopted (so a failing apply can forget it).
        """
        if not isinstance(batch, pa.RecordBatch):
            msg = (f"{self.name} expects a pyarrow.RecordBatch, got {type(batch).__name__}"
                   + ("; use table.to_batches()" if isinstance(batch, pa.Table) else ""))
            raise TypeError(msg)
        schema = batch.schema
        where = f"the {SIDE_NAMES[side]} input of {self.name}"
        key = self.input_keys[side]
        tname = self.time_names[side]
        for col, what in ((key, "key column"), (tname, "time column")):
            if col is not None and col not in schema.names:
                msg = f"{what} {col!r} is missing from {where}; its columns are {schema.names}"
                raise ValueError(msg)
        adopted = False
        if self.schemas[side] is None:
            self._adopt(schema, side)
            adopted = True
        elif not same_columns(schema, self.schemas[side]):
            msg = f"{where}: {schema_mismatch(self.schemas[side], schema)}"
            raise ValueError(msg)
        for col, what in ((key, "key column"), (tname, "time column")):
            if col is None:
                continue
            arr = batch.column(col)
            if arr.null_count:
                row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
                if adopted:
                    self._forget(side)
                msg = (f"{what} {col!r} of {where} contains a null at row {row} "
                       f"({arr.null_count} nulls); filter or fill them before the join")
                raise ValueError(msg)
        return adopted

    def _adopt(self, schema: pa.Schema, side: int, *, stored: bool = False) -> None:
        where = f"the {SIDE_NAMES[side]} input"
        key = self.input_keys[side]
        kt = schema.field(key).type
        check_key_type(kt, key)
        other = self.schemas[1 - side]
        if other is not None:
            okt = other.field(self.input_keys[1 - side]).type
            if value_type(okt) != value_type(kt):
                msg = (f"{self.name}: key column {key!r} of {where} is {kt} but key column "
                       f"{self.input_keys[1 - side]!r} of the {SIDE_NAMES[1 - side]} input is "
                       f"{okt}; join keys must have one type: cast one side first")
                raise ValueError(msg)
        tname = self.time_names[side]
        if tname is not None:
            t = schema.field(tname).type
            if not (pa.types.is_signed_integer(t) or pa.types.is_timestamp(t)):
                msg = (f"{self.name}: time column {tname!r} of {where} must be a signed "
                       f"integer or timestamp, it is {t}")
                raise TypeError(msg)
            if other is not None:
                ot = other.field(self.time_names[1 - side] or "").type
                if ot != t:
                    msg = (f"{self.name}: time column {tname!r} of {where} is {t} but the "
                           f"{SIDE_NAMES[1 - side]} input's is {ot}; cast one side so that "
                           "both have one type and unit")
                    raise ValueError(msg)
            else:
                self._setup_times(t)
        stored_schema = pa.schema([f for f in schema if f.name != key])
        codec = RowCodec(stored_schema, self.name)
        self.schemas[side] = schema
        self.codecs[side] = codec
        try:
            self._make_out_schema(final=False)
        except BaseException:
            self.schemas[side] = None
            self.codecs[side] = None
            raise
        if not stored:
            self._pending[META_KEY] = self._meta_value()

    def _forget(self, side: int) -> None:
        self.schemas[side] = None
        self.codecs[side] = None
        self._out_schema = None
        self._pending.pop(META_KEY, None)

    def _make_out_schema(self, *, final: bool) -> None:
        """Build the output schema once both sides are known (``final``: left alone)."""
        left, right = self.schemas
        if left is None:
            return
        lk = self.input_keys[0]
        key_t = value_type(left.field(lk).type)
        fields = [pa.field(self.op.key, key_t), *self.extra_fields]
        taken = {f.name for f in fields}
        for f in left:
            if f.name == lk:
                continue
            if f.name in taken:
                msg = (f"{self.name}: left column {f.name!r} has the name of an output column "
                       f"({sorted(taken)}); rename it before the join")
                raise ValueError(msg)
            fields.append(f)
            taken.add(f.name)
        if right is None and not final:
            return  # the left columns are checked; the output waits for the right side
        names: list[str] = []
        if right is not None:
            for f in right:
                if f.name == self.input_keys[1]:
                    continue
                name = f.name if f.name not in taken else f.name + RIGHT_SUFFIX
                if name in taken:
                    msg = (f"{self.name}: right column {f.name!r} clashes with an output "
                           f"column, and so does {name!r}; rename it before the join")
                    raise ValueError(msg)
                fields.append(pa.field(name, f.type))
                taken.add(name)
                names.append(name)
        self._right_names = names
        self._out_schema = pa.schema(fields)

    # ------------------------------------------------------------------ metadata

    def _meta_value(self) -> bytes:
        return encode_meta(self.op, self._layout(), self.schemas)

    def _load_meta(self, raw: bytes) -> None:
        where = f"state in {self.store.data_dir}"
        layout, schemas = decode_meta(raw, self.op, where)
        for side, schema in enumerate(schemas):
            if schema is not None:
                self._adopt(schema, side, stored=True)
        if layout != self._layout():
            msg = (f"{where} was written with state layout {layout!r}, but "
                   f"{self.name} uses {self._layout()!r}: its configuration changed; keep "
                   "the old configuration or start from empty state")
            raise ValueError(msg)

    def _wm_record(self) -> bytes:
        return WM_RECORD.pack(NONE if self.watermark is None else self.watermark, self.late_events)

    # ------------------------------------------------------------------ helpers

    def _keys(self, batch: pa.RecordBatch, side: int, suffix_len: int) -> KeyedBatch:
        """Distinct canonical keys of ``batch``, each row's key id, their encodings.

        Raises ``ValueError`` for a key longer than the engine allows with the suffix.
        """
        col = canonical_key_array(batch.column(self.input_keys[side]))
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        uniq = pc.unique(col)
        ids = pc.index_in(col, value_set=uniq).to_numpy(zero_copy_only=False).astype(np.int64)
        enc = encode_keys(uniq, self.input_keys[side])
        limit = self.store.max_key_len - suffix_len
        if enc and max(map(len, enc)) > limit:
            i = max(range(len(enc)), key=lambda j: len(enc[j]))
            msg = (f"key {uniq[i].as_py()!r} of the {SIDE_NAMES[side]} input of {self.name} "
                   f"is {len(enc[i]) + suffix_len} bytes as a state key, more than the "
                   f"engine's max_key_len={self.store.max_key_len}; shorten or hash the keys")
            raise ValueError(msg)
        return KeyedBatch(uniq, ids, enc)

    def _times(self, batch: pa.RecordBatch, side: int) -> np.ndarray:
        """The side's time column as int64 (``ValueError`` outside +-2**62)."""
        name = self.time_names[side]
        assert name is not None
        t = int64_times(batch.column(name))
        if len(t) and (t.min() <= -TIME_LIMIT or t.max() >= TIME_LIMIT):
            row = int(np.flatnonzero((t <= -TIME_LIMIT) | (t >= TIME_LIMIT))[0])
            msg = (f"{self.name}: time column {name!r} of the {SIDE_NAMES[side]} input holds "
                   f"{int(t[row])} at row {row}, outside the supported range (-2**62, 2**62)")
            raise ValueError(msg)
        return t

    def codec(self, side: int) -> RowCodec:
        """The row codec of ``side`` (its schema must be known)."""
        codec = self.codecs[side]
        assert codec is not None
        return codec

    def _stored(self, batch: pa.RecordBatch, side: int) -> pa.RecordBatch:
        """The columns of ``batch`` a side keeps (all but its key column)."""
        codec = self.codecs[side]
        assert codec is not None
        return batch.select(codec.schema.names)

    def _key_values(self, enc: Sequence[bytes]) -> pa.Array:
        """Output key values of encoded user keys."""
        return decode_keys(list(enc), self._key_type())

    def _emit_pairs(self, keys: pa.Array, stored: pa.RecordBatch, new_i: np.ndarray,
                    other: BlobSet, old_j: np.ndarray, side: int) -> None:
        """Queue pairs: ``stored[new_i[k]]`` (side's batch) with ``other``'s row ``old_j[k]``."""
        if len(new_i):
            mine = stored.take(pa.array(new_i))
            theirs = other.decode(self.codec(1 - side), old_j)
            self._emit(keys, *((mine, theirs) if side == 0 else (theirs, mine)))

    def _emit(self, keys: pa.Array, left: pa.RecordBatch | None,
              right: pa.RecordBatch | None, extras: Sequence[pa.Array] = ()) -> None:
        """Queue output rows (``right``/``left`` ``None``: padded with nulls)."""
        n = len(keys)
        if not n:
            return
        if self._out_schema is None:
            self._make_out_schema(final=True)
        schema = self._out_schema
        assert schema is not None
        cols: list[pa.Array] = [keys, *extras]
        for side, part in ((0, left), (1, right)):
            codec = self.codecs[side]
            if codec is None:
                continue
            if part is None:
                cols += [pa.nulls(n, f.type) for f in codec.schema]
            else:
                cols += [part.column(i) for i in range(part.num_columns)]
        keys_t = schema.field(0).type
        if cols[0].type != keys_t:
            cols[0] = cols[0].cast(keys_t)
        self._out.append(pa.RecordBatch.from_arrays(cols, schema=schema))

    def export_state(self) -> pa.RecordBatch | None:
        """Every row the state holds, changing nothing (``raykv checkpoints export``).

        Columns: ``key``, ``_side`` (``"left"``/``"right"``), ``_time`` (the row's event
        time, or its TTL stamp for ``Join``), then the left and right columns as in the
        output (the other side's null). Rows sorted by state key. Cost: one ``items()``
        pass; the whole state in memory.
        """
        pairs = sorted((k, v) for k, v in self.store.items() if k not in META_KEYS)
        if not pairs or (self.schemas[0] is None and self.schemas[1] is None):
            return None
        cut = self.op.key_suffix_len
        known = [i for i in (0, 1) if self.codecs[i] is not None]
        fields = [pa.field(self.op.key, self._key_type()), pa.field("_side", pa.string()),
                  pa.field("_time", pa.int64())]
        for side in known:
            fields += [pa.field(n, f.type) for n, f in zip(
                self._side_names(side), self.codec(side).schema, strict=True)]
        schema = pa.schema(fields)
        parts = []
        for side in known:
            mine = [(k, v) for k, v in pairs if k[-cut] == side]
            if not mine:
                continue
            rows = BlobSet([v for _, v in mine], range(len(mine)))
            enc = [mine[g][0][:-cut] for g in rows.group.tolist()]
            n = len(rows)
            cols = [self._key_values(enc), pa.array([SIDE_NAMES[side]] * n, pa.string()),
                    pa.array(rows.times, pa.int64())]
            for other in known:
                if other == side:
                    part = rows.decode(self.codec(side), np.arange(n))
                    cols += [part.column(i) for i in range(part.num_columns)]
                else:
                    cols += [pa.nulls(n, f.type) for f in self.codec(other).schema]
            parts.append(pa.RecordBatch.from_arrays(cols, schema=schema))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else pa.concat_batches(parts)

    def _key_type(self) -> pa.DataType:
        side = 0 if self.schemas[0] is not None else 1
        schema = self.schemas[side]
        assert schema is not None
        return value_type(schema.field(self.input_keys[side]).type)

    def _side_names(self, side: int) -> list[str]:
        """The output names of a side's stored columns."""
        names: list[str] = list(self.codec(side).schema.names)
        if side == 0 or self.schemas[0] is None:
            return names
        if self._out_schema is None:
            self._make_out_schema(final=True)
        return self._right_names

    def _take_output(self) -> pa.RecordBatch | None:
        out, self._out = self._out, []
        if not out:
            return None
        return out[0] if len(out) == 1 else pa.concat_batches(out)

    def _write(self, pairs: dict[bytes, bytes]) -> None:
        """One ``multi_set`` of ``pairs`` plus the pending metadata."""
        if self._pending:
            pairs.update(self._pending)
        if pairs:
            self.store.multi_set(pairs)
        self._pending = {}
        self.late_events += self._late_pending
        self._late_pending = 0

    def _late(self, n: int) -> None:
        """Count ``n`` late rows (written with the batch's ``multi_set``)."""
        self._late_pending = n
        if n:
            self._pending[WATERMARK_KEY] = WM_RECORD.pack(
                NONE if self.watermark is None else self.watermark, self.late_events + n)
