"""The ``KVStore`` contract shared by every engine.

Lifecycle: ``open -> (get | set | delete | multi_get | multi_set | multi_set_packed | items |
seal)* -> close``.

Contract (every engine keeps it; ``tests/engines/contract.py`` checks it):

* Keys and values are ``bytes``. A key is 1..``max_key_len`` bytes; a value is
  0..``max_value_len`` bytes. Setting a value of ``b""`` deletes the key (thesis API).
* ``get`` of a missing key returns ``b""``; mapping-style ``store[key]`` raises ``KeyError``.
* A call with a bad argument (wrong type, empty or oversized key, oversized value) raises
  ``TypeError`` or ``ValueError`` naming the problem and the limit, and changes nothing:
  ``multi_set`` validates the whole batch before applying any pair.
* ``seal()`` makes the current state durable in immutable run files in ``data_dir`` and
  returns the names of all live files (run files plus the engine manifest), sorted. A file
  name, once returned, never names different content (see ``filename.py``). An idle seal
  (no writes since the previous one) writes nothing and returns the same list.
* ``close()`` seals and releases the directory. Reopening the same ``data_dir`` returns
  exactly the state at close. After a crash (the process killed), reopening returns at
  least the state at the last ``seal()``; never garbage: a damaged file raises
  ``CorruptionError`` naming it.
* Engines are not thread-safe: one thread (one Ray actor) drives an engine. A data
  directory is locked (``LOCK``) against a second engine opening it.

Engine implementers provide ``_open``, ``_seal``, ``_release``, ``get``, ``set``,
``multi_get``, ``multi_set``, ``items``, ``live_keys`` and ``__sizeof__``; the rest is
built here, argument checks in ``validation.py`` (``Validation``, a base class). Files
are written through ``self._new_file(kind)`` names; ``_commit(state, files)`` writes a new
engine manifest and deletes the files the previous manifest listed that are no longer live.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypedDict

import numpy as np
import numpy.typing as npt

from raykv.engines.expiry import Expiry
from raykv.engines.fileio import fsync_dir, fsync_files
from raykv.engines.filename import MANIFEST_KIND, TMP_SUFFIX, FileNumbers, parse_file_name
from raykv.engines.keywords import split_fixed
from raykv.engines.manifest import Manifest, find_latest_manifest, write_manifest
from raykv.engines.stats import EngineStats
from raykv.engines.validation import (
    DEFAULT_MAX_KEY_LEN,
    DEFAULT_MAX_VALUE_LEN,
    KEY_LEN_CEILING,
    VALUE_LEN_CEILING,
    Pairs,
    Validation,
    check_int_param,
)
from raykv.errors import CorruptionError, StoreClosedError

if TYPE_CHECKING:
    from raykv.engines.remote import EngineRemote

__all__ = [  # the limits, Pairs, EngineStats and check_int_param are re-exported from here
    "DEFAULT_MAX_KEY_LEN",
    "DEFAULT_MAX_VALUE_LEN",
    "KEY_LEN_CEILING",
    "VALUE_LEN_CEILING",
    "EngineStats",
    "KVStore",
    "Pairs",
    "StoreOptions",
    "check_int_param",
]

class StoreOptions(TypedDict, total=False):
    """The ``KVStore`` keyword arguments an engine passes through (``**kwargs``)."""

    max_key_len: int
    max_value_len: int
    remote: str | None
    storage_options: dict[str, Any] | None


class KVStore(Validation, ABC):
    """A key-value engine holding one shard's state in a local directory.

    Args:
        data_dir: directory owned by this engine; created if missing.
        max_key_len: largest key accepted, in bytes.
        max_value_len: largest value accepted, in bytes.
        remote: optional checkpoint store URL (``file://``, ``s3://``, ``memory://``, or a
            plain path). With a remote, ``snapshot(epoch)`` and ``restore(epoch)`` work,
            and opening an empty ``data_dir`` restores the latest committed epoch. The
            backend is plugged in through ``raykv.engines.remote`` (by default the
            checkpointing layer's ``CheckpointStore``).
        storage_options: passed to fsspec for ``remote`` (e.g. ``endpoint_url``, ``key``).
    """

    engine_name: ClassVar[str] = "kvstore"
    #: whether ``live_keys()`` is exact (``False``: an upper bound, see the engine's docs)
    live_keys_exact: ClassVar[bool] = True

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        max_key_len: int = DEFAULT_MAX_KEY_LEN,
        max_value_len: int = DEFAULT_MAX_VALUE_LEN,
        remote: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        check_int_param("max_key_len", max_key_len, 1, KEY_LEN_CEILING)
        check_int_param("max_value_len", max_value_len, 0, VALUE_LEN_CEILING)
        self.max_key_len = max_key_len
        self.max_value_len = max_value_len
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stats = EngineStats()
        #: The horizon merges expire stamped records below (``set_expiry``; ``None``: off).
        self.expiry: Expiry | None = None
        self._closed = True
        self._lock_fd: int | None = _lock_dir(self.data_dir)
        self._remote: EngineRemote | None = None
        try:
            if remote is not None:
                from raykv.engines.remote import remote_factory

                self._remote = remote_factory()(self, remote, storage_options)
                if find_latest_manifest(self.data_dir) is None:
                    self._remote.restore_into_empty_dir()
            self._load()
        except BaseException:
            self._unlock()
            raise

    # ------------------------------------------------------------------ engine hooks

    @abstractmethod
    def _open(self, manifest: Manifest | None) -> None:
        """Build in-memory structures from ``manifest`` (``None``: empty store)."""

    @abstractmethod
    def _seal(self) -> bool:
        """Persist all unsealed state to new run files and ``_commit`` a manifest.

        Return ``False`` (having written nothing) when nothing changed since the last
        commit. Must not run merges: a seal right after many writes stays cheap.
        """

    @abstractmethod
    def _release(self) -> None:
        """Close open file handles; in-memory state may be dropped."""

    @abstractmethod
    def get(self, key: bytes) -> bytes:
        """Return the value of ``key``, or ``b""`` if it is missing."""

    @abstractmethod
    def set(self, key: bytes, value: bytes) -> None:
        """Insert or update ``key``; ``value == b""`` deletes it."""

    @abstractmethod
    def multi_get(self, keys: Sequence[bytes]) -> list[bytes]:
        """Return the values of ``keys`` in order (``b""`` for missing ones)."""

    @abstractmethod
    def multi_set(self, pairs: Pairs) -> None:
        """Apply ``(key, value)`` pairs in order (later pairs win); validated as a whole first."""

    def multi_set_packed(self, words: npt.NDArray[np.uint64], rows: npt.NDArray[np.uint8]
                         ) -> None:
        """``multi_set`` of 8-byte keys and values of one size, given as two arrays.

        ``words[i]`` is key ``i``'s 8 bytes read big-endian (words sort like the keys);
        ``rows`` has shape ``(len(words), size)`` with ``size >= 1``: row ``i`` is key
        ``i``'s value. Same result as ``multi_set`` of the pairs in order (later pairs
        win); validated as a whole first (``_check_packed``). An operator's fold of
        integer keys writes this way. Engines with a vectorized write path (HybridLog)
        override it; this version builds one ``bytes`` per key and value for
        ``multi_set``.
        """
        self._ensure_open()
        size = self._check_packed(words, rows)
        if not len(words):
            return
        self.multi_set(dict(zip(split_fixed(words.astype(">u8").tobytes(), 8),
                                split_fixed(np.ascontiguousarray(rows).tobytes(), size),
                                strict=True)))

    @abstractmethod
    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over all live ``(key, value)`` pairs (order is engine-specific).

        The store must not be modified while the iterator is in use.
        """

    @abstractmethod
    def live_keys(self) -> int:
        """Number of live keys (set and not deleted since), in O(1).

        Exact when ``live_keys_exact`` is true (MemOnly, HybridLog, AppendLog): equal to
        ``len(dict(self.items()))`` after any sequence of writes, seals, merges, reopens
        and restores. Otherwise (LSMTree) an upper bound that the engine documents,
        together with when it is exact. Never reads files; ``raykv.metrics`` calls it once
        per shard per epoch. Raises ``StoreClosedError`` on a closed store.
        """

    @abstractmethod
    def __sizeof__(self) -> int:
        """Bytes of memory the engine holds (indexes, buffers, filters), estimated in O(1)."""

    def _check(self) -> None:
        """Assert internal invariants (tests call this); engines override."""

    # ------------------------------------------------------------------ built on the hooks

    def item_chunks(self, rows: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """The pairs of :meth:`items`, in its order, as ``(keys, values)`` lists.

        At most ``rows`` pairs per chunk, none empty. The store must not be modified
        while the iterator is in use. Engines override this with chunked reads (no Python
        object per pair beyond its key and value); this version groups ``items()``.
        """
        items = self.items()
        while pairs := list(islice(items, rows)):
            yield list(map(itemgetter(0), pairs)), list(map(itemgetter(1), pairs))

    def delete(self, key: bytes) -> None:
        """Delete ``key``; deleting a missing key is not an error."""
        self.set(key, b"")

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if not value:
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.set(key, value)

    def __delitem__(self, key: bytes) -> None:
        self.set(key, b"")

    def __contains__(self, key: object) -> bool:
        if isinstance(key, bytes):
            return bool(self.get(key))
        self._reject_key(key)  # raises TypeError
        return False

    def keys(self) -> Iterator[bytes]:
        """Iterate over all live keys."""
        return (k for k, _ in self.items())

    def seal(self) -> list[str]:
        """Make the current state durable in immutable run files; return the live file names.

        Cost: writes only what changed since the previous seal (plus a small manifest);
        never merges. The returned names are relative to ``data_dir``, sorted by number.
        """
        self._ensure_open()
        if self._seal():
            self.stats.seals += 1
        return self.live_files()

    def set_expiry(self, horizon: int | None, *, keep: Collection[bytes] = ()) -> None:
        """Let every later flush, merge and compaction expire records stamped below ``horizon``.

        A compaction filter (``expiry.py`` states the stamp format and the contract): a
        record whose value starts with an 8-byte stamp ``< horizon`` and whose key is not
        in ``keep`` is treated as deleted by the engine's own merges (dropped, or a
        tombstone where an older record of the key may remain), and counted in
        ``stats.expired_records``/``expired_bytes``. Reads are unchanged: the caller
        checks stamps itself. ``None`` turns expiry off. The horizon is kept in memory
        only, and cleared whenever the engine (re)opens its files (open, restore,
        ``swapped_out``). Cost: O(len(keep)).
        """
        self.expiry = None if horizon is None else Expiry.of(horizon, keep)
        self._expiry_changed()

    def _expiry_changed(self) -> None:
        """Hook: the horizon changed (an engine may plan merges of expired runs)."""

    def live_files(self) -> list[str]:
        """Names of the files of the last committed state (runs + manifest), sorted."""
        if self._manifest_name is None:
            return []
        return sorted([*self._live_files, self._manifest_name])

    def close(self) -> None:
        """Seal, release files and the directory lock. Idempotent."""
        if self._closed:
            return
        try:
            self.seal()
        finally:
            self.discard()

    def discard(self) -> None:
        """Release files and the directory lock *without* sealing. Idempotent.

        Writes since the last ``seal`` are dropped; reopening ``data_dir`` yields the state
        of the last seal. For a shard rolled back to a checkpoint (local recovery): its
        unsealed state belongs to an epoch that will be replayed. Cost: a ``_release``.
        """
        if self._closed:
            return
        try:
            self._release()
        finally:
            self._closed = True
            self._unlock()
            if self._remote is not None:
                self._remote.close()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"{type(self).__name__}({str(self.data_dir)!r}, {state})"

    # ------------------------------------------------------------------ checkpoint parity

    def snapshot(self, epoch: int) -> list[str]:
        """Seal, upload the files the remote store lacks, and commit ``epoch`` there.

        Requires ``remote=``. Returns the live file names of the snapshot.
        """
        return self._require_remote().snapshot(epoch)

    def restore(self, epoch: int | None = None) -> int:
        """Replace the local state with committed ``epoch`` (latest when ``None``).

        Requires ``remote=``. Downloads only the files missing locally and verifies them
        before the local state is dropped. Returns the epoch restored.

        Raises:
            CheckpointNotFoundError: the epoch does not exist (the message lists those that do).
        """
        return self._require_remote().restore(epoch)

    def _require_remote(self) -> EngineRemote:
        self._ensure_open()
        if self._remote is None:
            msg = (
                f"{type(self).__name__} at {self.data_dir} was opened without remote=; "
                "pass remote='file:///path' or 's3://bucket/prefix' to snapshot or restore"
            )
            raise ValueError(msg)
        return self._remote

    # ------------------------------------------------------------------ helpers for engines

    def _load(self) -> None:
        """(Re)open from the newest manifest in ``data_dir``; delete unreferenced files."""
        manifest = find_latest_manifest(self.data_dir)
        live = set(manifest.files) if manifest else set()
        for name in live:
            if not (self.data_dir / name).is_file():
                raise CorruptionError(
                    self.data_dir / name, "missing file",
                    detail=f"listed in manifest {manifest.name if manifest else ''} but absent",
                )
        self._files = FileNumbers(self.data_dir, manifest.next_number if manifest else 0)
        keep = live | ({manifest.name} if manifest else set())
        for entry in os.listdir(self.data_dir):
            base = entry.removesuffix(TMP_SUFFIX)
            if parse_file_name(base) is not None and entry not in keep:
                os.unlink(self.data_dir / entry)
        self._manifest_name = manifest.name if manifest else None
        self._live_files: list[str] = list(manifest.files) if manifest else []
        self._unsynced: set[str] = set()
        self.expiry = None  # a horizon belongs to the state it was set for
        self._open(manifest)
        self._closed = False

    @contextlib.contextmanager
    def swapped_out(self) -> Iterator[Path]:
        """Release the engine's files for the block; reopen from ``data_dir`` after it.

        For a checkpoint backend replacing the engine's files (``restore``). Yields
        ``data_dir``. Contract:

        * On entry the engine drops its in-memory state, including writes not sealed yet,
          and closes every file it holds. It keeps the directory lock.
        * Inside the block the engine is closed to callers (every operation raises
          ``StoreClosedError``). The caller may add, replace or delete any engine file
          and manifest in ``data_dir`` (not ``LOCK``), e.g. link or download the files of
          a checkpoint and write their engine manifest (``FORMAT.md``) last.
        * On exit, also when the block raised, the engine reopens from the newest
          manifest in ``data_dir`` exactly as a fresh open would (files no manifest
          lists are deleted). If that reopen fails (e.g. ``CorruptionError``), the error
          propagates and the engine stays closed; a block's own error propagates after
          a successful reopen.

        Cost: a close plus an open (reads the runs' index sections, as a restart does).
        """
        self._ensure_open()
        self._release()
        self._closed = True
        try:
            yield self.data_dir
        finally:
            self._load()

    def _new_file(self, kind: str) -> str:
        """Reserve a new unique file name of ``kind``; the engine writes it under that name.

        Files written with ``sync=False`` must be registered with ``_written(name, n)``;
        ``_commit`` fsyncs them before the manifest that references them.
        """
        return self._files.new_name(kind)

    def _written(self, name: str, nbytes: int, *, synced: bool = False) -> None:
        """Account for a file the engine has just written in full."""
        self.stats.disk_bytes += nbytes
        if not synced:
            self._unsynced.add(name)

    def _commit(self, files: list[str], state: dict[str, Any]) -> None:
        """Durably make ``files`` (plus ``state``) the engine's live set.

        Steps: fsync unsynced files among ``files``; write a new manifest (temporary name,
        fsync, rename); fsync the directory; delete files of the previous live set that
        are no longer listed (and the previous manifest). A crash before the rename
        leaves the previous manifest in force; after it, the new one.
        """
        live = set(files)
        fsync_files(self.data_dir / n for n in self._unsynced if n in live)
        name = self._new_file(MANIFEST_KIND)
        write_manifest(self.data_dir / name, self.engine_name, self._files.next_number,
                       list(files), state)
        self.stats.disk_bytes += (self.data_dir / name).stat().st_size
        fsync_dir(self.data_dir)
        obsolete = [n for n in self._live_files if n not in live]
        if self._manifest_name is not None:
            obsolete.append(self._manifest_name)
        obsolete.extend(n for n in self._unsynced if n not in live)
        for n in obsolete:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.data_dir / n)
        self._unsynced.clear()
        self._live_files = list(files)
        self._manifest_name = name

    def _ensure_open(self) -> None:
        if self._closed:
            msg = f"{type(self).__name__} at {self.data_dir} is closed; open a new one"
            raise StoreClosedError(msg)

def _lock_dir(data_dir: Path) -> int:
    """Take an exclusive advisory lock on ``data_dir/LOCK``; fail fast if held."""
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        msg = (
            f"data directory {data_dir} is in use by another open engine; "
            "close it first or use another directory"
        )
        raise RuntimeError(msg) from None
    return fd
