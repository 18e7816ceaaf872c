"""Thesis API parity: ``snapshot(epoch)`` / ``restore(epoch)`` on an engine opened with ``remote=``.

This is the default backend of the engines' ``remote=`` plug-in point
(``raykv.engines.remote``): ``KVStore.__init__`` calls the registered factory, by default
``EngineRemote(engine, url, storage_options)`` (named there, loaded on first use), and
``KVStore.snapshot`` / ``KVStore.restore`` delegate here. It implements the
``raykv.engines.remote.EngineRemote`` protocol and uses only the engine's public API
(``seal``, ``data_dir``, ``engine_name``, ``swapped_out``). The engine's state is
checkpointed as the single shard ``"engine"`` of a ``CheckpointStore``::

    kv = LSMTree("/data/kv", remote="s3://bucket/kv", storage_options={...})
    kv.set(b"k", b"v")
    kv.snapshot(1)      # seal + upload new files + commit epoch 1
    kv.restore()        # back to the latest committed epoch (here 1)

Opening an engine with a remote on an empty data directory restores the latest
committed epoch first (thesis 3.1.1), or starts empty if the store has none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raykv.checkpointing.store import CheckpointStore, summarize_epochs
from raykv.errors import CheckpointNotFoundError

if TYPE_CHECKING:
    from raykv.engines.base import KVStore

ENGINE_SHARD = "engine"


class EngineRemote:
    """Checkpoint plumbing of one engine (see the module docstring).

    Args:
        engine: the engine (not yet loaded while ``KVStore.__init__`` runs).
        url: checkpoint store URL.
        storage_options: fsspec options for ``url``.

    Raises:
        StoreUnavailableError: the store cannot be reached (from ``CheckpointStore``).
    """

    def __init__(self, engine: KVStore, url: str, storage_options: dict[str, Any] | None) -> None:
        self.engine = engine
        self.store = CheckpointStore(url, storage_options)

    def __repr__(self) -> str:
        return f"EngineRemote({self.store.url!r})"

    def snapshot(self, epoch: int) -> list[str]:
        """Seal the engine, upload the files the store lacks, and commit ``epoch``.

        Cost: the seal, one upload per new file, two manifest writes, one listing.
        Returns the live file names of the snapshot.

        Raises:
            ValueError: ``epoch`` is not newer than the latest committed epoch.
        """
        files = self.engine.seal()
        meta = {"engine": self.engine.engine_name}
        sm = self.store.upload_shard(epoch, ENGINE_SHARD, self.engine.data_dir, files, meta)
        self.store.commit_epoch(epoch, {ENGINE_SHARD: sm}, metadata=meta)
        return files

    def _resolve(self, epoch: int | None) -> int:
        if epoch is not None:
            em = self.store.read_epoch(epoch)  # raises CheckpointNotFoundError listing epochs
        else:
            latest = self.store.latest_epoch()
            if latest is None:
                msg = f"no committed epoch in {self.store.url} to restore; snapshot(epoch) first"
                raise CheckpointNotFoundError(msg)
            em = self.store.read_epoch(latest)
        sm = em.shards.get(ENGINE_SHARD)
        if sm is None:
            msg = (f"epoch {em.epoch} in {self.store.url} holds no engine snapshot (shards: "
                   f"{', '.join(sorted(em.shards))}); it was not written by KVStore.snapshot")
            raise CheckpointNotFoundError(msg)
        written_by = sm.metadata.get("engine")
        if written_by is not None and written_by != self.engine.engine_name:
            msg = (f"epoch {em.epoch} in {self.store.url} is a {written_by!r} snapshot; it cannot "
                   f"be restored into a {self.engine.engine_name!r} engine")
            raise ValueError(msg)
        return em.epoch

    def restore(self, epoch: int | None = None) -> int:
        """Replace the engine's state with committed ``epoch`` (latest when ``None``).

        Unsealed writes are discarded. The epoch is checked before anything changes; the
        files are fetched and verified before the local state is dropped, and if that fails
        the engine reopens its previous state and the error propagates.

        Returns the epoch restored.

        Raises:
            CheckpointNotFoundError: the epoch is not committed (the message lists those that are).
            CorruptionError: a checkpoint file is missing or damaged (names it).
        """
        target = self._resolve(epoch)
        with self.engine.swapped_out() as data_dir:  # reopens from data_dir, also on error
            self.store.restore_shard(target, ENGINE_SHARD, data_dir)
        return target

    def restore_into_empty_dir(self) -> None:
        """Restore the latest committed epoch into the (empty, not yet loaded) data dir.

        Does nothing when the store holds no epoch: the engine starts empty.
        """
        latest = self.store.latest_epoch()
        if latest is not None:
            self.store.restore_shard(self._resolve(latest), ENGINE_SHARD, self.engine.data_dir)

    def close(self) -> None:
        """Stop the store's transfer threads (idempotent; the store restarts them if used)."""
        self.store.close()

    def epochs(self) -> list[int]:
        """Committed epochs of this engine's store."""
        return self.store.epochs()

    def describe_epochs(self) -> str:
        """Committed epochs, summarized for messages."""
        return summarize_epochs(self.store.epochs())
