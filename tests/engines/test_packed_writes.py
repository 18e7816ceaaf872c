"""``multi_set_packed`` (8-byte keys and values of one size as arrays) against a dict model.

Every engine takes the arrays. HybridLog writes a large batch on clean regions as one
run straight from them, AppendLog appends the records of a batch of distinct keys
assembled from them (each engine's ``bulk.py``); every other batch goes through
``multi_set``. The sequences below mix packed batches (repeated keys, sizes on both
sides of ``ro_lag_interval``, values on both sides of the 128 bytes of AppendLog's short
header and the 256 bytes a uint64 location holds) with ``multi_set`` of other keys and
deletes, single writes, seals and reopens, so that both paths of each engine meet every
state (HybridLog's regions, AppendLog's dead keys and run closes). A failing seed is in
the assertion message.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import raykv.engines.appendlog.bulk as appendlog_bulk
import raykv.engines.hybridlog.bulk as hybridlog_bulk
from raykv.engines import keyindex, keywords
from raykv.engines.base import KVStore
from tests.engines.test_bulk_writes import SMALL_PARAMS, _compare, _engine

ENGINES = ["hybridlog", "hybridlog_table", "appendlog", "appendlog_table", "lsm", "memonly"]
ARRAY_PATHS = {"hybridlog": hybridlog_bulk, "appendlog": appendlog_bulk}


def _key(word: int) -> bytes:
    return word.to_bytes(8, "big")


def _packed(rng: random.Random, known: list[int], step: int
            ) -> tuple[np.ndarray, np.ndarray, dict[bytes, bytes]]:
    """A packed batch (some keys known, some new, a few repeated) and its pairs in order."""
    n = rng.choice([0, 3, 8, 9, 30, 80])
    size = rng.choice([1, 16, 16, 127, 128, 255, 256])
    words = []
    for _ in range(n):
        if known and rng.random() < 0.6:
            words.append(rng.choice(known))
        else:
            words.append(rng.randrange(1 << 64))
            known.append(words[-1])
    if n and rng.random() < 0.2:  # a key twice: the later row wins
        words.append(rng.choice(words))
    rows = np.frombuffer(rng.randbytes(len(words) * size), np.uint8).reshape(len(words), size)
    rows = rows.copy()
    rows[:, 0] = step % 251 + 1  # never all zero, differs from the last step's
    pairs = {_key(w): rows[i].tobytes() for i, w in enumerate(words)}
    return np.array(words, dtype=np.uint64), rows, pairs


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("seed", range(3))
def test_multi_set_packed_matches_a_dict(tmp_path: Path, name: str, seed: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fast = []  # batches the engine's array path took (it asks ``distinct_words`` last)
    engine = name.split("_")[0]
    if engine in ARRAY_PATHS:
        real = keywords.distinct_words
        monkeypatch.setattr(ARRAY_PATHS[engine], "distinct_words",
                            lambda w: fast.append(len(w)) or real(w))
    if name.endswith("_table"):  # a KeyIndex from the start
        monkeypatch.setattr(keyindex, "PROMOTE_MIN_KEYS", 0)
    elif engine in ARRAY_PATHS:  # a dict index, promoted by a packed batch of 80 keys
        monkeypatch.setattr(keyindex, "PROMOTE_MIN_KEYS", 80)
    rng = random.Random(seed)
    model: dict[bytes, bytes] = {}
    known: list[int] = []
    store = _engine(name, tmp_path)
    try:
        for step in range(80):
            roll = rng.random()
            if roll < 0.6:
                words, rows, pairs = _packed(rng, known, step)
                store.multi_set_packed(words, rows)
                model.update(pairs)
            elif roll < 0.8:  # other keys, and deletes of packed ones
                batch = {b"other%d" % rng.randrange(50): b"v%d" % step for _ in range(5)}
                if known:
                    batch[_key(rng.choice(known))] = b""
                store.multi_set(batch)
                model.update(batch)
                model = {k: v for k, v in model.items() if v}
            elif known:
                key, value = _key(rng.choice(known)), b"single%d" % step
                store.set(key, value)
                model[key] = value
            roll = rng.random()
            if roll < 0.35:
                store.seal()  # clean regions: the next large packed batch is one run
            elif roll < 0.42:
                store.close()
                store = _engine(name, tmp_path)
            if step % 10 == 9:
                _compare(store, model, list(map(_key, known)), seed)
        _compare(store, model, list(map(_key, known)), seed)
        store.close()
        store = _engine(name, tmp_path)
        _compare(store, model, list(map(_key, known)), seed)
    finally:
        store.close()
    if engine in ARRAY_PATHS:
        assert fast, f"no packed batch took {engine}'s array path"


@pytest.mark.parametrize("name", ["hybridlog", "appendlog", "lsm", "memonly"])
@pytest.mark.parametrize(("words", "rows", "error", "match"), [
    (np.arange(3, dtype=np.int64), np.ones((3, 4), np.uint8), TypeError, "uint64"),
    ([1, 2, 3], np.ones((3, 4), np.uint8), TypeError, "uint64"),
    (np.arange(3, dtype=np.uint64), np.ones((2, 4), np.uint8), TypeError, r"shape \(3"),
    (np.arange(3, dtype=np.uint64), np.ones((3, 4), np.int8), TypeError, "uint8"),
    (np.arange(3, dtype=np.uint64), np.ones((3, 0), np.uint8), ValueError, "deletes"),
    (np.arange(3, dtype=np.uint64), np.ones((3, 2000), np.uint8), ValueError,
     "max_value_len=1024"),
])
def test_a_bad_packed_batch_changes_nothing(tmp_path: Path, name: str, words: Any, rows: Any,
                                            error: type[Exception], match: str) -> None:
    store = open_small(name, tmp_path)
    try:
        store.multi_set({b"a": b"1", _key(1): b"2"})
        with pytest.raises(error, match=match):
            store.multi_set_packed(words, rows)
        assert dict(store.items()) == {b"a": b"1", _key(1): b"2"}
    finally:
        store.close()


def open_small(name: str, path: Path) -> KVStore:
    """``name`` with small parameters and ``max_value_len=1024``."""
    from raykv.engines import open_engine

    return open_engine(name, path, max_value_len=1024, **SMALL_PARAMS[name])


def test_a_large_packed_batch_after_a_seal_is_one_run_and_survives_a_reopen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The array path: one new run, nothing left in memory, the dict index promoted (its
    other keys kept), the index on the new run."""
    monkeypatch.setattr(keyindex, "PROMOTE_MIN_KEYS", 100)
    store = open_small("hybridlog", tmp_path)
    try:
        store.multi_set({_key(w): b"old" for w in range(100)} | {b"meta": b"m"})
        store.seal()
        runs = len(store._runs)  # type: ignore[attr-defined]
        words = np.arange(50, 150, dtype=np.uint64)
        rows = np.full((100, 3), ord("n"), np.uint8)
        store.multi_set_packed(words, rows)
        assert len(store._runs) <= runs + 1  # type: ignore[attr-defined]  # (merged, maybe)
        assert store.region_sizes()["mutable"] == 0  # type: ignore[attr-defined]
        assert isinstance(store._index, keyindex.KeyIndex)  # type: ignore[attr-defined]
        want = {_key(w): b"old" for w in range(50)} | {_key(w): b"nnn" for w in range(50, 150)}
        want[b"meta"] = b"m"
        assert dict(store.items()) == want and store.live_keys() == 151
        store._check()
        store.close()
        store = open_small("hybridlog", tmp_path)
        assert dict(store.items()) == want and store.live_keys() == 151
        store._check()
        # a dirty record in the read-only region alone (a delete), then in the mutable
        # region alone: each batch takes multi_set, and nothing dirty is lost
        store.delete(_key(0))
        assert store._n_ro and not store.region_sizes()["mutable"]  # type: ignore[attr-defined]
        store.multi_set_packed(np.arange(100, 160, dtype=np.uint64),
                               np.full((60, 2), ord("z"), np.uint8))
        store.seal()
        for w in range(145, 150):
            store.set(_key(w), b"dirty")
        store.set(_key(1), b"kept")
        assert store.region_sizes()["mutable"] and not store._n_ro  # type: ignore[attr-defined]
        store.multi_set_packed(np.arange(140, 150, dtype=np.uint64),
                               np.full((10, 2), ord("y"), np.uint8))
        del want[_key(0)]
        want |= {_key(w): b"zz" for w in range(100, 160)} | {_key(1): b"kept"}
        want |= {_key(w): b"yy" for w in range(140, 150)}
        for again in (False, True):
            if again:
                store.close()
                store = open_small("hybridlog", tmp_path)
            assert dict(store.items()) == want and store.live_keys() == 160
            assert store.multi_get([_key(0), _key(1), _key(145)]) == [b"", b"kept", b"yy"]
            store._check()
    finally:
        store.close()


