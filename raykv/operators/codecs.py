"""Codecs for user state (``Reduce``, ``StatefulMap``): Python object <-> engine value bytes.

Built-in aggregations (``Aggregate``, ``TumblingWindow``) never use these: their state has
a fixed binary layout (``aggstate.py``). User state is encoded with the codec the user
names with ``codec=``:

* ``"json"`` (default): ``json.dumps`` in compact form, UTF-8. Safe and portable; tuples
  come back as lists and dict keys must be strings.
* ``"pickle"``: any picklable object (protocol 5). Only when asked: a checkpoint holding
  pickles must be trusted as code.
* ``"raw"``: the state is ``bytes`` and stored as it is.
* any object with ``encode(obj) -> bytes`` and ``decode(bytes) -> obj`` (and optionally a
  ``name``); it must be picklable, because operator configs travel to Ray actors.

A state of ``None`` means "no state" and is never encoded: the key is deleted. An encoder
must not return ``b""`` (the engine reads an empty value as a deleted key).

Example:
    >>> codec = get_codec("json")
    >>> codec.decode(codec.encode({"n": 1}))
    {'n': 1}
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Codec(Protocol):
    """What ``codec=`` accepts besides a built-in name."""

    def encode(self, obj: Any) -> bytes:
        """Serialize ``obj`` (never ``None``) to non-empty bytes."""
        ...

    def decode(self, data: bytes) -> Any:
        """Inverse of ``encode``."""
        ...


_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_JSON_DECODER = json.JSONDecoder()


class JsonCodec:
    """Compact JSON in UTF-8. Cost: about 1-2 us per small value each way."""

    name = "json"

    def encode(self, obj: Any) -> bytes:
        """Serialize ``obj``; raises ``TypeError`` naming the type if JSON cannot hold it."""
        try:
            return _JSON_ENCODER.encode(obj).encode()
        except (TypeError, ValueError) as err:
            msg = (
                f"state of type {type(obj).__name__} cannot be stored as JSON ({err}); "
                "use codec='pickle' or pass a codec object with encode/decode"
            )
            raise TypeError(msg) from err

    def decode(self, data: bytes) -> Any:
        """Parse JSON bytes."""
        return _JSON_DECODER.decode(data.decode())


class PickleCodec:
    """``pickle`` protocol 5; only for trusted checkpoints."""

    name = "pickle"

    def encode(self, obj: Any) -> bytes:
        """Pickle ``obj``."""
        return pickle.dumps(obj, protocol=5)

    def decode(self, data: bytes) -> Any:
        """Unpickle ``data`` (runs code from the checkpoint: trust it)."""
        return pickle.loads(data)  # the user chose pickle


class RawCodec:
    """State is ``bytes`` (``bytearray``/``memoryview`` accepted) and stored unchanged."""

    name = "raw"

    def encode(self, obj: Any) -> bytes:
        """Return ``obj`` as ``bytes``; raises ``TypeError`` for anything else."""
        if isinstance(obj, bytes):
            return obj
        if isinstance(obj, bytearray | memoryview):
            return bytes(obj)
        msg = f"codec='raw' stores bytes, got state of type {type(obj).__name__}"
        raise TypeError(msg)

    def decode(self, data: bytes) -> Any:
        """Return ``data``."""
        return data


CODECS: dict[str, type] = {"json": JsonCodec, "pickle": PickleCodec, "raw": RawCodec}


def get_codec(spec: str | Codec) -> Codec:
    """Resolve ``codec=``: a built-in name or an object with ``encode``/``decode``.

    Raises:
        ValueError: an unknown name.
        TypeError: an object without callable ``encode`` and ``decode``.
    """
    if isinstance(spec, str):
        try:
            return CODECS[spec]()  # type: ignore[no-any-return]
        except KeyError:
            msg = f"unknown codec {spec!r}; use one of {sorted(CODECS)} or an encode/decode object"
            raise ValueError(msg) from None
    if callable(getattr(spec, "encode", None)) and callable(getattr(spec, "decode", None)):
        return spec
    msg = (
        f"codec must be one of {sorted(CODECS)} or an object with encode(obj) -> bytes and "
        f"decode(bytes) -> obj, got {type(spec).__name__}"
    )
    raise TypeError(msg)


def codec_name(codec: Codec) -> str:
    """A stable name for ``codec`` (recorded with the state to catch a codec change)."""
    name = getattr(codec, "name", None)
    return name if isinstance(name, str) else f"{type(codec).__module__}.{type(codec).__qualname__}"
