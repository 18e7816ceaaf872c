"""A sink together with the sink of its late rows (``late="emit"`` windows, issue 13).

Contract: when a window stage of a pipeline has ``late="emit"``, the coordinator wraps
the user's sink ``s`` in ``WithLateOutput(s, s.late_sink())``. Its ``stage`` sends parts
named ``LATE_PART + part`` (``late.<stage>-<shard>``) to the late sink, the rest to
``s``; ``start``, ``publish`` and ``close`` reach both, so late rows are staged,
published and reconciled with the same epochs as the output: exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from raykv.sinks import LATE_PART, Sink


class WithLateOutput(Sink):
    """A sink plus the sink of its late rows: parts named ``LATE_PART + part`` go there.

    The runtime wraps the user's sink in it when a window stage has ``late="emit"``;
    every ``start``/``publish``/``close`` reaches both, so late rows are staged,
    published and reconciled with the same epochs as the output (exactly once).
    """

    def __init__(self, main: Sink, late: Sink) -> None:
        self.main, self.late = main, late
        self.stages_on_shards = main.stages_on_shards
        self.changelog = main.changelog

    def start(
        self, epoch: int | None, *, new_run: bool, abandoned: Sequence[Sequence[int]] = ()
    ) -> None:
        """Reconcile both sinks with ``epoch``."""
        self.main.start(epoch, new_run=new_run, abandoned=abandoned)
        self.late.start(epoch, new_run=new_run, abandoned=abandoned)

    def for_attempt(self, writer: str, committed: str | None) -> Sink:
        """Both sinks bound to the attempt (:meth:`Sink.for_attempt`)."""
        return WithLateOutput(self.main.for_attempt(writer, committed),
                              self.late.for_attempt(writer, committed))

    def stage(self, epoch: int, part: str, table: pa.Table) -> None:
        """Late parts to the late sink (prefix removed), the rest to the main one."""
        if part.startswith(LATE_PART):
            self.late.stage(epoch, part[len(LATE_PART):], table)
        else:
            self.main.stage(epoch, part, table)

    def stage_chunks(self, epoch: int, part: str,
                     chunks: Iterable[pa.RecordBatch | pa.Table]) -> int:
        """Late parts to the late sink (prefix removed), the rest to the main one."""
        if part.startswith(LATE_PART):
            return self.late.stage_chunks(epoch, part[len(LATE_PART):], chunks)
        return self.main.stage_chunks(epoch, part, chunks)

    def publish(self, epoch: int) -> None:
        """Publish ``epoch`` in both sinks."""
        self.main.publish(epoch)
        self.late.publish(epoch)

    def close(self) -> None:
        """Close both sinks."""
        try:
            self.main.close()
        finally:
            self.late.close()

    def result(self) -> pa.Table | None:
        """The main sink's result."""
        return self.main.result()

    def describe(self) -> dict[str, Any]:
        """The main sink's description, with the late sink's."""
        return {**self.main.describe(), "late": self.late.describe()}


__all__ = ["WithLateOutput"]
