from __future__ import annotations

import doctest
import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import raykv.operators.codecs as codecs_module
from raykv.engines import MemOnly
from raykv.keys import encode_keys
from raykv.operators import Reduce, StatefulMap
from raykv.operators.codecs import JsonCodec, PickleCodec, RawCodec, codec_name, get_codec


class Utf8Codec:
    """A user codec: states are str."""

    name = "utf8"

    def encode(self, obj: Any) -> bytes:
        return str(obj).encode()

    def decode(self, data: bytes) -> Any:
        return data.decode()


def concat(a: str, v: str) -> str:
    return a + v


class EmptyCodec:
    def encode(self, obj: Any) -> bytes:
        return b""

    def decode(self, data: bytes) -> Any:
        return data


@pytest.mark.parametrize(
    ("codec", "value"),
    [
        (JsonCodec(), {"a": [1, 2.5, None, "é"], "b": True}),
        (PickleCodec(), {"a": (1, 2), "b": {3}, "c": b"\x00"}),
        (RawCodec(), b"\x00\xffraw"),
    ],
)
def test_round_trip(codec: Any, value: Any) -> None:
    data = codec.encode(value)
    assert type(data) is bytes and data
    assert codec.decode(data) == value


def test_json_is_compact_and_rejects_what_it_cannot_hold() -> None:
    assert JsonCodec().encode({"a": [1, 2]}) == b'{"a":[1,2]}'
    with pytest.raises(TypeError, match=r"type set cannot be stored as JSON.*codec='pickle'"):
        JsonCodec().encode({1, 2})
    with pytest.raises(TypeError, match="raw' stores bytes"):
        RawCodec().encode("text")
    assert RawCodec().encode(bytearray(b"ab")) == b"ab"


def test_get_codec() -> None:
    assert isinstance(get_codec("json"), JsonCodec)
    assert isinstance(get_codec("pickle"), PickleCodec)
    custom = Utf8Codec()
    assert get_codec(custom) is custom
    assert codec_name(custom) == "utf8"
    assert codec_name(EmptyCodec()).endswith("EmptyCodec")
    with pytest.raises(ValueError, match="unknown codec 'msgpack'"):
        get_codec("msgpack")
    with pytest.raises(TypeError, match="encode"):
        get_codec(42)  # type: ignore[arg-type]


def test_custom_codec_in_an_operator(tmp_path: Path) -> None:
    op = Reduce("k", concat, "v", codec=Utf8Codec())
    assert codec_name(pickle.loads(pickle.dumps(op)).codec) == "utf8"
    with MemOnly(tmp_path) as store:
        logic = op.build(store)
        logic.process(pa.record_batch({"k": [1, 1], "v": ["a", "b"]}))
        assert store.get(encode_keys(pa.array([1]), "k")[0]) == b"ab"
    # the codec is part of the stored layout
    with MemOnly(tmp_path) as store, pytest.raises(ValueError, match="codec=utf8"):
        Reduce("k", concat, "v").build(store)


def test_encoder_returning_empty_bytes_is_refused(tmp_path: Path) -> None:
    with MemOnly(tmp_path) as store:
        logic = StatefulMap("k", lambda s, r: (1, None), codec=EmptyCodec()).build(store)
        with pytest.raises(TypeError, match="non-empty bytes"):
            logic.process(pa.record_batch({"k": [1]}))
        assert dict(store.items()) == {}


def test_doctests() -> None:
    result = doctest.testmod(codecs_module)
    assert result.attempted > 0 and result.failed == 0
