"""Retention, pins, garbage collection and the orphan sweep (docs/recovery.md, "GC").

Invariant (DESIGN.md 6): GC never deletes a file that a retained, pinned or in-flight
epoch references. It deletes only files referenced by the epochs it expires and by
nothing else it can see; files referenced by nothing (uploads of an epoch not committed
yet, leftovers of a crashed upload) are the orphan sweep's, which deletes them only when
they are older than a grace period. What "in flight" covers:

* every shard manifest of an epoch that has no epoch manifest (written before commit);
* every file an ``upload_shard`` call in this process is working on (``InflightRegistry``),
  from before it checks what the store holds until its shard manifest is written.

The registry is snapshotted *before* the shard manifests are listed, so an upload that
finishes in between is seen one way or the other.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from raykv.checkpointing._format import (
    EPOCHS_DIR,
    FILES_DIR,
    PINS_DIR,
    SHARDS_DIR,
    epoch_key,
    file_key,
    parse_epoch_leaf,
    parse_file_key,
    parse_pin_leaf,
    parse_shard_manifest_key,
)
from raykv.checkpointing.manifests import EpochManifest, decode_shard_manifest
from raykv.checkpointing.objectstore import ObjectStore

Ref = tuple[str, str]
"""``(shard, file name)``: one file of the store."""


class InflightRegistry:
    """Files that ``upload_shard`` calls in this process are uploading or relying on.

    Keyed by store identity (filesystem class + root) so that every ``CheckpointStore``
    object on the same root in one process sees the others' uploads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[tuple[str, str], Counter[Ref]] = {}

    @contextmanager
    def reserve(self, identity: tuple[str, str], refs: Iterable[Ref]) -> Iterator[None]:
        """Protect ``refs`` from GC and the orphan sweep while the block runs."""
        refs = list(refs)
        with self._lock:
            self._refs.setdefault(identity, Counter()).update(refs)
        try:
            yield
        finally:
            with self._lock:
                counter = self._refs[identity]
                counter.subtract(refs)
                for r in refs:
                    if counter[r] <= 0:
                        del counter[r]

    def snapshot(self, identity: tuple[str, str]) -> set[Ref]:
        """The references held right now for ``identity``."""
        with self._lock:
            return set(self._refs.get(identity, ()))


INFLIGHT = InflightRegistry()


@dataclass(frozen=True)
class GCReport:
    """What ``gc`` did (or, with ``dry_run``, would do).

    Attributes:
        retained: committed epochs kept (newest ``retain`` plus pinned), ascending.
        expired: epochs whose manifests were deleted, ascending.
        pinned: pinned epochs found.
        deleted_files: keys of the engine files deleted (relative to the store root).
        deleted_bytes: their total size.
        deleted_manifests: epoch and shard manifests deleted.
        dry_run: nothing was deleted.
    """

    retained: list[int]
    expired: list[int]
    pinned: list[int]
    deleted_files: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    deleted_manifests: int = 0
    dry_run: bool = False


def list_epochs(objects: ObjectStore) -> list[int]:
    """Committed epochs, ascending. Cost: one listing of ``epochs/``."""
    found = (parse_epoch_leaf(k.rpartition("/")[2]) for k in objects.list(EPOCHS_DIR))
    return sorted(e for e in found if e is not None)


def list_pins(objects: ObjectStore) -> list[int]:
    """Pinned epochs (committed or not), ascending. Cost: one listing of ``pins/``."""
    found = (parse_pin_leaf(k.rpartition("/")[2]) for k in objects.list(PINS_DIR))
    return sorted(e for e in found if e is not None)


def _refs(manifest: EpochManifest) -> set[Ref]:
    return {(shard, entry.name) for shard, entry in manifest.file_refs()}


def _uncommitted_shard_manifests(
    objects: ObjectStore, committed: set[int]
) -> list[tuple[str, str, int, float | None]]:
    """``(key, shard, epoch, mtime)`` of every shard manifest whose epoch is not committed."""
    out = []
    for key, info in objects.list(SHARDS_DIR, recursive=True).items():
        parsed = parse_shard_manifest_key(key)
        if parsed is not None and parsed[1] not in committed:
            out.append((key, parsed[0], parsed[1], info.mtime))
    return out


def _read_shard_refs(objects: ObjectStore, key: str) -> set[Ref]:
    try:
        sm = decode_shard_manifest(objects.read_bytes(key), objects.describe(key))
    except FileNotFoundError:  # committed or swept meanwhile
        return set()
    return {(sm.shard, e.name) for e in sm.files}


