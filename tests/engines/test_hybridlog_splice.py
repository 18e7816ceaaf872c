"""HybridLog merges that splice fully live runs, and the pending live counts of bulk writes.

A spliced run's index entries do not move: its slots become views of the merged run
(``hybridlog/splice.py``). Keys a large batch leaves in the mutable region are counted
as new until they leave it (``regions.py``). Both are checked against a dict model,
through seals, reopens, crashes (``discard``), restores from a remote, deletes and
compaction; ``_check`` asserts the slot and segment invariants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from raykv.engines import HybridLog
from raykv.engines.hybridlog import splice
from raykv.engines.hybridlog.runset import RunView

PARAMS: dict[str, Any] = {"ro_lag_interval": 8, "flush_interval": 8, "mem_segment_len": 24,
                          "max_runs_per_level": 2}


def _views(store: HybridLog) -> int:
    return sum(isinstance(s, RunView) for s in store._slots)


def test_merge_of_fresh_runs_splices_them_and_moves_no_index_entry(tmp_path: Path) -> None:
    store = HybridLog(tmp_path, **PARAMS)
    model: dict[bytes, bytes] = {}
    for a in range(0, 400, 40):  # batches of new keys: each run fully live
        batch = {b"key%05d" % i: b"v%05d" % i for i in range(a, a + 40)}
        before = dict(store._index)
        store.multi_set(batch)
        model.update(batch)
        moved = {k for k, loc in before.items() if store._index.get(k) != loc}
        assert not moved, "a splice must not move index entries of the keys it keeps"
    assert _views(store) > 0
    assert any(len(r.segments) > 1 for r in store._runs)
    assert dict(store.items()) == model and store.live_keys() == len(model)
    assert store.multi_get(list(model)) == list(model.values())
    store._check()
    store.close()
    with HybridLog(tmp_path, **PARAMS) as again:  # one slot per run after a reopen
        assert dict(again.items()) == model
        assert all(len(r.segments) == 1 for r in again._runs)
        again._check()


def test_updates_after_splices_rewrite_and_free_view_slots(tmp_path: Path) -> None:
    store = HybridLog(tmp_path, **PARAMS)
    model: dict[bytes, bytes] = {}
    keys = [b"key%05d" % i for i in range(300)]
    for rnd in range(6):
        order = keys if rnd % 2 == 0 else keys[::-1]
        for a in range(0, len(order), 30):
            batch = {k: b"r%d" % rnd + k for k in order[a : a + 30]}
            store.multi_set(batch)
            model.update(batch)
        store.multi_set({k: b"" for k in keys[rnd::7]})  # deletes: tombstones
        for k in keys[rnd::7]:
            model.pop(k, None)
        assert dict(store.items()) == model and store.live_keys() == len(model)
        store._check()
        held = sum(len({r.slot} | {slot for slot, *_ in r.segments}) for r in store._runs)
        assert store._slots_in_use() == held, "leaked view slots"
    store.close()
    with HybridLog(tmp_path, **PARAMS) as again:
        assert dict(again.items()) == model and again.live_keys() == len(model)


def test_splice_bounds_segments_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    monkeypatch.setattr(splice, "MAX_SEGMENTS", 3)
    with HybridLog(tmp_path, **PARAMS) as store:
        model: dict[bytes, bytes] = {}
        for a in range(0, 2000, 40):
            batch = {b"key%05d" % i: b"v%d" % i for i in range(a, a + 40)}
            store.multi_set(batch)
            model.update(batch)
            assert all(len(r.segments) <= 3 for r in store._runs)
        assert dict(store.items()) == model
        store._check()


def test_failed_spliced_merge_changes_nothing(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A spliced merge whose run cannot be written leaves every run and slot as it was."""
    import raykv.engines.hybridlog.runset as runset_module

    real_write = runset_module.write_file
    state = {"fail": 0}

    def flaky_write(path: Path, data: bytes, *, sync: bool = True) -> None:
        if state["fail"] == 1:
            msg = "disk full (injected)"
            raise OSError(msg)
        real_write(path, data, sync=sync)

    real_splice = splice.Splicer.write

    def failing_once(self: splice.Splicer, *args: Any) -> Any:
        state["fail"] += 1
        return real_splice(self, *args)

    monkeypatch.setattr(runset_module, "write_file", flaky_write)
    monkeypatch.setattr(splice.Splicer, "write", failing_once)
    store = HybridLog(tmp_path, **PARAMS)
    model: dict[bytes, bytes] = {}
    failures = 0
    for a in range(0, 400, 40):
        batch = {b"key%05d" % i: b"w%d" % i for i in range(a, a + 40)}
        slots = list(store._slots)
        try:
            store.multi_set(batch)
        except OSError:
            failures += 1
            assert store._slots[: len(slots)] == slots
            if store.get(b"key%05d" % a) != batch[b"key%05d" % a]:
                continue  # the merge before the batch failed: the batch was not applied
        model.update(batch)
        assert dict(store.items()) == model
        store._check()
    assert failures == 1 and _views(store) > 0
    assert dict(store.items()) == model and store.live_keys() == len(model)
    store.close()
    with HybridLog(tmp_path, **PARAMS) as again:
        assert dict(again.items()) == model


