"""CheckpointStore on file://, memory:// and S3 (moto): upload, commit, restore, verify.

Tests cite the steps of docs/recovery.md ("Commit" C1-C5, "Restore" R1-R7).
"""

from __future__ import annotations

import pickle
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raykv.checkpointing import CheckpointStore, EpochManifest, ShardManifest, link_files
from raykv.checkpointing._format import epoch_key, file_key, shard_manifest_key
from raykv.engines import MemOnly
from raykv.errors import CheckpointNotFoundError, CorruptionError, FormatVersionError
from tests.checkpointing.conftest import Backend, FakeEngine
from tests.checkpointing.helpers import Shards, restored_state


def test_empty_store(backend: Backend) -> None:
    store = backend.store()
    assert store.epochs() == []
    assert store.latest_epoch() is None
    with pytest.raises(CheckpointNotFoundError, match="committed epochs: none"):
        store.read_epoch(1)
    store.verify()  # nothing to verify is fine


def test_only_new_files_are_uploaded(backend: Backend, fake_engine: FakeEngine) -> None:
    store = backend.store()
    uploaded: dict[str, int] = {}
    for epoch in range(1, 9):
        live = fake_engine.step(add=2 if epoch % 3 else 0, drop=1 if epoch % 4 == 0 else 0)
        expected_new = [n for n in live if n not in uploaded]
        sm = store.upload_shard(epoch, "agg/0001", fake_engine.dir, live)
        store.commit_epoch(epoch, {"agg/0001": sm})
        sizes = {n: (fake_engine.dir / n).stat().st_size for n in expected_new}
        assert sm.new_files == len(expected_new)
        assert sm.new_bytes == sum(sizes.values())
        assert [f.name for f in sm.files] == live
        uploaded.update(sizes)
        # the store holds exactly the union of every file ever uploaded (no GC yet)
        assert backend.objects("files") == {f"files/agg/0001/{n}": s for n, s in uploaded.items()}
    assert store.stats.uploaded_files == len(uploaded)
    assert store.stats.uploaded_bytes == sum(uploaded.values())

    # a new store object (another process) also skips what the store holds
    again = backend.store()
    live = fake_engine.step(add=1)
    sm = again.upload_shard(9, "agg/0001", fake_engine.dir, live)
    assert sm.new_files == 1
    assert sm.new_bytes == (fake_engine.dir / live[-1]).stat().st_size


def test_unknown_or_torn_remote_file_is_uploaded_again(backend: Backend,
                                                       fake_engine: FakeEngine) -> None:
    store = backend.store()
    live = fake_engine.step(add=2)
    store.commit_epoch(1, {"s": store.upload_shard(1, "s", fake_engine.dir, live)})
    # a torn copy of a committed file (e.g. damaged at rest) under the same name
    key = file_key("s", live[0])
    backend.write(key, backend.read(key)[:5])
    live = fake_engine.step(add=1)
    sm = backend.store().upload_shard(2, "s", fake_engine.dir, live)
    assert sm.new_files == 2  # the repaired one and the new one
    assert backend.read(key) == (fake_engine.dir / live[0]).read_bytes()


def test_same_name_different_content_is_refused(backend: Backend, fake_engine: FakeEngine) -> None:
    store = backend.store()
    live = fake_engine.step(add=1)
    store.commit_epoch(1, {"s": store.upload_shard(1, "s", fake_engine.dir, live)})
    (fake_engine.dir / live[0]).write_bytes(b"rewritten in place")
    with pytest.raises(CorruptionError, match=live[0]) as info:
        store.upload_shard(2, "s", fake_engine.dir, live)
    assert "invariant 1" in str(info.value)


def test_restore_every_epoch_matches_model(backend: Backend, tmp_path: Path) -> None:
    store = backend.store()
    names = ["agg/0000", "agg/0001", "agg/0002"]
    shards = Shards(tmp_path / "live", names, seed=7)
    for epoch in range(1, 7):
        shards.write()
        shards.checkpoint(store, epoch)
    shards.close()
    assert store.epochs() == list(range(1, 7))
    for epoch, states in shards.history.items():
        em = store.read_epoch(epoch)
        assert em.offsets == {"src": epoch}
        assert em.metadata == {"partitioning": {"num_shards": 3}}
        for name in names:
            got = restored_state(store, epoch, name, tmp_path / f"r{epoch}" / name)
            assert got == states[name], (epoch, name)


