from __future__ import annotations

from raykv.engines.hybridlog import HybridLog
from tests.engines.contract import KVStoreContract

SMALL = {
    "mem_segment_len": 120,
    "ro_lag_interval": 40,
    "flush_interval": 40,
    "max_runs_per_level": 3,
}


class TestHybridLog(KVStoreContract):
    engine_cls = HybridLog
    small_params = SMALL


class TestHybridLogCompaction(KVStoreContract):
    engine_cls = HybridLog
    small_params = {**SMALL, "compaction_enabled": True}
