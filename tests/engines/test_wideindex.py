"""WideIndex against a dict: batches and single calls on keys of 1-16 bytes (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.engines.keywords import short_keys, short_words
from raykv.engines.wideindex import DELETED, WideIndex, pair_of

# small alphabets (collisions, re-inserts) and keys that differ only in trailing zeros
KEYS = st.one_of(st.binary(min_size=1, max_size=16).map(lambda b: b[:1] * len(b)),
                 st.binary(min_size=1, max_size=16),
                 st.sampled_from([b"a", b"a\x00", b"a\x00\x00", b"\x00", b"\x00" * 16,
                                  b"\xff" * 16, b"\xff" * 15]))
OPS = st.lists(st.tuples(st.sampled_from(["swap", "get", "delete", "put"]),
                         st.lists(KEYS, max_size=30), st.integers(0, 2**64 - 1)), max_size=40)


def cols(keys: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return short_words(keys, np.array([len(k) for k in keys], dtype=np.intp))


def check_same(ix: WideIndex, model: dict[bytes, int]) -> None:
    w0, w1, lens, values = ix.items()
    assert dict(zip(short_keys(w0, w1, lens), values.tolist(), strict=True)) == model
    assert len(ix) == len(model) == len(values)
    assert ix._deleted == int(np.count_nonzero(ix._meta == DELETED))  # reused slots counted
    assert 2 * (len(ix) + ix._deleted) <= ix.capacity  # probes always end


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_matches_a_dict(ops: list[tuple[str, list[bytes], int]]) -> None:
    ix, model = WideIndex(), {}
    for op, batch, seed in ops:
        if op == "swap":
            distinct = list(dict.fromkeys(batch))  # an engine's batch: distinct keys
            values = np.array([(seed + i) % 2**64 for i in range(len(distinct))],
                              dtype=np.uint64)
            found, old = ix.swap(cols(distinct), values)
            assert found.tolist() == [k in model for k in distinct]
            assert old.tolist() == [model.get(k, 0) for k in distinct]
            model.update(zip(distinct, values.tolist(), strict=True))
        elif op == "get":
            found, vals = ix.found(cols(batch))
            assert found.tolist() == [k in model for k in batch]
            assert vals.tolist() == [model.get(k, 0) for k in batch]
            assert [ix.lookup(*pair_of(k), len(k)) for k in batch] == [model.get(k)
                                                                       for k in batch]
        elif op == "put":
            for i, k in enumerate(batch):
                ix.put(*pair_of(k), len(k), (seed + i) % 2**64)
                model[k] = (seed + i) % 2**64
        else:
            assert ix.delete(cols(batch)).tolist() == [k in model for k in batch]
            for k in batch:
                model.pop(k, None)
        check_same(ix, model)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"a\x00", b"bb", b"c" * 16, b"d" * 9]), max_size=30))
def test_duplicates_in_one_swap_end_with_the_last_value(batch: list[bytes]) -> None:
    ix = WideIndex()
    ix.swap(cols([b"a", b"zz"]), np.array([10, 20], dtype=np.uint64))
    ix.swap(cols(batch), np.arange(100, 100 + len(batch), dtype=np.uint64))
    model = {b"a": 10, b"zz": 20}
    model.update(zip(batch, range(100, 100 + len(batch)), strict=True))  # last wins
    check_same(ix, model)


def test_grows_and_reclaims_deleted_slots_without_losing_a_key() -> None:
    rng = np.random.default_rng(3)
    ix, model = WideIndex(), {}
    for _ in range(20):  # inserts, then deletes of half, over and over
        lens = rng.integers(1, 17, 4_000)
        blob = rng.integers(0, 256, int(lens.sum()), dtype=np.uint8).tobytes()
        ends = np.cumsum(lens).tolist()
        keys = list(dict.fromkeys(blob[a:b] for a, b in zip([0, *ends[:-1]], ends,
                                                              strict=True)))
        values = rng.integers(0, 2**63, len(keys)).astype(np.uint64)
        ix.swap(cols(keys), values)
        model.update(zip(keys, values.tolist(), strict=True))
        gone = list(model)[::2]
        ix.delete(cols(gone))
        for k in gone:
            del model[k]
        check_same(ix, model)
    assert ix.capacity <= 4 * 2 ** int(np.ceil(np.log2(2 * len(model))))  # not runaway


def test_keys_that_differ_only_in_trailing_zeros_are_two_keys() -> None:
    """Their words are equal; only the length tells them apart, even in one probe run."""
    ix = WideIndex()
    pairs = [(b"%c" % c + b"\x00" * a, b"%c" % c + b"\x00" * b) for c in range(1, 256)
             for a in range(15) for b in range(a + 1, 16)]
    same_home = [(x, y) for x, y in pairs if ix._home(cols([x]))[0] == ix._home(cols([y]))[0]]
    assert same_home  # (found among the 16 home slots of an empty table)
    x, y = same_home[0]
    ix.swap(cols([x]), np.array([1], dtype=np.uint64))
    found, _ = ix.swap(cols([y]), np.array([2], dtype=np.uint64))
    assert not found[0]
    check_same(ix, {x: 1, y: 2})
    ix.put(*pair_of(y), len(y), 3)
    assert ix.lookup(*pair_of(x), len(x)) == 1 and ix.lookup(*pair_of(y), len(y)) == 3
