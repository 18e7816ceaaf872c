"""Space-Saving and the per-shard load tracker against exact counting models."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.hotkeys import LoadTracker, SpaceSaving
from raykv.keys import encode_keys
from raykv.partitioning import key_groups_of


def feed(ss: SpaceSaving, batch: list[int]) -> collections.Counter[int]:
    """Fold one batch the way LoadTracker does: its top k exactly, the rest as a floor."""
    c = collections.Counter(batch)
    items = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
    top, rest = items[: ss.k], items[ss.k:]
    ss.update([str(k).encode() for k, _ in top], [v for _, v in top],
              floor=rest[0][1] if rest else 0)
    ss.add_total(len(batch))
    return c


@settings(max_examples=200, deadline=None)
@given(
    k=st.integers(1, 12),
    batches=st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=200), min_size=1,
                     max_size=20),
)
def test_space_saving_bounds_hold_against_exact_counts(k: int, batches: list[list[int]]) -> None:
    ss = SpaceSaving(k)
    true: collections.Counter[int] = collections.Counter()
    for b in batches:
        true.update(feed(ss, b))
    assert ss.total == sum(true.values())
    top = ss.top()
    assert len(top) <= k
    assert [h.count for h in top] == sorted((h.count for h in top), reverse=True)
    for h in top:
        t = true[int(h.key)]
        assert h.count - h.error <= t <= h.count  # never undercounts, error is an upper bound
    monitored = {int(h.key) for h in top}
    for key, t in true.items():
        if t > ss.total / k:  # every heavy hitter is monitored
            assert key in monitored


def test_space_saving_finds_zipf_top_keys() -> None:
    rng = np.random.default_rng(0)
    ss = SpaceSaving(16)
    true: collections.Counter[int] = collections.Counter()
    for _ in range(50):
        true.update(feed(ss, (rng.zipf(1.3, 5_000) % 10_000).tolist()))
    want = [k for k, _ in true.most_common(5)]
    assert [int(h.key) for h in ss.top(5)] == want


def test_space_saving_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k >= 1"):
        SpaceSaving(0)


@pytest.mark.parametrize("key_type", ["int64", "string"])
def test_load_tracker_counts_groups_exactly_and_finds_hot_keys(key_type: str) -> None:
    rng = np.random.default_rng(1)
    groups_n = 64
    tracker = LoadTracker("k", groups_n, 8, track_groups=True)
    model = np.zeros(groups_n, dtype=np.int64)
    true: collections.Counter[object] = collections.Counter()
    for _ in range(5):
        ints = rng.zipf(1.4, 3_000) % 500
        col = pa.array(ints) if key_type == "int64" else pa.array([f"u{i}" for i in ints])
        tracker.observe(col)
        np.add.at(model, key_groups_of(encode_keys(col, "k"), groups_n), 1)
        true.update(col.to_pylist())
    rep = tracker.report()
    assert rep["rows"] == rep["rows_total"] == 15_000
    got = np.zeros(groups_n, dtype=np.int64)
    got[rep["groups"]] = rep["group_counts"]
    assert np.array_equal(got, model)
    hottest, count = true.most_common(1)[0]
    assert rep["hot_keys"][0][0] == str(hottest)
    assert rep["hot_keys"][0][1] - rep["hot_keys"][0][2] <= count <= rep["hot_keys"][0][1]
    # the next epoch starts from zero group counts; hot keys and totals keep running
    tracker.observe(pa.array([1, 1] if key_type == "int64" else ["u1", "u1"]))
    rep2 = tracker.report()
    assert rep2["rows"] == 2 and rep2["rows_total"] == 15_002
    assert int(rep2["group_counts"].sum()) == 2


def test_load_tracker_without_groups_reports_hot_keys_only() -> None:
    tracker = LoadTracker("k", 4096, 2, track_groups=False)
    tracker.observe(pa.chunked_array([pa.array([3, 3, 3, 4, 5, 5])]))
    rep = tracker.report()
    assert "groups" not in rep
    assert [h[0] for h in rep["hot_keys"]] == ["3", "5"]
    assert rep["hot_keys"][0][1] == 3


def test_load_tracker_forgets_hot_keys_of_groups_it_gave_away() -> None:
    tracker = LoadTracker("k", 16, 4, track_groups=False)
    col = pa.array([1, 1, 1, 2, 2, 3])
    tracker.observe(col)
    groups = key_groups_of(encode_keys(col, "k"), 16)
    owned = np.ones(16, dtype=bool)
    owned[groups[0]] = False  # key 1's group moved away
    tracker.retain_groups(owned)
    kept = [h[0] for h in tracker.report()["hot_keys"]]
    assert "1" not in kept and "2" in kept


@pytest.mark.parametrize("key_type", ["int64", "string"])
def test_aggregate_hands_the_tracker_the_counts_it_would_count(tmp_path: Path,
                                                               key_type: str) -> None:
    """An ``Aggregate`` told to count its keys (``count_keys``, what a load-tracking shard
    sets) counts each key's rows in its partials' group_by; the tracker fed with them
    reports what it reports counting itself (rows, not non-null values)."""
    from raykv.engines import MemOnly
    from raykv.operators import Aggregate

    def batch(ints: np.ndarray) -> pa.RecordBatch:
        keys = pa.array(ints) if key_type == "int64" else pa.array([f"u{i}" for i in ints])
        values = pa.array([None if i % 3 == 0 else float(i) for i in ints])  # some nulls
        return pa.record_batch({"k": keys, "v": values})

    logic = Aggregate("k", {"v": ["sum", "count"]}).build(MemOnly(tmp_path))
    logic.process(batch(np.array([0, 1, 1])))
    assert logic.key_counts() is None  # not asked for
    logic.count_keys = True
    own, given = (LoadTracker("k", 64, 16, track_groups=True) for _ in range(2))
    rng = np.random.default_rng(3)
    for _ in range(6):
        b = batch(rng.integers(0, 12, 500))
        keys = b.column("k")
        logic.process(b)
        counted = logic.key_counts()
        assert counted is not None and logic.key_counts() is None  # taken once
        own.observe(keys)
        given.observe(keys, counted)
    a, b = own.report(), given.report()
    assert a["rows"] == b["rows"] == 3_000
    assert np.array_equal(a["groups"], b["groups"])
    assert np.array_equal(a["group_counts"], b["group_counts"])
    assert sorted(map(tuple, a["hot_keys"])) == sorted(map(tuple, b["hot_keys"]))