def collect_garbage(
    objects: ObjectStore,
    read_epoch: Callable[[int], EpochManifest],
    retain: int,
    *,
    dry_run: bool = False,
) -> GCReport:
    """Expire all committed epochs but the newest ``retain`` and the pinned ones.

    Steps: (1) snapshot in-process in-flight files; (2) list epochs and pins; (3) read
    the manifests of kept epochs and of uncommitted shard manifests (all protected);
    (4) read the expired epochs' manifests; (5) delete the expired epoch manifests, then
    their shard manifests, then the files only they referenced. A crash after (5) began
    leaves only unreferenced files, which ``sweep_orphans`` removes later.

    Cost: three listings, one read per kept or expired epoch manifest and per uncommitted
    shard manifest, one delete request per 1,000 objects (S3).

    Raises:
        ValueError: ``retain`` < 1.
        CorruptionError: a kept epoch's manifest is unreadable: nothing is deleted, since
            the files it protects are unknown.
    """
    if type(retain) is not int or retain < 1:
        msg = f"retain must be an int >= 1 (the newest epoch is always kept), got {retain!r}"
        raise ValueError(msg)
    inflight = INFLIGHT.snapshot(objects.identity)
    epochs = list_epochs(objects)
    pins = list_pins(objects)
    committed = set(epochs)
    keep = set(epochs[-retain:]) | (set(pins) & committed)
    expired = [e for e in epochs if e not in keep]
    report = GCReport(retained=sorted(keep), expired=expired, pinned=pins, dry_run=dry_run)
    if not expired:
        return report

    protected: set[Ref] = set(inflight)
    for e in keep:
        protected |= _refs(read_epoch(e))
    shard_manifests = objects.list(SHARDS_DIR, recursive=True)
    for key in shard_manifests:
        parsed = parse_shard_manifest_key(key)
        if parsed is not None and parsed[1] not in committed:
            protected |= _read_shard_refs(objects, key)

    candidates: dict[Ref, int] = {}
    for e in expired:
        for shard, entry in read_epoch(e).file_refs():
            if (shard, entry.name) not in protected:
                candidates[(shard, entry.name)] = entry.size
    expired_set = set(expired)
    manifest_keys = [epoch_key(e) for e in expired]
    shard_keys = [
        k for k in shard_manifests
        if (p := parse_shard_manifest_key(k)) is not None and p[1] in expired_set
    ]
    file_keys = sorted(file_key(s, n) for s, n in candidates)
    if not dry_run:
        objects.delete(manifest_keys)
        objects.delete(shard_keys)
        objects.delete(file_keys)
    return GCReport(
        retained=sorted(keep),
        expired=expired,
        pinned=pins,
        deleted_files=file_keys,
        deleted_bytes=sum(candidates.values()),
        deleted_manifests=len(manifest_keys) + len(shard_keys),
        dry_run=dry_run,
    )


def sweep_orphans(
    objects: ObjectStore,
    read_epoch: Callable[[int], EpochManifest],
    grace_seconds: float,
    *,
    dry_run: bool = False,
    now: float | None = None,
) -> list[str]:
    """Delete objects no committed epoch references that are older than ``grace_seconds``.

    Orphans are: engine files no committed epoch and no young uncommitted shard manifest
    references (crashed uploads, a GC interrupted after step 5 began); shard manifests of
    uncommitted epochs; temporary files of interrupted local writes. Anything younger
    than the grace period, or with an unknown modification time, is kept: the grace
    period must exceed the longest upload.

    Returns the deleted (with ``dry_run``: deletable) keys, sorted.

    Raises:
        ValueError: ``grace_seconds`` is negative.
        CorruptionError: a committed epoch manifest is unreadable (its files are unknown).
    """
    if not isinstance(grace_seconds, int | float) or grace_seconds < 0:
        msg = f"grace_seconds must be a number >= 0, got {grace_seconds!r}"
        raise ValueError(msg)
    now = time.time() if now is None else now

    def old(mtime: float | None) -> bool:
        return mtime is not None and now - mtime > grace_seconds

    protected: set[Ref] = INFLIGHT.snapshot(objects.identity)
    files = objects.list(FILES_DIR, recursive=True)
    epochs = list_epochs(objects)
    for e in epochs:
        protected |= _refs(read_epoch(e))
    doomed: list[str] = []
    for key, _, _, mtime in _uncommitted_shard_manifests(objects, set(epochs)):
        if old(mtime):
            doomed.append(key)
        else:
            protected |= _read_shard_refs(objects, key)
    for key, info in files.items():
        ref = parse_file_key(key)
        if (ref is None or ref not in protected) and old(info.mtime):
            doomed.append(key)
    for prefix in (EPOCHS_DIR, SHARDS_DIR, PINS_DIR):
        for key, info in objects.list(prefix, recursive=True).items():
            leaf = key.rpartition("/")[2]
            if leaf.startswith(".") and ".tmp-" in leaf and old(info.mtime):
                doomed.append(key)
    doomed.sort()
    if not dry_run:
        objects.delete(k for k in doomed if not k.startswith(FILES_DIR + "/"))
        objects.delete(k for k in doomed if k.startswith(FILES_DIR + "/"))
    return doomed
