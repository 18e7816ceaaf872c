from __future__ import annotations

from raykv.engines.appendlog import AppendLog
from tests.engines.contract import KVStoreContract


class TestAppendLog(KVStoreContract):
    engine_cls = AppendLog
    small_params = {"threshold": 1024, "max_runs_per_level": 3}
