"""The core keyed-state operator: per-key state in a ``KVStore``, changelog, finish.

Every keyed operator is a thin layer over :class:`KeyedStateLogic`, which owns what all
of them share, so it is written and tested once:

* input checks: a ``RecordBatch`` with the key column, the same schema as the first batch
  (also across restarts: the schema is stored with the state), no null keys, keys that
  fit the engine's ``max_key_len``; an error names the column/value and changes nothing;
* state keys: ``encode_keys`` of the key (plus a fixed-size suffix for windows), with the
  empty string/binary key mapped to a reserved key (engines need 1+ byte keys);
* writes: at most one ``multi_set`` per batch (state + operator metadata), which the
  engine validates as a whole before applying, so a failed batch leaves no trace
  (Aggregate buffers its vectorized partials and writes once per fold: at a barrier,
  at ``finish``/``export_state``, or when its buffer is full; see ``aggregate.py``);
* the changed-key set and emission: ``on_barrier`` returns the new values of the keys
  whose state changed since the previous barrier (one ``multi_get``), ``finish`` the
  values of all keys (one ``items()`` pass), both sorted by encoded key;
  ``finish_chunks`` streams the final values in bounded chunks straight from the
  engine's iterator (what the runtime calls at the end of bounded input: memory bounded
  by the chunk, not by the state).

Layers implement ``_setup`` (input schema known), ``_layout`` (a string naming the state
encoding, stored and compared on reopen), ``_process`` and ``_render`` (state values to
output columns). The config and logic protocol (``KeyedOperator``, ``OperatorLogic``) and
the reserved keys are in ``base.py``; layers over codec-encoded Python state subclass
``PyStateLogic`` (``pystate.py``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from itertools import compress

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.keys import (
    canonical_key_array,
    decode_keys,
    decode_words,
    encode_keys,
    is_binary_like,
    is_fixed_width,
    value_type,
)
from raykv.operators.base import (
    EMPTY_KEY,
    META_KEY,
    META_KEYS,
    RESERVED_KEYS,
    KeyedOperator,
    OperatorLogic,
)
from raykv.operators.changelog import DELETE, INSERT, UPDATE_AFTER, UPDATE_BEFORE, with_kinds
from raykv.operators.packed import Packed, pack, sort_packed, unpack
from raykv.operators.state_meta import StateMetadata
from raykv.operators.ttl import ExpiryState

PACKED_WRITE_MIN = 1024  # keys of a write worth packing (two joins) for the engine

#: Default rows per chunk of :meth:`KeyedStateLogic.finish_chunks` (an operator's
#: ``finish_chunk_rows`` overrides it): about 10-20 MB of Python objects and Arrow
#: buffers per chunk for small aggregates.
DEFAULT_FINISH_CHUNK_ROWS = 100_000


class KeyedStateLogic(StateMetadata, OperatorLogic):
    """The core keyed-state logic (see the module docstring); layers subclass it."""

    def __init__(self, op: KeyedOperator, store: KVStore) -> None:
        self.op = op
        self.store = store
        self.key = op.key
        self._suffix_len = op.key_suffix_len
        self._schema: pa.Schema | None = None
        self._key_type: pa.DataType | None = None
        self._out_schema: pa.Schema | None = None
        self._changed: set[bytes] = set()
        self._pending_meta: list[tuple[bytes, bytes]] = []
        #: Set by the shard when the output is a changelog (another stage follows): keep
        #: each changed key's value from before the epoch, for :meth:`changelog`.
        self.keep_before_images = False
        self._before: dict[bytes, bytes] = {}
        ttl = getattr(op, "ttl", None)
        #: TTL bookkeeping (``ttl.py``) when the operator has ``ttl=``.
        self.expiry: ExpiryState | None = ExpiryState(ttl, store) if ttl is not None else None
        #: The stamps of the values the last :meth:`_read` returned (TTL only).
        self._read_stamps: list[int] = []
        raw = store.get(META_KEY)
        if raw:
            self._load_meta(raw)

    # ------------------------------------------------------------------ layer hooks

    def _setup(self, schema: pa.Schema) -> None:
        """Prepare for input ``schema`` (raise ``TypeError``/``ValueError`` if unusable)."""

    def _layout(self) -> str:
        """Identify the state encoding; a reopened store must have been written with it."""
        return ""

    @abstractmethod
    def _process(self, batch: pa.RecordBatch) -> None:
        """Update state for a checked, non-empty batch (ends with one ``_write``)."""

    @abstractmethod
    def _render(
        self, state_keys: Sequence[bytes], values: Sequence[bytes]
    ) -> list[tuple[str, pa.Array]]:
        """Output columns (after the key column) for non-empty state ``values``."""

    # ------------------------------------------------------------------ OperatorLogic

    def process(self, batch: pa.RecordBatch) -> None:
        """Check ``batch`` (schema, key column, nulls) and apply it to the state.

        Raises:
            TypeError: ``batch`` is not a ``RecordBatch`` or a column has an unusable type.
            ValueError: missing key column, another schema than the first batch, a null
                key, or a key longer than the engine's ``max_key_len``. State is unchanged.
        """
        fresh = self._schema is None
        try:
            self._check_batch(batch)
            if batch.num_rows:
                self._process(batch)
        except BaseException:
            if fresh and self._pending_meta:  # the first batch failed: forget its schema
                self._schema = self._key_type = self._out_schema = None
                self._pending_meta.clear()
            raise

    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        """Return the current values of the keys whose state changed since the last barrier.

        Output schema: the key column (input type) followed by the layer's columns; rows
        sorted by encoded key (numeric order for numeric keys). Keys whose state was
        deleted are not listed. Cost: one ``multi_get`` of the changed keys.
        """
        if not self._changed:
            self._end_epoch()
            return None
        keys = sorted(self._changed)
        values = self._read(keys)
        if not all(values):
            keys = list(compress(keys, values))
            values = [v for v in values if v]
        out = self._emit(keys, values)
        self._changed = set()
        self._end_epoch()
        return out

    def _end_epoch(self) -> None:
        """At a barrier, after the epoch's output: move the TTL horizon (``ttl.py``)."""
        if self.expiry is not None:
            self.expiry.end_epoch()

    def advance_watermark(self, watermark: int | None) -> None:
        """The shard's watermark (time-column units) for an event-time TTL (``ttl.py``).

        Takes effect at the next ``on_barrier``/``changelog``; a watermark behind an
        earlier one is ignored. Without an event-time TTL it changes nothing. Cost: O(1).
        """
        if self.expiry is not None:
            self.expiry.advance_watermark(watermark)

    def _read(self, keys: Sequence[bytes]) -> list[bytes]:
        """``multi_get`` of state ``keys``; with a TTL, stamps stripped, expired keys ``b""``.

        The stamps are left in ``_read_stamps``. Cost: one ``multi_get`` (+ one slice per
        value with a TTL).
        """
        raw = self.store.multi_get(keys)
        if self.expiry is None:
            return raw
        values, self._read_stamps = self.expiry.split(raw)
        return values

    def _items(self) -> list[tuple[bytes, bytes]]:
        """All live user-state pairs (metadata skipped; with a TTL, expired ones too)."""
        pairs = [(k, v) for k, v in self.store.items() if k not in META_KEYS]
        if self.expiry is None or not pairs:
            return pairs
        values, _ = self.expiry.split([v for _, v in pairs])
        return [(k, v) for (k, _), v in zip(pairs, values, strict=True) if v]

    def _note_before(self, keys: Sequence[bytes], old: Sequence[bytes]) -> None:
        """Remember the value each of ``keys`` had before the epoch (``b""``: none)."""
        if self.keep_before_images:
            for k, v in zip(keys, old, strict=True):
                self._before.setdefault(k, v)

    def changelog(self, epoch: int) -> pa.RecordBatch | None:
        """The epoch's changes with their row kinds (``raykv.operators.changelog``).

        For each changed key, in key order: ``+I`` its value (none before the epoch),
        ``-U`` old then ``+U`` new value, or ``-D`` the old value of a deleted key. Used
        instead of :meth:`on_barrier` and :meth:`finish` when the output feeds another
        stage (``keep_before_images``). Cost: one ``multi_get`` of the changed keys.
        """
        keys = sorted(self._changed)
        self._changed = set()
        out = self._changes_of(keys, self._read(keys) if keys else [])
        self._end_epoch()
        return out

    def _changes_of(self, keys: Sequence[bytes], now: Sequence[bytes]) -> pa.RecordBatch | None:
        """The changelog of ``keys`` (ascending, distinct), now worth ``now`` (``b""``: gone).

        Compared with the epoch's before-images, which are then forgotten.
        """
        before, self._before = self._before, {}
        rows: list[tuple[bytes, bytes, int]] = []
        for k, new in zip(keys, now, strict=True):
            old = before.get(k, b"")
            if old and new:
                rows += [(k, old, UPDATE_BEFORE), (k, new, UPDATE_AFTER)]
            elif new:
                rows.append((k, new, INSERT))
            elif old:
                rows.append((k, old, DELETE))
        if not rows:
            return None
        out = self._emit([k for k, _, _ in rows], [v for _, v, _ in rows])
        assert out is not None
        return with_kinds(out, [kind for _, _, kind in rows])

    def finish(self) -> pa.RecordBatch | None:
        """Return the values of all keys (bounded input has ended).

        Cost: one pass over ``store.items()`` plus a sort of the keys; the result holds the
        whole state, so call it for bounded inputs only.
        """
        self._changed = set()
        return self.export_state()

    def finish_chunks(self, max_rows: int | None = None) -> Iterator[pa.RecordBatch]:
        """End of bounded input as a stream of batches of at most ``max_rows`` rows.

        The same rows as :meth:`finish` (``finish`` is this stream concatenated, up to
        order). This generic version slices the batch ``finish`` returns, so its memory is
        that of ``finish``; layers whose final output is every key's state (``Aggregate``,
        ``Reduce``) override it with :meth:`_state_chunks`, which reads the engine's
        iterator chunk by chunk. ``max_rows``: ``None`` takes the operator's
        ``finish_chunk_rows`` (default :data:`DEFAULT_FINISH_CHUNK_ROWS`).
        """
        n = self._chunk_rows(max_rows)
        out = self.finish()
        if out is None:
            return
        for start in range(0, out.num_rows, n):
            yield out.slice(start, n)

    def _chunk_rows(self, max_rows: int | None) -> int:
        n = getattr(self.op, "finish_chunk_rows", DEFAULT_FINISH_CHUNK_ROWS)
        n = n if max_rows is None else max_rows
        if type(n) is not int or n < 1:
            msg = f"finish_chunk_rows must be an int >= 1, got {n!r}"
            raise ValueError(msg)
        return n

    def _state_chunks(self, max_rows: int) -> Iterator[pa.RecordBatch]:
        """Every live key's rendered state, ``max_rows`` engine pairs at a time.

        Order: each chunk is sorted by encoded key; chunks follow the engine's
        ``item_chunks`` order, so the whole stream is in key order (the order of
        :meth:`finish`) when the engine iterates in key order (``LSMTree``) and in no
        particular order across chunks otherwise (HybridLog, AppendLog, MemOnly). The
        store must not be written while the stream is consumed. Memory: one chunk of
        pairs and its batch (the engine's iterator holds one block per LSM run, or the
        per-key index of HybridLog/AppendLog that the engine keeps anyway). Cost: one
        ``item_chunks`` pass, a sort per chunk (numpy for packed keys: ``packed.py``).
        """
        for keys, values in self.store.item_chunks(max_rows):
            if not META_KEYS.isdisjoint(keys):
                keep = [k not in META_KEYS for k in keys]
                keys, values = list(compress(keys, keep)), list(compress(values, keep))
            if self.expiry is not None and keys:
                values, _ = self.expiry.split(values)
                if not all(values):
                    keys, values = list(compress(keys, values)), [v for v in values if v]
            out = self._emit_sorted(keys, values)
            if out is not None:
                yield out

    def export_state(self) -> pa.RecordBatch | None:
        """Render the state of every key as output rows, changing nothing.

        The same rows ``finish`` would emit for Aggregate/Reduce/windows (open windows with
        their current aggregates); StatefulMap renders each key's state (``state`` column,
        JSON text). Used by ``raykv checkpoints export``. Cost: one ``items()`` pass + sort.
        """
        pairs = sorted(self._items())
        if not pairs:
            return None
        return self._emit([k for k, _ in pairs], [v for _, v in pairs])

    def output_schema(self) -> pa.Schema | None:
        """Schema of the emitted batches, or ``None`` while unknown."""
        return self._out_schema

    # ------------------------------------------------------------------ helpers for layers

    def _canonical(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` with its key column made canonical (see ``canonical_key_array``)."""
        col = batch.column(self.key)
        canon = canonical_key_array(col)
        if canon is col:
            return batch
        i = batch.schema.get_field_index(self.key)
        return batch.set_column(i, pa.field(self.key, canon.type), canon)

    def _state_keys(
        self, key_values: pa.Array | pa.ChunkedArray, suffixes: Sequence[bytes] | None = None
    ) -> list[bytes]:
        """Encode distinct canonical keys (plus optional suffixes) to checked state keys.

        Raises:
            ValueError: a key is too long for the engine or equals a reserved key.
        """
        keys = encode_keys(key_values, self.key)
        if suffixes is not None:
            keys = list(map(bytes.__add__, keys, suffixes))
        assert self._key_type is not None
        if is_binary_like(self._key_type) and not RESERVED_KEYS.isdisjoint(keys):
            bad = next(k for k in keys if k in RESERVED_KEYS)
            msg = (
                f"key {bad!r} in column {self.key!r} collides with a key reserved by raykv "
                f"({sorted(RESERVED_KEYS)}); map it to another value before {self._name()}"
            )
            raise ValueError(msg)
        limit = self.store.max_key_len
        if is_fixed_width(self._key_type):
            width = (1 if pa.types.is_boolean(value_type(self._key_type)) else 8) + self._suffix_len
            if keys and width > limit:
                self._key_too_long(key_values, 0, width)
            return keys
        lens = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
        if len(lens) and lens.max() > limit:
            i = int(np.argmax(lens > limit))
            self._key_too_long(key_values, i, int(lens[i]))
        if suffixes is None and len(lens) and lens.min() == 0:
            keys[int(np.argmin(lens))] = EMPTY_KEY  # distinct keys: at most one empty
        return keys

    def _key_too_long(self, key_values: pa.Array | pa.ChunkedArray, i: int, size: int) -> None:
        value = key_values[i].as_py()
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        msg = (
            f"key {shown} in column {self.key!r} is {size} bytes as a state key, more than "
            f"the engine's max_key_len={self.store.max_key_len}; shorten or hash the keys, "
            "or give the stage an engine with a larger max_key_len"
        )
        raise ValueError(msg)

    def _write(
        self,
        keys: Sequence[bytes],
        values: Sequence[bytes],
        *,
        track: bool = True,
        extra: Sequence[tuple[bytes, bytes]] = (),
        stamps: Sequence[int] | None = None,
        packed: Packed | None = None,
    ) -> None:
        """One ``multi_set`` of ``keys -> values`` (``b""`` deletes) plus metadata pairs.

        At least ``PACKED_WRITE_MIN`` 8-byte keys with values of one size and nothing
        else to write go as arrays (``KVStore.multi_set_packed``: HybridLog writes them
        without a ``bytes`` per pair); ``packed``: the same pairs packed by a caller that
        has them so (no TTL), not packed again.

        With ``track``, the keys join the changed set (after the write succeeded). With a
        TTL, each value is stored behind its stamp from ``stamps`` (default: processing
        time now + span); ``extra`` pairs are written as given.
        """
        if len(keys) != len(values):
            msg = f"internal error: {len(keys)} keys but {len(values)} values"
            raise AssertionError(msg)
        if self.expiry is not None and keys:
            if stamps is None:
                stamps = self.expiry.fresh_stamps(len(keys)).tolist()
            values = self.expiry.stamp(values, stamps)
        if (len(keys) >= PACKED_WRITE_MIN and not (self._pending_meta or extra)
                and self._packs_keys()):
            if packed is None or self.expiry is not None:  # (stamped values: packed here)
                packed = pack(keys, values)  # None: values of several sizes, or deletes
            if packed is not None:
                self.store.multi_set_packed(packed.words, packed.rows)
                if track:
                    self._changed.update(keys)
                return
        # a dict (keys are distinct) is the cheapest batch form for KVStore.multi_set
        pairs = dict(zip(keys, values, strict=False))  # lengths checked above
        if self._pending_meta or extra:
            pairs.update(self._pending_meta)
            pairs.update(extra)
        if pairs:
            self.store.multi_set(pairs)
        self._pending_meta = []
        if track:
            self._changed.update(keys)

    def _user_keys(self, state_keys: Sequence[bytes]) -> list[bytes]:
        """Encoded user keys of ``state_keys`` (suffix stripped, empty key restored)."""
        n = self._suffix_len
        if n:
            return [k[:-n] for k in state_keys]
        if EMPTY_KEY in state_keys:
            return [b"" if k == EMPTY_KEY else k for k in state_keys]
        return list(state_keys)

    def _emit(self, state_keys: Sequence[bytes], values: Sequence[bytes]) -> pa.RecordBatch | None:
        """Build an output batch: decoded key column + the layer's rendered columns."""
        if not state_keys:
            return None
        assert self._key_type is not None
        cols = [(self.key, decode_keys(self._user_keys(state_keys), self._key_type))]
        cols.extend(self._render(state_keys, values))
        return self._batch(cols)

    def _emit_sorted(self, state_keys: list[bytes], values: list[bytes]
                     ) -> pa.RecordBatch | None:
        """:meth:`_emit` of distinct ``state_keys`` put in ascending key order first.

        Packed (``packed.py``: no ``bytes`` per key sorted, gathered or decoded) when the
        keys are 8-byte numbers and the values have one size; else :func:`key_order`.
        """
        packed = pack(state_keys, values) if self._packs_keys() else None
        if packed is not None:
            return self._emit_packed(sort_packed(packed))
        order = key_order(state_keys)
        return self._emit([state_keys[i] for i in order], [values[i] for i in order])

    def _packs_keys(self) -> bool:
        """State keys are the 8-byte encoding of the key alone (``packed.py`` applies)."""
        t = self._key_type
        return (t is not None and not self._suffix_len and is_fixed_width(t)
                and not pa.types.is_boolean(value_type(t)))

    def _emit_packed(self, p: Packed) -> pa.RecordBatch | None:
        """:meth:`_emit` of packed pairs (only when :meth:`_packs_keys`), in their order."""
        if not len(p):
            return None
        assert self._key_type is not None
        cols = [(self.key, decode_words(p.words, self._key_type))]
        cols.extend(self._render_rows(p))
        return self._batch(cols)

    def _render_rows(self, p: Packed) -> list[tuple[str, pa.Array]]:
        """:meth:`_render` of packed pairs; layers may render the rows without unpacking."""
        return self._render(*unpack(p))

    def _batch(self, cols: list[tuple[str, pa.Array]]) -> pa.RecordBatch:
        """The output batch of named columns (the output schema once it is known)."""
        if self._out_schema is not None:
            return pa.RecordBatch.from_arrays([c for _, c in cols], schema=self._out_schema)
        out = pa.RecordBatch.from_arrays([c for _, c in cols], names=[n for n, _ in cols])
        self._out_schema = out.schema
        return out


def key_order(keys: Sequence[bytes]) -> list[int]:
    """Positions of distinct ``keys`` in ascending byte order (what ``sorted`` gives).

    Keys that all have 8 bytes (numbers, times) or 1 byte (bools) are sorted by numpy as
    big-endian unsigned words, which is bytewise order; others by ``sorted`` on the bytes.
    Cost: O(n log n) (O(n) for sorted input); no Python per key for fixed-width keys
    beyond one ``join``.
    """
    n = len(keys)
    width = len(keys[0]) if n else 0
    if width in (1, 8):
        buf = b"".join(keys)
        if len(buf) == width * n:
            lens = np.fromiter(map(len, keys), dtype=np.int64, count=n)
            if (lens == width).all():
                words = np.frombuffer(buf, dtype=">u8" if width == 8 else np.uint8)
                return np.argsort(words, kind="stable").tolist()  # type: ignore[no-any-return]
    return sorted(range(n), key=keys.__getitem__)
