"""Bulk writes (issue 15 item 3): ``multi_set`` against a dict model, for every engine.

Batches mix new and existing keys, repeat keys inside one batch (the last pair wins),
delete keys (``b""``), and use values at the size boundaries of the engines' encodings
(127/128: one-byte varints in AppendLog, 255/256: HybridLog locations that fit a uint64,
64 KiB: values spanning pages). Small engine parameters make every batch cross region,
flush, run and merge boundaries; seals and reopens are interleaved. A failing seed is
printed in the assertion message.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from raykv.engines import keyindex, open_engine
from raykv.engines.base import KVStore

SMALL_PARAMS: dict[str, dict[str, Any]] = {
    "hybridlog": {"ro_lag_interval": 8, "flush_interval": 8, "mem_segment_len": 32,
                  "max_runs_per_level": 2},
    # keys mostly 8 bytes, indexed by a KeyIndex from the start (``keyindex.py``)
    "hybridlog_table": {"ro_lag_interval": 8, "flush_interval": 8, "mem_segment_len": 32,
                        "max_runs_per_level": 2},
    "hybridlog_compacting": {"ro_lag_interval": 4, "flush_interval": 16,
                             "mem_segment_len": 24, "max_runs_per_level": 3,
                             "compaction_enabled": True},
    "appendlog": {"threshold": 2048, "max_runs_per_level": 2},
    "appendlog_table": {"threshold": 2048, "max_runs_per_level": 2},
    "lsm": {"memtable_bytes_limit": 2048, "max_runs_per_level": 2, "density_factor": 4},
    "memonly": {},
}
VALUE_SIZES = [1, 5, 16, 127, 128, 255, 256, 257, 1000, 64 * 1024]


def _engine(name: str, path: Path) -> KVStore:
    return open_engine(name.split("_")[0], path, **SMALL_PARAMS[name])


def _value(rng: random.Random, step: int) -> bytes:
    size = rng.choice(VALUE_SIZES) if rng.random() < 0.3 else rng.randint(1, 24)
    return (b"%d:" % step + bytes([rng.randrange(256)]) * size)[:size]


def _batch(rng: random.Random, known: list[bytes], step: int, pads: list[int]
           ) -> list[tuple[bytes, bytes]]:
    """A batch of pairs: existing and new keys, repeats, some deletes.

    New keys are ``k`` and six digits, padded by a number of ``x`` drawn from ``pads``.
    """
    n = rng.choice([1, 7, 8, 9, 20, 60, 150])
    pairs = []
    for _ in range(n):
        if known and rng.random() < 0.5:
            key = rng.choice(known)
        else:
            key = b"k%06d" % rng.randrange(10**6) + b"x" * rng.choice(pads)
            known.append(key)
        value = b"" if rng.random() < 0.1 else _value(rng, step)
        pairs.append((key, value))
        if rng.random() < 0.1:  # the same key again in the batch: the last pair wins
            pairs.append((key, _value(rng, step)))
    return pairs


def _compare(store: KVStore, model: dict[bytes, bytes], known: list[bytes], seed: int) -> None:
    assert dict(store.items()) == model, f"seed {seed}"
    probe = known[-200:]
    assert store.multi_get(probe) == [model.get(k, b"") for k in probe], f"seed {seed}"
    if store.live_keys_exact:
        assert store.live_keys() == len(model), f"seed {seed}"
    store._check()


@pytest.mark.parametrize("name", sorted(SMALL_PARAMS))
@pytest.mark.parametrize("seed", range(4))
def test_multi_set_matches_a_dict(tmp_path: Path, name: str, seed: int,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    pads = list(range(9))  # key lengths 7 to 15
    if name.endswith("_table"):
        monkeypatch.setattr(keyindex, "PROMOTE_MIN_KEYS", 0)
        pads = [1, 1, 1, 1, 0, 2]
    model: dict[bytes, bytes] = {}
    known: list[bytes] = []
    store = _engine(name, tmp_path)
    try:
        for step in range(60):
            pairs = _batch(rng, known, step, pads)
            as_dict = rng.random() < 0.5
            store.multi_set(dict(pairs) if as_dict else pairs)
            for k, v in pairs:
                if v:
                    model[k] = v
                else:
                    model.pop(k, None)
            if rng.random() < 0.2:  # single writes between batches
                key = rng.choice(known)
                value = b"" if rng.random() < 0.3 else _value(rng, step)
                store.set(key, value)
                if value:
                    model[key] = value
                else:
                    model.pop(key, None)
            roll = rng.random()
            if roll < 0.15:
                store.seal()
            elif roll < 0.22:
                store.close()
                store = _engine(name, tmp_path)
            if step % 10 == 9:
                _compare(store, model, known, seed)
        _compare(store, model, known, seed)
        store.close()
        store = _engine(name, tmp_path)
        _compare(store, model, known, seed)
        if name.endswith("_table"):
            assert isinstance(store._index, keyindex.KeyIndex)  # type: ignore[attr-defined]
    finally:
        store.close()


@pytest.mark.parametrize("name", ["hybridlog", "appendlog"])
def test_large_batches_of_new_then_existing_keys(tmp_path: Path, name: str) -> None:
    """The shape of an operator's fold: big batches, first all new keys, then updates."""
    store = _engine(name, tmp_path)
    keys = [b"key%07d" % i for i in range(3000)]
    model: dict[bytes, bytes] = {}
    for rnd in range(4):
        order = keys if rnd % 2 == 0 else keys[::-1]
        for a in range(0, len(order), 700):
            batch = {k: b"r%d" % rnd + k[-3:] for k in order[a : a + 700]}
            store.multi_set(batch)
            model.update(batch)
        assert store.live_keys() == len(model)
        store._check()
    store.multi_set(dict.fromkeys(keys[::3], b""))  # delete a third, in one batch
    for k in keys[::3]:
        del model[k]
    store.multi_set({k: b"again" for k in keys[:900]})  # some back, most updated
    model.update({k: b"again" for k in keys[:900]})
    assert dict(store.items()) == model and store.live_keys() == len(model)
    store._check()
    store.close()
    with _engine(name, tmp_path) as again:
        assert dict(again.items()) == model and again.live_keys() == len(model)
        again._check()


