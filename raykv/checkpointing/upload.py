"""Upload side of ``CheckpointStore``: which of a shard's files the store already holds.

A ``CheckpointStore`` keeps one ``ShardFiles`` per shard: the entries (name, size,
checksum) that manifests it wrote or read list (``known``), and the sizes a listing of
``files/<shard>/`` plus its own uploads showed (``present``). ``upload_shard`` uploads a
file unless both agree with the local file; a file name listed with another size or
checksum is refused (a name identifies one content forever, DESIGN.md invariant 1).

Contract: the functions here keep no state; the caller owns the ``ShardFiles`` and
serializes access to them with its lock (``CheckpointStore._lock``): ``load_shard_files``
takes that lock itself (never across the listing), the others expect it held. Only
``list_present``/``load_shard_files`` talk to the store; ``plan_upload`` calls
``describe`` for an error message only.

Cost: ``local_entry`` a ``stat`` and, for a file not hashed before in this process, one
checksum pass; ``list_present`` one listing of ``files/<shard>/`` (``load_shard_files``
the same, on a shard's first use only); the others are in memory, linear in their
arguments.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from raykv.checkpointing._format import FILES_DIR, file_key, parse_file_key
from raykv.checkpointing.checksums import file_checksum
from raykv.checkpointing.manifests import EpochManifest, FileEntry
from raykv.checkpointing.objectstore import ObjectStore
from raykv.errors import CorruptionError


@dataclass
class ShardFiles:
    """What a store object knows about one shard's files in the store."""

    known: dict[str, FileEntry] = field(default_factory=dict)  # from manifests: name -> entry
    present: dict[str, int] | None = None  # from a listing + own uploads: name -> size


def local_entry(local_dir: Path, shard: str, epoch: int, name: str) -> FileEntry:
    """The entry (size, checksum) of the local file ``local_dir/name``.

    Raises:
        FileNotFoundError: the file does not exist (the message says to pin files).
    """
    try:
        size, checksum = file_checksum(local_dir / name)
    except FileNotFoundError:
        msg = (
            f"{local_dir / name} is listed for upload of shard {shard!r} epoch {epoch} "
            "but does not exist; files must stay in place during upload_shard (pin "
            "them with link_files(...) when uploading in the background)"
        )
        raise FileNotFoundError(msg) from None
    return FileEntry(name, size, checksum)


def list_present(objects: ObjectStore, shard: str) -> dict[str, int]:
    """Engine file name -> size of every file the store holds for ``shard``: one listing."""
    present = {}
    for key, info in objects.list(f"{FILES_DIR}/{shard}").items():
        ref = parse_file_key(key)
        if ref is not None and ref[0] == shard:
            present[ref[1]] = info.size
    return present


def load_shard_files(
    shards: MutableMapping[str, ShardFiles],
    lock: threading.RLock,
    objects: ObjectStore,
    shard: str,
) -> ShardFiles:
    """``shards[shard]``, created if missing, with ``present`` listed on first use."""
    with lock:
        sf = shards.setdefault(shard, ShardFiles())
        loaded = sf.present is not None
    if not loaded:
        present = list_present(objects, shard)
        with lock:
            if sf.present is None:
                sf.present = present
    return sf


def remember_known(shards: MutableMapping[str, ShardFiles], em: EpochManifest) -> None:
    """Record every file entry of ``em`` as ``known`` (the caller holds its lock)."""
    for shard, sm in em.shards.items():
        known = shards.setdefault(shard, ShardFiles()).known
        for entry in sm.files:
            known[entry.name] = entry


def plan_upload(
    sf: ShardFiles,
    shard: str,
    entries: Sequence[FileEntry],
    local_dir: Path,
    describe: Callable[[str], str],
) -> list[FileEntry]:
    """The entries of ``entries`` the store lacks, in order.

    Raises:
        CorruptionError: a manifest lists a file of that name with another size or
            checksum: the local file was damaged or rewritten.
    """
    present = sf.present or {}
    missing: list[FileEntry] = []
    for e in entries:
        known = sf.known.get(e.name)
        if known is not None and known != e:
            held = describe(file_key(shard, e.name))
            msg = (
                f"the store already holds {held} with size {known.size} and "
                f"{known.checksum}, the local file has size {e.size} and "
                f"{e.checksum}; a file name must identify one content forever "
                "(DESIGN.md invariant 1): the local file was damaged or rewritten"
            )
            raise CorruptionError(local_dir / e.name, "checksum", detail=msg)
        if known is None or present.get(e.name) != e.size:
            missing.append(e)
    return missing


def forget(shards: Mapping[str, ShardFiles], keys: Iterable[str]) -> None:
    """Drop the files under the store keys ``keys`` (deleted by GC) from ``shards``."""
    for key in keys:
        ref = parse_file_key(key)
        if ref is None or ref[0] not in shards:
            continue
        sf = shards[ref[0]]
        sf.known.pop(ref[1], None)
        if sf.present is not None:
            sf.present.pop(ref[1], None)
