"""HybridLog reads after bulk writes (issue 15 items 2 and 3).

* ``multi_get`` reads the keys only the disk holds with one vectorized pass per run
  (``RunSet._read_missing``): checked against a dict model over runs, spliced views,
  tombstones, repeated keys and every value length class (gathered, sliced, beyond a
  uint64 location), and for the page checks.
* A merge finds live records by one scan of the index even when some index entry is a
  value of 256 bytes or more (an operator's metadata).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import raykv.engines.hybridlog.maintenance as maintenance_module
from raykv.engines.hybridlog import HybridLog
from raykv.engines.hybridlog.runfile import PAGE_SIZE, SLOT_MASK
from raykv.errors import CorruptionError
from tests.engines.boundaries import apply
from tests.engines.test_hybridlog import damage_sealed_run

BULK = {"ro_lag_interval": 100, "flush_interval": 100, "mem_segment_len": 300,
        "max_runs_per_level": 3}


def _value(rng: random.Random, i: int) -> bytes:
    kind = rng.random()
    if kind < 0.5:
        size = 16  # one length: one numpy gather
    elif kind < 0.8:
        size = rng.randint(1, 64)  # several lengths
    elif kind < 0.95:
        size = rng.choice([65, 200, 255])  # sliced one by one
    else:
        size = rng.choice([256, 1000, 3 * PAGE_SIZE])  # beyond a uint64 location
    return (b"%d." % i + rng.randbytes(size))[:size]


@pytest.mark.parametrize("seed", range(3))
def test_multi_get_of_disk_keys_matches_a_dict(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    model: dict[bytes, bytes] = {}
    keys = [b"key%05d" % i for i in range(1500)]
    store = HybridLog(tmp_path, **BULK)
    try:
        for step in range(30):
            batch = {k: (b"" if rng.random() < 0.1 else _value(rng, step))
                     for k in rng.sample(keys, rng.choice([50, 400, 900]))}
            store.multi_set(batch)
            apply(model, list(batch.items()))
            if rng.random() < 0.3:
                store.seal()
            if rng.random() < 0.15:
                store.close()
                store = HybridLog(tmp_path, **BULK)
            probe = rng.sample(keys, 700) + keys[:50] + keys[:50]  # repeats too
            assert store.multi_get(probe) == [model.get(k, b"") for k in probe], seed
        store._check()
        store.close()
        store = HybridLog(tmp_path, **BULK)  # every value on disk only
        assert store.multi_get(keys) == [model.get(k, b"") for k in keys]
        store._check()
    finally:
        store.close()


def test_multi_get_checks_the_pages_it_reads(tmp_path: Path) -> None:
    model = {b"k%05d" % i: b"%016d" % i for i in range(2000)}  # 32,000 value bytes
    params = {"ro_lag_interval": 5000, "flush_interval": 5000, "mem_segment_len": 10_000}
    damage_sealed_run(tmp_path, model, params, 3 * PAGE_SIZE + 10)  # 4th page of values
    keys = list(model)
    with HybridLog(tmp_path, **params) as s:
        intact = keys[:200]  # values in the first page only
        assert s.multi_get(intact) == [model[k] for k in intact]
        with pytest.raises(CorruptionError, match="value page 3"):
            s.multi_get(keys)


def test_merge_scans_the_index_beside_a_value_beyond_a_uint64(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """One index entry of 256+ bytes used to send every merge to a lookup per record."""
    params = {"ro_lag_interval": 50, "flush_interval": 50, "mem_segment_len": 200,
              "max_runs_per_level": 2}
    lookups: list[int] = []
    real = maintenance_module.same_locs

    def counted(found: list[int], expected: object) -> object:
        lookups.append(len(found))
        return real(found, expected)  # type: ignore[arg-type]

    monkeypatch.setattr(maintenance_module, "same_locs", counted)
    model = {b"\xff\xffM": b"m" * 561}
    with HybridLog(tmp_path, **params) as s:
        s.set(b"\xff\xffM", model[b"\xff\xffM"])
        s.seal()  # a run of its own
        for rnd in range(6):
            batch = {b"k%04d" % i: b"%02d%014d" % (rnd, i) for i in range(400)}
            s.multi_set(batch)
            model.update(batch)
            s.seal()
        assert s.stats.merges > 0
        held = s._held_locs({r.slot for r in s._runs}, len(s._index))
        assert held is not None
        # every entry but the big one (NO_LOC: slot 65535, matches no record)
        assert sum(len(locs) for locs, _ in held.values()) == len(s._index) - 1
        # live records per run, counted through the numpy scan: exact, big entry included
        per_slot: dict[int, int] = {}
        for loc in s._index.values():
            per_slot[loc & SLOT_MASK] = per_slot.get(loc & SLOT_MASK, 0) + 1
        assert s._run_live_counts() == [
            sum(per_slot.get(slot, 0) for slot, *_ in r.segments) for r in s._runs]
        assert dict(s.items()) == model
        s._check()
    # only the run holding the 561-byte value (a list of locations) is looked up by key
    assert all(n == 1 for n in lookups), lookups
