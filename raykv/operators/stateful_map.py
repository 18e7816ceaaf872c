"""``StatefulMap``: one user call per event with per-key Python state."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import repeat
from typing import Any

import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.errors import describe_key, mark_user_code
from raykv.keys import decode_keys
from raykv.operators.base import KeyedOperator
from raykv.operators.codecs import Codec, get_codec
from raykv.operators.pystate import PyStateLogic
from raykv.operators.ttl import TTL, normalize_ttl


@dataclass(frozen=True)
class StatefulMap(KeyedOperator):
    """``new_state, output = fn(state, row)`` for every event, in arrival order per shard.

    ``state`` is ``None`` for a key without state; returning ``None`` as the new state
    deletes the key's state. ``row`` is a dict of the event's columns (``to_pylist``
    values). Each non-``None`` ``output`` becomes one output row: the event's key followed
    by the output's fields if it is a dict, or by one column ``value`` otherwise.

    Output: the rows produced since the previous barrier, in arrival order, at each
    barrier (they are part of that epoch); ``finish`` returns the rows not yet emitted.
    The key's state itself is never emitted. Output types are inferred by Arrow from the
    first outputs and widened when later outputs need it (e.g. a column that was all
    ``None``); pass ``output_fields`` to fix them.

    Cost per batch: one ``multi_get`` + one ``multi_set`` of the batch's distinct keys,
    one codec decode/encode per distinct key, one ``fn`` call per row.

    Example:
        >>> import pyarrow as pa, tempfile
        >>> from raykv.engines import MemOnly
        >>> def running_count(state, row):
        ...     n = (state or 0) + 1
        ...     return n, {"n": n}
        >>> op = StatefulMap("user", running_count)
        >>> with MemOnly(tempfile.mkdtemp()) as store:
        ...     logic = op.build(store)
        ...     logic.process(pa.record_batch({"user": ["a", "b", "a"]}))
        ...     logic.on_barrier(1).to_pydict()
        {'user': ['a', 'b', 'a'], 'n': [1, 1, 2]}

    ``ttl``: state that expires (``raykv.operators.ttl``): ``TTL(seconds)`` or a number
    of seconds (processing time), or ``TTL(span, time="event", column=...)``; an expired
    key reads as absent (silently: nothing is emitted for it) and leaves the engine in
    its merges. Event time needs the runtime to call ``logic.advance_watermark(wm)``
    before each barrier.

    Attributes:
        fn: ``fn(state, row) -> (new_state, output)``; must be picklable by cloudpickle.
        codec: how states are stored: ``"json"`` (default), ``"pickle"``, ``"raw"`` or an
            object with ``encode``/``decode`` (see ``codecs.py``).
        output_fields: optional schema of the output columns after the key.
    """

    fn: Callable[[Any, dict[str, Any]], tuple[Any, Any]]
    codec: str | Codec = "json"
    output_fields: pa.Schema | None = None
    ttl: TTL | int | float | timedelta | None = field(default=None, kw_only=True)

    def changelog_refusal(self, *, retractions: bool) -> str | None:
        """None: ``fn`` sees each row's kind in ``row["_change"]`` and decides."""
        return None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "ttl", normalize_ttl(self.ttl, type(self).__name__))
        if not callable(self.fn):
            msg = (
                "StatefulMap.fn must be callable fn(state, row) -> (new_state, output), "
                f"got {type(self.fn).__name__}"
            )
            raise TypeError(msg)
        get_codec(self.codec)
        if self.output_fields is not None:
            if not isinstance(self.output_fields, pa.Schema):
                msg = (
                    "StatefulMap.output_fields must be a pyarrow.Schema, "
                    f"got {self.output_fields!r}"
                )
                raise TypeError(msg)
            if self.key in self.output_fields.names:
                msg = f"StatefulMap.output_fields must not contain the key column {self.key!r}"
                raise ValueError(msg)

    def build(self, store: KVStore) -> StatefulMapLogic:
        """Create the shard logic on ``store`` (resumes the state the store holds)."""
        return StatefulMapLogic(self, store)


