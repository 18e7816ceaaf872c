"""The LSM-Tree engine (``LSMTree``): sorted memtable, immutable sorted runs in levels.

Modules, one per concept: ``memtable`` (sorted write buffer), ``bloom`` (blocked bloom
filter), ``run_format`` (run file constants and block codec), ``run_writer`` /
``run_reader`` (one run file), ``compaction`` (merge and merge policy), ``engine``
(``LSMTree`` itself). The file layout is in ``raykv/engines/FORMAT.md``.
"""

from raykv.engines.lsm.engine import LSMTree

__all__ = ["LSMTree"]
