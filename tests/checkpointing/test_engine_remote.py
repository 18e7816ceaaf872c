"""Thesis API parity: every engine opened with ``remote=`` snapshots and restores."""

from __future__ import annotations

import importlib
import random
from pathlib import Path

import pytest

from raykv.engines import ENGINES, engine_class
from raykv.engines.base import KVStore
from raykv.errors import CheckpointNotFoundError, CorruptionError
from tests.checkpointing.conftest import Backend


def _importable(name: str) -> bool:
    try:
        importlib.import_module(ENGINES[name].split(":")[0])
    except Exception:
        return False
    return True


ENGINE_PARAMS = [
    pytest.param(n, marks=pytest.mark.skipif(not _importable(n), reason=f"{n} not importable yet"))
    for n in ENGINES
]


def open_engine(name: str, path: Path, backend: Backend) -> KVStore:
    return engine_class(name)(path, remote=backend.url, storage_options=backend.options or None)


def mutate(kv: KVStore, model: dict[bytes, bytes], rng: random.Random, n: int) -> None:
    pairs = []
    for _ in range(n):
        k = b"key%05d" % rng.randrange(2000)
        v = rng.randbytes(rng.randrange(1, 24)) if rng.random() < 0.85 else b""
        pairs.append((k, v))
    kv.multi_set(pairs)
    for k, v in pairs:
        if v:
            model[k] = v
        else:
            model.pop(k, None)


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_snapshot_and_restore_any_epoch(engine: str, backend: Backend, tmp_path: Path) -> None:
    rng = random.Random(engine)
    model: dict[bytes, bytes] = {}
    states = {}
    with open_engine(engine, tmp_path / "kv", backend) as kv:
        for epoch in range(1, 6):
            mutate(kv, model, rng, 400)
            files = kv.snapshot(epoch)
            assert files == kv.live_files()
            states[epoch] = dict(model)
        mutate(kv, model, rng, 100)  # unsealed writes, discarded by restore
        for epoch in (2, 5, 1, 4):
            assert kv.restore(epoch) == epoch
            assert dict(kv.items()) == states[epoch]
            assert kv.multi_get(list(states[epoch])) == list(states[epoch].values())
        assert kv.restore() == 5
        assert dict(kv.items()) == states[5]
        with pytest.raises(CheckpointNotFoundError, match="committed epochs: 1, 2, 3, 4, 5"):
            kv.restore(9)
        assert dict(kv.items()) == states[5]  # a failed restore changes nothing
        # the engine goes on after a restore: new files, new epochs
        model = dict(states[5])
        mutate(kv, model, rng, 200)
        kv.snapshot(6)
        states[6] = dict(model)
        kv.restore(3)
        kv.set(b"after-restore", b"x")
        kv.snapshot(7)
        states[7] = {**states[3], b"after-restore": b"x"}
    # opening a new, empty directory with the remote restores the latest epoch
    with open_engine(engine, tmp_path / "fresh", backend) as kv:
        assert dict(kv.items()) == states[7]
        kv.restore(6)
        assert dict(kv.items()) == states[6]


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_incremental_snapshots_upload_little(engine: str, tmp_path: Path) -> None:
    """After a big load, small updates upload far less than the state (MemOnly excepted)."""
    store_url = f"file://{tmp_path}/store"
    rng = random.Random(1)
    with engine_class(engine)(tmp_path / "kv", remote=store_url) as kv:
        kv.multi_set({b"%05d" % i: rng.randbytes(8) for i in range(5000)})
        kv.snapshot(1)
        store = kv._remote.store
        total = store.read_epoch(1).total_bytes
        for epoch in range(2, 6):
            kv.multi_set({b"%05d" % rng.randrange(5000): rng.randbytes(8) for _ in range(50)})
            kv.snapshot(epoch)
        uploads = [store.read_epoch(e).new_bytes for e in range(2, 6)]
        if engine == "memonly":
            assert min(uploads) >= total * 0.9
        else:  # merges may re-upload a lot now and then, but not every time
            assert min(uploads) < total / 4, (uploads, total)


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_empty_store_and_no_remote(engine: str, backend: Backend, tmp_path: Path) -> None:
    with open_engine(engine, tmp_path / "kv", backend) as kv:
        assert dict(kv.items()) == {}
        with pytest.raises(CheckpointNotFoundError, match="no committed epoch"):
            kv.restore()
    with engine_class(engine)(tmp_path / "plain") as kv, pytest.raises(ValueError,
                                                                       match="remote="):
        kv.snapshot(1)


def test_failed_restore_keeps_the_engine_usable(backend: Backend, tmp_path: Path) -> None:
    with open_engine("memonly", tmp_path / "kv", backend) as kv:
        kv.set(b"a", b"1")
        kv.snapshot(1)
        kv.set(b"a", b"2")
        kv.snapshot(2)
        em = kv._remote.store.read_epoch(1)
        snap = next(f.name for f in em.shards["engine"].files if f.name.endswith(".snap"))
        backend.remove(f"files/engine/{snap}")
        with pytest.raises(CorruptionError, match=snap):
            kv.restore(1)
        assert kv.get(b"a") == b"2"
        kv.set(b"b", b"3")
        kv.snapshot(3)
        assert kv.restore(3) == 3 and kv.get(b"b") == b"3"


def test_restore_into_another_engine_is_refused(tmp_path: Path) -> None:
    others = [n for n in ENGINES if n != "memonly" and _importable(n)]
    if not others:
        pytest.skip("no second engine importable yet")
    url = f"file://{tmp_path}/store"
    with engine_class("memonly")(tmp_path / "a", remote=url) as kv:
        kv.set(b"a", b"1")
        kv.snapshot(1)
    with pytest.raises(ValueError, match="'memonly' snapshot"):
        engine_class(others[0])(tmp_path / "b", remote=url)
