"""U64Index against a dict: random batches of swaps, lookups and deletes (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.engines.u64index import DELETED, EMPTY, U64Index

# small key spaces (collisions, duplicates, re-inserts) plus the two marker values
KEYS = st.one_of(st.integers(0, 40), st.integers(0, 2**64 - 1),
                 st.sampled_from([int(EMPTY), int(DELETED), 0]))
BATCH = st.lists(KEYS, max_size=30)
OPS = st.lists(st.tuples(st.sampled_from(["swap", "get", "delete"]), BATCH,
                         st.integers(0, 2**64 - 1)), max_size=40)


def words(xs: list[int]) -> np.ndarray:
    return np.array(xs, dtype=np.uint64)


def check_same(ix: U64Index, model: dict[int, int]) -> None:
    keys, values = ix.items()
    assert dict(zip(keys.tolist(), values.tolist(), strict=True)) == model
    assert len(ix) == len(model) == len(keys)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_matches_a_dict(ops: list[tuple[str, list[int], int]]) -> None:
    ix, model = U64Index(), {}
    for op, batch, seed in ops:
        if op == "swap":
            distinct = list(dict.fromkeys(batch))  # an engine's batch: distinct keys
            values = [(seed + i) % 2**64 for i in range(len(distinct))]
            found, old = ix.swap(words(distinct), words(values))
            assert found.tolist() == [k in model for k in distinct]
            assert old.tolist() == [model.get(k, 0) for k in distinct]
            model.update(zip(distinct, values, strict=True))
        elif op == "get":
            assert ix.get(words(batch), default=7).tolist() == [model.get(k, 7) for k in batch]
            assert ix.contains(words(batch)).tolist() == [k in model for k in batch]
        else:
            assert ix.delete(words(batch)).tolist() == [k in model for k in batch]
            for k in batch:
                model.pop(k, None)
        check_same(ix, model)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 20), max_size=40))
def test_duplicates_in_one_swap_end_with_the_last_value(batch: list[int]) -> None:
    ix = U64Index()
    ix.swap(words([1, 2]), words([10, 20]))
    ix.swap(words(batch), words(list(range(100, 100 + len(batch)))))
    model = {1: 10, 2: 20}
    model.update(zip(batch, range(100, 100 + len(batch)), strict=True))  # last wins
    check_same(ix, model)


def test_grows_and_reclaims_deleted_slots_without_losing_a_key() -> None:
    rng = np.random.default_rng(3)
    ix, model = U64Index(), {}
    for round_ in range(30):  # inserts, then deletes of half, over and over
        keys = rng.choice(2**40, 5_000, replace=False).astype(np.uint64)
        ix.swap(keys, keys * np.uint64(3))
        model.update(zip(keys.tolist(), (keys * np.uint64(3)).tolist(), strict=True))
        gone = np.array(list(model)[::2], dtype=np.uint64)
        ix.delete(gone)
        for k in gone.tolist():
            del model[k]
        assert 2 * (len(ix) + ix._deleted) <= ix.capacity, round_  # probes always end
    check_same(ix, model)
    assert ix.capacity <= 4 * 2 ** int(np.ceil(np.log2(2 * len(model))))  # not runaway


def test_bad_arguments_say_what_was_wrong() -> None:
    ix = U64Index()
    with pytest.raises(TypeError, match="uint64"):
        ix.get(np.array([1, 2], dtype=np.int64))
    with pytest.raises(TypeError, match="1-d"):
        ix.swap(np.zeros((2, 2), dtype=np.uint64), np.zeros(4, dtype=np.uint64))
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        ix.swap(words([1, 2]), words([1]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "delete"]), st.integers(0, 40),
                          st.integers(0, 2**64 - 1)), max_size=200))
def test_single_puts_and_lookups_match_a_dict(ops: list[tuple[str, int, int]]) -> None:
    """``put`` / ``lookup`` one key at a time, mixed with batch deletes (reused slots)."""
    ix, model = U64Index(), {}
    for op, k, v in ops:
        key = k if k < 38 else 2**64 - 1 - (k - 38)  # keys 0..37 and the two marker words
        if op == "put":
            ix.put(key, v)
            model[key] = v
        else:
            ix.delete(words([key]))
            model.pop(key, None)
        assert ix.lookup(key) == model.get(key)
    check_same(ix, model)
    assert [ix.lookup(k) for k in range(40)] == [model.get(k) for k in range(40)]


def test_a_rebuild_wraps_keys_pushed_past_the_last_slot() -> None:
    """Keys whose home is the last slot fill it and wrap round to the first slots."""
    ix = U64Index(64)
    cand = np.arange(1, 200_000, dtype=np.uint64)
    keys = cand[ix._home(cand) == 63][:20]
    assert len(keys) == 20
    ix._place_fresh(keys, keys + np.uint64(1))
    assert set(np.flatnonzero(ix._keys != EMPTY).tolist()) == {63, *range(19)}
    check_same(ix, {k: k + 1 for k in keys.tolist()})
    ix.swap(keys[:5], keys[:5])  # found where the probe from home 63 wraps
    assert ix.get(keys[:6]).tolist() == [*keys[:5].tolist(), int(keys[5]) + 1]
