"""The restore swap (docs/recovery.md "Restore" R3-R7): a crash at any rename or unlink
leaves a directory that opens as the old state or the new one, never a mix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raykv.checkpointing import CheckpointStore
from raykv.engines import MemOnly
from tests.checkpointing.helpers import Shards


class Crash(BaseException):
    pass


def test_crash_at_every_step_of_the_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(tmp_path / "store")
    shards = Shards(tmp_path / "live", ["s"], seed=21)
    for epoch in (1, 2, 3):
        shards.write(100)
        shards.checkpoint(store, epoch)
    shards.close()
    old, new = shards.history[1]["s"], shards.history[3]["s"]
    target = tmp_path / "target"
    real_replace, real_unlink = os.replace, os.unlink
    outcomes = []
    for k in range(40):
        store.restore_shard(1, "s", target)  # the old state, complete
        (target / "00000099-0a0b0c0d.run.tmp").write_bytes(b"stale temp file")
        calls = 0

        def maybe_crash(path: object, k: int = k) -> None:
            nonlocal calls
            if str(target) in os.fspath(path):  # type: ignore[arg-type]
                calls += 1
                if calls > k:
                    raise Crash

        def replace(src: object, dst: object, **kw: object) -> None:
            maybe_crash(dst)
            real_replace(src, dst, **kw)  # type: ignore[arg-type]

        def unlink(path: object, **kw: object) -> None:
            maybe_crash(path)
            real_unlink(path, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "unlink", unlink)
        try:
            store.restore_shard(3, "s", target)
            crashed = False
        except Crash:
            crashed = True
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
            monkeypatch.setattr(os, "unlink", real_unlink)
        with MemOnly(target) as kv:
            state = dict(kv.items())
        assert state in (old, new), f"crash after {k} steps gave a mixed state"
        outcomes.append("old" if state == old else "new")
        if not crashed:
            assert state == new
            break
        # recovery: the restore simply runs again
        store.restore_shard(3, "s", target)
        with MemOnly(target) as kv:
            assert dict(kv.items()) == new
    assert not crashed
    assert "old" in outcomes and outcomes[-1] == "new"
    assert not [p for p in target.iterdir() if p.name.startswith(".raykv-restore")]


def test_restore_keeps_foreign_files_and_cleans_leftovers(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store")
    shards = Shards(tmp_path / "live", ["s"], seed=1)
    shards.write()
    shards.checkpoint(store, 1)
    shards.close()
    target = tmp_path / "t"
    target.mkdir()
    (target / "notes.txt").write_text("not an engine file")
    (target / ".raykv-restore-deadbeef").mkdir()  # a crashed restore's staging dir
    (target / ".raykv-restore-deadbeef" / "x").write_bytes(b"x")
    (target / "00000042-0a0b0c0d.snap").write_bytes(b"stale engine file")
    result = store.restore_shard(1, "s", target)
    assert result.downloaded_files == 2 and result.reused_files == 0
    names = sorted(p.name for p in target.iterdir())
    assert "notes.txt" in names
    assert "00000042-0a0b0c0d.snap" not in names
    assert not [n for n in names if n.startswith(".raykv-restore")]
    again = store.restore_shard(1, "s", target)
    assert again.downloaded_files == 0 and again.reused_files == 2


def test_restore_repairs_a_damaged_local_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store")
    shards = Shards(tmp_path / "live", ["s"], seed=2)
    shards.write()
    shards.checkpoint(store, 1)
    shards.close()
    target = tmp_path / "t"
    store.restore_shard(1, "s", target)
    snap = next(p for p in target.iterdir() if p.suffix == ".snap")
    data = bytearray(snap.read_bytes())
    data[10] ^= 1
    os.unlink(snap)
    snap.write_bytes(bytes(data))  # a new inode: the checksum cache does not vouch for it
    result = store.restore_shard(1, "s", target)
    assert result.downloaded_files == 1
    with MemOnly(target) as kv:
        assert dict(kv.items()) == shards.history[1]["s"]


def test_restore_of_an_empty_engine(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store")
    with MemOnly(tmp_path / "e") as kv:
        files = kv.seal()
        assert files == []
        store.commit_epoch(1, {"s": store.upload_shard(1, "s", kv.data_dir, files)})
    shards = Shards(tmp_path / "live", ["s"], seed=3)
    shards.write()
    target = tmp_path / "t"
    shards.checkpoint(store, 2)
    shards.close()
    store.restore_shard(2, "s", target)
    store.restore_shard(1, "s", target)
    with MemOnly(target) as kv:
        assert dict(kv.items()) == {}
