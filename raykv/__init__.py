"""raykv: keyed stateful dataflows on Ray with exactly-once state in embedded engines.

``import raykv`` is cheap: the submodules (and Ray, pyarrow) load on first use::

    import raykv

    pipeline = raykv.Pipeline(
        source=raykv.sources.TableSource(table),
        stages=[raykv.operators.Aggregate(key="user", aggs={"amount": ["sum"]})],
        checkpoint="file:///tmp/ckpt",
    )
    summary = pipeline.run()

See ``docs/runtime.md`` for the pipeline API, ``raykv.engines`` for the state engines and
``raykv.checkpointing`` for the checkpoint store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_ATTRS = {
    "Pipeline": "raykv.pipeline",
    "RunSummary": "raykv.pipeline",
    "ProgressEvent": "raykv.pipeline",
    "TumblingWindow": "raykv.operators",
    "SlidingWindow": "raykv.operators",
    "SessionWindow": "raykv.operators",
    "Watermark": "raykv.watermarks",
}
_SUBMODULES = frozenset(
    {"sources", "sinks", "operators", "testing", "engines", "partitioning", "checkpointing",
     "errors", "pipeline", "runtime", "hotkeys", "rebalance", "watermarks"}
)

if TYPE_CHECKING:
    from raykv import (
        checkpointing,
        engines,
        errors,
        hotkeys,
        operators,
        partitioning,
        rebalance,
        sinks,
        sources,
        testing,
    )
    from raykv.operators import SessionWindow, SlidingWindow, TumblingWindow
    from raykv.pipeline import Pipeline, ProgressEvent, RunSummary
    from raykv.watermarks import Watermark


def __getattr__(name: str) -> Any:
    if name in _ATTRS:
        value = getattr(importlib.import_module(_ATTRS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"raykv.{name}")
    else:
        msg = f"module 'raykv' has no attribute {name!r}"
        raise AttributeError(msg)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_ATTRS, *_SUBMODULES])


__all__ = [
    "Pipeline",
    "ProgressEvent",
    "RunSummary",
    "SessionWindow",
    "SlidingWindow",
    "TumblingWindow",
    "Watermark",
    "checkpointing",
    "engines",
    "errors",
    "hotkeys",
    "operators",
    "partitioning",
    "rebalance",
    "sinks",
    "sources",
    "testing",
]