class StatefulMapLogic(PyStateLogic):
    """Running logic of :class:`StatefulMap` on one shard."""

    op: StatefulMap
    track_changes = False

    def __init__(self, op: StatefulMap, store: KVStore) -> None:
        self._buffer: list[pa.RecordBatch] = []
        self._fields: pa.Schema | None = op.output_fields
        super().__init__(op, store, get_codec(op.codec))

    def _setup(self, schema: pa.Schema) -> None:
        if self._fields is not None:
            self._out_schema = pa.schema([schema.field(self.key), *self._fields])

    def _fold(
        self, batch: pa.RecordBatch, index: list[int], states: list[Any]
    ) -> pa.RecordBatch | None:
        fn = self.op.fn
        names = batch.schema.names
        columns = [c.to_pylist() for c in batch.columns]
        results: list[Any] = []
        append = results.append
        # hot loop: one fn call per row; zips are not strict (lengths are equal by construction)
        for i, values in zip(index, zip(*columns, strict=False), strict=False):
            row = dict(zip(names, values, strict=False))
            try:  # free in the hot loop until fn raises
                result = fn(states[i], row)
            except Exception as err:
                mark_user_code(err, "StatefulMap.fn", key=describe_key(row.get(self.key)))
                raise
            try:
                states[i], output = result
            except (TypeError, ValueError):
                msg = (
                    f"{self._name()}: fn must return a (new_state, output) pair, "
                    f"got {result!r:.80}"
                )
                bad = TypeError(msg)
                mark_user_code(bad, "StatefulMap.fn", key=describe_key(row.get(self.key)))
                raise bad from None
            append(output)
        rows = [r for r, o in enumerate(results) if o is not None]
        if not rows:
            return None
        outputs = results if len(rows) == len(results) else [results[r] for r in rows]
        return self._to_batch(batch.column(self.key).take(rows), outputs)

    def _to_batch(self, keys: pa.Array, outputs: list[Any]) -> pa.RecordBatch:
        """Convert outputs to a batch, widening the output schema if they need it."""
        n_dicts = sum(map(isinstance, outputs, repeat(dict)))
        if 0 < n_dicts < len(outputs):
            msg = f"{self._name()}: fn must return dict outputs always or never, not a mix"
            raise TypeError(msg)
        fields = self._fields
        if n_dicts:
            names = fields.names if fields is not None else list(outputs[0])
            if self.key in names:
                msg = f"{self._name()}: fn outputs must not contain the key column {self.key!r}"
                raise ValueError(msg)
            columns = [[o.get(n) for o in outputs] for n in names]
        else:
            names = fields.names if fields is not None else ["value"]
            if len(names) != 1:
                msg = f"{self._name()}: output_fields has {len(names)} fields; fn must return dicts"
                raise TypeError(msg)
            columns = [outputs]
        arrays = []
        for name, values in zip(names, columns, strict=True):
            want = fields.field(name).type if fields is not None else None
            try:
                arrays.append(pa.array(values, want))
                continue
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as err:
                if self.op.output_fields is not None:
                    msg = f"{self._name()}: output {name!r} does not match output_fields ({err})"
                    raise TypeError(msg) from err
            try:
                arrays.append(pa.array(values))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as err:
                msg = f"{self._name()}: outputs {name!r} do not form one Arrow column ({err})"
                raise TypeError(msg) from err
        body = pa.RecordBatch.from_arrays(arrays, names=names)
        if fields is not None and body.schema != fields:
            try:
                fields = pa.unify_schemas([fields, body.schema], promote_options="permissive")
                body = body.cast(fields)
                self._buffer = [
                    b.cast(pa.schema([b.schema.field(0), *fields])) for b in self._buffer
                ]
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
                msg = (
                    f"{self._name()}: outputs with schema {body.schema} do not fit the earlier "
                    f"outputs' schema {fields} ({err}); pass output_fields= to fix it"
                )
                raise TypeError(msg) from err
        self._fields = body.schema
        return pa.RecordBatch.from_arrays(
            [keys, *body.columns], names=[self.key, *body.schema.names]
        )

    def _commit(self, result: pa.RecordBatch | None) -> None:
        if result is not None:
            self._buffer.append(result)
            self._out_schema = result.schema

    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        """Return the output rows produced since the previous barrier (arrival order)."""
        out = self._drain()
        self._end_epoch()
        return out

    def finish(self) -> pa.RecordBatch | None:
        """Return the output rows not yet emitted (the state is not emitted)."""
        return self._drain()

    def _drain(self) -> pa.RecordBatch | None:
        if not self._buffer:
            return None
        batches, self._buffer = self._buffer, []
        return batches[0] if len(batches) == 1 else pa.concat_batches(batches)

    def _render(
        self, state_keys: Sequence[bytes], values: Sequence[bytes]
    ) -> list[tuple[str, pa.Array]]:
        raise NotImplementedError  # StatefulMap emits outputs, never its state

    def export_state(self) -> pa.RecordBatch | None:
        """Each key's state as JSON text: columns ``<key>`` and ``state``."""
        pairs = sorted(self._items())
        if not pairs or self._key_type is None:
            return None
        decode = self.codec.decode
        keys = decode_keys(self._user_keys([k for k, _ in pairs]), self._key_type)
        texts = [json.dumps(decode(v), default=repr, sort_keys=True) for _, v in pairs]
        return pa.record_batch([keys, pa.array(texts, pa.string())], names=[self.key, "state"])
