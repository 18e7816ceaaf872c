"""The rebalance planner and the key-group exception list (``Partitioning.moved``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.keys import encode_keys
from raykv.partitioning import Partitioning, key_groups_of, split_batch
from raykv.rebalance import Rebalance, imbalance, plan, shard_loads


def zipf_group_loads(s: float, n_keys: int = 200_000, groups: int = 4096) -> np.ndarray:
    w = np.arange(1, n_keys + 1, dtype=np.float64) ** -s
    g = key_groups_of([i.to_bytes(8, "big") for i in range(n_keys)], groups)
    return np.bincount(g, weights=w / w.sum() * 1e7, minlength=groups)


# ---------------------------------------------------------------------------- Partitioning.moved


def test_moved_routes_groups_and_round_trips() -> None:
    p = Partitioning(4, 16, ((3, 2), (0, 0), (15, 1)))
    assert p.moved == ((3, 2), (15, 1))  # (0, 0) is the default: dropped
    assert p.shard_of_groups([3, 15, 0, 5]).tolist() == [2, 1, 0, 1]
    assert Partitioning.from_dict(p.to_dict()) == p
    assert p.with_owners(p.owners) == p
    for s in range(4):
        assert np.array_equal(p.owned_mask(s), p.shard_of_groups(np.arange(16)) == s)
    assert "moved" not in Partitioning(4, 16).to_dict()  # old manifests stay readable


def test_split_batch_follows_moved_groups() -> None:
    keys = pa.array(np.arange(2_000, dtype=np.int64))
    groups = key_groups_of(encode_keys(keys, "k"), 64)
    hot_group = int(groups[0])
    base = Partitioning(4, 64)
    target = (int(base.shard_of_groups([hot_group])[0]) + 1) % 4
    moved = Partitioning(4, 64, ((hot_group, target),))
    parts = split_batch(pa.record_batch({"k": keys}), "k", moved)
    for shard, sub in parts.items():
        g = key_groups_of(encode_keys(sub.column(0), "k"), 64)
        assert (moved.shard_of_groups(g) == shard).all()
    assert 0 in parts[target].column(0).to_pylist()


@pytest.mark.parametrize("moved", [((99, 0),), ((1, 7),), ((1, 0), (1, 2)), (("x", 1),)])
def test_bad_moved_pairs_are_rejected(moved: tuple) -> None:
    with pytest.raises(ValueError, match=r"Partitioning\.moved"):
        Partitioning(4, 16, moved)


def test_unknown_partitioning_field_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown partitioning fields"):
        Partitioning.from_dict({"num_shards": 2, "num_key_groups": 8, "owners": []})


# ---------------------------------------------------------------------------- plan


def test_plan_balances_zipf_1_2_below_the_target() -> None:
    loads = zipf_group_loads(1.2)
    part = Partitioning(4)
    before = imbalance(shard_loads(loads, part))
    decided = plan(loads, part, Rebalance())
    assert decided is not None and before > 1.25
    after = shard_loads(loads, decided.partitioning)
    assert imbalance(after) <= 1.25 * 1.0001
    assert np.allclose(decided.after, after / after.sum())
    # every move is recorded, and nothing else changed owner
    changed = np.flatnonzero(decided.partitioning.owners != part.owners).tolist()
    assert changed == [g for g, _, _ in decided.moves]
    for g, src, dst in decided.moves:
        assert part.owners[g] == src and decided.partitioning.owners[g] == dst != src


def test_plan_leaves_a_balanced_stage_alone() -> None:
    loads = np.ones(4096)
    assert plan(loads, Partitioning(4), Rebalance()) is None
    assert plan(np.zeros(4096), Partitioning(4), Rebalance()) is None
    assert plan(zipf_group_loads(1.5), Partitioning(1), Rebalance()) is None


def test_plan_with_an_unsplittable_hot_group_moves_the_rest_off_it() -> None:
    loads = np.ones(64)
    loads[5] = 200.0  # one group hotter than the mean of everything
    part = Partitioning(4, 64)
    decided = plan(loads, part, Rebalance(max_moves=64))
    assert decided is not None
    hot = int(part.owners[5])
    after = shard_loads(loads, decided.partitioning)
    assert int(after.argmax()) == hot and after[hot] <= 200.0 * 1.05
    assert after.max() < shard_loads(loads, part).max()


def test_plan_respects_max_moves() -> None:
    decided = plan(zipf_group_loads(1.5), Partitioning(4), Rebalance(max_moves=3))
    assert decided is not None and len(decided.moves) <= 3


@settings(max_examples=100, deadline=None)
@given(
    loads=st.lists(st.integers(0, 1000), min_size=8, max_size=64),
    shards=st.integers(2, 6),
)
def test_plan_never_makes_the_busiest_shard_busier(loads: list[int], shards: int) -> None:
    arr = np.array(loads, dtype=np.float64)
    part = Partitioning(min(shards, len(loads)), len(loads))
    decided = plan(arr, part, Rebalance())
    if decided is None:
        return
    before, after = shard_loads(arr, part), shard_loads(arr, decided.partitioning)
    assert after.max() < before.max()
    assert after.sum() == pytest.approx(before.sum())


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"threshold": 0.5}, "threshold"), ({"goal": 2.0}, "goal"), ({"min_rows": 0}, "min_rows"),
     ({"max_moves": -1}, "max_moves"), ({"cooldown_epochs": -1}, "cooldown_epochs")],
)
def test_rebalance_config_is_validated(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Rebalance(**kw)
