"""Engine counters: bytes written by the application and to disk, seals, merges.

Every engine keeps one ``EngineStats`` (``KVStore.stats``); updating it costs an integer
addition per call, and it resets only when the engine is reopened.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    """Counters for amplification figures; cheap to keep, reset only by reopening.

    Attributes:
        app_bytes: key + value bytes the application passed to ``set``/``multi_set``.
        disk_bytes: bytes the engine wrote to files (runs, indexes, manifests).
        seals: number of non-idle seals.
        merges: number of merges/compactions performed.
        expired_records: records that merges dropped or turned into tombstones because
            their expiry stamp fell below the horizon (``expiry.py``).
        expired_bytes: the value bytes of those records.
        expiry_compactions: merges done because the horizon passed enough of a run (of
            those counted in ``merges``; LSMTree, HybridLog and AppendLog).
    """

    app_bytes: int = 0
    disk_bytes: int = 0
    seals: int = 0
    merges: int = 0
    expired_records: int = 0
    expired_bytes: int = 0
    expiry_compactions: int = 0

    @property
    def write_amplification(self) -> float:
        """Bytes written to disk per byte written by the application (0.0 before any write)."""
        return self.disk_bytes / self.app_bytes if self.app_bytes else 0.0
