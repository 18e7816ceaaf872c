"""The engine manifest: which files make up the engine's durable state.

Each engine writes a new manifest file (``NNNNNNNN-tag.manifest``) every time its set
of live run files changes durably (after ``seal()``, and after a merge if the engine
chooses). Opening a data directory loads the manifest with the highest number; files
that it does not list are leftovers of a crash or of a merge and are deleted. The layout
is in ``FORMAT.md``:

    line 1: the JSON body (UTF-8, no newlines inside)
    line 2: crc32 of line 1's bytes, 8 lowercase hex digits

Body keys: ``format`` (int), ``engine`` (str), ``next_number`` (int), ``files`` (list of
run-file names, in the engine's order), ``state`` (engine-specific JSON object).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raykv.engines.fileio import crc32, write_file
from raykv.engines.filename import MANIFEST_KIND, parse_file_name
from raykv.errors import CorruptionError, FormatVersionError

MANIFEST_FORMAT = 1


@dataclass
class Manifest:
    """A loaded engine manifest."""

    name: str
    engine: str
    next_number: int
    files: list[str]
    state: dict[str, Any] = field(default_factory=dict)


def encode_manifest(
    engine: str, next_number: int, files: list[str], state: dict[str, Any]
) -> bytes:
    """Serialize a manifest body with its checksum line."""
    body = json.dumps(
        {
            "format": MANIFEST_FORMAT,
            "engine": engine,
            "next_number": next_number,
            "files": files,
            "state": state,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    return body + b"\n" + f"{crc32(body):08x}".encode() + b"\n"


def write_manifest(path: Path, engine: str, next_number: int, files: list[str],
                   state: dict[str, Any]) -> None:
    """Write a manifest durably (temporary name, fsync, rename)."""
    write_file(path, encode_manifest(engine, next_number, files, state))


def read_manifest(path: Path) -> Manifest:
    """Read and verify one manifest file.

    Raises:
        CorruptionError: the file is truncated, its checksum does not match or its JSON is
            malformed.
        FormatVersionError: written by a newer raykv.
    """
    data = path.read_bytes()
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] != b"" or len(lines[1]) != 8:
        raise CorruptionError(path, "length", detail="manifest is truncated or malformed")
    body, crc_hex = lines[0], lines[1]
    try:
        stored = int(crc_hex, 16)
    except ValueError:
        raise CorruptionError(path, "crc", detail="checksum line is not hex") from None
    if crc32(body) != stored:
        raise CorruptionError(path, "crc", detail="manifest checksum mismatch")
    doc = json.loads(body)
    if doc["format"] > MANIFEST_FORMAT:
        raise FormatVersionError(path, doc["format"], MANIFEST_FORMAT)
    return Manifest(path.name, doc["engine"], doc["next_number"], list(doc["files"]), doc["state"])


def find_latest_manifest(data_dir: Path) -> Manifest | None:
    """Load the manifest with the highest number in ``data_dir``, or ``None`` if there is none.

    A manifest only ever appears under its final name once complete (it is renamed into
    place), so a damaged newest manifest is real corruption and is reported, never
    skipped in favour of an older one.
    """
    best: tuple[int, str] | None = None
    for entry in os.listdir(data_dir):
        parsed = parse_file_name(entry)
        if parsed is not None and parsed.kind == MANIFEST_KIND and (
            best is None or parsed.number > best[0]
        ):
            best = (parsed.number, entry)
    if best is None:
        return None
    return read_manifest(data_dir / best[1])
