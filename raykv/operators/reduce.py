"""``Reduce``: fold one column per key with a user function."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.errors import mark_user_code
from raykv.operators.base import KeyedOperator
from raykv.operators.codecs import Codec, codec_name, get_codec
from raykv.operators.keyed_state import DEFAULT_FINISH_CHUNK_ROWS
from raykv.operators.pystate import PyStateLogic
from raykv.operators.ttl import TTL, normalize_ttl


@dataclass(frozen=True)
class Reduce(KeyedOperator):
    """Running ``acc = fn(acc, value)`` per key over one value column.

    The first non-null value of a key becomes its accumulator; each later non-null value
    ``v`` replaces it with ``fn(acc, v)``. Null values are skipped. If ``fn`` returns
    ``None`` the key's state is deleted (its next value starts over) and it is left out of
    the output. Values reach ``fn`` as Python objects (``to_pylist``).

    Output (changelog at each barrier, all keys at ``finish``): the key column and a
    column named ``column`` holding the accumulators: of the input column's type (that is
    ``output_schema()``) when they fit it, otherwise of the type Arrow infers for them.

    Cost per batch: one ``multi_get`` + one ``multi_set`` of the batch's distinct keys, one
    codec decode/encode per distinct key, one ``fn`` call per row.

    Example:
        >>> import pyarrow as pa, tempfile
        >>> from raykv.engines import MemOnly
        >>> op = Reduce("k", max, "v")
        >>> with MemOnly(tempfile.mkdtemp()) as store:
        ...     logic = op.build(store)
        ...     logic.process(pa.record_batch({"k": [1, 2, 1], "v": [5, 7, 9]}))
        ...     logic.finish().to_pydict()
        {'k': [1, 2], 'v': [9, 7]}

    ``ttl``: state that expires (``raykv.operators.ttl``): ``TTL(seconds)`` or a number
    of seconds (processing time), or ``TTL(span, time="event", column=...)``; an expired
    key reads as absent (silently: nothing is emitted for it) and leaves the engine in
    its merges. Event time needs the runtime to call ``logic.advance_watermark(wm)``
    before each barrier.

    Attributes:
        fn: ``fn(acc, value) -> acc``; must be picklable by cloudpickle (Ray).
        column: the value column.
        codec: how accumulators are stored: ``"json"`` (default), ``"pickle"``, ``"raw"``
            or an object with ``encode``/``decode`` (see ``codecs.py``).
        finish_chunk_rows: rows per batch of the end-of-input output
            (:meth:`ReduceLogic.finish_chunks`, what the runtime sends on).
    """

    fn: Callable[[Any, Any], Any]
    column: str
    codec: str | Codec = "json"
    ttl: TTL | int | float | timedelta | None = field(default=None, kw_only=True)
    finish_chunk_rows: int = field(default=DEFAULT_FINISH_CHUNK_ROWS, kw_only=True)

    #: A key's accumulator is emitted again when it changes; to a further stage as a
    #: changelog with its old value retracted (``KeyedStateLogic.changelog``).
    emits_updates: ClassVar[bool] = True
    emits_retractions: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "ttl", normalize_ttl(self.ttl, type(self).__name__))
        if not callable(self.fn):
            msg = f"Reduce.fn must be callable fn(acc, value) -> acc, got {type(self.fn).__name__}"
            raise TypeError(msg)
        if not isinstance(self.column, str) or not self.column:
            msg = f"Reduce.column must be a non-empty column name, got {self.column!r}"
            raise TypeError(msg)
        if self.column == self.key:
            msg = f"Reduce.column must differ from the key column {self.key!r}"
            raise ValueError(msg)
        get_codec(self.codec)
        rows = self.finish_chunk_rows
        if type(rows) is not int or rows < 1:
            msg = f"Reduce.finish_chunk_rows must be an int >= 1, got {rows!r}"
            raise ValueError(msg)

    def build(self, store: KVStore) -> ReduceLogic:
        """Create the shard logic on ``store`` (resumes the state the store holds)."""
        return ReduceLogic(self, store)


class ReduceLogic(PyStateLogic):
    """Running logic of :class:`Reduce` on one shard."""

    op: Reduce

    def __init__(self, op: Reduce, store: KVStore) -> None:
        self._value_type: pa.DataType | None = None
        super().__init__(op, store, get_codec(op.codec))

    def _setup(self, schema: pa.Schema) -> None:
        if self.op.column not in schema.names:
            msg = (
                f"{self._name()}: value column {self.op.column!r} is missing; "
                f"the columns are {schema.names}"
            )
            raise ValueError(msg)
        self._value_type = schema.field(self.op.column).type
        key_field = pa.field(self.key, schema.field(self.key).type)
        self._out_schema = pa.schema([key_field, pa.field(self.op.column, self._value_type)])

    def finish_chunks(self, max_rows: int | None = None) -> Iterator[pa.RecordBatch]:
        """Every key's accumulator (the rows of ``finish``), streamed from the engine.

        At most ``max_rows`` (default ``finish_chunk_rows``) rows per batch, in key order
        on ``LSMTree`` and sorted within each chunk elsewhere
        (:meth:`~raykv.operators.keyed_state.KeyedStateLogic._state_chunks`). Memory: one
        chunk, not the state. A chunk whose accumulators do not fit the input column's
        type has the type Arrow infers for it, as with ``finish``.
        """
        n = self._chunk_rows(max_rows)
        self._changed = set()
        yield from self._state_chunks(n)

    def _fold(self, batch: pa.RecordBatch, index: list[int], states: list[Any]) -> None:
        fn = self.op.fn
        for i, v in zip(index, batch.column(self.op.column).to_pylist(), strict=True):
            if v is None:
                continue
            acc = states[i]
            if acc is None:
                states[i] = v
                continue
            try:
                states[i] = fn(acc, v)
            except Exception as err:
                mark_user_code(err, "Reduce.fn", key=self._row_key(batch, index, i))
                raise

    def _render(
        self, state_keys: Sequence[bytes], values: Sequence[bytes]
    ) -> list[tuple[str, pa.Array]]:
        decode = self.codec.decode
        accs = []
        for k, v in zip(state_keys, values, strict=True):
            try:
                accs.append(decode(v))
            except Exception as err:
                mark_user_code(err, f"codec {codec_name(self.codec)!r} decode",
                               key=self._state_key_text(k))
                raise
        try:
            arr = pa.array(accs, type=self._value_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            try:  # the accumulators are not of the input column's type
                arr = pa.array(accs)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as err:
                msg = (
                    f"{self._name()}: the accumulators do not form one Arrow column ({err}); "
                    "make fn return values of one type"
                )
                raise TypeError(msg) from err
        assert self._out_schema is not None
        if arr.type != self._out_schema.field(1).type:
            self._out_schema = self._out_schema.set(1, pa.field(self.op.column, arr.type))
        return [(self.op.column, arr)]
