"""What a fresh actor process pays once, paid ahead by a standby (``Pipeline.standby``).

Contract: :func:`preload_lazy_imports` does, in a process that has nothing to do yet,
the imports that would otherwise land on the first data call. A standby shard's
``warm`` calls it right after the actor starts, so that the role a recovery gives it
runs at full speed from its first batch. (A reader process imports pandas with
``raykv.sources`` already: the Nexmark generator builds arrays at import.)

Measured on the 2-core machine (``StatefulMap``, 3 shards, a standby taking a killed
shard's role): the standby's first ``process`` call took 0.65-0.88 s against 0.1 s
later, nearly all of it pyarrow importing pandas; the readers feeding it waited that
long (backpressure), so the whole pipeline stood still. With the import paid ahead:
0.2 s.
"""

from __future__ import annotations


def preload_lazy_imports() -> None:
    """Import what pyarrow imports on its first conversion (pandas, when installed).

    pyarrow looks for pandas the first time it converts Python or numpy values to an
    array (``pa.array``, ``to_numpy``, a group-by's inputs), which imports pandas if it is
    installed: 0.3-0.7 s of CPU in a fresh process on the 2-core machine. Cost: that
    import, once per process; nothing when pandas is absent or imported already.
    """
    import pyarrow as pa

    pa.array([0])


__all__ = ["preload_lazy_imports"]
