"""Random operations on a store against a model: which epochs exist and what each holds.

Seeded (the seed is in the test id): writes, checkpoints that commit or "crash" before the
commit, gc(retain), pins, restores of random epochs in place, orphan sweeps, verify.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import pytest

from raykv.checkpointing import CheckpointStore
from tests.checkpointing.helpers import Shards, restored_state

SHARDS = ["m/0", "m/1"]


@pytest.mark.parametrize("seed", range(4))
def test_random_operations_against_model(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    store = CheckpointStore(f"memory://raykv-model-{uuid.uuid4().hex}", max_workers=3)
    shards = Shards(tmp_path / "live", SHARDS, seed=seed)
    committed: dict[int, dict[str, dict[bytes, bytes]]] = {}
    pinned: set[int] = set()
    epoch = 0
    targets = [tmp_path / "t0", tmp_path / "t1"]
    for step in range(70):
        op = rng.random()
        if op < 0.4:
            if rng.random() < 0.8:
                shards.write(rng.randrange(1, 40))
            epoch += 1
            commit = rng.random() < 0.85
            shards.checkpoint(store, epoch, commit=commit)
            if commit:
                committed[epoch] = shards.history[epoch]
        elif op < 0.55:
            retain = rng.randint(1, 4)
            report = store.gc(retain)
            keep = set(sorted(committed)[-retain:]) | (pinned & set(committed))
            assert report.retained == sorted(keep)
            committed = {e: s for e, s in committed.items() if e in keep}
        elif op < 0.65 and committed:
            e = rng.choice(sorted(committed))
            if e in pinned and rng.random() < 0.5:
                store.unpin(e)
                pinned.discard(e)
            else:
                store.pin(e)
                pinned.add(e)
        elif op < 0.9 and committed:
            e = rng.choice(sorted(committed))
            shard = rng.choice(SHARDS)
            target = rng.choice(targets) / shard.replace("/", "_")
            assert restored_state(store, e, shard, target) == committed[e][shard], (seed, step)
        else:
            time.sleep(0.002)
            store.sweep_orphans(grace_seconds=0)
            store.verify()
        assert store.epochs() == sorted(committed), (seed, step)
    shards.close()
    store.verify()
    for e, states in committed.items():
        for shard in SHARDS:
            got = restored_state(store, e, shard, tmp_path / f"final-{e}" / shard)
            assert got == states[shard]
