"""The few object-storage primitives the checkpoint store needs, over any fsspec URL.

``ObjectStore`` maps keys (``files/agg/0003/00000007-1a2b3c4d.run``) under a root URL to
put / get / atomic write / read / list / delete, each retried on transient errors by a
``RetryPolicy``. Local directories (plain paths, ``file://``) get a native implementation
with real atomicity and durability (temporary name, fsync, rename, fsync directory);
every other protocol (``memory://``, ``s3://`` through s3fs, any registered fsspec
filesystem) goes through the generic fsspec calls, where a single PUT is atomic.

For ``s3://`` the store asks s3fs for short timeouts and no retries of its own (this
module retries) and no listings cache; the caller's ``storage_options`` override any of
it. Stores with equal options share one s3fs instance (fsspec's instance cache), so a
second store on the same bucket does not pay for a new client (~0.5 s).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raykv.checkpointing.checksums import stream_checksum
from raykv.checkpointing.transfer import RetryPolicy, TransferStats
from raykv.engines.fileio import fsync_dir
from raykv.errors import StoreUnavailableError

T = TypeVar("T")

S3_DEFAULTS: dict[str, Any] = {
    "use_listings_cache": False,
    "config_kwargs": {
        "connect_timeout": 2,
        "read_timeout": 20,
        "retries": {"total_max_attempts": 1, "mode": "standard"},
    },
}
PROBE_RETRIES = 2
_TMP_MARK = ".tmp-"


class ObjectInfo(NamedTuple):
    """Size and modification time (seconds since the epoch; ``None`` if unknown) of an object."""

    size: int
    mtime: float | None


def _merge_options(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for k, v in given.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_options(out[k], v)
        else:
            out[k] = v
    return out


def _mtime(info: dict[str, Any]) -> float | None:
    for k in ("mtime", "LastModified", "last_modified", "created"):
        v = info.get(k)
        if isinstance(v, int | float):
            return float(v)
        if isinstance(v, _dt.datetime):
            return v.timestamp()
    return None


class ObjectStore:
    """Keys under one root URL, with retried primitives.

    Args:
        url: ``file:///abs/path``, a plain path, ``memory://name``, ``s3://bucket/prefix``
            or any fsspec URL.
        storage_options: passed to the fsspec filesystem (``endpoint_url``, ``key``, ...).
        retry: the retry policy applied to every primitive.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None,
                 retry: RetryPolicy) -> None:
        if not isinstance(url, str | os.PathLike) or not os.fspath(url):
            msg = f"checkpoint store url must be a non-empty str, got {url!r}"
            raise ValueError(msg)
        url = os.fspath(url)
        options = dict(storage_options or {})
        self.retry = retry
        self.stats: TransferStats = retry.stats or TransferStats()
        if "://" not in url:
            url = "file://" + os.path.abspath(url)
        protocol = url.split("://", 1)[0].lower()
        self.is_s3 = protocol in ("s3", "s3a")
        if self.is_s3:
            options = _merge_options(S3_DEFAULTS, options)
        endpoint = options.get("endpoint_url") or options.get("client_kwargs", {}).get(
            "endpoint_url"
        )
        self.url = url.rstrip("/")
        self.display = f"{self.url} (endpoint {endpoint})" if endpoint else self.url
        try:
            fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError) as err:
            msg = f"cannot open checkpoint store {self.display}: {err}"
            raise ValueError(msg) from err
        if self.is_s3:
            fs.retries = 1  # one attempt inside s3fs; RetryPolicy does the retrying
        self.fs = fs
        self.root = root.rstrip("/") if root not in ("", "/") else root
        self.is_local = isinstance(fs, LocalFileSystem)
        self.identity = (type(fs).__name__, self.root)

    # ------------------------------------------------------------------ naming

    def full(self, key: str) -> str:
        """Full filesystem path of ``key``."""
        if not self.root:
            return key
        return f"{self.root.rstrip('/')}/{key}"

    def describe(self, key: str) -> str:
        """``url/key`` for messages (never includes credentials)."""
        return f"{self.url}/{key}"

    def _key_of(self, path: str) -> str | None:
        prefix = self.root.rstrip("/") + "/" if self.root else ""
        path = path.rstrip("/")
        if self.is_local:
            path = os.path.normpath(path)
        return path[len(prefix):] if path.startswith(prefix) else None

    def _run(self, what: str, key: str, fn: Callable[[], T], *, retries: int | None = None) -> T:
        return self.retry.run(  # the probe has no key
            fn, lambda: f"checkpoint store {self.display}: {what}{' ' + key if key else ''}",
            retries=retries,
        )

    # ------------------------------------------------------------------ probing

    def probe(self) -> None:
        """Check that the store is reachable and usable; create a local root if missing.

        Cost: one request (S3: a one-key listing of the prefix). Fails within a few
        seconds when the endpoint is down (short timeouts, ``PROBE_RETRIES`` retries).

        Raises:
            StoreUnavailableError: endpoint unreachable, bucket missing, access denied or
                no credentials, local directory not creatable; the message names the URL.
        """
        try:
            if self.is_local:
                os.makedirs(self.root, exist_ok=True)
                if not os.access(self.root, os.W_OK | os.X_OK):
                    denied = f"{self.root} is not writable"
                    raise PermissionError(denied)
            elif self.is_s3:
                bucket, _, prefix = self.root.partition("/")
                self._run("probe", "", lambda: self.fs.call_s3(
                    "list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1),
                    retries=PROBE_RETRIES)
            else:
                self._run("probe", "", lambda: self.fs.exists(self.root), retries=PROBE_RETRIES)
        except StoreUnavailableError:
            raise
        except FileNotFoundError as err:
            what = "bucket does not exist" if self.is_s3 else "location does not exist"
            msg = f"checkpoint store {self.display}: {what} ({err}); create it first"
            raise StoreUnavailableError(msg) from err
        except PermissionError as err:
            msg = (f"checkpoint store {self.display}: access denied ({err}); check the "
                   "credentials and permissions in storage_options")
            raise StoreUnavailableError(msg) from err
        except OSError as err:
            if not self.is_local:
                raise
            msg = f"checkpoint store {self.display}: cannot use the directory ({err})"
            raise StoreUnavailableError(msg) from err
        except Exception as err:
            if type(err).__name__ in ("NoCredentialsError", "PartialCredentialsError",
                                      "ClientError"):
                msg = f"checkpoint store {self.display}: {err}; check storage_options"
                raise StoreUnavailableError(msg) from err
            raise

    # ------------------------------------------------------------------ primitives

    def put_file(self, local: str | os.PathLike[str], key: str) -> None:
        """Upload a local file to ``key``; atomic: readers see no object or the whole one.

        Local directories: the file is fsynced, its directory entry is made durable only
        by ``sync_dirs`` (one directory fsync for a batch of uploads).
        """
        if self.is_local:
            self._run("upload", key, lambda: self._local_put(Path(local), key))
        else:
            self._run("upload", key, lambda: self.fs.put_file(os.fspath(local), self.full(key)))

    def sync_dirs(self, keys: Iterable[str]) -> None:
        """Make the directory entries of uploaded ``keys`` durable (local: fsync each parent)."""
        if self.is_local:
            for parent in sorted({os.path.dirname(self.full(k)) for k in keys}):
                fsync_dir(Path(parent))

    def get_file(self, key: str, local: str | os.PathLike[str]) -> None:
        """Download ``key`` to a local path (overwritten).

        Raises:
            FileNotFoundError: there is no object ``key``.
        """
        if self.is_local:
            self._run("download", key, lambda: shutil.copyfile(self.full(key), local))
        else:
            self._run("download", key, lambda: self.fs.get_file(self.full(key), os.fspath(local)))

    def write_bytes(self, key: str, data: bytes) -> None:
        """Atomically create or replace ``key`` with ``data`` (local: durable on return)."""
        if self.is_local:
            self._run("write", key, lambda: self._local_write(key, data))
        else:
            self._run("write", key, lambda: self.fs.pipe_file(self.full(key), data))

    def read_bytes(self, key: str) -> bytes:
        """Return the content of ``key``.

        Raises:
            FileNotFoundError: there is no object ``key``.
        """
        if self.is_local:
            return self._run("read", key, lambda: Path(self.full(key)).read_bytes())
        return self._run("read", key, lambda: bytes(self.fs.cat_file(self.full(key))))

    def checksum(self, key: str) -> tuple[int, str]:
        """Stream ``key`` once and return ``(size, checksum)``.

        Raises:
            FileNotFoundError: there is no object ``key``.
        """
        def read() -> tuple[int, str]:
            opener = open if self.is_local else self.fs.open
            with opener(self.full(key), "rb") as f:
                return stream_checksum(f)

        return self._run("read", key, read)

    def exists(self, key: str) -> bool:
        """Whether object ``key`` exists."""
        if self.is_local:
            return os.path.isfile(self.full(key))
        return bool(self._run("stat", key, lambda: self.fs.isfile(self.full(key))))

    def list(self, prefix: str, *, recursive: bool = False) -> dict[str, ObjectInfo]:
        """Objects under ``prefix/`` (keys relative to the root); ``{}`` when there are none.

        Without ``recursive`` only the objects directly under ``prefix`` are listed.
        Cost: one listing request per 1,000 objects (S3).
        """
        if self.is_local:
            return self._run("list", prefix, lambda: self._local_list(prefix, recursive))
        return self._run("list", prefix, lambda: self._generic_list(prefix, recursive))

    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; missing ones are not an error. S3: one request per 1,000 keys."""
        keys = list(keys)
        if not keys:
            return
        if self.is_local:
            for key in keys:
                self._run("delete", key, functools.partial(_unlink, self.full(key)))
            for parent in {os.path.dirname(self.full(k)) for k in keys}:
                if os.path.isdir(parent):
                    fsync_dir(Path(parent))
            return
        paths = [self.full(k) for k in keys]
        for i in range(0, len(paths), 1000):
            chunk = paths[i : i + 1000]
            self._run("delete", chunk[0], functools.partial(self._generic_rm, chunk))

    # ------------------------------------------------------------------ local implementation

    def _local_put(self, local: Path, key: str) -> None:
        dst = Path(self.full(key))
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}")
        try:
            shutil.copyfile(local, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dst)
        except BaseException:
            _unlink(str(tmp))
            raise

    def _local_write(self, key: str, data: bytes) -> None:
        dst = Path(self.full(key))
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dst)
        except BaseException:
            _unlink(str(tmp))
            raise
        fsync_dir(dst.parent)

    def _local_list(self, prefix: str, recursive: bool) -> dict[str, ObjectInfo]:
        base = self.full(prefix)
        out: dict[str, ObjectInfo] = {}
        if not os.path.isdir(base):
            return out
        stack = [(base, prefix)]
        while stack:
            path, key = stack.pop()
            with os.scandir(path) as it:
                for entry in it:
                    child = f"{key}/{entry.name}" if key else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        if recursive:
                            stack.append((entry.path, child))
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        out[child] = ObjectInfo(st.st_size, st.st_mtime)
        return out

    # ------------------------------------------------------------------ generic fsspec

    def _generic_list(self, prefix: str, recursive: bool) -> dict[str, ObjectInfo]:
        base = self.full(prefix)
        try:
            if recursive:
                infos = list(self.fs.find(base, detail=True, withdirs=False).values())
            else:
                infos = [i for i in self.fs.ls(base, detail=True) if i.get("type") == "file"]
        except FileNotFoundError:
            return {}
        out: dict[str, ObjectInfo] = {}
        for info in infos:
            key = self._key_of(str(info["name"]))
            if key is not None and key.startswith(prefix + "/"):
                out[key] = ObjectInfo(int(info.get("size") or 0), _mtime(info))
        return out

    def _generic_rm(self, paths: Sequence[str]) -> None:
        try:
            self.fs.rm(paths)
        except FileNotFoundError:
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(p)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
