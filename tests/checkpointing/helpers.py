"""Shared helpers: drive MemOnly shards against a dict model, checkpoint and compare."""

from __future__ import annotations

import random
from pathlib import Path

from raykv.checkpointing import CheckpointStore, EpochManifest
from raykv.engines import MemOnly


class Shards:
    """N MemOnly shards (the real engine with the simplest seal) plus a dict model each."""

    def __init__(self, root: Path, names: list[str], seed: int = 0) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.engines = {n: MemOnly(root / n.replace("/", "_")) for n in names}
        self.models: dict[str, dict[bytes, bytes]] = {n: {} for n in names}
        self.history: dict[int, dict[str, dict[bytes, bytes]]] = {}

    def write(self, n_ops: int = 50, space: int = 200) -> None:
        for name, kv in self.engines.items():
            model = self.models[name]
            for _ in range(n_ops):
                k = b"k%05d" % self.rng.randrange(space)
                if self.rng.random() < 0.2:
                    kv.delete(k)
                    model.pop(k, None)
                else:
                    v = self.rng.randbytes(self.rng.randrange(1, 30))
                    kv.set(k, v)
                    model[k] = v

    def checkpoint(self, store: CheckpointStore, epoch: int, *, commit: bool = True,
                   offsets: dict | None = None) -> EpochManifest | None:
        sms = {}
        for name, kv in self.engines.items():
            sms[name] = store.upload_shard(epoch, name, kv.data_dir, kv.seal(),
                                           {"engine": "memonly"})
        if not commit:
            return None
        em = store.commit_epoch(epoch, sms, offsets=offsets or {"src": epoch},
                                metadata={"partitioning": {"num_shards": len(sms)}})
        self.history[epoch] = {n: dict(m) for n, m in self.models.items()}
        return em

    def close(self) -> None:
        for kv in self.engines.values():
            kv.close()


def restored_state(store: CheckpointStore, epoch: int, shard: str,
                   into: Path) -> dict[bytes, bytes]:
    store.restore_shard(epoch, shard, into)
    with MemOnly(into) as kv:
        return dict(kv.items())