def test_restore_in_place_goes_back_and_forth(backend: Backend, tmp_path: Path) -> None:
    """R1-R7 on a directory that holds another epoch's state: only missing files move."""
    store = backend.store()
    shards = Shards(tmp_path / "live", ["s"], seed=3)
    for epoch in range(1, 5):
        shards.write()
        shards.checkpoint(store, epoch)
    shards.close()
    target = tmp_path / "restore"
    for epoch in [4, 1, 3, 3, 2, 4]:
        before = store.stats.downloaded_files
        assert restored_state(store, epoch, "s", target) == shards.history[epoch]["s"]
        # LOCK is not an engine file and survives; no staging dir is left behind
        assert {p.name for p in target.iterdir() if p.name.startswith(".")} == set()
        assert (target / "LOCK").exists()
        if epoch == 3 and store.stats.downloaded_files == before:
            pass  # second restore of the same epoch downloads nothing (checked below)
    before = store.stats.downloaded_files
    store.restore_shard(4, "s", target)
    assert store.stats.downloaded_files == before


def test_crash_between_shard_uploads_and_commit(backend: Backend, tmp_path: Path) -> None:
    """C1-C4 done, C5 (the epoch manifest) never written: the previous epoch stays the latest."""
    store = backend.store()
    shards = Shards(tmp_path / "live", ["a/0", "a/1"], seed=11)
    shards.write()
    shards.checkpoint(store, 1)
    shards.write(200)
    shards.checkpoint(store, 2, commit=False)  # every shard manifest durable, no commit
    shards.close()

    fresh = backend.store()  # "after the crash": a new process
    assert fresh.epochs() == [1]
    assert fresh.latest_epoch() == 1
    with pytest.raises(CheckpointNotFoundError, match="committed epochs: 1"):
        fresh.read_epoch(2)
    for name in ["a/0", "a/1"]:
        assert restored_state(fresh, 1, name, tmp_path / name) == shards.history[1][name]
    fresh.verify()
    # the uncommitted shard manifests exist but are not an epoch
    assert backend.objects(shard_manifest_key("a/0", 2))
    # epoch 2 can still be committed later with a fresh upload
    shards2 = Shards(tmp_path / "live2", ["a/0", "a/1"], seed=12)
    shards2.write()
    shards2.checkpoint(fresh, 2)
    assert fresh.epochs() == [1, 2]
    shards2.close()


def test_commit_validation(backend: Backend, fake_engine: FakeEngine) -> None:
    store = backend.store()
    live = fake_engine.step(add=1)
    sm = store.upload_shard(3, "s", fake_engine.dir, live)
    with pytest.raises(ValueError, match="manifest of shard 's' epoch 3"):
        store.commit_epoch(4, {"s": sm})
    with pytest.raises(ValueError, match="manifest of shard 's'"):
        store.commit_epoch(3, {"t": sm})
    with pytest.raises(TypeError, match="offsets must be JSON"):
        store.commit_epoch(3, {"s": sm}, offsets={"src": object()})
    em = store.commit_epoch(3, {"s": sm}, offsets={"src": [1, 2]})
    # an identical retry (lost answer) is idempotent; different content is refused
    assert store.commit_epoch(3, {"s": sm}, offsets={"src": [1, 2]}) == em
    with pytest.raises(ValueError, match="epochs must increase; commit epoch 4"):
        store.commit_epoch(3, {"s": sm}, offsets={"src": [9]})
    sm2 = store.upload_shard(2, "s", fake_engine.dir, live)
    with pytest.raises(ValueError, match="latest committed epoch is 3"):
        store.commit_epoch(2, {"s": sm2})


