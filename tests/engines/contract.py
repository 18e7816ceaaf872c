"""The KVStore contract: every engine's test module subclasses ``KVStoreContract``.

A subclass sets ``engine_cls`` and ``small_params`` (parameters small enough that a few
thousand writes roll runs and trigger merges), and may add engine-specific tests. The
boundary-size tests (``boundaries.py``) come with it.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from raykv.engines.base import KVStore
from raykv.errors import CorruptionError, StoreClosedError
from tests.engines.boundaries import BoundaryContract
from tests.engines.expiry_contract import ExpiryContract


def rand_key(rng: random.Random, space: int) -> bytes:
    return b"k%06d" % rng.randrange(space)


def rand_value(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(1, 40))


class KVStoreContract(BoundaryContract, ExpiryContract):
    engine_cls: ClassVar[type[KVStore]]
    small_params: ClassVar[dict[str, Any]] = {}

    # ------------------------------------------------------------------ helpers

    def open(self, path: Path, **kw: Any) -> KVStore:
        return self.engine_cls(path, **{**self.small_params, **kw})

    @staticmethod
    def assert_state(store: KVStore, model: dict[bytes, bytes]) -> None:
        BoundaryContract.assert_live_keys(store, model)
        assert dict(store.items()) == model
        KVStoreContract.assert_item_chunks(store, 7)
        keys = list(model)
        assert store.multi_get(keys) == [model[k] for k in keys]
        for k in keys[:50]:
            assert store.get(k) == model[k]
        store._check()

    @staticmethod
    def assert_item_chunks(store: KVStore, rows: int) -> None:
        """``item_chunks(rows)``: the pairs of ``items()`` in its order, no chunk empty or
        over ``rows`` pairs (the base class groups ``items()``; engines but MemOnly read
        their own chunks)."""
        chunks = list(store.item_chunks(rows))
        assert all(0 < len(keys) == len(values) <= rows for keys, values in chunks)
        assert [p for keys, values in chunks for p in zip(keys, values, strict=True)] == list(
            store.items())

    @staticmethod
    def apply_random(store: KVStore, model: dict[bytes, bytes], rng: random.Random,
                     n: int, space: int = 500) -> None:
        for _ in range(n):
            op = rng.random()
            if op < 0.55:
                k, v = rand_key(rng, space), rand_value(rng)
                store.set(k, v)
                model[k] = v
            elif op < 0.7:
                k = rand_key(rng, space)
                store.delete(k)
                model.pop(k, None)
            elif op < 0.85:
                pairs = [(rand_key(rng, space), rand_value(rng) if rng.random() < 0.8 else b"")
                         for _ in range(rng.randrange(1, 30))]
                store.multi_set(pairs)
                for k, v in pairs:
                    if v:
                        model[k] = v
                    else:
                        model.pop(k, None)
            else:
                keys = [rand_key(rng, space) for _ in range(rng.randrange(1, 30))]
                assert store.multi_get(keys) == [model.get(k, b"") for k in keys]
            BoundaryContract.assert_live_keys(store, model)

    # ------------------------------------------------------------------ basic API

    def test_get_set_delete(self, tmp_path: Path) -> None:
        with self.open(tmp_path) as s:
            assert s.get(b"missing") == b""
            s.set(b"a", b"1")
            s[b"b"] = b"2"
            assert s.get(b"a") == b"1" and s[b"b"] == b"2"
            assert b"a" in s and b"zz" not in s
            s.set(b"a", b"")
            assert s.get(b"a") == b"" and b"a" not in s
            s.delete(b"b")
            s.delete(b"never-existed")
            with pytest.raises(KeyError):
                s[b"b"]
            del s[b"nope"]
            assert dict(s.items()) == {}

    def test_multi_ops_later_pairs_win(self, tmp_path: Path) -> None:
        with self.open(tmp_path) as s:
            s.multi_set([(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", b"x"), (b"c", b"")])
            assert s.multi_get([b"a", b"b", b"c", b"d"]) == [b"3", b"2", b"", b""]
            s.multi_set({b"d": b"4", b"a": b""})
            assert s.multi_get([b"a", b"d"]) == [b"", b"4"]
            s.multi_set([])
            assert s.multi_get([]) == []

    @pytest.mark.parametrize(
        ("key", "value", "exc", "words"),
        [
            ("str-key", b"v", TypeError, "key must be bytes"),
            (b"", b"v", ValueError, "empty"),
            (b"x" * 65, b"v", ValueError, "max_key_len=64"),
            (b"k", "str-value", TypeError, "must be bytes"),
            (b"k", b"v" * 129, ValueError, "max_value_len=128"),
            (7, b"v", TypeError, "int"),
        ],
    )
    def test_bad_input_is_rejected_and_changes_nothing(
        self, tmp_path: Path, key: Any, value: Any, exc: type[Exception], words: str
    ) -> None:
        with self.open(tmp_path, max_key_len=64, max_value_len=128) as s:
            s.set(b"keep", b"old")
            with pytest.raises(exc, match=words):
                s.set(key, value)
            with pytest.raises(exc, match=words):
                s.multi_set([(b"keep", b"new"), (b"other", b"x"), (key, value)])
            assert dict(s.items()) == {b"keep": b"old"}
            if not isinstance(key, bytes) or not key or len(key) > 64:
                with pytest.raises(exc, match=words):
                    s.multi_get([b"keep", key])
        # and it survives reopen untouched
        with self.open(tmp_path, max_key_len=64, max_value_len=128) as s:
            assert dict(s.items()) == {b"keep": b"old"}

    def test_bad_constructor_limits(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="max_key_len"):
            self.open(tmp_path / "a", max_key_len=0)
        with pytest.raises(TypeError, match="max_value_len"):
            self.open(tmp_path / "b", max_value_len="big")

    def test_closed_store_refuses(self, tmp_path: Path) -> None:
        s = self.open(tmp_path)
        s.set(b"a", b"1")
        s.close()
        s.close()  # idempotent
        with pytest.raises(StoreClosedError):
            s.set(b"a", b"2")
        with pytest.raises(StoreClosedError):
            s.get(b"a")
        with pytest.raises(StoreClosedError):
            s.seal()

    def test_directory_is_locked(self, tmp_path: Path) -> None:
        with self.open(tmp_path), pytest.raises(RuntimeError, match="in use"):
            self.open(tmp_path)

    # ------------------------------------------------------------------ model tests

    def test_random_ops_against_dict_with_seals_and_reopens(self, tmp_path: Path) -> None:
        seed = random.randrange(1 << 30)
        print("seed", seed)
        rng = random.Random(seed)
        model: dict[bytes, bytes] = {}
        s = self.open(tmp_path)
        for round_ in range(12):
            self.apply_random(s, model, rng, 600)
            self.assert_state(s, model)
            if round_ % 3 == 0:
                s.seal()
            if round_ % 4 == 1:
                s.close()
                s = self.open(tmp_path)
                self.assert_state(s, model)
        s.close()
        with self.open(tmp_path) as s:
            self.assert_state(s, model)

    def test_live_keys_after_every_step(self, tmp_path: Path) -> None:
        """``live_keys()`` follows the model through writes, deletes, seals, merges, reopens."""
        rng = random.Random(11)
        model: dict[bytes, bytes] = {}
        s = self.open(tmp_path)
        try:
            for round_ in range(12):
                self.apply_random(s, model, rng, 150, space=300)  # checks after every op
                s.seal()
                self.assert_live_keys(s, model)
                for k in list(model)[: len(model) // 3]:  # deletes of keys on disk, then more
                    s.delete(k)
                    del model[k]
                    self.assert_live_keys(s, model)
                s.delete(b"never-written-%d" % round_)
                self.assert_live_keys(s, model)
                if round_ % 3 == 2:
                    s.close()
                    s = self.open(tmp_path)
                    self.assert_live_keys(s, model)
            self.assert_state(s, model)
        finally:
            s.close()
        with pytest.raises(StoreClosedError):
            s.live_keys()

    def test_swapped_out_lets_the_caller_replace_the_files(self, tmp_path: Path) -> None:
        """The public hook checkpoint backends use to restore (``KVStore.swapped_out``)."""
        backup = tmp_path / "backup"
        backup.mkdir()
        with self.open(tmp_path / "kv") as s:
            s.multi_set({b"a%03d" % i: b"old" for i in range(200)})
            for name in s.seal():
                shutil.copy2(tmp_path / "kv" / name, backup / name)
            s.multi_set({b"a%03d" % i: b"" for i in range(0, 200, 2)})
            s.set(b"new", b"x")
            s.seal()
            s.set(b"unsealed", b"y")
            with s.swapped_out() as data_dir:
                assert data_dir == tmp_path / "kv"
                with pytest.raises(StoreClosedError):
                    s.get(b"new")
                for entry in os.listdir(data_dir):
                    if entry != "LOCK":
                        os.unlink(data_dir / entry)
                for entry in os.listdir(backup):
                    shutil.copy2(backup / entry, data_dir / entry)
            model = {b"a%03d" % i: b"old" for i in range(200)}
            self.assert_state(s, model)
            assert s.live_keys() == 200
            with pytest.raises(RuntimeError, match="boom"), s.swapped_out():
                raise RuntimeError("boom")
            self.assert_state(s, model)  # reopened after the block's error
            s.set(b"after", b"z")
            model[b"after"] = b"z"
            self.assert_state(s, model)

    def test_large_values_and_binary_keys(self, tmp_path: Path) -> None:
        rng = random.Random(5)
        model = {bytes([i, 0, 255]): rng.randbytes(rng.choice([0, 1, 100, 5000])) or b"\0"
                 for i in range(1, 200)}
        with self.open(tmp_path) as s:
            s.multi_set(model)
            s.seal()
            self.assert_state(s, model)
        with self.open(tmp_path) as s:
            self.assert_state(s, model)

    def test_deletes_then_merges_stay_deleted(self, tmp_path: Path) -> None:
        rng = random.Random(11)
        model: dict[bytes, bytes] = {}
        with self.open(tmp_path) as s:
            for i in range(3000):
                k, v = b"d%05d" % i, rng.randbytes(12)
                s.set(k, v)
                model[k] = v
            s.seal()
            for i in range(0, 3000, 2):
                s.delete(b"d%05d" % i)
                del model[b"d%05d" % i]
            s.seal()
            # enough new writes to roll runs and merge what holds the deletes
            for i in range(6000):
                k, v = b"e%05d" % (i % 1500), rng.randbytes(12)
                s.set(k, v)
                model[k] = v
                if i % 1000 == 0:
                    s.seal()
            self.assert_state(s, model)
        with self.open(tmp_path) as s:
            self.assert_state(s, model)

    # ------------------------------------------------------------------ seal behaviour

    def test_idle_seal_writes_nothing(self, tmp_path: Path) -> None:
        with self.open(tmp_path) as s:
            assert s.seal() == []  # empty store
            s.set(b"a", b"1")
            first = s.seal()
            assert first and all((tmp_path / n).is_file() for n in first)
            before = sorted(os.listdir(tmp_path))
            for _ in range(5):
                assert s.seal() == first
            assert sorted(os.listdir(tmp_path)) == before
            s.get(b"a")
            s.multi_get([b"a", b"b"])
            assert s.seal() == first

    def test_many_small_seals_names_unique_and_immutable(self, tmp_path: Path) -> None:
        rng = random.Random(3)
        model: dict[bytes, bytes] = {}
        seen: dict[str, str] = {}
        s = self.open(tmp_path)
        for i in range(150):
            self.apply_random(s, model, rng, rng.randrange(1, 60), space=300)
            if i == 75:
                s.close()
                s = self.open(tmp_path)
            for name in s.seal():
                digest = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
                assert seen.setdefault(name, digest) == digest, f"{name} changed content"
        self.assert_state(s, model)
        s.close()
        assert len(seen) > 10

    def test_seal_at_run_rollover(self, tmp_path: Path) -> None:
        """Seal after every single write across several run roll-overs and merges."""
        model: dict[bytes, bytes] = {}
        with self.open(tmp_path) as s:
            for i in range(400):
                k, v = b"r%04d" % (i % 120), b"v%05d" % i
                s.set(k, v)
                model[k] = v
                s.seal()
            self.assert_state(s, model)
        with self.open(tmp_path) as s:
            self.assert_state(s, model)

    def test_sealed_files_alone_restore_the_state(self, tmp_path: Path) -> None:
        """The files seal() returns are enough: copy only them, open the copy."""
        rng = random.Random(9)
        model: dict[bytes, bytes] = {}
        with self.open(tmp_path / "a") as s:
            self.apply_random(s, model, rng, 3000)
            files = s.seal()
            copy = tmp_path / "b"
            copy.mkdir()
            for n in files:
                (copy / n).write_bytes((tmp_path / "a" / n).read_bytes())
            self.apply_random(s, dict(model), rng, 500)  # later writes must not leak into the copy
        with self.open(copy) as s2:
            self.assert_state(s2, model)

    # ------------------------------------------------------------------ crash and corruption

    def test_kill_after_seal_keeps_sealed_state(self, tmp_path: Path) -> None:
        """A real SIGKILL: reopening holds at least the sealed state, never garbage."""
        script = textwrap.dedent(f"""
            import os, signal, sys
            from {self.engine_cls.__module__} import {self.engine_cls.__name__} as E
            s = E({str(tmp_path)!r}, **{self.small_params!r})
            for i in range(2000):
                s.set(b"k%05d" % (i % 700), b"sealed%05d" % i)
            s.seal()
            for i in range(2000):
                s.set(b"k%05d" % (i % 900), b"later%05d" % i)
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        proc = subprocess.run([sys.executable, "-c", script], check=False)
        assert proc.returncode == -signal.SIGKILL
        sealed = {b"k%05d" % (i % 700): b"sealed%05d" % i for i in range(2000)}
        with self.open(tmp_path) as s:
            got = dict(s.items())
            s._check()
        later_values = {b"later%05d" % i for i in range(2000)}
        for k, v in sealed.items():
            assert got[k] == v or got[k] in later_values, k
        for k, v in got.items():
            assert k in sealed or v in later_values

    def _corrupt_each_file(self, tmp_path: Path, damage: str) -> None:
        rng = random.Random(1)
        model: dict[bytes, bytes] = {}
        with self.open(tmp_path / "src") as s:
            self.apply_random(s, model, rng, 3000)
            files = s.seal()
        for name in files:
            work = tmp_path / f"{damage}-{name}"
            work.mkdir()
            for n in files:
                (work / n).write_bytes((tmp_path / "src" / n).read_bytes())
            data = bytearray((work / name).read_bytes())
            if damage == "flip":
                pos = rng.randrange(len(data))
                data[pos] ^= 0x5A
            else:
                data = data[: len(data) // 2]
            (work / name).write_bytes(bytes(data))
            with pytest.raises(CorruptionError, match=name.split(".")[0]), self.open(work) as s:
                dict(s.items())
                s.multi_get(list(model))

    def test_flipped_byte_is_reported_naming_the_file(self, tmp_path: Path) -> None:
        self._corrupt_each_file(tmp_path, "flip")

    def test_truncated_file_is_reported_naming_the_file(self, tmp_path: Path) -> None:
        self._corrupt_each_file(tmp_path, "truncate")

    def test_missing_file_is_reported(self, tmp_path: Path) -> None:
        with self.open(tmp_path) as s:
            s.multi_set({b"a%d" % i: b"v" for i in range(500)})
            files = s.seal()
        runs = [n for n in files if not n.endswith(".manifest")]
        (tmp_path / runs[0]).unlink()
        with pytest.raises(CorruptionError, match=runs[0]):
            self.open(tmp_path)

    # ------------------------------------------------------------------ stateful hypothesis

    def test_hypothesis_state_machine(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        contract = self

        class Machine(RuleBasedStateMachine):
            @initialize()
            def start(self) -> None:
                self.path = tmp_path_factory.mktemp("hyp")
                self.store = contract.open(self.path)
                self.model: dict[bytes, bytes] = {}

            keys = st.binary(min_size=1, max_size=6)
            values = st.binary(min_size=0, max_size=30)

            @rule(k=keys, v=values)
            def set(self, k: bytes, v: bytes) -> None:
                self.store.set(k, v)
                if v:
                    self.model[k] = v
                else:
                    self.model.pop(k, None)

            @rule(pairs=st.lists(st.tuples(keys, values), max_size=40))
            def multi_set(self, pairs: list[tuple[bytes, bytes]]) -> None:
                self.store.multi_set(pairs)
                for k, v in pairs:
                    if v:
                        self.model[k] = v
                    else:
                        self.model.pop(k, None)

            @precondition(lambda self: bool(self.model))
            @rule(data=st.data())
            def delete_existing(self, data: st.DataObject) -> None:
                k = data.draw(st.sampled_from(sorted(self.model)))
                self.store.delete(k)
                del self.model[k]

            @rule(ks=st.lists(keys, max_size=20))
            def multi_get(self, ks: list[bytes]) -> None:
                assert self.store.multi_get(ks) == [self.model.get(k, b"") for k in ks]

            @rule()
            def seal(self) -> None:
                self.store.seal()

            @rule()
            def reopen(self) -> None:
                self.store.close()
                self.store = contract.open(self.path)

            @invariant()
            def matches_model(self) -> None:
                if hasattr(self, "store"):
                    contract.assert_live_keys(self.store, self.model)
                    assert dict(self.store.items()) == self.model
                    contract.assert_item_chunks(self.store, 3)

            def teardown(self) -> None:
                if hasattr(self, "store"):
                    self.store.close()

        Machine.TestCase.settings = settings(
            max_examples=25, stateful_step_count=40, deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        Machine.TestCase().runTest()
