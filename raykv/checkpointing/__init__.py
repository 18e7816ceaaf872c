"""Incremental checkpoints of sharded engine state on any fsspec URL.

``CheckpointStore`` uploads only the engine files the store lacks, writes a shard
manifest per shard, and commits an epoch with one atomic write of the epoch manifest,
last (DESIGN.md invariants 1, 4, 5, 6). Layout and schemas: ``FORMAT.md``; the commit,
restore and GC procedures step by step: ``docs/recovery.md``.
"""

from __future__ import annotations

from raykv.checkpointing.gc import GCReport
from raykv.checkpointing.manifests import EpochManifest, FileEntry, ShardManifest
from raykv.checkpointing.store import CheckpointStore
from raykv.checkpointing.transfer import link_files

__all__ = [
    "CheckpointStore",
    "EpochManifest",
    "FileEntry",
    "GCReport",
    "ShardManifest",
    "link_files",
]
