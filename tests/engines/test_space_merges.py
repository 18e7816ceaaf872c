"""Merges by space for large stores (issue 15 item 3): HybridLog and AppendLog.

Once a store is big, the levels of big runs are not merged by count; their dead records
are reclaimed when the disk holds more than ``SPACE_AMP`` times the live records, by
rewriting the deadest runs (``hybridlog/merge.py``, ``appendlog/merge.py``). The tests
shrink ``BIG_RUN_RECORDS`` / ``BIG_RUN_BYTES`` so that a few thousand keys make a big
store, and check the policy and the data against a dict model through seals, reopens
and crashes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from raykv.engines import AppendLog, HybridLog, KVStore
from raykv.engines.appendlog import merge as al_merge
from raykv.engines.hybridlog import merge as hl_merge
from raykv.engines.hybridlog.merge import big_level, over_space, pick_merge
from raykv.engines.space import pick_dead

HL_PARAMS: dict[str, Any] = {"ro_lag_interval": 64, "flush_interval": 64,
                             "mem_segment_len": 256, "max_runs_per_level": 4}


AL_PARAMS: dict[str, Any] = {"threshold": 16 << 10, "max_runs_per_level": 4}


@pytest.fixture
def small_big(monkeypatch: pytest.MonkeyPatch) -> None:
    """HybridLog: runs of 256+ records count as big, in stores of as many records;
    AppendLog: runs of 16+ KiB."""
    monkeypatch.setattr(hl_merge, "BIG_RUN_RECORDS", 256)
    monkeypatch.setattr(hl_merge, "SPACE_FLOOR_RUNS", 1)
    monkeypatch.setattr(al_merge, "BIG_RUN_BYTES", 16 << 10)


def _disk_records(store: Any) -> int:
    return sum(r.count for r in store._runs)


def test_stores_under_the_floor_are_merged_by_count_only() -> None:
    """50,000 live keys rewritten every epoch (runs of 43,000): no space merge until the
    disk holds ``SPACE_FLOOR_RUNS`` x ``BIG_RUN_RECORDS`` records (1,048,576)."""
    assert hl_merge.SPACE_FLOOR_RUNS * hl_merge.BIG_RUN_RECORDS == 1 << 20
    assert not over_space([43_000] * 3, 50_000)
    assert not over_space([43_000] * 24, 50_000)  # 1,032,000 records
    assert over_space([43_000] * 25, 50_000)


def test_policy_functions(small_big: None) -> None:
    # base 4: level 4 holds 256..1023 records; with 2,000 live records (level 5) it is big
    assert big_level(4, 4, 2000) and big_level(5, 4, 2000)
    assert not big_level(3, 4, 2000)  # 64 records: below BIG_RUN_RECORDS
    assert not big_level(4, 4, 100_000)  # more than one level below the live records
    counts = [500] * 8 + [10] * 3
    assert pick_merge(counts, 4) == list(range(8))  # without live: by count, as before
    assert pick_merge(counts, 4, 2000) is None  # the big level is left alone
    assert pick_merge([*counts, 10, 10], 4, 2000) == list(range(8, 13))  # small ones not
    assert not over_space([500] * 8, 2000) and over_space([500] * 9, 2000)
    assert not over_space([100, 100], 10)  # a small store: the count policy only
    # deadest first, down to TARGET_AMP x live; never a run without dead records
    live_counts = [100, 500, 0, 250, 100, 500, 500, 100, 100]  # 2,150 live of 4,500
    assert pick_dead([500] * 9, live_counts, 2150) == [0, 2, 4]  # 3,200 <= 1.5 x 2,150
    assert pick_dead([500] * 9, live_counts, 2800) == [2]  # as if 2,800: 4,000 <= 4,200
    assert pick_dead([500, 500], [500, 500], 10) == []


def test_an_update_pass_costs_no_merge_and_space_merges_bound_the_disk(
        tmp_path: Path, small_big: None) -> None:
    """Fails on the count-only policy: the first update pass would merge the big level."""
    model: dict[bytes, bytes] = {}
    keys = [b"key%05d" % i for i in range(2000)]
    with HybridLog(tmp_path, **HL_PARAMS) as store:
        for a in range(0, 2000, 500):
            batch = {k: b"insert" for k in keys[a : a + 500]}
            store.multi_set(batch)
            model.update(batch)
        store.seal()
        order = keys[::-1]
        for a in range(0, 2000, 500):  # every key once more: old runs die, none is merged
            batch = {k: b"update%d" % a for k in order[a : a + 500]}
            store.multi_set(batch)
            model.update(batch)
            assert store.stats.merges == 0
        assert dict(store.items()) == model
        store._check()
        for rnd in range(6):  # further passes: merges by space keep the disk bounded
            for a in range(0, 2000, 500):
                batch = {k: b"r%d-%d" % (rnd, a) for k in keys[a : a + 500]}
                store.multi_set(batch)
                model.update(batch)
                live = len(store._index)
                assert _disk_records(store) <= hl_merge.SPACE_AMP * live, rnd
            store.seal()
        assert store.stats.merges > 0
        assert dict(store.items()) == model and store.live_keys() == len(model)
        store._check()
    with HybridLog(tmp_path, **HL_PARAMS) as store:
        assert dict(store.items()) == model
        store._check()


def test_dead_runs_are_dropped_and_tombstones_kept(tmp_path: Path, small_big: None) -> None:
    model: dict[bytes, bytes] = {}
    with HybridLog(tmp_path, **HL_PARAMS) as store:
        store.multi_set({b"old%05d" % i: b"v" for i in range(1000)})
        model.update({b"old%05d" % i: b"v" for i in range(1000)})
        store.seal()
        for i in range(0, 1000, 2):
            store.delete(b"old%05d" % i)
            model.pop(b"old%05d" % i)
        store.seal()
        for rnd in range(8):
            batch = {b"new%05d" % i: b"n%d" % rnd for i in range(600)}
            store.multi_set(batch)
            model.update(batch)
            store.seal()
            assert _disk_records(store) <= hl_merge.SPACE_AMP * len(store._index) + 600
        assert store.stats.merges > 0
        assert dict(store.items()) == model and store.live_keys() == len(model)
        store._check()
    with HybridLog(tmp_path, **HL_PARAMS) as store:  # deleted keys stay deleted
        assert dict(store.items()) == model
        assert store.get(b"old00000") == b"" and store.get(b"old00001") == b"v"


class SpaceMachine(RuleBasedStateMachine):
    """Large batches over a few thousand keys, deletes, seals, reopens and crashes."""

    engine: Any = HybridLog
    params: dict[str, Any] = HL_PARAMS

    def open(self) -> KVStore:
        store: KVStore = self.engine(self.tmp / "db", **self.params)
        return store

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.tmp = Path(tempfile.mkdtemp())
        self.store = self.open()
        self.model: dict[bytes, bytes] = {}
        self.sealed: dict[bytes, bytes] = {}
        self.since: dict[bytes, set[bytes]] = {}  # values written since the last seal

    def _wrote(self, key: bytes, value: bytes) -> None:
        self.since.setdefault(key, set()).add(value)
        if value:
            self.model[key] = value
        else:
            self.model.pop(key, None)

    @rule(first=st.integers(0, 3000), n=st.integers(1, 700), step=st.sampled_from([1, 3]),
          tag=st.binary(min_size=1, max_size=3), long=st.booleans())
    def bulk(self, first: int, n: int, step: int, tag: bytes, long: bool) -> None:
        value = tag * (100 if long else 1)
        batch = {b"k%05d" % (i % 3000): value for i in range(first, first + n * step, step)}
        self.store.multi_set(batch)
        for k, v in batch.items():
            self._wrote(k, v)

    @rule(first=st.integers(0, 3000), n=st.integers(1, 200))
    def delete_some(self, first: int, n: int) -> None:
        batch = {b"k%05d" % (i % 3000): b"" for i in range(first, first + n)}
        self.store.multi_set(batch)
        for k, v in batch.items():
            self._wrote(k, v)

    @rule()
    def seal(self) -> None:
        self.store.seal()
        self.sealed = dict(self.model)
        self.since = {}

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.sealed = dict(self.model)
        self.since = {}
        self.store = self.open()

    @rule()
    def crash(self) -> None:
        """Like a kill: at least the last seal's state (merges commit flushed runs too)."""
        self.store.discard()
        self.store = self.open()
        got = dict(self.store.items())
        for key in got.keys() | self.sealed.keys() | self.since.keys():
            allowed = {self.sealed.get(key, b"")} | self.since.get(key, set())
            assert got.get(key, b"") in allowed, key
        self.model = got
        self.sealed = dict(got)
        self.since = {}

    @invariant()
    def matches_model(self) -> None:
        assert self.store.live_keys() == len(self.model)
        probe = [*list(self.model)[:20], b"k00001", b"k02999"]
        assert self.store.multi_get(probe) == [self.model.get(k, b"") for k in probe]
        # one batch (at most 700 records) may have crossed the bound since the last merge
        store: Any = self.store
        assert _disk_records(store) <= 2 * len(store._index) + 800

    @rule()
    def check(self) -> None:
        self.store._check()  # type: ignore[attr-defined]

    def teardown(self) -> None:
        assert dict(self.store.items()) == self.model
        self.store._check()  # type: ignore[attr-defined]
        self.store.close()


