"""The expiry part of the KVStore contract (``raykv/engines/expiry.py``), for every engine.

``KVStoreContract`` inherits it, so each engine's test module runs it with its
``small_params`` (flushes and merges after a few thousand writes).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from raykv.engines.base import KVStore
from raykv.engines.expiry import STAMP

META = b"\xff\xffM"


def stamped(stamp: int, body: bytes) -> bytes:
    return STAMP.pack(stamp) + body


def disk_bytes(store: KVStore) -> int:
    return sum((store.data_dir / n).stat().st_size for n in store.live_files())


class ExpiryContract:
    """Merges drop expired records, never resurrect older ones, and count them."""

    def open(self, path: Path, **kw: Any) -> KVStore:  # provided by KVStoreContract
        raise NotImplementedError

    def test_expiry_randomized_against_model(self, tmp_path: Path) -> None:
        """Random stamped writes, deletes, horizons, seals and reopens, against a dict.

        A key whose newest value is alive (stamp >= horizon, short value, or a key in
        ``keep``) reads as that value; an expired one reads as that value or as absent,
        never as an older value (merges turn expired records into tombstones where an
        older record of the key may remain).
        """
        seed = random.randrange(1 << 30)
        rng = random.Random(seed)
        store = self.open(tmp_path)
        model: dict[bytes, bytes] = {}
        horizon = 0
        try:
            for step in range(60):
                pairs = []
                for _ in range(rng.randrange(20, 120)):
                    k = b"k%04d" % rng.randrange(400)
                    r = rng.random()
                    if r < 0.1:
                        v = b""
                    elif r < 0.15:
                        v = b"short"
                    else:
                        v = stamped(horizon + rng.randrange(-50, 200), rng.randbytes(
                            rng.randrange(0, 60)))
                    pairs.append((k, v))
                pairs.append((META, stamped(-5, b"meta")))  # kept although "stamped" low
                store.multi_set(pairs)
                model.update(pairs)
                if rng.random() < 0.3:
                    horizon += rng.randrange(0, 60)
                    store.set_expiry(horizon, keep=[META])
                if rng.random() < 0.2:
                    store.seal()
                if rng.random() < 0.05:
                    store.close()
                    store = self.open(tmp_path)
                    assert store.expiry is None  # a reopen clears the horizon
                    store.set_expiry(horizon, keep=[META])
                got = dict(store.items())
                for k, v in model.items():
                    alive = v and (len(v) < 8 or k == META or STAMP.unpack(v[:8])[0] >= horizon)
                    now = store.get(k)
                    if alive:
                        assert now == v, (seed, step, k)
                    else:
                        assert now in (v, b""), (seed, step, k)
                    assert got.get(k, b"") == now, (seed, step, k)
                assert set(got) <= set(model)
                self.assert_live(store, got)
                store._check()
        finally:
            store.close()

    @staticmethod
    def assert_live(store: KVStore, got: dict[bytes, bytes]) -> None:
        if store.live_keys_exact:
            assert store.live_keys() == len(got)
        else:
            assert store.live_keys() >= len(got)

    def churn(self, path: Path, *, reopen: bool, horizon: int | None) -> tuple[KVStore, int]:
        """1,500 records stamped 10 (200-byte values), then 40 seals of fresh keys."""
        store = self.open(path)
        dead = [b"dead%05d" % i for i in range(1500)]
        store.multi_set([(k, stamped(10, bytes(200))) for k in dead])
        store.set(META, stamped(0, b"meta"))
        store.seal()
        full = disk_bytes(store)
        if reopen:
            store.close()
            store = self.open(path)
        if horizon is not None:
            store.set_expiry(horizon, keep=[META])
        for r in range(40):  # fresh keys roll runs and trigger merges
            store.multi_set([(b"live%02d%04d" % (r % 4, i), stamped(10**6, bytes(120)))
                             for i in range(150)])
            store.seal()
        return store, full

    @pytest.mark.parametrize("reopen", [False, True])
    def test_merges_drop_expired_bytes(self, tmp_path: Path, reopen: bool) -> None:
        """Expired records leave in the engine's merges: disk shrinks, stats count them.

        The same writes without a horizon keep the 300 kB of expired values on disk.
        """
        base, _ = self.churn(tmp_path / "plain", reopen=reopen, horizon=None)
        plain = disk_bytes(base)
        base.close()
        store, full = self.churn(tmp_path / "ttl", reopen=reopen, horizon=11)
        try:
            dead = [b"dead%05d" % i for i in range(1500)]
            left = [k for k in dead if store.get(k)]
            assert not left, f"{len(left)} expired records still readable"
            assert store.stats.expired_records >= len(dead)
            assert store.stats.expired_bytes >= 200 * len(dead)
            assert plain - disk_bytes(store) >= 0.8 * 200 * len(dead), (plain, full)
            assert store.get(META) == stamped(0, b"meta")
            assert store.get(b"live000000") == stamped(10**6, bytes(120))
            store._check()
        finally:
            store.close()

    def test_set_expiry_checks_arguments(self, tmp_path: Path) -> None:
        with self.open(tmp_path) as store:
            with pytest.raises(TypeError, match="horizon must be an int"):
                store.set_expiry("soon")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="bytes keys"):
                store.set_expiry(5, keep=["meta"])  # type: ignore[list-item]
            store.set_expiry(5)
            assert store.expiry is not None and store.expiry.horizon == 5
            store.set_expiry(None)
            assert store.expiry is None
