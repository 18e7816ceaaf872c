"""What is not the library: the demo, recovery drills and state export (``raykv`` CLI).

* :mod:`raykv.tools.demo`: ``raykv demo``, a keyed aggregation checked for exactness.
* :mod:`raykv.tools.drill`: ``raykv drill``, kill shard actors and prove the output exact.
* :mod:`raykv.tools.export`: ``raykv checkpoints export``, a stage's state as Parquet.

The tools use the library (``raykv.pipeline``, ``raykv.runtime.metadata``...); nothing in
the library imports them.
"""
