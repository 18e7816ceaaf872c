"""A keyed operator's input checks and its metadata record in the engine.

Contract: the :class:`StateMetadata` mixin of
:class:`~raykv.operators.keyed_state.KeyedStateLogic`. ``_check_batch`` validates each
input batch (a RecordBatch, the key column present and of a key type, no null keys, the
same columns as the first batch) and, at the first batch, adopts its schema and queues
the metadata record (``META_KEY``: format, operator, key, state layout, schema); a logic
built on a store that holds state reads that record back (``_load_meta``) and refuses
state written by another operator, key or layout (aggregations, codec, ttl on or off),
with an error that says what to do. Cost: O(1) per batch (a schema comparison, a
null count).
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from raykv.keys import check_key_type
from raykv.operators.base import META_FORMAT, META_KEY
from raykv.operators.schemas import same_columns, schema_mismatch

if TYPE_CHECKING:
    from raykv.engines.base import KVStore
    from raykv.operators.base import KeyedOperator
    from raykv.operators.ttl import ExpiryState


class StateMetadata:
    """Input checks and the stored metadata record (see the module docstring)."""

    if TYPE_CHECKING:  # what the mixin uses of the logic
        op: KeyedOperator
        key: str
        store: KVStore
        expiry: ExpiryState | None
        _schema: pa.Schema | None
        _key_type: pa.DataType | None
        _out_schema: pa.Schema | None
        _pending_meta: list[tuple[bytes, bytes]]

        def _setup(self, schema: pa.Schema) -> None: ...
        def _layout(self) -> str: ...

    # ------------------------------------------------------------------ checks

    def _check_batch(self, batch: pa.RecordBatch) -> None:
        if not isinstance(batch, pa.RecordBatch):
            msg = (
                f"{self._name()} expects a pyarrow.RecordBatch, got {type(batch).__name__}"
                + ("; use table.to_batches()" if isinstance(batch, pa.Table) else "")
            )
            raise TypeError(msg)
        schema = batch.schema
        if self.key not in schema.names:
            msg = (
                f"key column {self.key!r} of {self._name()} is missing from the batch; "
                f"its columns are {schema.names}"
            )
            raise ValueError(msg)
        if self._schema is None:
            check_key_type(schema.field(self.key).type, self.key)
            self._adopt(schema)
            self._pending_meta = [(META_KEY, self._meta_value())]
        elif not same_columns(schema, self._schema):
            msg = f"{self._name()}: {schema_mismatch(self._schema, schema)}"
            raise ValueError(msg)
        col = batch.column(self.key)
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            msg = (
                f"key column {self.key!r} of {self._name()} contains a null at row {row} "
                f"({col.null_count} nulls in {len(col)} rows); keys must not be null: "
                "filter or fill them before this stage"
            )
            raise ValueError(msg)

    def _adopt(self, schema: pa.Schema) -> None:
        self._schema = schema
        self._key_type = schema.field(self.key).type
        try:
            self._setup(schema)
            if self.expiry is not None:
                self.expiry.setup(schema, self._name())
        except BaseException:
            self._schema = self._key_type = self._out_schema = None
            raise

    def _state_layout(self) -> str:
        """The stored layout: the layer's, plus the TTL stamp prefix when there is one."""
        return self._layout() + (";ttl-stamp/1" if self.expiry is not None else "")

    def _name(self) -> str:
        return self.op.name or f"{type(self.op).__name__}(key={self.key!r})"

    # ------------------------------------------------------------------ metadata

    def _meta_value(self) -> bytes:
        assert self._schema is not None
        meta = {
            "format": META_FORMAT,
            "operator": type(self.op).__name__,
            "key": self.key,
            "layout": self._state_layout(),
            "schema": base64.b64encode(self._schema.serialize().to_pybytes()).decode(),
        }
        return json.dumps(meta, sort_keys=True).encode()

    def _load_meta(self, raw: bytes) -> None:
        where = f"state in {self.store.data_dir}"
        try:
            meta = json.loads(raw)
            schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(meta["schema"])))
        except (ValueError, KeyError, TypeError, pa.ArrowException) as err:
            msg = f"{where}: unreadable operator metadata ({err}); restore another epoch"
            raise ValueError(msg) from err
        if meta.get("format") != META_FORMAT:
            msg = f"{where}: operator metadata format {meta.get('format')}, expected {META_FORMAT}"
            raise ValueError(msg)
        owner = f"{meta.get('operator')}(key={meta.get('key')!r})"
        if meta.get("operator") != type(self.op).__name__ or meta.get("key") != self.key:
            msg = (
                f"{where} was written by {owner}, not by {self._name()}; "
                "give each stage its own engine directory"
            )
            raise ValueError(msg)
        self._adopt(schema)
        if meta.get("layout") != self._state_layout():
            msg = (
                f"{where} was written by {owner} with state layout {meta.get('layout')!r}, "
                f"but this operator uses {self._state_layout()!r}: its configuration "
                "(aggregations, codec, ttl on or off) changed; keep the old configuration "
                "or start from empty state"
            )
            self._schema = self._key_type = self._out_schema = None
            raise ValueError(msg)


__all__ = ["StateMetadata"]
