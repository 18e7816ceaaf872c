from __future__ import annotations

from typing import Any, ClassVar

from raykv.engines import LSMTree
from tests.engines.contract import KVStoreContract


class TestLSMTree(KVStoreContract):
    engine_cls = LSMTree
    small_params: ClassVar[dict[str, Any]] = {
        "max_runs_per_level": 3, "density_factor": 4, "memtable_bytes_limit": 2000,
    }
