"""Transient errors are retried and corrupt nothing; a crash at any write of a commit
leaves the previous epoch restorable; unreachable stores fail fast and clearly."""

from __future__ import annotations

import contextlib
import socket
import threading
import types
import uuid
from pathlib import Path
from typing import Any

import pytest

import tests.checkpointing.flaky  # noqa: F401 - registers flakymemory:// and flakys3://
from raykv.checkpointing import CheckpointStore, transfer
from raykv.checkpointing.objectstore import PROBE_RETRIES
from raykv.checkpointing.transfer import RetryPolicy, is_transient
from raykv.errors import StoreUnavailableError
from tests.checkpointing.flaky import Crash
from tests.checkpointing.helpers import Shards, restored_state


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoffs the retry loop asks for, in order; recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(transfer, "time", types.SimpleNamespace(sleep=slept.append))
    return slept


def _within_policy(backoffs: list[float], policy: RetryPolicy) -> bool:
    """Each backoff lies in ``[0, min(max_delay, base_delay * 2**i)]`` (full jitter)."""
    return all(0 <= d <= min(policy.max_delay, policy.base_delay * 2**i)
               for i, d in enumerate(backoffs))


def _exercise(store: CheckpointStore, tmp_path: Path, epochs: int = 3) -> Shards:
    shards = Shards(tmp_path / "live", ["p/0", "p/1"], seed=4)
    for epoch in range(1, epochs + 1):
        shards.write(40)
        shards.checkpoint(store, epoch)
    shards.close()
    for epoch in range(1, epochs + 1):
        for name in ["p/0", "p/1"]:
            got = restored_state(store, epoch, name, tmp_path / f"r{epoch}" / name)
            assert got == shards.history[epoch][name]
    store.verify()
    return shards


@pytest.mark.parametrize("error", ["reset", "eio", "timeout"])
@pytest.mark.parametrize("partial", [False, True])
def test_transient_errors_are_retried(tmp_path: Path, error: str, partial: bool) -> None:
    url = f"flakymemory://raykv-flaky-{uuid.uuid4().hex}"
    store = CheckpointStore(url, {"fail_first": 3, "error": error, "partial": partial,
                                  "skip_instance_cache": True}, retries=5)
    _exercise(store, tmp_path)
    fs = store._objects.fs
    assert sum(fs.injected.values()) >= 9  # put_file, pipe_file, get_file, open at least
    assert store.stats.retries == sum(fs.injected.values())
    # nothing torn was left behind: a clean view verifies every epoch
    CheckpointStore(url.replace("flakymemory", "memory")).verify()


@pytest.mark.s3
def test_transient_errors_are_retried_on_s3(tmp_path: Path,
                                            s3_bucket: tuple[str, dict[str, Any]]) -> None:
    bucket, options = s3_bucket
    url = f"flakys3://{bucket.removeprefix('s3://')}/flaky"
    store = CheckpointStore(url, {"target_options": options, "fail_first": 2, "error": "eio",
                                  "partial": True, "skip_instance_cache": True})
    _exercise(store, tmp_path, epochs=2)
    assert store.stats.retries == sum(store._objects.fs.injected.values()) >= 6
    CheckpointStore(f"{bucket}/flaky", options).verify()


def test_permanent_errors_are_not_retried(tmp_path: Path) -> None:
    store = CheckpointStore(f"flakymemory://raykv-denied-{uuid.uuid4().hex}",
                            {"fail_first": 1, "error": "denied", "skip_instance_cache": True})
    shards = Shards(tmp_path / "live", ["s"])
    shards.write()
    with pytest.raises(PermissionError, match="access denied"):
        shards.checkpoint(store, 1)
    assert store.stats.retries == 0
    shards.close()


def test_retries_run_out(tmp_path: Path, backoffs: list[float]) -> None:
    name = f"raykv-down-{uuid.uuid4().hex}"
    good = CheckpointStore(f"memory://{name}")
    shards = Shards(tmp_path / "live", ["s"])
    shards.write()
    shards.checkpoint(good, 1)
    bad = CheckpointStore(f"flakymemory://{name}",
                          {"fail_first": 100, "skip_instance_cache": True}, retries=2)
    shards.write()
    with pytest.raises(StoreUnavailableError, match=rf"flakymemory://{name}.*after 3 attempts"):
        shards.checkpoint(bad, 2)
    # the first failing operation gave up after its 3 attempts, with 2 bounded backoffs
    injected = bad._objects.fs.injected
    assert len(injected) == 1 and sum(injected.values()) == 3, injected
    assert bad.stats.retries == 2
    assert len(backoffs) == 2 and _within_policy(backoffs, bad._objects.retry), backoffs
    shards.close()
    assert good.epochs() == [1]
    assert restored_state(good, 1, "s", tmp_path / "r") == shards.history[1]["s"]


