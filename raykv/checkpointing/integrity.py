"""Integrity of stored engine files: compare store objects with the manifest entries naming them.

The checks behind ``CheckpointStore.verify``, ``CheckpointStore.intact_epochs`` and the
download step of ``CheckpointStore.restore_shard``. Each file entry of a manifest records
a size and a checksum (FORMAT.md, "Checksums"); a stored file is intact when the object
``files/<shard>/<name>`` exists with exactly that size and checksum.

Contract: nothing here writes to the store. ``check_stored_file`` and ``fetch_verified``
report or raise for one file; ``verify_epochs`` raises for the first bad file (and counts
the others); ``intact_epochs`` never raises for damage and leaves damaged or unreadable
epochs out. All take the store's parts (``ObjectStore``, an epoch reader, a pool factory)
as arguments, so this module imports nothing from ``store.py``.

Cost: ``check_stored_file`` one full read of the object (streamed, not kept);
``fetch_verified`` (``fetch_all``: per entry, in parallel) one download, one checksum
pass and one fsync of the local copy;
``verify_epochs``/``intact_epochs`` one manifest read per epoch and one full read of every
referenced file, files shared by several epochs read once, in parallel on the pool.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from raykv.checkpointing._format import file_key
from raykv.checkpointing.checksums import file_checksum, remember
from raykv.checkpointing.manifests import EpochManifest, FileEntry
from raykv.checkpointing.objectstore import ObjectStore
from raykv.checkpointing.transfer import TransferStats, run_parallel
from raykv.errors import CheckpointNotFoundError, CorruptionError

FileRef = tuple[tuple[str, str], tuple[FileEntry, int]]
"""``((shard, name), (entry, epoch))``: a referenced file and the first epoch naming it."""

Problem = tuple[str, str, str]
"""``(where, check, detail)`` of a bad file, the arguments of ``CorruptionError``."""


def check_stored_file(objects: ObjectStore, item: FileRef) -> Problem | None:
    """``None`` if the stored file of ``item`` is intact, else (where, check, detail)."""
    (shard, name), (entry, e) = item
    key = file_key(shard, name)
    where = objects.describe(key)
    try:
        size, checksum = objects.checksum(key)
    except FileNotFoundError:
        return where, "missing file", f"referenced by epoch {e} shard {shard!r}"
    if (size, checksum) != (entry.size, entry.checksum):
        return (where, "length" if size != entry.size else "checksum",
                f"epoch {e} shard {shard!r} expects size {entry.size} {entry.checksum}, "
                f"found size {size} {checksum}")
    return None


def verify_epochs(
    objects: ObjectStore,
    read_epoch: Callable[[int], EpochManifest],
    pool: Callable[[], ThreadPoolExecutor],
    epochs: Sequence[int],
) -> None:
    """Raise ``CorruptionError`` for the first bad file ``epochs`` reference (see ``verify``).

    Raises:
        CheckpointNotFoundError: an epoch is not committed (from ``read_epoch``).
        CorruptionError: a file is missing or damaged, or a manifest is damaged.
    """
    refs: dict[tuple[str, str], tuple[FileEntry, int]] = {}
    for e in epochs:
        for shard, entry in read_epoch(e).file_refs():
            refs.setdefault((shard, entry.name), (entry, e))

    items = sorted(refs.items())
    checked = run_parallel(pool(), lambda item: check_stored_file(objects, item), items)
    bad = [b for b in checked if b is not None]
    if bad:
        path, what, detail = bad[0]
        if len(bad) > 1:
            detail += f"; {len(bad) - 1} more bad file(s): " + ", ".join(b[0] for b in bad[1:6])
        raise CorruptionError(path, what, detail=detail)


def intact_epochs(
    objects: ObjectStore,
    read_epoch: Callable[[int], EpochManifest],
    pool: Callable[[], ThreadPoolExecutor],
    epochs: Sequence[int],
) -> list[int]:
    """The epochs of ``epochs`` whose manifest reads and whose every file is intact, ascending."""
    readable: dict[int, set[tuple[str, str]]] = {}
    refs: dict[tuple[str, str], tuple[FileEntry, int]] = {}
    for e in epochs:
        try:
            em = read_epoch(e)
        except (CorruptionError, CheckpointNotFoundError):
            continue
        names = readable[e] = set()
        for shard, entry in em.file_refs():
            names.add((shard, entry.name))
            refs.setdefault((shard, entry.name), (entry, e))
    items = sorted(refs.items())
    checked = run_parallel(pool(), lambda item: check_stored_file(objects, item), items)
    bad = {ref for (ref, _), problem in zip(items, checked, strict=True) if problem is not None}
    return sorted(e for e, names in readable.items() if names.isdisjoint(bad))


def fetch_verified(
    objects: ObjectStore,
    stats: TransferStats,
    shard: str,
    epoch: int,
    entry: FileEntry,
    dest: Path,
    committed: Callable[[], str],
) -> None:
    """Download the stored file of ``entry`` to ``dest``, check it, fsync it.

    ``committed()`` renders the committed epochs for an error message (called only on
    failure). On success the checksum is remembered for ``dest`` and ``stats`` counts the
    download.

    Raises:
        CorruptionError: the file is absent from the store, or the download has another
            size or checksum than ``entry`` (``dest`` is then deleted).
    """
    key = file_key(shard, entry.name)
    where = objects.describe(key)
    try:
        objects.get_file(key, dest)
    except FileNotFoundError:
        raise CorruptionError(
            where, "missing file",
            detail=(f"referenced by epoch {epoch} shard {shard!r} but absent from the store; "
                    f"verify() the store and restore an older epoch "
                    f"(committed: {committed()})"),
        ) from None
    size, checksum = file_checksum(dest)
    if (size, checksum) != (entry.size, entry.checksum):
        dest.unlink()
        raise CorruptionError(
            where, "length" if size != entry.size else "checksum",
            detail=(f"epoch {epoch} shard {shard!r} expects size {entry.size} "
                    f"{entry.checksum}, downloaded size {size} {checksum}; restore an "
                    f"older epoch (committed: {committed()})"),
        )
    remember(dest, checksum)
    fd = os.open(dest, os.O_RDONLY)  # durable before the swap renames it into place
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    stats.add(downloaded_files=1, downloaded_bytes=size)


def fetch_all(
    objects: ObjectStore,
    stats: TransferStats,
    pool: Callable[[], ThreadPoolExecutor],
    shard: str,
    epoch: int,
    entries: Sequence[FileEntry],
    staging: Path,
    committed: Callable[[], str],
) -> None:
    """``fetch_verified`` every entry into ``staging/<name>``, in parallel when several.

    Raises the first failure, after every download still running has ended.
    """
    executor = pool() if len(entries) > 1 else None
    run_parallel(executor, lambda e: fetch_verified(objects, stats, shard, epoch, e,
                                                    staging / e.name, committed),
                 list(entries))
