"""Keyed stateful operators over ``pyarrow.RecordBatch`` (no Ray in here).

A stage is a picklable config (a frozen dataclass validated on construction); the shard
actor calls ``op.build(store)`` on its open ``KVStore`` and then drives the returned logic:
``(process* on_barrier)* finish?``. See ``docs/operators.md``.

* :class:`Aggregate`: running count/sum/mean/min/max/first/last per key (vectorized).
* :class:`Reduce`: ``fn(acc, value)`` per key over one column.
* :class:`StatefulMap`: ``fn(state, row) -> (state, output)`` per event.
* :class:`TumblingWindow`: aggregations per key and event-time window, closed by watermark.
* :class:`SlidingWindow`: hopping windows (``size``, ``slide``) from per-pane partials.
* :class:`SessionWindow`: sessions of activity (``gap``), merged when an event bridges two.
* :class:`Map`, :class:`Filter`: stateless vectorized stages over whole batches.
* :class:`TopN`: the ``n`` first rows by a column per key and event-time window.
* :class:`Deduplicate`: a key's first row, its repeats within a span of event time dropped.

All are thin layers over :class:`KeyedStateLogic` (``keyed_state.py``), which owns input checks,
state keys, the changed-key set and emission.
"""

from typing import TYPE_CHECKING

from raykv.lazy import exports

if TYPE_CHECKING:
    from raykv.operators.aggregate import Aggregate, AggregateLogic
    from raykv.operators.base import KeyedOperator, OperatorLogic
    from raykv.operators.codecs import Codec, JsonCodec, PickleCodec, RawCodec, get_codec
    from raykv.operators.dedup import Deduplicate, DeduplicateLogic
    from raykv.operators.joins import (
        IntervalJoin,
        IntervalJoinLogic,
        Join,
        LookupJoin,
        LookupJoinLogic,
        RegularJoinLogic,
        WindowJoin,
        WindowJoinLogic,
    )
    from raykv.operators.keyed_state import KeyedStateLogic
    from raykv.operators.map import Filter, Map, MapLogic
    from raykv.operators.pystate import PyStateLogic
    from raykv.operators.reduce import Reduce, ReduceLogic
    from raykv.operators.session import SessionWindow, SessionWindowLogic
    from raykv.operators.sliding import SlidingWindow, SlidingWindowLogic
    from raykv.operators.stateful_map import StatefulMap, StatefulMapLogic
    from raykv.operators.topn import TopN, TopNLogic
    from raykv.operators.ttl import TTL
    from raykv.operators.window import TumblingWindow, TumblingWindowLogic

# each name's module loads on first use (``raykv/lazy.py``): a shard imports its own only
__getattr__, __dir__ = exports(__name__, {
    "raykv.operators.aggregate": ("Aggregate", "AggregateLogic"),
    "raykv.operators.base": ("KeyedOperator", "OperatorLogic"),
    "raykv.operators.codecs": ("Codec", "JsonCodec", "PickleCodec", "RawCodec", "get_codec"),
    "raykv.operators.dedup": ("Deduplicate", "DeduplicateLogic"),
    "raykv.operators.joins": ("IntervalJoin", "IntervalJoinLogic", "Join", "LookupJoin",
                              "LookupJoinLogic", "RegularJoinLogic", "WindowJoin",
                              "WindowJoinLogic"),
    "raykv.operators.keyed_state": ("KeyedStateLogic",),
    "raykv.operators.map": ("Filter", "Map", "MapLogic"),
    "raykv.operators.pystate": ("PyStateLogic",),
    "raykv.operators.reduce": ("Reduce", "ReduceLogic"),
    "raykv.operators.session": ("SessionWindow", "SessionWindowLogic"),
    "raykv.operators.sliding": ("SlidingWindow", "SlidingWindowLogic"),
    "raykv.operators.stateful_map": ("StatefulMap", "StatefulMapLogic"),
    "raykv.operators.topn": ("TopN", "TopNLogic"),
    "raykv.operators.ttl": ("TTL",),
    "raykv.operators.window": ("TumblingWindow", "TumblingWindowLogic"),
})

__all__ = [
    "TTL",
    "Aggregate",
    "AggregateLogic",
    "Codec",
    "Deduplicate",
    "DeduplicateLogic",
    "Filter",
    "IntervalJoin",
    "IntervalJoinLogic",
    "Join",
    "JsonCodec",
    "KeyedOperator",
    "KeyedStateLogic",
    "LookupJoin",
    "LookupJoinLogic",
    "Map",
    "MapLogic",
    "OperatorLogic",
    "PickleCodec",
    "PyStateLogic",
    "RawCodec",
    "Reduce",
    "ReduceLogic",
    "RegularJoinLogic",
    "SessionWindow",
    "SessionWindowLogic",
    "SlidingWindow",
    "SlidingWindowLogic",
    "StatefulMap",
    "StatefulMapLogic",
    "TopN",
    "TopNLogic",
    "TumblingWindow",
    "TumblingWindowLogic",
    "WindowJoin",
    "WindowJoinLogic",
    "get_codec",
]