@pytest.mark.parametrize("engine", ["hybridlog", "appendlog"])
def test_space_state_machine(small_big: None, engine: str) -> None:
    attrs = ({"engine": HybridLog, "params": HL_PARAMS} if engine == "hybridlog"
             else {"engine": AppendLog, "params": AL_PARAMS})
    machine = type("M", (SpaceMachine,), attrs)
    machine.TestCase.settings = settings(max_examples=25, stateful_step_count=30,
                                         deadline=None,
                                         suppress_health_check=list(HealthCheck))
    machine.TestCase().runTest()


def test_appendlog_update_pass_costs_no_merge_and_space_merges_bound_the_disk(
        tmp_path: Path, small_big: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails on the count-only policy: the first update pass would merge the big level.

    Runs left without a live record are dropped unread (a ``dead`` merge).
    """
    kinds: list[bool] = []
    real = AppendLog._merge_runs

    def spy(self: AppendLog, group: Any, *, dead: bool = False) -> None:
        kinds.append(dead)
        real(self, group, dead=dead)

    monkeypatch.setattr(AppendLog, "_merge_runs", spy)
    model: dict[bytes, bytes] = {}
    keys = [b"key%05d" % i for i in range(3000)]
    with AppendLog(tmp_path, **AL_PARAMS) as store:
        for a in range(0, 3000, 500):
            batch = {k: b"insert%02d" % 0 for k in keys[a : a + 500]}
            store.multi_set(batch)
            model.update(batch)
        store.seal()
        merges = store.stats.merges
        order = keys[::-1]
        for a in range(0, 3000, 500):  # every key once more: old runs die, none is merged
            batch = {k: b"update%02d" % (a % 97) for k in order[a : a + 500]}
            store.multi_set(batch)
            model.update(batch)
            assert store.stats.merges == merges
        store.seal()
        store._check()
        for rnd in range(6):  # further passes: merges by space keep the disk bounded
            for a in range(0, 3000, 500):
                batch = {k: b"r%d-%05d" % (rnd, a) for k in keys[a : a + 500]}
                store.multi_set(batch)
                model.update(batch)
            store.seal()  # the run a seal closes is merged by the next write
            bound = al_merge.SPACE_AMP * len(store._index) + store._runs[-1].count
            assert _disk_records(store) <= bound, rnd
        assert store.stats.merges > merges
        assert any(kinds), "no merge of dead runs"
        assert dict(store.items()) == model and store.live_keys() == len(model)
        store._check()
        for i in range(0, 3000, 2):  # deletes, then passes over the rest: tombstones
            store.delete(keys[i])
            model.pop(keys[i])
        for rnd in range(4):
            batch = {k: b"again%d" % rnd for k in keys[1::2]}
            store.multi_set(batch)
            model.update(batch)
            store.seal()
        assert dict(store.items()) == model and store.live_keys() == len(model)
        store._check()
    with AppendLog(tmp_path, **AL_PARAMS) as store:
        assert dict(store.items()) == model
        store._check()


@pytest.mark.parametrize("engine", ["hybridlog", "appendlog"])
def test_with_an_expiry_horizon_big_levels_are_merged_by_count(
        tmp_path: Path, small_big: None, engine: str) -> None:
    """Expired records stay index entries until a merge drops them, so the space bound
    cannot see them: with a horizon set, an update pass merges by count as before (the
    TTL benchmark's AppendLog store grew to 5.8x its live bytes without this)."""
    store: Any = (HybridLog(tmp_path, **HL_PARAMS) if engine == "hybridlog"
                  else AppendLog(tmp_path, **AL_PARAMS))
    n = 2000 if engine == "hybridlog" else 3000
    keys = [b"key%05d" % i for i in range(n)]
    model: dict[bytes, bytes] = {}
    for a in range(0, n, 500):
        batch = {k: b"insert%02d" % 0 for k in keys[a : a + 500]}
        store.multi_set(batch)
        model.update(batch)
    store.seal()
    store.set_expiry(0)  # nothing expires (no value is stamped below 0)
    merges = store.stats.merges
    for a in range(0, n, 500):
        batch = {k: b"update%02d" % (a % 97) for k in keys[::-1][a : a + 500]}
        store.multi_set(batch)
        model.update(batch)
    assert store.stats.merges > merges
    assert dict(store.items()) == model
    store._check()
    store.close()


def test_appendlog_locations_of_small_and_large_records(tmp_path: Path) -> None:
    """``_locs``: numpy for records under 256 bytes, Python ints beyond; same packing."""
    from raykv.engines.appendlog import runfile as al

    with AppendLog(tmp_path) as store:
        for ns in ([10, 20, 255, 6], [10, 300, 20], [1 << 20, 7]):
            pos = 12345
            got = list(store._locs(np.array(ns), pos))
            want = []
            for n in ns:
                want.append(store._abase | pos << al.SLOT_BITS | n << al.N_SHIFT)
                pos += n
            assert got == want
            assert [loc >> al.N_SHIFT for loc in got] == ns
            assert all(loc & al.SLOT_MASK == store._aslot for loc in got)
        model = {b"small%03d" % i: b"v" * (i % 200) for i in range(1, 300)}
        model.update({b"large%03d" % i: b"w" * (250 + i) for i in range(50)})
        store.multi_set(model)
        assert store.multi_get(list(model)) == list(model.values())
        store.seal()
    with AppendLog(tmp_path) as store:
        assert dict(store.items()) == {k: v for k, v in model.items() if v}
        store._check()
