"""Replayable, split-based sources: where records come from, and how to read them again.

The contract (offsets, splits, replay) is in :mod:`raykv.sources.base`. Sources:
:class:`TableSource` (an in-memory Arrow table, record batches, or a column dict) and
:class:`ListSource` (a list of dicts), split into slices; :class:`ParquetSource` (a
Parquet file, directory or glob on any fsspec URL), a split per file or row-group range;
:class:`GeneratorSource` (``fn(offset) -> batch``, or ``fn(partition, offset)`` in
``partitions`` splits) for synthetic streams; :class:`DirectorySource` (files arriving
in a folder or prefix, unbounded), a split per file; :class:`RayDataSource` (a Ray Data
``Dataset``), one split; :class:`NexmarkSource` (the Nexmark benchmark's person, auction
and bid streams, generated), a split per interleaved set of event-id blocks.
"""

from typing import TYPE_CHECKING

from raykv.lazy import exports

if TYPE_CHECKING:
    from raykv.sources.base import (
        DEFAULT_BATCH_SIZE,
        WHOLE,
        Offset,
        Source,
        SourceReader,
        Split,
        StopSource,
    )
    from raykv.sources.directory import DirectorySource
    from raykv.sources.generator import GeneratorSource
    from raykv.sources.memory import ListSource, TableSource
    from raykv.sources.nexmark import NexmarkSource
    from raykv.sources.parquet import ParquetSource
    from raykv.sources.ray_data import RayDataSource

# each name's module loads on first use (``raykv/lazy.py``): a reader imports its own only
__getattr__, __dir__ = exports(__name__, {
    "raykv.sources.base": ("DEFAULT_BATCH_SIZE", "WHOLE", "Offset", "Source", "SourceReader",
                           "Split", "StopSource"),
    "raykv.sources.directory": ("DirectorySource",),
    "raykv.sources.generator": ("GeneratorSource",),
    "raykv.sources.memory": ("ListSource", "TableSource"),
    "raykv.sources.nexmark": ("NexmarkSource",),
    "raykv.sources.parquet": ("ParquetSource",),
    "raykv.sources.ray_data": ("RayDataSource",),
})

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "WHOLE",
    "DirectorySource",
    "GeneratorSource",
    "ListSource",
    "NexmarkSource",
    "Offset",
    "ParquetSource",
    "RayDataSource",
    "Source",
    "SourceReader",
    "Split",
    "StopSource",
    "TableSource",
]