@pytest.mark.parametrize(
    ("shard", "ok"),
    [("engine", True), ("agg/0003", True), ("a.b_c-d/e", True), ("", False), ("../x", False),
     ("a//b", False), ("/a", False), ("a/.hidden", False), ("x/000000000001.json", False),
     ("x/00000001-0a0b0c0d.run", False), ("sp ace", False), ("a" * 201, False)],
)
def test_shard_names(shard: str, ok: bool, tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store")
    eng = FakeEngine(tmp_path / "e")
    live = eng.step()
    if ok:
        assert store.upload_shard(1, shard, eng.dir, live).shard == shard
    else:
        with pytest.raises(ValueError, match="invalid shard name"):
            store.upload_shard(1, shard, eng.dir, live)


def test_bad_arguments(tmp_path: Path, fake_engine: FakeEngine) -> None:
    store = CheckpointStore(str(tmp_path / "plain-path"))  # a plain path works
    assert store.url == f"file://{tmp_path}/plain-path"
    live = fake_engine.step()
    with pytest.raises(ValueError, match="not an engine file name"):
        store.upload_shard(1, "s", fake_engine.dir, ["notes.txt"])
    with pytest.raises(TypeError, match="epoch must be an int"):
        store.upload_shard("1", "s", fake_engine.dir, live)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        store.upload_shard(-1, "s", fake_engine.dir, live)
    with pytest.raises(FileNotFoundError, match="link_files"):
        store.upload_shard(1, "s", fake_engine.dir, [*live, "00000099-0a0b0c0d.run"])
    with pytest.raises(ValueError, match="twice"):
        store.upload_shard(1, "s", fake_engine.dir, live + live)
    with pytest.raises(ValueError, match="max_workers"):
        CheckpointStore(tmp_path / "x", max_workers=0)
    with pytest.raises(ValueError, match="retries"):
        CheckpointStore(tmp_path / "x", retries=-1)
    with pytest.raises(ValueError, match="non-empty"):
        CheckpointStore("")


def test_missing_epoch_and_shard_errors_list_what_exists(backend: Backend,
                                                          fake_engine: FakeEngine,
                                                          tmp_path: Path) -> None:
    store = backend.store()
    for e in (1, 2, 5):
        live = fake_engine.step()
        store.commit_epoch(e, {"s": store.upload_shard(e, "s", fake_engine.dir, live)})
    with pytest.raises(CheckpointNotFoundError, match=r"committed epochs: 1, 2, 5"):
        store.restore_shard(3, "s", tmp_path / "r")
    with pytest.raises(CheckpointNotFoundError, match="has no shard 'x'; its shards: s"):
        store.restore_shard(5, "x", tmp_path / "r")
    with pytest.raises(CheckpointNotFoundError, match="cannot pin epoch 4"):
        store.pin(4)


def _latest_only_file(store: CheckpointStore, shard: str) -> str:
    """A file the latest epoch references and no older epoch does."""
    epochs = store.epochs()
    older = {f.name for e in epochs[:-1] for f in store.read_epoch(e).shards[shard].files}
    latest = [f.name for f in store.read_epoch(epochs[-1]).shards[shard].files]
    return next(n for n in latest if n not in older)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_remote_file(backend: Backend, tmp_path: Path, damage: str) -> None:
    store = backend.store()
    shards = Shards(tmp_path / "live", ["s"], seed=5)
    for epoch in (1, 2):
        shards.write()
        shards.checkpoint(store, epoch)
    shards.close()
    target = tmp_path / "target"
    assert restored_state(store, 1, "s", target) == shards.history[1]["s"]
    key = file_key("s", _latest_only_file(store, "s"))
    if damage == "delete":
        backend.remove(key)
    else:
        data = bytearray(backend.read(key))
        if damage == "flip":
            data[len(data) // 2] ^= 0x40
        else:
            del data[-3:]
        backend.write(key, bytes(data))

    expect = {"flip": "checksum", "truncate": "length", "delete": "missing file"}[damage]
    with pytest.raises(CorruptionError, match=key) as info:
        store.verify()
    assert info.value.check == expect
    with pytest.raises(CorruptionError, match=key):
        store.verify(2)
    store.verify(1)  # the older epoch is intact
    with pytest.raises(CorruptionError, match=key) as info:
        store.restore_shard(2, "s", target)
    assert "restore an older epoch" in str(info.value)
    # the failed restore left the previous local state (epoch 1) untouched
    with MemOnly(target) as kv:
        assert dict(kv.items()) == shards.history[1]["s"]
    assert not [p for p in target.iterdir() if p.name.startswith(".raykv-restore")]
    # and the older epoch still restores into a fresh directory
    assert restored_state(store, 1, "s", tmp_path / "fresh") == shards.history[1]["s"]


def test_damaged_epoch_manifest(backend: Backend, fake_engine: FakeEngine) -> None:
    store = backend.store()
    live = fake_engine.step()
    store.commit_epoch(1, {"s": store.upload_shard(1, "s", fake_engine.dir, live)})
    raw = backend.read(epoch_key(1))
    backend.write(epoch_key(1), raw.replace(b'"src"', b'"xrc"') if b'"src"' in raw
                  else raw.replace(b'"epoch":1', b'"epoch":7'))
    with pytest.raises(CorruptionError, match=r"epochs/000000000001\.json") as info:
        store.read_epoch(1)
    assert info.value.check == "crc"
    backend.write(epoch_key(1), raw[:-20])
    with pytest.raises(CorruptionError, match="json"):
        store.verify()
    # written by a newer raykv
    from raykv.checkpointing.manifests import encode_manifest

    newer = encode_manifest("epoch", {"epoch": 1}).replace(b'"format":1', b'"format":9')
    import json
    import zlib

    doc = json.loads(newer)
    doc.pop("crc32")
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    doc["crc32"] = f"{zlib.crc32(body):08x}"
    backend.write(epoch_key(1), json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(FormatVersionError, match="format version 9"):
        store.read_epoch(1)


def test_manifest_roundtrip(backend: Backend, fake_engine: FakeEngine) -> None:
    store = backend.store()
    live = fake_engine.step(add=3)
    sm = store.upload_shard(1, "x/y", fake_engine.dir, live, {"engine": "lsm", "n": 1.5})
    em = store.commit_epoch(1, {"x/y": sm}, offsets={"kafka": {"0": 17}},
                            metadata={"partitioning": {"num_key_groups": 4096}})
    back = backend.store().read_epoch(1)
    assert isinstance(back, EpochManifest) and back == em
    assert isinstance(back.shards["x/y"], ShardManifest)
    assert back.shards["x/y"].files == sm.files
    assert back.total_bytes == sum((fake_engine.dir / n).stat().st_size for n in live)
    assert all(f.checksum.startswith("crc32:") and len(f.checksum) == 14 for f in sm.files)
    assert pickle.loads(pickle.dumps(sm)) == sm


def test_store_pickles_as_a_recipe(backend: Backend, fake_engine: FakeEngine) -> None:
    store = backend.store(max_workers=3, retries=2)
    live = fake_engine.step()
    store.commit_epoch(1, {"s": store.upload_shard(1, "s", fake_engine.dir, live)})
    clone = pickle.loads(pickle.dumps(store))
    assert clone.epochs() == [1] and clone.url == store.url
    assert "secret" not in repr(store) and "testing" not in repr(store)


def test_parallel_uploads_from_threads(backend: Backend, tmp_path: Path) -> None:
    """upload_shard is thread-safe: shard actors' background uploads share one store."""
    store = backend.store(max_workers=4)
    names = [f"op/{i:04d}" for i in range(6)]
    shards = Shards(tmp_path / "live", names, seed=9)
    for epoch in (1, 2):
        shards.write(80)
        files = {n: kv.seal() for n, kv in shards.engines.items()}
        results: dict[str, ShardManifest] = {}
        errors: list[BaseException] = []

        def run(n: str, epoch: int = epoch, files: dict = files,
                results: dict = results, errors: list = errors) -> None:
            try:
                results[n] = store.upload_shard(epoch, n, shards.engines[n].data_dir, files[n])
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)

        threads = [threading.Thread(target=run, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        store.commit_epoch(epoch, results)
        shards.history[epoch] = {n: dict(m) for n, m in shards.models.items()}
    shards.close()
    for n in names:
        assert restored_state(store, 2, n, tmp_path / "r" / n) == shards.history[2][n]
    store.close()


def test_link_files_pins_files_for_background_upload(backend: Backend, tmp_path: Path) -> None:
    store = backend.store()
    with MemOnly(tmp_path / "kv") as kv:
        kv.multi_set({b"k%d" % i: b"v%d" % i for i in range(100)})
        files = kv.seal()
        staging = link_files(kv.data_dir, files, tmp_path / "staging")
        kv.set(b"k0", b"changed")
        kv.seal()  # the engine drops its old files; the staged links keep them
        assert not all((kv.data_dir / n).exists() for n in files)
        sm = store.upload_shard(1, "s", staging, files)
        store.commit_epoch(1, {"s": sm})
    got = restored_state(store, 1, "s", tmp_path / "r")
    assert got == {b"k%d" % i: b"v%d" % i for i in range(100)}


def test_link_files_copy_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    eng = FakeEngine(tmp_path / "e")
    live = eng.step(add=3)

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    staging = link_files(eng.dir, live, tmp_path / "stage")
    for n in live:
        assert (staging / n).read_bytes() == (eng.dir / n).read_bytes()
    assert sorted(p.name for p in staging.iterdir()) == sorted(live)


def test_snapshot_cost_is_constant_on_file(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Upload + commit of one new file costs a fixed set of store operations on file://.

    Whatever the number of live files, a warm shard uploads the one new file, makes its
    directory durable once, writes two manifests and lists ``epochs/`` once, and reads
    nothing back. (The 50 ms latency target is measured by benchmarks/snapshots.py.)
    """
    store = CheckpointStore(tmp_path / "store")
    objects = store._objects
    calls: Counter[str] = Counter()

    def counting(op: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[op] += 1
            return real(*args, **kwargs)

        return counted

    for op in ("put_file", "sync_dirs", "write_bytes", "list", "get_file", "read_bytes",
               "checksum", "exists", "delete"):
        monkeypatch.setattr(objects, op, counting(op, getattr(objects, op)))
    eng = FakeEngine(tmp_path / "e")
    for epoch in range(1, 22):
        live = eng.step(add=1, drop=1 if epoch > 5 else 0)
        calls.clear()
        sm = store.upload_shard(epoch, "engine", eng.dir, live)
        store.commit_epoch(epoch, {"engine": sm})
        assert (sm.new_files, sm.new_bytes) == (1, (eng.dir / live[-1]).stat().st_size)
        if epoch == 1:  # a cold shard also lists files/engine/ and looks for a latest epoch
            assert calls == {"put_file": 1, "sync_dirs": 1, "write_bytes": 2, "list": 3}
        else:
            assert calls == {"put_file": 1, "sync_dirs": 1, "write_bytes": 2, "list": 1}, (
                epoch, len(live))
