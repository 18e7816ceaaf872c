"""``KeyIndex`` against a dict: mixed key lengths, locations beyond a uint64, every call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.engines import keyindex, keywords
from raykv.engines.keyindex import KeyIndex

SHIFT = 56

# short alphabets make keys of one batch and across batches collide often
keys_st = st.one_of(st.binary(min_size=8, max_size=8).map(lambda b: b[:1] * 7 + b[7:]),
                    st.binary(min_size=1, max_size=12).map(lambda b: b[:2] * (len(b) // 2 or 1)),
                    st.binary(min_size=15, max_size=18).map(lambda b: b[:1] * (len(b) - 1)
                                                            + b[-1:]),
                    st.sampled_from([b"\xff" * 8, b"\xfe" + b"\xff" * 7, b"\x00" * 8,
                                     b"a", b"a\x00", b"a\x00\x00", b"\x00" * 16, b"\xff" * 16]))
locs_st = st.one_of(st.integers(0, 1 << 20),
                    st.integers(0, 255).map(lambda n: n << SHIFT),  # tombstone-like: 0 length
                    st.integers(1 << 64, 1 << 70))  # beyond a uint64
op_st = st.tuples(st.sampled_from(["swap", "store", "delete", "set1", "del1"]),
                  st.dictionaries(keys_st, locs_st, max_size=40))


def _live(loc: int | None) -> bool:
    return loc is not None and bool(loc >> SHIFT)


@settings(max_examples=300, deadline=None)
@given(st.lists(op_st, max_size=25), st.booleans())
def test_keyindex_matches_a_dict(ops: list[tuple[str, dict[bytes, int]]], as_array: bool) -> None:
    ix, model = KeyIndex(), {}
    for op, batch in ops:
        keys, locs = list(batch), list(batch.values())
        if op == "swap":
            want = sum(_live(model.get(k)) for k in keys)
            arg = (np.array(locs, dtype=np.uint64)
                   if as_array and all(v <= keywords.M64 for v in locs) else locs)
            assert ix.swap_count(keys, arg, SHIFT) == want
            model.update(batch)
        elif op == "store":
            ix.store(keys, locs)
            model.update(batch)
        elif op == "delete":
            ix.delete_many(keys)
            for k in keys:
                model.pop(k, None)
        elif op == "set1" and keys:
            ix[keys[0]] = locs[0]
            model[keys[0]] = locs[0]
        elif op == "del1" and keys:
            if keys[0] in model:
                del ix[keys[0]]
                del model[keys[0]]
            else:
                with pytest.raises(KeyError):
                    del ix[keys[0]]
        assert len(ix) == len(model)
        probe = [*keys, b"absent", b"absent!!"]
        assert ix.get_many(probe, 7) == [model.get(k, 7) for k in probe]
        assert [ix.get(k) for k in probe] == [model.get(k) for k in probe]
    assert dict(ix.items()) == model
    assert list(ix) == [k for k, _ in ix.items()]
    assert list(ix.values()) == [v for _, v in ix.items()]
    d_vals, t_vals, big_vals = ix.value_parts()
    assert [*d_vals, *t_vals.tolist(), *big_vals] == list(ix.values())
    assert keyindex.count_set(ix, SHIFT) == sum(map(_live, model.values()))
    assert dict(KeyIndex.of(model).items()) == model


def test_dict_calls_and_errors() -> None:
    ix = KeyIndex.of({b"12345678": 5, b"short": 6})
    assert b"12345678" in ix and 3 not in ix and [1] not in ix
    assert ix[b"short"] == 6 and ix.pop(b"short") == 6 and ix.pop(b"short", None) is None
    with pytest.raises(KeyError):
        ix[b"nothere!"]
    with pytest.raises(KeyError):
        ix.pop(b"nothere!")
    with pytest.raises(ValueError, match="2 keys but 1 locations"):
        ix.swap_count([b"a", b"b"], [1], 0)
    assert ix.__sizeof__() > ix._t.nbytes and bool(ix) and not KeyIndex()


def test_only_dicts_meeting_large_batches_of_short_keys_are_promoted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    eight = [b"%08d" % i for i in range(keyindex.PROMOTE_MIN_KEYS)]
    old = {b"short": 1, b"12345678": 2, b"a key of 17 bytes": 3}
    new = keyindex.promoted(old, eight, len(eight))
    assert isinstance(new, KeyIndex) and dict(new.items()) == old
    assert keyindex.promoted(old, eight[:10], 10) is old
    sixteen = [b"x" * 8 + k for k in eight]  # other short keys: a small dict stays a dict
    assert keyindex.promoted(old, sixteen, len(sixteen)) is old
    big = dict.fromkeys([b"k%06d" % i for i in range(keyindex.PROMOTE_WIDE_MIN)], 1)
    assert isinstance(keyindex.promoted(big, sixteen, len(sixteen)), KeyIndex)
    monkeypatch.setattr(keyindex, "PROMOTE_WIDE_MIN", 0)
    assert isinstance(keyindex.promoted(old, sixteen, len(sixteen)), KeyIndex)
    long = [b"y" + k for k in sixteen]  # 17 bytes: no table holds them
    assert keyindex.promoted(old, long, len(long)) is old
    mixed = [b"a long metadata key", *eight[1:]]  # a metadata key first: the sample decides
    assert isinstance(keyindex.promoted(old, mixed, len(mixed)), KeyIndex)
    half = [k if i % 2 else b"y" + k for i, k in enumerate(sixteen)]
    assert keyindex.promoted(old, half, len(half)) is old
    assert keyindex.promoted(new, eight, len(eight)) is new
    assert type(keyindex.new_index()) is dict
    monkeypatch.setattr(keyindex, "PROMOTE_MIN_KEYS", 0)
    assert isinstance(keyindex.new_index(), KeyIndex)


@pytest.mark.parametrize("name", ["hybridlog", "appendlog"])
@pytest.mark.parametrize("width", [8, 9, 16, 17])
def test_engines_promote_short_keys_and_reopen_into_a_table(
        tmp_path: Path, name: str, width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large batch of keys of 1-16 bytes moves the index to tables, a reopen loads it
    there; longer keys stay in a dict. Values, deletes and the live count survive both."""
    from raykv.engines import open_engine

    if width != 8:  # other short keys promote large indexes only: this one is small
        monkeypatch.setattr(keyindex, "PROMOTE_WIDE_MIN", 0)
    n = keyindex.PROMOTE_MIN_KEYS + 500
    model = {b"%0*d" % (width, i): b"v%d" % i for i in range(n)}
    with open_engine(name, tmp_path) as db:
        db.multi_set(model)
        db.multi_set({k: b"" for k in list(model)[:100]})  # deletes
        db.set(b"%0*d" % (width, n), b"single")  # one write beside the batches
        assert isinstance(db._index, KeyIndex) == (width <= 16)  # type: ignore[attr-defined]
        db.seal()
    for k in list(model)[:100]:
        del model[k]
    model[b"%0*d" % (width, n)] = b"single"
    with open_engine(name, tmp_path) as db:
        assert isinstance(db._index, KeyIndex) == (width <= 16)  # type: ignore[attr-defined]
        assert dict(db.items()) == model and db.live_keys() == len(model)
        probe = [*list(model)[:50], b"%0*d" % (width, 0), b"%0*d" % (width, n + 1)]
        assert db.multi_get(probe) == [model.get(k, b"") for k in probe]
        db._check()  # type: ignore[attr-defined]