def test_crash_at_every_write_of_an_epoch(tmp_path: Path) -> None:
    """Crash before write k of C2-C5 for every k: epoch 1 stays the latest and restores."""
    for k in range(0, 50):
        name = f"raykv-crash-{uuid.uuid4().hex}"
        store = CheckpointStore(f"flakymemory://{name}", {"skip_instance_cache": True})
        shards = Shards(tmp_path / f"live{k}", ["c/0", "c/1", "c/2"], seed=k)
        shards.write()
        shards.checkpoint(store, 1)
        fs = store._objects.fs
        fs.die_after_writes = fs.writes + k
        shards.write()
        try:
            shards.checkpoint(store, 2)
            crashed = False
        except Crash:
            crashed = True
        shards.close()
        clean = CheckpointStore(f"memory://{name}")
        if crashed:
            assert clean.epochs() == [1]
        else:
            assert clean.epochs() == [1, 2]
        clean.verify()
        for epoch in clean.epochs():
            for s in ["c/0", "c/1", "c/2"]:
                got = restored_state(clean, epoch, s, tmp_path / f"r{k}-{epoch}-{s}")
                assert got == shards.history[epoch][s]
        if not crashed:
            assert k >= 7  # 3 x (snap + manifest + shard manifest) writes, then the commit
            break
    assert not crashed


# ---------------------------------------------------------------------- real S3 errors


class DroppingProxy:
    """A TCP proxy in front of the moto server that drops its first ``drop`` connections."""

    def __init__(self, upstream: str, drop: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.drop = drop
        self.accepted = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted <= self.drop:
                conn.recv(65536)
                conn.close()  # the request is read, the answer never comes
                continue
            up = socket.create_connection(self.upstream)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.s3
def test_dropped_connections_to_s3_are_retried(tmp_path: Path, s3_endpoint: str,
                                               s3_bucket: tuple[str, dict[str, Any]]) -> None:
    bucket, options = s3_bucket
    proxy = DroppingProxy(s3_endpoint, drop=2)
    try:
        store = CheckpointStore(f"{bucket}/proxied", {**options, "endpoint_url": proxy.url,
                                                      "skip_instance_cache": True})
        _exercise(store, tmp_path, epochs=2)
        # aiohttp may itself retry one dropped connection; ours retried the rest
        assert store.stats.retries >= 1
        assert proxy.accepted > 2
    finally:
        proxy.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoint_fails_fast(backoffs: list[float]) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(StoreUnavailableError) as info:
        CheckpointStore("s3://some-bucket/prefix",
                        {"endpoint_url": endpoint, "key": "AKIDKEY", "secret": "s3cr3t-value"})
    text = str(info.value)
    # the probe gives up after PROBE_RETRIES retries with bounded backoffs, not the default 5
    assert f"after {PROBE_RETRIES + 1} attempts" in text
    assert len(backoffs) == PROBE_RETRIES and _within_policy(backoffs, RetryPolicy()), backoffs
    assert "s3://some-bucket/prefix" in text and endpoint in text
    assert "s3cr3t-value" not in text and "AKIDKEY" not in text


@pytest.mark.s3
def test_missing_bucket_fails_fast(s3_endpoint: str, backoffs: list[float]) -> None:
    with pytest.raises(StoreUnavailableError, match="bucket does not exist"):
        CheckpointStore("s3://no-such-bucket-raykv/x",
                        {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"})
    assert backoffs == []  # a missing bucket is permanent: the first answer is final


def test_unusable_local_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StoreUnavailableError, match="file"):
        CheckpointStore(tmp_path / "file" / "store")


def test_is_transient_classification() -> None:
    import errno

    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(OSError(errno.EIO, "InternalError"))
    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(ReadTimeoutError(endpoint_url="http://x"))
    assert not is_transient(FileNotFoundError("x"))
    assert not is_transient(PermissionError("x"))
    assert not is_transient(OSError(errno.EINVAL, "InvalidBucketName"))
    assert not is_transient(ValueError("x"))
