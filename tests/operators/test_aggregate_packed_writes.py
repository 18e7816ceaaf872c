"""An ``Aggregate`` fold written as arrays (``KVStore.multi_set_packed``) stays exact;
its cache of the values written merges sorted pairs exactly.

The fold of 8-byte keys with fixed-size values goes to the engine as two arrays; HybridLog
writes it as one run when its regions are clean (after the previous epoch's seal),
AppendLog appends records assembled from the arrays (each engine's ``bulk.py``). The
state after every barrier must be the bytes a ``MemOnly`` reference holds, the epoch
output the same, and the state must survive a reopen (a restore) between epochs.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import raykv.engines.appendlog.bulk as appendlog_bulk
import raykv.engines.hybridlog.bulk as hybridlog_bulk
import raykv.operators.keyed_state as keyed_state_module
from raykv.engines import AppendLog, HybridLog, MemOnly, keyindex, keywords
from raykv.engines.base import KVStore
from raykv.operators import Aggregate
from tests.operators.helpers import assert_rows_equal, model_aggregate, random_batch, rows_by_key

SMALL = {"ro_lag_interval": 8, "flush_interval": 8, "mem_segment_len": 32,
         "max_runs_per_level": 2}
ENGINES = {"hybridlog": (HybridLog, SMALL, hybridlog_bulk),
           "appendlog": (AppendLog, {"threshold": 2048, "max_runs_per_level": 2},
                         appendlog_bulk)}


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("key_kind", ["int", "float", "ts"])
def test_folds_written_as_arrays_match_a_reference_and_survive_a_reopen(
        tmp_path: Path, key_kind: str, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cls, params, module = ENGINES[engine]
    fast = []  # folds the engine wrote from the arrays (it asks ``distinct_words`` last)
    real = keywords.distinct_words
    monkeypatch.setattr(module, "distinct_words", lambda w: fast.append(len(w)) or real(w))
    monkeypatch.setattr(keyed_state_module, "PACKED_WRITE_MIN", 8)
    monkeypatch.setattr(keyindex, "PROMOTE_MIN_KEYS", 16)  # the fold promotes the index
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    aggs = {"i": ["sum", "count", "first", "last"], "f": ["sum", "mean"], "u": ["sum"]}
    ref_store = MemOnly(tmp_path / "ref")
    store: KVStore = cls(tmp_path / "hl", **params)  # type: ignore[arg-type]
    ref, logic = (Aggregate("k", aggs).build(s) for s in (ref_store, store))
    seen: list[pa.RecordBatch] = []
    try:
        for epoch in range(1, 10):
            batches = [random_batch(rng, rng.randrange(20, 200), key_kind=key_kind, space=90)
                       for _ in range(rng.randrange(1, 4))]
            seen += batches
            for b in batches:
                ref.process(b)
                logic.process(b)
            want, got = ref.on_barrier(epoch), logic.on_barrier(epoch)
            assert_rows_equal(rows_by_key(got), rows_by_key(want)), f"seed {seed}"
            store.seal()
            assert dict(store.items()) == dict(ref_store.items()), f"seed {seed}"
            store._check()
            if epoch % 4 == 0:  # a restore: the engine reopened, the logic rebuilt
                store.close()
                store = cls(tmp_path / "hl", **params)  # type: ignore[arg-type]
                logic = Aggregate("k", aggs).build(store)
        assert_rows_equal(rows_by_key(logic.finish()), model_aggregate(seen, "k", aggs))
    finally:
        store.close()
        ref_store.close()
    assert fast, f"no fold took {engine}'s array path (seed {seed})"


@pytest.mark.parametrize("seed", range(20))
def test_merged_caches_match_a_dict(seed: int) -> None:
    """``aggfold.merged``: sorted pairs with later pairs put in, against a dict."""
    from raykv.operators.aggfold import merged
    from raykv.operators.packed import Packed

    rng = random.Random(seed)

    def sorted_pairs(n: int, tag: int) -> tuple[Packed, dict[int, bytes]]:
        words = sorted(set(rng.choice([rng.randrange(40), rng.randrange(1 << 64)])
                           for _ in range(n)))
        rows = np.array([[tag, w % 251, 7] for w in words], dtype=np.uint8).reshape(-1, 3)
        return (Packed(np.array(words, dtype=np.uint64), rows),
                {w: rows[i].tobytes() for i, w in enumerate(words)})

    old, model = sorted_pairs(rng.randrange(1, 30), 1)
    new, more = sorted_pairs(rng.randrange(1, 30), 2)
    out = merged(old, new)
    model |= more
    assert out.words.tolist() == sorted(model)
    assert [r.tobytes() for r in out.rows] == [model[w] for w in sorted(model)]
