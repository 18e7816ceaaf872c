"""Keyed state as per-key Python objects encoded with a codec (Reduce, StatefulMap).

Contract: :class:`PyStateLogic` is a ``KeyedStateLogic`` whose ``_process`` reads the
states of a batch's distinct keys with one ``multi_get``, lets the layer fold the rows
(``_fold``), writes the states whose bytes changed with one ``multi_set`` and only then
calls ``_commit``. Errors of user code (the layer's function, the codec) are marked with
``raykv.errors.mark_user_code``; a failed batch leaves the state unchanged.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from raykv.engines.base import KVStore
from raykv.errors import describe_key, mark_user_code
from raykv.keys import canonical_key_array, decode_keys
from raykv.operators.base import KeyedOperator
from raykv.operators.codecs import Codec, codec_name
from raykv.operators.keyed_state import KeyedStateLogic


class PyStateLogic(KeyedStateLogic):
    """Core logic for per-key Python state encoded with a codec (Reduce, StatefulMap).

    ``_process`` dictionary-encodes the key column, reads the states of the batch's
    distinct keys with one ``multi_get``, lets the layer fold the rows (``_fold``, Python
    per row), and writes the states whose bytes changed with one ``multi_set`` (a ``None``
    state deletes the key). Only then does it call ``_commit`` with the fold's result.

    Errors of user code (the layer's function, the codec) propagate as they are, marked
    with ``raykv.errors.mark_user_code`` (what ran, the key of the record) so the shard
    can name stage, shard and epoch too.
    """

    #: Whether written keys join the changed set (False when the layer emits no changelog).
    track_changes: ClassVar[bool] = True

    def __init__(self, op: KeyedOperator, store: KVStore, codec: Codec) -> None:
        self.codec = codec
        super().__init__(op, store)

    def _layout(self) -> str:
        return f"codec={codec_name(self.codec)}"

    @abstractmethod
    def _fold(self, batch: pa.RecordBatch, index: list[int], states: list[Any]) -> Any:
        """Update ``states`` (one per distinct key, ``None`` = no state) row by row.

        ``index[r]`` is the position in ``states`` of row ``r``'s key. Returns a value
        passed to ``_commit`` once the states are written.
        """

    def _commit(self, result: Any) -> None:
        """Called with ``_fold``'s result after the states were written."""

    def _row_key(self, batch: pa.RecordBatch, index: list[int], i: int) -> str:
        """The key of ``states[i]`` in ``_fold`` (its first row), for error messages."""
        return describe_key(batch.column(self.key)[index.index(i)].as_py())

    def _state_key_text(self, state_key: bytes) -> str:
        """The user key of ``state_key``, for error messages."""
        try:
            assert self._key_type is not None
            value = decode_keys(self._user_keys([state_key]), self._key_type)[0].as_py()
        except Exception:
            return describe_key(state_key)
        return describe_key(value)

    def _codec_failed(self, err: BaseException, op: str, items: list[Any],
                      distinct: pa.Array) -> None:
        """Mark ``err``, raised by the codec's ``op`` over ``items``, as user code.

        ``items[j]`` belongs to key ``distinct[j]``; the first item ``op`` fails on again
        names the key (codecs are pure; this runs only on the error path).
        """
        fn = self.codec.decode if op == "decode" else self.codec.encode
        key = None
        for j, item in enumerate(items):
            if item is None or item == b"":
                continue
            try:
                fn(item)
            except Exception:
                key = describe_key(distinct[j].as_py())
                break
        mark_user_code(err, f"codec {codec_name(self.codec)!r} {op}", key=key)

    def _process(self, batch: pa.RecordBatch) -> None:
        keycol = canonical_key_array(batch.column(self.key))
        is_bool = pa.types.is_boolean(keycol.type)
        encoded = (keycol.cast(pa.int8()) if is_bool else keycol).dictionary_encode()
        distinct = encoded.dictionary.cast(pa.bool_()) if is_bool else encoded.dictionary
        keys = self._state_keys(distinct)
        index = encoded.indices.to_numpy(zero_copy_only=False).tolist()
        old = self._read(keys)
        decode = self.codec.decode
        try:
            states = [decode(v) if v else None for v in old]
        except Exception as err:
            self._codec_failed(err, "decode", old, distinct)
            raise
        result = self._fold(batch, index, states)
        encode = self.codec.encode
        try:
            new = [b"" if s is None else encode(s) for s in states]
        except Exception as err:
            self._codec_failed(err, "encode", states, distinct)
            raise
        for j, (k, v, s) in enumerate(zip(keys, new, states, strict=False)):  # equal lengths
            if s is not None and (type(v) is not bytes or not v):
                msg = (
                    f"codec {codec_name(self.codec)!r} returned {v!r:.40} for the state of key "
                    f"{k[:32]!r}; an encoder must return non-empty bytes"
                )
                bad = TypeError(msg)
                mark_user_code(bad, f"codec {codec_name(self.codec)!r} encode",
                               key=describe_key(distinct[j].as_py()))
                raise bad
        changed = [i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b]
        track = self.track_changes
        if self.expiry is not None:  # every key a row touched gets a new stamp
            self._write_stamped(batch, index, keys, old, new, changed)
        elif len(changed) == len(keys):
            self._write(keys, new, track=track)
            self._note_before(keys, old)
        else:
            written = [keys[i] for i in changed]
            self._write(written, [new[i] for i in changed], track=track)
            self._note_before(written, [old[i] for i in changed])
        self._commit(result)

    def _write_stamped(self, batch: pa.RecordBatch, index: list[int], keys: list[bytes],
                       old: list[bytes], new: list[bytes], changed: list[int]) -> None:
        """TTL: write changed states (tracked) and restamp unchanged ones (untracked)."""
        expiry = self.expiry
        assert expiry is not None
        times = None
        if expiry.event:
            t = expiry.times(batch, self._name())
            times = np.full(len(keys), np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(times, np.asarray(index, dtype=np.int64), t)
        stamps = np.maximum(expiry.fresh_stamps(len(keys), times),
                            np.asarray(self._read_stamps, dtype=np.int64)).tolist()
        is_changed = set(changed)
        same = [i for i in range(len(keys)) if i not in is_changed and new[i]
                and stamps[i] != self._read_stamps[i]]
        extra = list(zip([keys[i] for i in same],
                         expiry.stamp([new[i] for i in same], [stamps[i] for i in same]),
                         strict=True))
        written = [keys[i] for i in changed]
        self._write(written, [new[i] for i in changed], track=self.track_changes,
                    extra=extra, stamps=[stamps[i] for i in changed])
        self._note_before(written, [old[i] for i in changed])
