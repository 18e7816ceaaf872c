"""LSMTree expiry compactions (``raykv/engines/lsm/stamps.py``): per-run stamp summaries,
kept in the manifest across reopens, rebuilt by a scan for runs without one (manifests
written before summaries existed), and the rewrite of a run the horizon mostly passed."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import raykv.engines.lsm.stamps as stamps_module
from raykv.engines import LSMTree
from raykv.engines.lsm.stamps import SUMMARY_POINTS, StampSummary
from raykv.engines.manifest import read_manifest
from raykv.errors import CorruptionError
from tests.engines.expiry_contract import disk_bytes, stamped

PARAMS: dict[str, Any] = {"memtable_bytes_limit": 1 << 30, "max_runs_per_level": 4}


def state_of(store: LSMTree) -> dict[str, Any]:
    """The committed manifest's state."""
    assert store._manifest_name is not None
    return read_manifest(store.data_dir / store._manifest_name).state


def fill(store: LSMTree, prefix: bytes, n: int, stamp: int, size: int = 100) -> list[bytes]:
    keys = [prefix + b"%05d" % i for i in range(n)]
    store.multi_set([(k, stamped(stamp, bytes(size))) for k in keys])
    store.seal()  # one level-0 run
    return keys


@pytest.mark.parametrize("seed", range(5))
def test_summary_is_a_lower_bound_within_one_cut(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    stamps = rng.integers(-50, 50, n) if seed % 2 else rng.integers(-(1 << 62), 1 << 62, n)
    sizes = rng.integers(9, 300, n)
    summary = StampSummary.of(stamps, sizes)
    assert len(summary.stamps) <= SUMMARY_POINTS
    assert StampSummary.from_json(summary.to_json()) == summary
    total = int(sizes.sum())
    for h in [*rng.choice(stamps, 20).tolist(), int(stamps.min()), int(stamps.max()) + 1]:
        exact = int(sizes[stamps < h].sum())
        bound = summary.expired_bytes(int(h))
        assert bound <= exact
        assert exact - bound <= total / SUMMARY_POINTS + int(sizes.max()) + int(
            sizes[stamps == h - 1].sum()), (h, exact, bound)
    assert summary.expired_bytes(int(stamps.max()) + 1) == total
    assert summary.expired_bytes(int(stamps.min())) == 0


@pytest.mark.parametrize("bad", [None, [[1, 2], [3]], [[2, 1], [1, 2]], [[1], ["x"]], "x"])
def test_malformed_summaries_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="malformed stamp summary"):
        StampSummary.from_json(bad)


def test_a_mostly_expired_run_is_rewritten_alone(tmp_path: Path) -> None:
    with LSMTree(tmp_path, **PARAMS) as store:
        store.set_expiry(0)
        dead = fill(store, b"dead", 400, stamp=10)
        live = fill(store, b"live", 600, stamp=10**6)
        assert store.levels and len(store.levels[0]) == 2  # no size-policy merge due
        before = disk_bytes(store)
        store.set_expiry(11)
        store.set(b"x", stamped(10**6, b"x"))  # merges run on the write path
        assert store.stats.expiry_compactions == 1
        assert not any(store.get(k) for k in dead)
        assert store.get(live[0]) == stamped(10**6, bytes(100))
        store.seal()
        assert disk_bytes(store) < before - 400 * 100
        assert len(store.levels[0]) == 2  # the rewritten run kept its place, then x's run
        store.set(b"y", b"y")
        assert store.stats.expiry_compactions == 1  # nothing else is expired enough
        store._check()


def test_a_little_expired_run_is_left_alone(tmp_path: Path) -> None:
    with LSMTree(tmp_path, **PARAMS) as store:
        store.set_expiry(0)
        fill(store, b"dead", 100, stamp=10)
        fill(store, b"live", 900, stamp=10**6)
        store.multi_set([(b"m%04d" % i, stamped(10**6 if i % 10 else 10, bytes(100)))
                         for i in range(1000)])  # 10 % expired
        store.seal()
        store.set_expiry(11)
        store.set(b"x", b"x")
        assert store.stats.expiry_compactions == 1  # only the run of "dead" keys


def test_summaries_are_kept_in_the_manifest(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = LSMTree(tmp_path, **PARAMS)
    store.set_expiry(0)
    fill(store, b"a", 300, stamp=10)
    fill(store, b"b", 300, stamp=20)
    summaries = dict(store._expiry_runs.summaries)
    assert set(state_of(store)["stamps"]) == set(store.levels[0])
    store.close()

    def no_scan(run: Any) -> StampSummary:
        raise AssertionError("a run with a stored summary was scanned")

    monkeypatch.setattr(stamps_module, "scan", no_scan)
    with LSMTree(tmp_path, **PARAMS) as store:
        assert store._expiry_runs.summaries == summaries
        store.set_expiry(15)
        store.set(b"x", b"x")
        assert store.stats.expiry_compactions == 1
        assert not store.get(b"a00000") and store.get(b"b00000")


def test_runs_without_summaries_are_scanned_once(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs written without a horizon have no summary, as in manifests written before
    summaries existed (state ``{"levels": ...}`` only): the first plan scans them."""
    store = LSMTree(tmp_path, **PARAMS)
    fill(store, b"a", 300, stamp=10)
    fill(store, b"b", 300, stamp=20)
    assert set(state_of(store)) == {"levels"}  # as in manifests before summaries existed
    store.close()
    scanned: list[str] = []
    real = stamps_module.scan

    def counting(run: Any) -> StampSummary:
        scanned.append(run.name)
        return real(run)

    monkeypatch.setattr(stamps_module, "scan", counting)
    store = LSMTree(tmp_path, **PARAMS)
    store.set_expiry(15)
    store.set(b"x", b"x")
    assert len(scanned) == 2 and len(set(scanned)) == 2  # both old runs, each once
    assert store.stats.expiry_compactions == 1
    assert not store.get(b"a00000") and store.get(b"b00000")
    store.set_expiry(16)
    store.set(b"y", b"y")
    assert len(scanned) == 2  # each run once
    store.seal()  # summaries are stored from now on, for every live run
    assert set(state_of(store)["stamps"]) == {n for lv in store.levels for n in lv}
    store.close()


def test_a_bad_stamps_entry_in_the_manifest_is_corruption(tmp_path: Path) -> None:
    store = LSMTree(tmp_path, **PARAMS)
    fill(store, b"a", 10, stamp=10)
    names = [n for lv in store.levels for n in lv]
    store._commit(names, {"levels": store.levels, "stamps": {names[0]: [[2, 1], [1, 2]]}})
    store.close()
    with pytest.raises(CorruptionError, match="malformed stamp summary"):
        LSMTree(tmp_path, **PARAMS)


def test_ttl_churn_keeps_the_store_near_live_state(tmp_path: Path) -> None:
    """Issue 13 item 5 in small: fresh keys each round, a horizon 5 rounds behind; after
    warm-up the store stays within 2.5x the live records' bytes (1.7x; 4.4x without
    expiry compactions)."""
    rng = random.Random(4)
    ratios = []
    with LSMTree(tmp_path, memtable_bytes_limit=64 << 10) as store:
        for r in range(60):
            store.multi_set([(b"k%03d%04d" % (r, i), stamped(r + 5, rng.randbytes(40)))
                             for i in range(500)])
            store.set_expiry(r)
            store.seal()
            if r >= 30:
                live = 5 * 500 * (8 + 48)
                ratios.append(disk_bytes(store) / live)
        store._check()
    assert max(ratios) < 2.5, ratios
