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

from typing import TYPE_CHECKING

from raykv.lazy import exports

__version__ = "0.1.0"

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


# a name's module loads on first use (``raykv/lazy.py``): ``import raykv`` stays cheap
__getattr__, __dir__ = exports(__name__, {
    "raykv.pipeline": ("Pipeline", "ProgressEvent", "RunSummary"),
    "raykv.operators": ("SessionWindow", "SlidingWindow", "TumblingWindow"),
    "raykv.watermarks": ("Watermark",),
}, submodules=("sources", "sinks", "operators", "testing", "engines", "partitioning",
               "checkpointing", "errors", "pipeline", "runtime", "hotkeys", "rebalance",
               "watermarks"))


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
