"""Skew-aware rebalancing: when to move key groups between shards, and which.

The coordinator sums every shard's per-key-group update counts (``raykv.hotkeys``) over
the epochs since the last rebalance. When a stage's busiest shard carries more than
``threshold`` times the mean load, :func:`plan` picks key groups to move with a greedy
pass: take the busiest and the idlest shard, move from the busiest the group whose load
is closest to half their difference (the move that evens the pair best; only groups
lighter than the difference qualify, so every move lowers the pair's maximum), and
repeat until the busiest shard is within ``goal`` of the best possible (the mean, or
the hottest key group if that is larger: a group cannot be split, so its shard then
stays the busiest and the plan moves the other groups off it), no move helps, or
``max_moves`` groups moved.

How a planned move happens is the coordinator's part (``docs/runtime.md``, "Skew"):
at an epoch boundary the driver ends the epoch and waits for its commit, each receiving
shard loads the moved groups' keys from the givers' checkpoint of that epoch, each giver
deletes them, and the new assignment (``Partitioning.moved``) is written into the next
epoch's manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raykv.partitioning import Partitioning


@dataclass(frozen=True)
class Rebalance:
    """When the coordinator rebalances a stage (``Pipeline(rebalance=Rebalance(...))``).

    Attributes:
        threshold: rebalance when the busiest shard's load is above ``threshold`` times
            the mean load of the stage's shards (load = updates since the last rebalance).
        goal: stop moving groups once the busiest shard is within ``goal`` times the best
            possible load (the mean, or the hottest key group's load if larger).
        min_rows: updates the stage must have seen since the last rebalance before loads
            are trusted (fewer: no decision).
        max_moves: key groups moved at most per rebalance (bounds the state moved).
        cooldown_epochs: committed epochs between two rebalances of a stage.
    """

    threshold: float = 1.25
    goal: float = 1.05
    min_rows: int = 100_000
    max_moves: int = 512
    cooldown_epochs: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, int | float) or self.threshold < 1.0:
            msg = f"Rebalance.threshold must be a number >= 1.0, got {self.threshold!r}"
            raise ValueError(msg)
        if not isinstance(self.goal, int | float) or not 1.0 <= self.goal <= self.threshold:
            msg = f"Rebalance.goal must be a number in 1.0..threshold, got {self.goal!r}"
            raise ValueError(msg)
        for name in ("min_rows", "max_moves"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                msg = f"Rebalance.{name} must be a positive int, got {value!r}"
                raise ValueError(msg)
        if type(self.cooldown_epochs) is not int or self.cooldown_epochs < 0:
            msg = f"Rebalance.cooldown_epochs must be an int >= 0, got {self.cooldown_epochs!r}"
            raise ValueError(msg)


@dataclass(frozen=True)
class Plan:
    """A rebalance decided by :func:`plan`.

    Attributes:
        partitioning: the new assignment.
        moves: ``(group, from shard, to shard)`` per moved key group.
        before: each shard's load share under the old assignment (sums to 1).
        after: each shard's load share under the new one, for the same loads.
    """

    partitioning: Partitioning
    moves: list[tuple[int, int, int]] = field(default_factory=list)
    before: list[float] = field(default_factory=list)
    after: list[float] = field(default_factory=list)


def shard_loads(group_loads: np.ndarray, partitioning: Partitioning) -> np.ndarray:
    """Sum key-group loads per shard. Cost: one ``np.bincount``."""
    return np.bincount(partitioning.owners, weights=group_loads,
                       minlength=partitioning.num_shards)


def imbalance(loads: np.ndarray) -> float:
    """The busiest shard's load over the mean (1.0 = perfect; 0 loads give 1.0)."""
    mean = float(loads.mean()) if loads.size else 0.0
    return float(loads.max()) / mean if mean > 0 else 1.0


def plan(group_loads: np.ndarray, partitioning: Partitioning, config: Rebalance) -> Plan | None:
    """Decide a rebalance for ``group_loads`` (updates per key group), or ``None``.

    ``None`` when the busiest shard is within ``config.threshold`` of the mean, or when
    no move lowers the busiest shard's load. Cost: O(moves x groups) vectorized.
    """
    if partitioning.num_shards < 2:
        return None
    loads = np.asarray(group_loads, dtype=np.float64)
    owners = partitioning.owners.copy()
    per_shard = np.bincount(owners, weights=loads, minlength=partitioning.num_shards)
    total = float(per_shard.sum())
    if total <= 0 or imbalance(per_shard) <= config.threshold:
        return None
    # no assignment beats the mean or the hottest (unsplittable) key group
    best = max(total / partitioning.num_shards, float(loads.max()))
    before = (per_shard / total).tolist()
    moves: list[tuple[int, int, int]] = []
    while len(moves) < config.max_moves and per_shard.max() > config.goal * best:
        hot, cold = int(per_shard.argmax()), int(per_shard.argmin())
        gap = per_shard[hot] - per_shard[cold]
        candidates = np.flatnonzero((owners == hot) & (loads > 0) & (loads < gap))
        if candidates.size == 0:
            break
        g = int(candidates[np.abs(loads[candidates] - gap / 2).argmin()])
        owners[g] = cold
        per_shard[hot] -= loads[g]
        per_shard[cold] += loads[g]
        moves.append((g, hot, cold))
    if not moves:
        return None
    # a group moved more than once is one move from its first to its last owner
    first: dict[int, int] = {}
    for g, src, _ in moves:
        first.setdefault(g, src)
    net = [(g, src, int(owners[g])) for g, src in first.items() if owners[g] != src]
    return Plan(partitioning.with_owners(owners), sorted(net), before,
                (per_shard / total).tolist())


__all__ = ["Plan", "Rebalance", "imbalance", "plan", "shard_loads"]