@pytest.mark.parametrize("name", ["hybridlog", "appendlog", "lsm", "memonly"])
def test_bad_batch_changes_nothing(tmp_path: Path, name: str) -> None:
    with _engine(name, tmp_path) as store:
        store.multi_set({b"a": b"1", b"b": b"2"})
        batch: list[tuple[Any, Any]] = [(b"k%d" % i, b"v") for i in range(100)]
        batch.append((b"bad", "not bytes"))
        with pytest.raises(TypeError):
            store.multi_set(batch)
        assert dict(store.items()) == {b"a": b"1", b"b": b"2"}


def test_hybridlog_failed_bulk_run_write_changes_nothing(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A large batch whose run cannot be written leaves the store as it was."""
    import raykv.engines.hybridlog.runset as runset_module

    real_write = runset_module.write_file
    store = _engine("hybridlog", tmp_path)
    first = {b"k%04d" % i: b"v1" for i in range(40)}
    store.multi_set(first)
    before = dict(store.items())

    def failing_write(path: Path, data: bytes, *, sync: bool = True) -> None:
        msg = "disk full (injected)"
        raise OSError(msg)

    monkeypatch.setattr(runset_module, "write_file", failing_write)
    batch = {b"k%04d" % i: b"v2" for i in range(20, 80)}  # in the mutable region and new
    with pytest.raises(OSError, match="injected"):
        store.multi_set(batch)
    assert dict(store.items()) == before and store.live_keys() == len(before)
    store._check()
    monkeypatch.setattr(runset_module, "write_file", real_write)
    store.multi_set(batch)
    assert dict(store.items()) == before | batch and store.live_keys() == 80
    store._check()
    store.close()
