"""Stream joins of two keyed inputs (issue 14), at the operator layer.

* :class:`IntervalJoin`: equal keys, ``right.time - left.time`` in ``[lower, upper]``.
* :class:`LookupJoin`: each left row enriched with its key's right row as of its time.
* :class:`WindowJoin`: equal keys in the same tumbling or sliding window, at its close.
* :class:`Join`: regular inner/left join over unbounded inputs, state bounded by a TTL.

Shared parts: ``common.py`` (configs, input checks, output schema, state keys),
``rows.py`` (the row encoding of stored rows), ``matching.py`` (vectorized pair finding).
The semantics, output schema and costs are in ``docs/operators.md`` ("Joins").
"""

from raykv.operators.joins.interval import IntervalJoin, IntervalJoinLogic
from raykv.operators.joins.lookup import LookupJoin, LookupJoinLogic
from raykv.operators.joins.regular import Join, RegularJoinLogic
from raykv.operators.joins.window import WindowJoin, WindowJoinLogic

__all__ = ["IntervalJoin", "IntervalJoinLogic", "Join", "LookupJoin", "LookupJoinLogic",
           "RegularJoinLogic", "WindowJoin", "WindowJoinLogic"]
