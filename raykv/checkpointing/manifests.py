"""Shard and epoch manifests: what a checkpoint is made of, and their JSON encoding.

A *shard manifest* lists the live engine files of one shard at one epoch, each with size
and checksum. An *epoch manifest* holds every shard manifest of the epoch, the source
offsets and the caller's metadata (partitioning, ...); writing it is the commit (DESIGN.md
invariant 4). Both are JSON objects with a ``crc32`` member covering the rest of the
object; the schemas are in FORMAT.md.

Both classes are immutable values, cheap to pickle (Ray passes shard manifests from the
shard actors to the coordinator).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from raykv.checkpointing._format import STORE_FORMAT, check_epoch, check_file_name, check_shard
from raykv.errors import CorruptionError, FormatVersionError


class FileEntry(NamedTuple):
    """One engine file of a checkpoint: its unique name, size in bytes and checksum.

    ``checksum`` is self-describing, ``"crc32:0a1b2c3d"`` (FORMAT.md "Checksums").
    """

    name: str
    size: int
    checksum: str


@dataclass(frozen=True)
class ShardManifest:
    """The live files of one shard at one epoch.

    Attributes:
        epoch: the epoch these files belong to.
        shard: the shard name (``"engine"``, ``"agg/0003"``, ...).
        files: every live file of the shard, in the order the engine listed them.
        new_files: how many of ``files`` this upload had to transfer (the rest the store
            already held).
        new_bytes: bytes transferred by this upload.
        metadata: caller's JSON object (engine name, ...).
    """

    epoch: int
    shard: str
    files: list[FileEntry]
    new_files: int = 0
    new_bytes: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Bytes of all files of the shard at this epoch (the state's on-store size)."""
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this manifest (without format/crc members)."""
        return {
            "epoch": self.epoch,
            "shard": self.shard,
            "files": [[f.name, f.size, f.checksum] for f in self.files],
            "new_files": self.new_files,
            "new_bytes": self.new_bytes,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ShardManifest:
        """Build from ``to_dict()`` output; raises ``KeyError``/``TypeError``/``ValueError``."""
        files = [FileEntry(str(n), int(s), str(c)) for n, s, c in doc["files"]]
        for f in files:
            check_file_name(f.name)
        return cls(
            epoch=check_epoch(doc["epoch"]),
            shard=check_shard(doc["shard"]),
            files=files,
            new_files=int(doc["new_files"]),
            new_bytes=int(doc["new_bytes"]),
            metadata=dict(doc["metadata"]),
        )


@dataclass(frozen=True)
class EpochManifest:
    """A committed epoch: all shard manifests, source offsets and metadata.

    Attributes:
        epoch: the epoch number.
        created_at: commit time, seconds since the Unix epoch.
        shards: shard name -> its manifest.
        offsets: the sources' offsets at the end of the epoch (caller's JSON object).
        metadata: caller's JSON object (partitioning, pipeline description, ...).
    """

    epoch: int
    created_at: float
    shards: dict[str, ShardManifest]
    offsets: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def file_refs(self) -> Iterator[tuple[str, FileEntry]]:
        """Yield ``(shard, entry)`` for every file the epoch references."""
        for shard, sm in self.shards.items():
            for entry in sm.files:
                yield shard, entry

    @property
    def total_bytes(self) -> int:
        """Bytes of all files the epoch references."""
        return sum(sm.total_bytes for sm in self.shards.values())

    @property
    def new_bytes(self) -> int:
        """Bytes uploaded for this epoch (all shards)."""
        return sum(sm.new_bytes for sm in self.shards.values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this manifest (without format/crc members)."""
        return {
            "epoch": self.epoch,
            "created_at": self.created_at,
            "shards": {name: sm.to_dict() for name, sm in sorted(self.shards.items())},
            "offsets": self.offsets,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> EpochManifest:
        """Build from ``to_dict()`` output; raises ``KeyError``/``TypeError``/``ValueError``."""
        shards = {str(k): ShardManifest.from_dict(v) for k, v in doc["shards"].items()}
        for k, sm in shards.items():
            if sm.shard != k or sm.epoch != doc["epoch"]:
                msg = f"shard entry {k!r} holds the manifest of {sm.shard!r} epoch {sm.epoch}"
                raise ValueError(msg)
        return cls(
            epoch=check_epoch(doc["epoch"]),
            created_at=float(doc["created_at"]),
            shards=shards,
            offsets=dict(doc["offsets"]),
            metadata=dict(doc["metadata"]),
        )


# ---------------------------------------------------------------------- encoding


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def normalize_json(value: Any, what: str) -> Any:
    """Round-trip ``value`` through JSON so it reads back equal; ``TypeError`` names ``what``.

    Dict keys become strings, tuples lists. NaN and infinity are refused (not JSON).
    """
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        msg = f"{what} must be JSON-serializable (dicts, lists, str, int, finite float): {err}"
        raise TypeError(msg) from None


def encode_manifest(kind: str, body: Mapping[str, Any]) -> bytes:
    """Encode a manifest: ``body`` plus ``format``, ``kind`` and a ``crc32`` over the rest.

    The checksum is the zlib crc32 of the canonical JSON (sorted keys, no spaces) of the
    object without its ``crc32`` member; the file itself is that object with the member
    added, in the same canonical form.
    """
    doc = {**body, "format": STORE_FORMAT, "kind": kind}
    crc = zlib.crc32(_canonical(doc))
    return _canonical({**doc, "crc32": f"{crc:08x}"}) + b"\n"


def decode_manifest(kind: str, data: bytes, path: str) -> dict[str, Any]:
    """Parse and verify a manifest written by ``encode_manifest``; return its body.

    Raises:
        CorruptionError: not JSON, checksum mismatch, or not a ``kind`` manifest; names ``path``.
        FormatVersionError: written by a newer raykv.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise CorruptionError(path, "json", detail=f"manifest is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("crc32"), str):
        raise CorruptionError(path, "crc", detail="manifest has no crc32 member")
    stored = doc.pop("crc32")
    actual = f"{zlib.crc32(_canonical(doc)):08x}"
    if stored != actual:
        raise CorruptionError(path, "crc", detail=f"manifest checksum {actual} != stored {stored}")
    fmt = doc.get("format")
    if not isinstance(fmt, int):
        raise CorruptionError(path, "format version", detail="missing format member")
    if fmt > STORE_FORMAT:
        raise FormatVersionError(path, fmt, STORE_FORMAT)
    if doc.get("kind") != kind:
        detail = f"expected a {kind} manifest, got {doc.get('kind')!r}"
        raise CorruptionError(path, "kind", detail=detail)
    return doc


def decode_shard_manifest(data: bytes, path: str) -> ShardManifest:
    """Decode a shard manifest file; raises ``CorruptionError`` naming ``path``."""
    doc = decode_manifest("shard", data, path)
    try:
        return ShardManifest.from_dict(doc)
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptionError(path, "schema", detail=f"bad shard manifest: {err!r}") from None


def decode_epoch_manifest(data: bytes, path: str) -> EpochManifest:
    """Decode an epoch manifest file; raises ``CorruptionError`` naming ``path``."""
    doc = decode_manifest("epoch", data, path)
    try:
        return EpochManifest.from_dict(doc)
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptionError(path, "schema", detail=f"bad epoch manifest: {err!r}") from None
