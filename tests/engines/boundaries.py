"""Contract tests whose key and value sizes straddle every internal size boundary.

``KVStoreContract`` inherits ``BoundaryContract``, so every engine runs these with its
``small_params`` (tiny memtables, segments and thresholds: flushes and merges happen
all the time). Each boundary below names the code that switches behaviour there; a new
width, packing or fast-path threshold in an engine belongs in these lists.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from raykv.engines.base import DEFAULT_MAX_KEY_LEN, DEFAULT_MAX_VALUE_LEN, KVStore

MAX_KEY = 70_000  # max_key_len of the boundary tests: above every width boundary of keys
MAX_VALUE = 140_000  # max_value_len: more than two LSM blocks' worth (2 x 64 KiB)

KEY_LENGTHS = (
    1, 2,
    127, 128, 129,  # AppendLog: LEB128 key length takes 1 or 2 bytes (_SMALL_N fast paths)
    255, 256, 257,  # HybridLog key_width and AppendLog column width: u8 -> u16
    65_535, 65_536, 65_537,  # u16 -> u32; LSM: a key alone fills a 64 KiB block
    MAX_KEY,
)
VALUE_LENGTHS = (
    0,  # a tombstone (delete)
    1,
    31, 32, 33,  # AppendLog: keys copied into the index section above a 32-byte average
    63, 64, 65,  # HybridLog gather_values: byte gather up to 64 bytes per value, then slices
    126, 127, 128, 129,  # AppendLog: 2-byte record header and records < 134 bytes (_SMALL_N)
    255, 256, 257,  # HybridLog: a location fits a uint64 below 256 (issue 11); u8 -> u16
    4095, 4096, 4097,  # HybridLog value pages (PAGE_SIZE)
    65_535, 65_536, 65_537,  # LSM BLOCK_MAX_BYTES; u16 -> u32 columns and offsets
    MAX_VALUE,
)
BAD_KEY = MAX_KEY + 1
BAD_VALUE = MAX_VALUE + 1


def make_key(ident: int, length: int) -> bytes:
    """A key of ``length`` bytes, distinct per ``(ident, length)``.

    Keys of one ident are prefixes of each other, so a key's bytes occur inside longer
    keys (the LSM block search must not take such a match for the key).
    """
    return bytes([65 + ident]) * length


def make_value(serial: int, length: int) -> bytes:
    """A value of ``length`` bytes whose content is unique to ``serial`` (stale reads show)."""
    return (serial.to_bytes(4, "little") * (length // 4 + 1))[:length]


def apply(model: dict[bytes, bytes], pairs: list[tuple[bytes, bytes]]) -> None:
    for k, v in pairs:
        if v:
            model[k] = v
        else:
            model.pop(k, None)


class BoundaryContract:
    """Boundary-size tests every engine passes (mixed into ``KVStoreContract``)."""

    open: Callable[..., KVStore]

    @staticmethod
    def assert_live_keys(store: KVStore, model: dict[bytes, bytes]) -> None:
        """``live_keys()`` is ``len(model)`` (exact engines) or an upper bound of it."""
        if store.live_keys_exact:
            assert store.live_keys() == len(model)
        else:
            assert store.live_keys() >= len(model)

    @staticmethod
    def assert_model(store: KVStore, model: dict[bytes, bytes], probe: list[bytes]) -> None:
        BoundaryContract.assert_live_keys(store, model)
        assert dict(store.items()) == model
        keys = [*model, *probe]
        assert store.multi_get(keys) == [model.get(k, b"") for k in keys]
        for k in keys[::7]:
            assert store.get(k) == model.get(k, b"")
        store._check()

    @staticmethod
    def assert_rejected_changes_nothing(store: KVStore, path: Path,
                                        model: dict[bytes, bytes]) -> None:
        """Over-limit keys and values raise ``ValueError`` naming the limit; nothing changes.

        Seals first, so an unchanged store must then seal idle (same files, none written).
        """
        files = store.seal()
        listing = sorted(os.listdir(path))
        good_key = next(iter(model), make_key(0, 1))
        bad_key, bad_value = make_key(1, BAD_KEY), make_value(0, BAD_VALUE)
        limit_key, limit_value = f"max_key_len={MAX_KEY}", f"max_value_len={MAX_VALUE}"
        for call, words in (
            (lambda: store.set(bad_key, b"v"), limit_key),
            (lambda: store.set(good_key, bad_value), limit_value),
            (lambda: store.delete(bad_key), limit_key),
            (lambda: store.multi_set([(good_key, b"new"), (bad_key, b"v")]), limit_key),
            (lambda: store.multi_set([(good_key, b""), (make_key(3, 5), bad_value)]),
             limit_value),
            (lambda: store.get(bad_key), limit_key),
            (lambda: store.multi_get([good_key, bad_key]), limit_key),
        ):
            with pytest.raises(ValueError, match=words):
                call()
        assert store.seal() == files
        assert sorted(os.listdir(path)) == listing
        assert store.get(good_key) == model.get(good_key, b"")
        assert dict(store.items()) == model

    def test_every_size_boundary_round_trips(self, tmp_path: Path) -> None:
        """Every key length meets every value length boundary, values moving both ways
        (small -> large -> small) across seals, merges, deletes and a reopen."""
        params = {"max_key_len": MAX_KEY, "max_value_len": MAX_VALUE}
        keys = [make_key(i, n) for n in KEY_LENGTHS for i in range(2)]
        model: dict[bytes, bytes] = {}
        s = self.open(tmp_path, **params)
        try:
            serial = 0
            for round_ in range(6):
                pairs = []
                for i, k in enumerate(keys):  # gcd(5, 23) = 1: every round has every length
                    serial += 1
                    pairs.append((k, make_value(serial, VALUE_LENGTHS[(5 * i + 7 * round_)
                                                                      % len(VALUE_LENGTHS)])))
                if round_ % 2:
                    s.multi_set(pairs)
                else:
                    for k, v in pairs:
                        s.set(k, v)
                apply(model, pairs)
                if round_ == 4:
                    for k in keys[::3]:
                        s.delete(k)
                        model.pop(k, None)
                files = s.seal()
                listing = sorted(os.listdir(tmp_path))
                assert s.seal() == files and sorted(os.listdir(tmp_path)) == listing  # idle
                self.assert_model(s, model, [make_key(3, n) for n in KEY_LENGTHS])
                if round_ == 2:
                    s.close()
                    s = self.open(tmp_path, **params)
                    self.assert_model(s, model, [])
            # issue 11's pattern: runs of small values merged while the newest value of
            # some of their keys is large, in a run outside the merge. Per round: small
            # values for all keys, large ones for a third, small ones for as many other
            # keys (a run as big as the first: it fills the first one's merge level)
            large = [n for n in VALUE_LENGTHS if n >= 256]
            others = [make_key(i, n) for n in KEY_LENGTHS for i in (5, 6)]
            for rep in range(4):
                for size, chosen in ((10, keys), (0, keys[rep % 3 :: 3]), (10, others)):
                    pairs = []
                    for i, k in enumerate(chosen):
                        serial += 1
                        pairs.append((k, make_value(serial, size or large[i % len(large)])))
                    s.multi_set(pairs)
                    apply(model, pairs)
                    s.seal()
            self.assert_model(s, model, [])
            # equal-length batches (AppendLog's numpy path) at the record-header boundary
            for klen, vlen in ((1, 1), (1, 126), (1, 127), (127, 127), (128, 1), (2, 128)):
                batch = [((bytes([j + 1, 200]) + b"p" * klen)[:klen], make_value(j, vlen))
                         for j in range(40)]
                s.multi_set(batch)
                apply(model, batch)
            s.seal()
            self.assert_model(s, model, [])
            self.assert_rejected_changes_nothing(s, tmp_path, model)
        finally:
            s.close()
        with self.open(tmp_path, **params) as s:
            self.assert_model(s, model, [])

    def test_default_limits_and_one_over(self, tmp_path: Path) -> None:
        """The default ``max_key_len`` and ``max_value_len`` are accepted; one more is not."""
        key, value = b"K" * DEFAULT_MAX_KEY_LEN, b"V" * DEFAULT_MAX_VALUE_LEN
        with self.open(tmp_path) as s:
            s.set(b"small", b"x")
            s.set(key, value)
            files = s.seal()
            with pytest.raises(ValueError, match=f"max_key_len={DEFAULT_MAX_KEY_LEN}"):
                s.set(key + b"K", b"x")
            with pytest.raises(ValueError, match=f"max_value_len={DEFAULT_MAX_VALUE_LEN}"):
                s.multi_set([(b"small", b"y"), (b"other", value + b"V")])
            assert s.seal() == files
            assert s.get(b"small") == b"x" and s.get(b"other") == b""
        with self.open(tmp_path) as s:
            assert s.get(key) == value and s.get(b"small") == b"x"
            s.delete(key)
            s.set(b"small", b"z")
        with self.open(tmp_path) as s:
            assert dict(s.items()) == {b"small": b"z"}
            s._check()

    def test_hypothesis_boundary_sizes(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        """Random operation sequences over the boundary sizes, against a dict model."""
        contract = self
        params: dict[str, Any] = {"max_key_len": MAX_KEY, "max_value_len": MAX_VALUE}

        class Machine(RuleBasedStateMachine):
            @initialize()
            def start(self) -> None:
                self.path = tmp_path_factory.mktemp("bounds")
                self.store = contract.open(self.path, **params)
                self.model: dict[bytes, bytes] = {}
                self.serial = 0

            keys = st.builds(make_key, st.integers(0, 2), st.sampled_from(KEY_LENGTHS))
            lengths = st.sampled_from(VALUE_LENGTHS)

            def value(self, length: int) -> bytes:
                self.serial += 1
                return make_value(self.serial, length)

            @rule(k=keys, n=lengths)
            def set(self, k: bytes, n: int) -> None:
                v = self.value(n)
                self.store.set(k, v)
                apply(self.model, [(k, v)])

            @rule(batch=st.lists(st.tuples(keys, lengths), min_size=1, max_size=6))
            def multi_set(self, batch: list[tuple[bytes, int]]) -> None:
                pairs = [(k, self.value(n)) for k, n in batch]
                self.store.multi_set(pairs)
                apply(self.model, pairs)

            @precondition(lambda self: bool(self.model))
            @rule(data=st.data())
            def delete(self, data: st.DataObject) -> None:
                k = data.draw(st.sampled_from(sorted(self.model)))
                self.store.delete(k)
                del self.model[k]

            @rule(k=keys)
            def get(self, k: bytes) -> None:
                assert self.store.get(k) == self.model.get(k, b"")

            @rule()
            def seal_then_idle_seal(self) -> None:
                files = self.store.seal()
                listing = sorted(os.listdir(self.path))
                assert self.store.seal() == files
                assert sorted(os.listdir(self.path)) == listing

            @rule()
            def rejected_writes(self) -> None:
                contract.assert_rejected_changes_nothing(self.store, self.path, self.model)

            @rule()
            def reopen(self) -> None:
                self.store.close()
                self.store = contract.open(self.path, **params)

            @rule()
            def check(self) -> None:
                contract.assert_model(self.store, self.model, [])

            @invariant()
            def live_keys_match(self) -> None:
                if hasattr(self, "store"):
                    contract.assert_live_keys(self.store, self.model)

            def teardown(self) -> None:
                if hasattr(self, "store"):
                    contract.assert_model(self.store, self.model, [])
                    self.store.close()
                    with contract.open(self.path, **params) as s:
                        assert dict(s.items()) == self.model

        Machine.TestCase.settings = settings(
            max_examples=20, stateful_step_count=40, deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                   HealthCheck.data_too_large],
        )
        Machine.TestCase().runTest()