class SpliceMachine(RuleBasedStateMachine):
    """Bulk writes, single writes, deletes, seals, reopens and crashes against a dict."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.tmp = Path(tempfile.mkdtemp())
        self.params = dict(PARAMS)
        self.store = HybridLog(self.tmp / "db", **self.params)
        self.model: dict[bytes, bytes] = {}
        self.sealed: dict[bytes, bytes] = {}
        self.since: dict[bytes, set[bytes]] = {}  # values written since the last seal

    def _wrote(self, key: bytes, value: bytes) -> None:
        self.since.setdefault(key, set()).add(value)
        if value:
            self.model[key] = value
        else:
            self.model.pop(key, None)

    keys = st.integers(0, 120).map(lambda i: b"key%04d" % i)
    values = st.one_of(st.just(b""), st.binary(min_size=1, max_size=20),
                       st.binary(min_size=250, max_size=300))

    @rule(pairs=st.lists(st.tuples(keys, values), min_size=1, max_size=40))
    def multi_set(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.store.multi_set(pairs)
        for k, v in pairs:
            self._wrote(k, v)

    @rule(first=st.integers(0, 1000), n=st.integers(8, 60), tag=st.binary(min_size=1,
                                                                           max_size=3))
    def bulk_new_or_existing(self, first: int, n: int, tag: bytes) -> None:
        batch = {b"bulk%05d" % i: tag + b"%d" % i for i in range(first, first + n)}
        self.store.multi_set(batch)
        for k, v in batch.items():
            self._wrote(k, v)

    @rule(key=keys, value=values)
    def set(self, key: bytes, value: bytes) -> None:
        self.store.set(key, value)
        self._wrote(key, value)

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
        self.store = HybridLog(self.tmp / "db", **self.params)

    @rule()
    def crash(self) -> None:
        """Like a kill: at least the last seal's state (merges commit flushed runs too)."""
        self.store.discard()
        self.store = HybridLog(self.tmp / "db", **self.params)
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
        probe = [*list(self.model)[:20], b"key0001", b"bulk00003"]
        assert self.store.multi_get(probe) == [self.model.get(k, b"") for k in probe]

    def teardown(self) -> None:
        assert dict(self.store.items()) == self.model
        self.store._check()
        self.store.close()


@pytest.mark.parametrize("compaction", [False, True])
def test_splice_state_machine(compaction: bool) -> None:
    machine = type("M", (SpliceMachine,), {})
    if compaction:
        def init(self: SpliceMachine) -> None:
            SpliceMachine.__init__(self)
            self.store.close()
            self.params["compaction_enabled"] = True
            self.store = HybridLog(self.tmp / "db", **self.params)
        machine.__init__ = init  # type: ignore[misc]
    machine.TestCase.settings = settings(max_examples=20, stateful_step_count=30,
                                         deadline=None,
                                         suppress_health_check=list(HealthCheck))
    machine.TestCase().runTest()