@pytest.mark.parametrize("name", sorted(ARRAY_PATHS))
def test_a_kill_after_packed_batches_keeps_the_sealed_state(tmp_path: Path, name: str) -> None:
    """A real SIGKILL after array-path batches (and their merges) past the last seal:
    reopening holds at least the sealed state, never garbage."""
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from raykv.engines import open_engine
        s = open_engine({name!r}, {str(tmp_path)!r}, **{SMALL_PARAMS[name]!r})
        s.multi_set({{b"meta": b"m"}})
        def batch(lo, hi, tag):
            words = np.arange(lo, hi, dtype=np.uint64)
            rows = np.zeros((hi - lo, 9), np.uint8)
            rows[:, 0] = tag
            rows[:, 1:] = words.astype(">u8").view(np.uint8).reshape(-1, 8)
            s.multi_set_packed(words, rows)
        for tag in range(1, 6):
            batch(0, 5000, tag)  # promotes the index; each batch one run
        s.seal()
        for tag in range(6, 20):
            batch(tag * 100, 6000 + tag * 100, tag)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -signal.SIGKILL
    with open_small(name, tmp_path) as s:
        got = dict(s.items())
        s._check()
    assert got.pop(b"meta") == b"m"
    assert set(range(5000)) <= {int.from_bytes(k, "big") for k in got}
    for k, v in got.items():
        assert v[1:] == k and (v[0] == 5 or 6 <= v[0] < 20), (k, v)
