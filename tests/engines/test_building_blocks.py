"""File naming, the engine manifest and the kv block codec, each broken on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raykv.engines.fileio import decode_varint, encode_varint
from raykv.engines.filename import FileNumbers, file_name, parse_file_name
from raykv.engines.kvblock import decode_kv_block, encode_kv_block
from raykv.engines.manifest import encode_manifest, find_latest_manifest, read_manifest
from raykv.errors import CorruptionError, FormatVersionError


def test_file_names_round_trip_and_reject_others() -> None:
    name = file_name(12, "0a1b2c3d", "run")
    assert name == "00000012-0a1b2c3d.run"
    assert parse_file_name(name) == (12, "0a1b2c3d", "run")
    for other in ["LOCK", "12-0a1b2c3d.run", "00000012-XYZ.run", "00000012-0a1b2c3d.run.tmp"]:
        assert parse_file_name(other) is None


def test_file_numbers_never_go_back(tmp_path: Path) -> None:
    (tmp_path / file_name(41, "00000000", "run")).write_bytes(b"")
    (tmp_path / (file_name(57, "00000000", "run") + ".tmp")).write_bytes(b"")
    numbers = FileNumbers(tmp_path, floor=50)
    assert numbers.next_number == 58
    a, b = numbers.new_name("run"), numbers.new_name("manifest")
    assert parse_file_name(a).number == 58 and parse_file_name(b).number == 59


@given(st.integers(min_value=0, max_value=2**64))
def test_varint_round_trip(n: int) -> None:
    data = encode_varint(n) + b"tail"
    assert decode_varint(data, 0) == (n, len(data) - 4)


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=50)), max_size=50))
def test_kv_block_round_trip(pairs: list[tuple[bytes, bytes]]) -> None:
    keys = [k for k, _ in pairs]
    values = [v for _, v in pairs]
    assert decode_kv_block(b"TEST", encode_kv_block(b"TEST", keys, values), "f") == (keys, values)


def test_kv_block_every_flipped_byte_is_caught() -> None:
    block = encode_kv_block(b"TEST", [b"alpha", b"beta"], [b"1", b"22"])
    for i in range(len(block)):
        damaged = bytearray(block)
        damaged[i] ^= 0x01
        with pytest.raises(CorruptionError, match="blockfile"):
            decode_kv_block(b"TEST", bytes(damaged), "blockfile")
    for cut in range(len(block)):
        with pytest.raises(CorruptionError):
            decode_kv_block(b"TEST", block[:cut], "blockfile")


def test_manifest_corruption_is_reported_never_skipped(tmp_path: Path) -> None:
    old = tmp_path / file_name(1, "00000000", "manifest")
    new = tmp_path / file_name(2, "00000000", "manifest")
    old.write_bytes(encode_manifest("memonly", 2, ["a"], {}))
    new.write_bytes(encode_manifest("memonly", 3, ["b"], {"x": 1}))
    latest = find_latest_manifest(tmp_path)
    assert latest is not None and latest.files == ["b"] and latest.state == {"x": 1}
    data = bytearray(new.read_bytes())
    data[5] ^= 0x20
    new.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match=new.name):
        find_latest_manifest(tmp_path)
    new.write_bytes(encode_manifest("memonly", 3, ["b"], {})[:-4])
    with pytest.raises(CorruptionError, match="truncated"):
        read_manifest(new)


def test_manifest_from_newer_format_is_refused(tmp_path: Path) -> None:
    body = b'{"engine":"x","files":[],"format":99,"next_number":1,"state":{}}'
    import zlib

    path = tmp_path / file_name(1, "00000000", "manifest")
    path.write_bytes(body + b"\n" + f"{zlib.crc32(body):08x}".encode() + b"\n")
    with pytest.raises(FormatVersionError, match="version 99"):
        read_manifest(path)