def test_restore_after_splices(tmp_path: Path) -> None:
    remote = f"file://{tmp_path / 'remote'}"
    store = HybridLog(tmp_path / "db", remote=remote, **PARAMS)
    model: dict[bytes, bytes] = {}
    for a in range(0, 300, 30):
        batch = {b"key%05d" % i: b"v%d" % i for i in range(a, a + 30)}
        store.multi_set(batch)
        model.update(batch)
    assert _views(store) > 0
    store.snapshot(1)
    snap = dict(model)
    store.multi_set({k: b"later" for k in list(model)[::3]})
    assert store.restore(1) == 1
    assert dict(store.items()) == snap and store.live_keys() == len(snap)
    store._check()
    store.close()


def test_batches_of_a_mutable_region_stay_on_the_bulk_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of exactly ``ro_lag_interval`` new keys after a shift left a page short."""
    from raykv.engines.hybridlog.bulk import BulkWrites

    taken: list[bool] = []
    real = BulkWrites._bulk_append

    def spy(self: BulkWrites, batch: dict[bytes, bytes], *lens: Any) -> bool:
        taken.append(real(self, batch, *lens))
        return taken[-1]

    monkeypatch.setattr(BulkWrites, "_bulk_append", spy)
    params = {"ro_lag_interval": 64, "flush_interval": 64, "mem_segment_len": 256}
    model: dict[bytes, bytes] = {}
    with HybridLog(tmp_path, **params) as store:
        first = {b"k%05d" % i: b"a" for i in range(64)}
        store.multi_set(first)  # fills the mutable region
        mixed = {b"k%05d" % i: b"b" for i in range(61, 125)}  # 3 in place, 61 new
        store.multi_set(mixed)  # a shift leaves the region a few records short
        model.update(first)
        model.update(mixed)
        taken.clear()
        for a in range(1000, 3000, 64):
            batch = {b"k%05d" % i: b"c" for i in range(a, a + 64)}
            store.multi_set(batch)
            model.update(batch)
            assert store.region_sizes()["mutable"] >= 64 - store._page
        assert all(taken), taken
        assert dict(store.items()) == model and store.live_keys() == len(model)
        store._check()


def test_bulk_batches_that_update_the_mutable_region_in_place_match_a_dict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bulk path's lengths (from validation) stay aligned with its records when some
    keys of a batch are updated in the mutable region and others are deleted."""
    import random

    from raykv.engines.hybridlog.bulk import BulkWrites

    overlapping: list[bool] = []
    real = BulkWrites._bulk_append

    def spy(self: BulkWrites, batch: dict[bytes, bytes], *lens: Any) -> bool:
        overlapping.append(bool(self._mut.keys() & batch.keys()))
        return real(self, batch, *lens)

    monkeypatch.setattr(BulkWrites, "_bulk_append", spy)
    rng = random.Random(3)
    model: dict[bytes, bytes] = {}
    params = {"ro_lag_interval": 64, "flush_interval": 64, "mem_segment_len": 256}
    with HybridLog(tmp_path, **params) as store:
        for _ in range(60):
            batch = {b"k%d" % rng.randrange(400): (b"v" * rng.randrange(1, 40)
                                                    if rng.random() > 0.05 else b"")
                     for _ in range(rng.randrange(64, 200))}
            store.multi_set(list(batch.items()))
            for k, v in batch.items():
                if v:
                    model[k] = v
                else:
                    model.pop(k, None)
        assert sum(overlapping) >= 10, overlapping
        keys = [b"k%d" % i for i in range(400)]
        assert store.multi_get(keys) == [model.get(k, b"") for k in keys]
        assert dict(store.items()) == model and store.live_keys() == len(model)
        store._check()
