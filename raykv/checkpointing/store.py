"""``CheckpointStore``: incremental, epoch-consistent checkpoints of shard states on fsspec.

Lifecycle of an epoch ``e`` (docs/recovery.md gives the numbered steps and crash cases)::

    sm = store.upload_shard(e, shard, data_dir, engine.seal())   # per shard, in parallel
    store.commit_epoch(e, {shard: sm, ...}, offsets=..., metadata=...)   # once, last
    store.gc(retain=3)                                            # any time

    store.restore_shard(store.latest_epoch(), shard, data_dir)    # after a failure

Example (runs as a doctest):

    >>> import tempfile, uuid
    >>> from raykv.engines import MemOnly
    >>> store = CheckpointStore(f"memory://doctest-{uuid.uuid4().hex}")
    >>> d = tempfile.mkdtemp()
    >>> with MemOnly(d) as kv:
    ...     kv.set(b"k", b"v")
    ...     sm = store.upload_shard(1, "agg/0000", d, kv.seal())
    >>> store.commit_epoch(1, {"agg/0000": sm}).epoch
    1
    >>> d2 = tempfile.mkdtemp()
    >>> store.restore_shard(1, "agg/0000", d2)
    >>> MemOnly(d2).get(b"k")
    b'v'
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from raykv.checkpointing import gc as _gc
from raykv.checkpointing import integrity as _integrity
from raykv.checkpointing._format import (
    FILES_DIR,
    check_epoch,
    check_file_name,
    check_shard,
    epoch_key,
    file_key,
    pin_key,
    shard_manifest_key,
)
from raykv.checkpointing.manifests import (
    EpochManifest,
    FileEntry,
    ShardManifest,
    decode_epoch_manifest,
    encode_manifest,
    normalize_json,
)
from raykv.checkpointing.objectstore import ObjectStore
from raykv.checkpointing.restore import SwapResult, swap_in
from raykv.checkpointing.transfer import RetryPolicy, TransferStats, run_parallel
from raykv.checkpointing.upload import (
    ShardFiles,
    forget,
    load_shard_files,
    local_entry,
    plan_upload,
    remember_known,
)
from raykv.errors import CheckpointNotFoundError, CorruptionError

_EPOCH_CACHE = 256


def summarize_epochs(epochs: Sequence[int]) -> str:
    """Render a list of epochs for an error message: all of them, or the ends of a long list."""
    if not epochs:
        return "none"
    if len(epochs) <= 12:
        return ", ".join(map(str, epochs))
    head = ", ".join(map(str, epochs[:5]))
    tail = ", ".join(map(str, epochs[-5:]))
    return f"{head}, ..., {tail} ({len(epochs)} epochs)"


class CheckpointStore:
    """Checkpoints of sharded engine states under one fsspec URL.

    Args:
        url: ``file:///abs/path`` or a plain path (the embedded default; created if
            missing), ``memory://name`` (process-global, for tests), ``s3://bucket/prefix``
            (through s3fs; the bucket must exist), or any fsspec URL.
        storage_options: passed to the filesystem, e.g. ``{"endpoint_url": ...,
            "key": ..., "secret": ...}`` or ``{"anon": True}`` for S3.
        max_workers: bound of the parallel upload/download pool.
        retries: retries of each transient failure (exponential backoff with jitter).

    Construction probes the store (S3: one listing) and raises ``StoreUnavailableError``
    naming the URL within seconds if the endpoint is down, the bucket is missing or the
    credentials are refused.

    Thread-safety: every method may be called from several threads at once (uploads of
    different shards typically run in background threads). The object pickles as a
    recipe (URL, options) and reconnects where it is unpickled.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        storage_options: dict[str, Any] | None = None,
        *,
        max_workers: int = 8,
        retries: int = 5,
    ) -> None:
        if type(max_workers) is not int or max_workers < 1:
            msg = f"max_workers must be an int >= 1, got {max_workers!r}"
            raise ValueError(msg)
        self._args = (os.fspath(url), dict(storage_options or {}), max_workers, retries)
        self.stats = TransferStats()
        self._objects = ObjectStore(self._args[0], storage_options,
                                    RetryPolicy(retries=retries, stats=self.stats))
        self._objects.probe()
        self._max_workers = max_workers
        self._lock = threading.RLock()
        self._executor: ThreadPoolExecutor | None = None
        self._shards: dict[str, ShardFiles] = {}
        self._latest_seen: EpochManifest | None = None
        self._latest_loaded = False
        self._epochs: OrderedDict[int, EpochManifest] = OrderedDict()

    # ------------------------------------------------------------------ plumbing

    @property
    def url(self) -> str:
        """The store URL (plain paths normalized to ``file://``); never holds credentials."""
        return self._objects.url

    def __repr__(self) -> str:
        return f"CheckpointStore({self._objects.display!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, self._args)

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the transfer pool (idempotent). The store can still be used; it restarts one."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._max_workers,
                                                    thread_name_prefix="raykv-ckpt")
            return self._executor

    def _remember_epoch(self, em: EpochManifest) -> None:
        with self._lock:
            self._epochs[em.epoch] = em
            self._epochs.move_to_end(em.epoch)
            while len(self._epochs) > _EPOCH_CACHE:
                self._epochs.popitem(last=False)
            remember_known(self._shards, em)

    def _cached_epoch(self, epoch: int) -> EpochManifest:
        """An epoch manifest, from the cache when read before (epoch manifests never change)."""
        with self._lock:
            em = self._epochs.get(epoch)
        return em if em is not None else self.read_epoch(epoch)

    # ------------------------------------------------------------------ upload and commit

    def _shard_files(self, shard: str) -> ShardFiles:
        """The shard's cache, loaded on first use: one listing (+ the latest epoch manifest)."""
        with self._lock:
            need_latest = not self._latest_loaded
            self._latest_loaded = True
        if need_latest:
            latest = self.latest_epoch()
            if latest is not None:
                # expired meanwhile: the listing below still works
                with contextlib.suppress(CheckpointNotFoundError):
                    self._cached_epoch(latest)
        return load_shard_files(self._shards, self._lock, self._objects, shard)

    def upload_shard(
        self,
        epoch: int,
        shard: str,
        data_dir: str | os.PathLike[str],
        files: Sequence[str],
        metadata: dict[str, Any] | None = None,
    ) -> ShardManifest:
        """Upload the files of ``shard`` the store lacks, then write its manifest for ``epoch``.

        A file counts as held when a manifest this object wrote or read lists it with the
        same size and checksum as the local file and the store's listing of the shard shows
        it with that size; every other file is uploaded (in parallel, each retried). The
        shard manifest is written last; the epoch does not exist until ``commit_epoch``.

        The files must stay in ``data_dir`` during the call: an upload that runs while the
        engine goes on first pins them with ``link_files(data_dir, files, staging_dir)``
        and passes ``staging_dir`` here.

        Cost: a ``stat`` per file, one checksum pass per file not hashed before in this
        process, one upload per missing file, one manifest write; the first call for a
        shard also lists ``files/<shard>/`` and reads the latest epoch manifest.

        Returns:
            The shard manifest (``new_files``/``new_bytes`` count what was transferred).

        Raises:
            FileNotFoundError: a listed file is not in ``data_dir``.
            CorruptionError: the store already holds a file of that name with a different
                size or checksum: the local file is damaged or was rewritten.
            StoreUnavailableError: the store failed transiently more than ``retries`` times.
        """
        check_epoch(epoch)
        check_shard(shard)
        names = [check_file_name(n) for n in files]
        if len(set(names)) != len(names):
            msg = f"files for shard {shard!r} epoch {epoch} list a name twice: {sorted(names)}"
            raise ValueError(msg)
        meta = normalize_json(metadata or {}, "shard metadata")
        local_dir = Path(data_dir)

        with _gc.INFLIGHT.reserve(self._objects.identity, [(shard, n) for n in names]):
            # crc32 at GB/s; cached per process
            entries = [local_entry(local_dir, shard, epoch, n) for n in names]
            sf = self._shard_files(shard)
            with self._lock:
                missing = plan_upload(sf, shard, entries, local_dir, self._objects.describe)

            def put(e: FileEntry) -> None:
                self._objects.put_file(local_dir / e.name, file_key(shard, e.name))
                self.stats.add(uploaded_files=1, uploaded_bytes=e.size)
                with self._lock:
                    sf.known[e.name] = e
                    if sf.present is not None:
                        sf.present[e.name] = e.size

            run_parallel(self._pool() if len(missing) > 1 else None, put, missing)
            self._objects.sync_dirs(file_key(shard, e.name) for e in missing)
            sm = ShardManifest(
                epoch=epoch,
                shard=shard,
                files=list(entries),
                new_files=len(missing),
                new_bytes=sum(e.size for e in missing),
                metadata=meta,
            )
            self._objects.write_bytes(shard_manifest_key(shard, epoch),
                                      encode_manifest("shard", sm.to_dict()))
        return sm

    def commit_epoch(
        self,
        epoch: int,
        shards: Mapping[str, ShardManifest],
        *,
        offsets: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> EpochManifest:
        """Commit ``epoch``: ONE atomic write of the epoch manifest, after all shard manifests.

        ``shards`` maps every shard name to the manifest ``upload_shard`` returned for this
        epoch (so each shard manifest is already durable). ``offsets`` holds the sources'
        positions, ``metadata`` the partitioning and anything needed to restore; both must
        be JSON objects. Epochs must increase. Committing the same epoch again with the same
        content returns the committed manifest (a retry after a lost answer is safe).

        Cost: one listing of ``epochs/`` and one write.

        Raises:
            ValueError: a manifest of another epoch or shard, or ``epoch`` not newer than
                the latest committed epoch (with different content).
            TypeError: offsets or metadata are not JSON-serializable.
        """
        check_epoch(epoch)
        if not isinstance(shards, Mapping):
            msg = f"shards must map shard names to ShardManifest, got {type(shards).__name__}"
            raise TypeError(msg)
        for name, sm in shards.items():
            if not isinstance(sm, ShardManifest):
                msg = f"shards[{name!r}] must be a ShardManifest, got {type(sm).__name__}"
                raise TypeError(msg)
            if sm.shard != name or sm.epoch != epoch:
                msg = (f"shards[{name!r}] is the manifest of shard {sm.shard!r} epoch {sm.epoch}; "
                       f"commit_epoch({epoch}) needs each shard's manifest of epoch {epoch}")
                raise ValueError(msg)
        em = EpochManifest(
            epoch=epoch,
            created_at=time.time(),
            shards={k: shards[k] for k in sorted(shards)},
            offsets=normalize_json(offsets or {}, "offsets"),
            metadata=normalize_json(metadata or {}, "epoch metadata"),
        )
        existing = self.epochs()
        if existing and epoch <= existing[-1]:
            if epoch in existing:
                try:
                    old = self.read_epoch(epoch)
                except CheckpointNotFoundError:
                    old = None
                if old is not None and _same_content(old, em):
                    return old
            msg = (
                f"cannot commit epoch {epoch} to {self.url}: the latest committed epoch is "
                f"{existing[-1]} and epochs must increase; commit epoch {existing[-1] + 1} or later"
            )
            raise ValueError(msg)
        self._objects.write_bytes(epoch_key(epoch), encode_manifest("epoch", em.to_dict()))
        self._remember_epoch(em)
        return em

    # ------------------------------------------------------------------ reading

    def epochs(self) -> list[int]:
        """Committed epochs, ascending. Cost: one listing."""
        return _gc.list_epochs(self._objects)

    def latest_epoch(self) -> int | None:
        """The newest committed epoch, or ``None`` for an empty store. Cost: one listing."""
        epochs = self.epochs()
        return epochs[-1] if epochs else None

    def read_epoch(self, epoch: int) -> EpochManifest:
        """Read and verify the manifest of committed ``epoch``. Cost: one read.

        Raises:
            CheckpointNotFoundError: ``epoch`` is not committed; the message lists the
                committed epochs.
            CorruptionError: the manifest is damaged (names it).
        """
        check_epoch(epoch)
        key = epoch_key(epoch)
        try:
            data = self._objects.read_bytes(key)
        except FileNotFoundError:
            msg = (f"epoch {epoch} is not committed in {self.url}; committed epochs: "
                   f"{summarize_epochs(self.epochs())}")
            raise CheckpointNotFoundError(msg) from None
        em = decode_epoch_manifest(data, self._objects.describe(key))
        if em.epoch != epoch:
            raise CorruptionError(self._objects.describe(key), "epoch",
                                  detail=f"manifest holds epoch {em.epoch}")
        self._remember_epoch(em)
        return em

    # ------------------------------------------------------------------ restore and verify

    def restore_shard(self, epoch: int, shard: str, data_dir: str | os.PathLike[str],
                      spares: Sequence[Path] = ()) -> SwapResult:
        """Make ``data_dir`` hold exactly the state of ``shard`` at committed ``epoch``.

        ``data_dir`` must not be open by an engine (it may hold the engine's ``LOCK``,
        which is left alone). Files present locally with the right size and checksum are
        reused, files found intact in a ``spares`` dir (a shard's links of the epochs it
        uploaded) are linked; the others are downloaded in parallel into a staging
        directory and verified; only then is the old local state dropped (see
        ``restore.py`` for the crash-safe swap). Opening an engine on ``data_dir``
        afterwards yields that state. Returns what was reused, linked and downloaded.

        Cost: one manifest read, the downloads of missing files, one checksum pass over
        local files not hashed before in this process.

        Raises:
            CheckpointNotFoundError: the epoch is not committed or does not hold ``shard``.
            CorruptionError: a file is missing from the store or damaged (names it); the
                local directory is unchanged.
        """
        check_shard(shard)
        em = self.read_epoch(epoch)
        sm = em.shards.get(shard)
        if sm is None:
            msg = (f"epoch {epoch} in {self.url} has no shard {shard!r}; its shards: "
                   f"{', '.join(sorted(em.shards)) or 'none'}")
            raise CheckpointNotFoundError(msg)

        def fetch(entries: Sequence[FileEntry], staging: Path) -> None:
            _integrity.fetch_all(self._objects, self.stats, self._pool, shard, epoch, entries,
                                 staging, lambda: summarize_epochs(self.epochs()))

        with _gc.INFLIGHT.reserve(self._objects.identity, [(shard, e.name) for e in sm.files]):
            return swap_in(data_dir, sm.files, fetch, spares)

    def verify(self, epoch: int | None = None) -> None:
        """Check that every file ``epoch`` (default: every committed epoch) references is intact.

        Reads each referenced file once (files shared by epochs are read once) and compares
        size and checksum with the manifest.

        Cost: one full read of every referenced file, in parallel.

        Raises:
            CheckpointNotFoundError: ``epoch`` is not committed.
            CorruptionError: a file is missing or damaged, or a manifest is damaged; the
                message names the first bad file and counts the others.
        """
        epochs = [epoch] if epoch is not None else self.epochs()
        _integrity.verify_epochs(self._objects, self.read_epoch, self._pool, epochs)

    def intact_epochs(self, epochs: Sequence[int] | None = None) -> list[int]:
        """The committed epochs (of ``epochs``, default all) that ``verify`` accepts.

        An epoch is intact when its manifest reads and every file it references is
        present with the size and checksum its manifest records: a restore of it
        succeeds. Never raises for damage (a damaged epoch is simply left out).

        Cost: as ``verify()`` of those epochs: one full read of every referenced file
        (files shared by epochs are read once), in parallel.
        """
        wanted = list(epochs) if epochs is not None else self.epochs()
        return _integrity.intact_epochs(self._objects, self.read_epoch, self._pool, wanted)

    # ------------------------------------------------------------------ retention

    def pin(self, epoch: int) -> None:
        """Keep ``epoch`` through every ``gc`` until ``unpin``. Cost: one check, one write.

        Raises:
            CheckpointNotFoundError: ``epoch`` is not committed.
        """
        check_epoch(epoch)
        if not self._objects.exists(epoch_key(epoch)):
            msg = (f"cannot pin epoch {epoch}: not committed in {self.url}; committed epochs: "
                   f"{summarize_epochs(self.epochs())}")
            raise CheckpointNotFoundError(msg)
        self._objects.write_bytes(pin_key(epoch), b"")

    def unpin(self, epoch: int) -> None:
        """Let ``gc`` expire ``epoch`` again; unpinning an epoch not pinned is not an error."""
        check_epoch(epoch)
        self._objects.delete([pin_key(epoch)])

    def pins(self) -> list[int]:
        """Pinned epochs, ascending."""
        return _gc.list_pins(self._objects)

    def gc(self, retain: int, *, dry_run: bool = False) -> _gc.GCReport:
        """Delete all committed epochs but the newest ``retain`` and the pinned ones.

        Deletes the expired epoch manifests first, then their shard manifests, then the
        files no kept, pinned or in-flight epoch references (``gc.py`` has the steps).
        Files referenced by nothing (uploads of an uncommitted epoch, crashed uploads) are
        left to ``sweep_orphans``.

        Raises:
            ValueError: ``retain`` < 1.
        """
        report = _gc.collect_garbage(self._objects, self._cached_epoch, retain, dry_run=dry_run)
        if not dry_run:
            self._forget(report.deleted_files)
            with self._lock:
                for e in report.expired:
                    self._epochs.pop(e, None)
        return report

    def sweep_orphans(self, grace_seconds: float = 3600, *, dry_run: bool = False) -> list[str]:
        """Delete objects no committed epoch references that are older than ``grace_seconds``.

        The grace period must exceed the longest ``upload_shard`` + ``commit_epoch``: a
        file uploaded for an epoch that is not committed yet is an orphan until then.
        Returns the deleted (``dry_run``: deletable) keys relative to the store root.
        """
        doomed = _gc.sweep_orphans(self._objects, self._cached_epoch, grace_seconds,
                                   dry_run=dry_run)
        if not dry_run:
            self._forget(doomed)
        return doomed

    def _forget(self, keys: Sequence[str]) -> None:
        with self._lock:
            forget(self._shards, keys)

    def store_bytes(self) -> int:
        """Total size of the engine files in the store (one recursive listing)."""
        return sum(info.size for info in self._objects.list(FILES_DIR, recursive=True).values())


def _same_content(a: EpochManifest, b: EpochManifest) -> bool:
    da, db = a.to_dict(), b.to_dict()
    da.pop("created_at")
    db.pop("created_at")
    return bool(da == db)


def _rebuild(url: str, storage_options: dict[str, Any], max_workers: int,
             retries: int) -> CheckpointStore:
    return CheckpointStore(url, storage_options, max_workers=max_workers, retries=retries)
