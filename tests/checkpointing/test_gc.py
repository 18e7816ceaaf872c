"""Retention, pins, garbage collection and the orphan sweep (docs/recovery.md "GC" G1-G6)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from raykv.checkpointing import CheckpointStore
from raykv.checkpointing._format import epoch_key, file_key
from raykv.checkpointing.gc import INFLIGHT
from tests.checkpointing.conftest import Backend, FakeEngine
from tests.checkpointing.flaky import Crash
from tests.checkpointing.helpers import Shards, restored_state


def referenced(store: CheckpointStore, epochs: list[int]) -> dict[str, int]:
    out = {}
    for e in epochs:
        for shard, f in store.read_epoch(e).file_refs():
            out[file_key(shard, f.name)] = f.size
    return out


def test_retain_3_over_many_epochs(backend: Backend, tmp_path: Path) -> None:
    n_epochs = 20 if backend.name == "s3" else 100  # moto answers in ~20-40 ms a request
    store = backend.store()
    shards = Shards(tmp_path / "live", ["g/0"], seed=1)
    for epoch in range(1, n_epochs + 1):
        shards.write(20, space=300)
        shards.checkpoint(store, epoch)
        store.gc(retain=3)
    shards.close()
    kept = list(range(n_epochs - 2, n_epochs + 1))
    assert store.epochs() == kept
    # only the files of the retained epochs are left, and the manifests of those epochs
    files = backend.objects("files")
    assert files == referenced(store, kept)
    assert sorted(backend.objects("epochs")) == [epoch_key(e) for e in kept]
    assert len(backend.objects("shards")) == 3
    largest = max(store.read_epoch(e).total_bytes for e in kept)
    assert sum(files.values()) <= 3 * largest
    assert store.store_bytes() == sum(files.values())
    store.verify()
    for e in kept:
        for name in ["g/0"]:
            assert restored_state(store, e, name, tmp_path / f"r{e}" / name) == \
                shards.history[e][name]


def test_gc_keeps_shared_files_and_pins(backend: Backend, fake_engine: FakeEngine) -> None:
    store = backend.store()
    lives = {}
    for epoch in range(1, 7):
        lives[epoch] = fake_engine.step(add=1, drop=1 if epoch > 2 else 0)
        store.commit_epoch(epoch, {"s": store.upload_shard(epoch, "s", fake_engine.dir,
                                                            lives[epoch])})
    store.pin(2)
    assert store.pins() == [2]
    dry = store.gc(retain=2, dry_run=True)
    assert dry.dry_run and dry.expired == [1, 3, 4] and dry.retained == [2, 5, 6]
    assert store.epochs() == list(range(1, 7))  # dry run deleted nothing
    report = store.gc(retain=2)
    assert report.deleted_files == dry.deleted_files
    assert report.deleted_bytes == dry.deleted_bytes > 0
    assert store.epochs() == [2, 5, 6]
    assert set(backend.objects("files")) == set(referenced(store, [2, 5, 6]))
    store.verify()
    store.unpin(2)
    store.unpin(2)  # not an error
    assert store.gc(retain=2).expired == [2]
    assert store.epochs() == [5, 6]
    with pytest.raises(ValueError, match="retain must be an int >= 1"):
        store.gc(retain=0)


def test_gc_never_deletes_in_flight_files(backend: Backend, fake_engine: FakeEngine,
                                          tmp_path: Path) -> None:
    """G3: uncommitted shard manifests and uploads in progress protect their files."""
    store = backend.store()
    first = fake_engine.step(add=2)
    store.commit_epoch(1, {"s": store.upload_shard(1, "s", fake_engine.dir, first)})
    for epoch in (2, 3):
        live = fake_engine.step(add=1, drop=2 if epoch == 2 else 1)
        store.commit_epoch(epoch, {"s": store.upload_shard(epoch, "s", fake_engine.dir, live)})
    # the shard was restored to epoch 1 (user's choice) and is uploading epoch 4 from it
    old_files = [f.name for f in store.read_epoch(1).shards["s"].files]
    restore_dir = tmp_path / "restored"
    store.restore_shard(1, "s", restore_dir)
    sm4 = store.upload_shard(4, "s", restore_dir, old_files)  # shard manifest, no commit
    assert sm4.new_files == 0
    report = store.gc(retain=1)
    assert report.expired == [1, 2]
    for n in old_files:
        assert file_key("s", n) in backend.objects("files")
    store.commit_epoch(4, {"s": sm4})
    store.verify(4)
    # an upload running in this process that relies on epoch 3's files (reserved before
    # it checks what the store holds, released after its shard manifest is written)
    only3 = sorted(set(referenced(store, [3])) - set(referenced(store, [4])))
    assert only3
    refs = [tuple(k.split("/", 1)[1].rsplit("/", 1)) for k in only3]
    with INFLIGHT.reserve(store._objects.identity, refs):
        assert store.gc(retain=1).expired == [3]
    assert set(only3) <= set(backend.objects("files"))  # left for the orphan sweep


def test_sweep_orphans(backend: Backend, tmp_path: Path) -> None:
    store = backend.store()
    shards = Shards(tmp_path / "live", ["a", "b"], seed=2)
    shards.write()
    shards.checkpoint(store, 1)
    shards.write()
    shards.checkpoint(store, 2, commit=False)  # a crashed epoch: files + shard manifests
    shards.close()
    committed = referenced(store, [1])
    orphans = sorted(set(backend.objects("files")) - set(committed))
    assert orphans
    assert store.sweep_orphans(grace_seconds=3600) == []  # too young
    time.sleep(1.1 if backend.name == "s3" else 0.05)
    dry = store.sweep_orphans(grace_seconds=0, dry_run=True)
    assert dry == sorted([*orphans, "shards/a/000000000002.json", "shards/b/000000000002.json"])
    assert store.sweep_orphans(grace_seconds=0) == dry
    assert backend.objects("files") == committed
    assert backend.objects("shards") == {k: v for k, v in backend.objects("shards").items()
                                         if k.endswith("000000000001.json")}
    store.verify()
    assert restored_state(store, 1, "a", tmp_path / "r") == shards.history[1]["a"]
    with pytest.raises(ValueError, match="grace_seconds"):
        store.sweep_orphans(-1)


def test_gc_crash_leaves_retained_epochs_intact(tmp_path: Path) -> None:
    """A crash at any delete of G5: retained epochs verify and restore; the sweep cleans up."""
    import uuid

    for crash_after in range(0, 12):
        name = f"raykv-gccrash-{uuid.uuid4().hex}"
        opts = {"skip_instance_cache": True}
        store = CheckpointStore(f"flakymemory://{name}", opts)
        shards = Shards(tmp_path / f"live{crash_after}", ["x", "y"], seed=crash_after)
        for epoch in range(1, 6):
            shards.write(30)
            shards.checkpoint(store, epoch)
        shards.close()
        fs = store._objects.fs
        fs.die_after_writes = fs.writes + crash_after
        try:
            store.gc(retain=2)
            crashed = False
        except Crash:
            crashed = True
        fs.die_after_writes = None
        clean = CheckpointStore(f"memory://{name}")
        assert clean.epochs()[-2:] == [4, 5]
        for e in (4, 5):
            clean.verify(e)
            for s in ("x", "y"):
                got = restored_state(clean, e, s, tmp_path / f"r{crash_after}-{e}-{s}")
                assert got == shards.history[e][s]
        time.sleep(0.02)
        clean.gc(retain=2)
        clean.sweep_orphans(grace_seconds=0)
        objects = {k for k, _ in clean._objects.list("files", recursive=True).items()}
        assert objects == set(referenced(clean, [4, 5]))
        if not crashed:
            break
    assert not crashed, "the loop should reach a crash-free GC"
