"""A shard's epoch uploads and output staging (the upload thread's side of the shard).

Contract: the :class:`EpochUploads` mixin of :class:`~raykv.runtime.shard.ShardWorker`.
``_upload(ack)`` runs in the shard's upload thread (:class:`~raykv.runtime.uploader.Uploader`)
for every sealed epoch, in epoch order: it stages the epoch's output (and late rows) in
a sink that ``stages_on_shards``, uploads the epoch's files (``store.upload_shard``),
keeps their links for a rollback in place and fills in the :class:`Ack` that
``wait_uploaded(e)`` (the ``"io"`` group) hands to the driver.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray

from raykv.runtime.specs import Ack, ShardSpec
from raykv.sinks import LATE_PART, part_name

if TYPE_CHECKING:
    from raykv.metrics import ShardMetrics
    from raykv.runtime.uploader import Uploader


class EpochUploads:
    """Uploads and output staging of one shard (see the module docstring)."""

    if TYPE_CHECKING:  # what the mixin uses of the shard worker
        spec: ShardSpec
        name: str
        stats_: dict[str, float]
        _metrics: ShardMetrics
        _uploader: Uploader

        def _get_store(self) -> Any: ...
        def _fault(self, point: str) -> None: ...
        def _prune_links(self, uploaded: int) -> None: ...
        def _add_context(self, err: BaseException, *, epoch: int | None = None,
                         phase: str | None = None) -> None: ...

    def _upload(self, ack: Ack) -> None:
        """Upload thread: make ``ack``'s epoch durable (unless driver I/O) and fill it in."""
        self._fault("upload")
        faults = self.spec.faults
        if faults is not None and faults.upload_delay:
            time.sleep(faults.upload_delay)
        self._stage_output(ack)
        if not self.spec.driver_io:
            t = time.perf_counter()
            sm = self._get_store().upload_shard(
                ack.epoch, self.name, ack.staging, ack.files, metadata=ack.metadata
            )
            self.stats_["upload_seconds"] += time.perf_counter() - t
            self._metrics.upload(time.perf_counter() - t, sm)
            self.stats_["bytes_uploaded"] += sm.new_bytes
            self.stats_["files_uploaded"] += sm.new_files
            self._prune_links(ack.epoch)
            ack.manifest = sm
            ack.staging = None

    def _stage_output(self, ack: Ack) -> None:
        """Stage the epoch's output in the sink from here (the sink writer of the shard).

        Only for a sink with ``stages_on_shards`` (``spec.sink``, the last stage); the ack
        then carries the row count, not the rows. Late rows (``late="emit"``) are staged
        under ``LATE_PART + part``. Staged output is published by the driver after the
        commit, or discarded by ``Sink.start`` if the epoch never commits.
        """
        sink = self.spec.sink
        if sink is None:
            return
        t = time.perf_counter()
        part = part_name(self.spec.stage.name, self.spec.index)
        if ack.output is not None:
            sink.stage(ack.epoch, part, ack.output)
        if ack.late_output is not None:
            sink.stage(ack.epoch, LATE_PART + part, ack.late_output)
        self.stats_["sink_seconds"] += time.perf_counter() - t
        ack.output = ack.late_output = None

    def _stage_final(self, epoch: int, chunks: Iterator[pa.Table]) -> tuple[pa.Table | None, int]:
        """The last stage's output of the final ``epoch``, given as a stream of chunks.

        With a sink that ``stages_on_shards``, the chunks are written to it as they come
        (``Sink.stage_chunks``: :class:`~raykv.sinks.ParquetSink` appends row groups to
        one staged file), here in the data thread, before the epoch is sealed and queued;
        returns ``(None, rows)``: the ack carries the count, not the rows, and the upload
        thread, which stages earlier epochs' output in epoch order, has nothing to stage
        for this one. The engine files are uploaded after, in the upload thread as
        always. Otherwise (a driver-side sink) the chunks are concatenated into the
        table the ack carries: ``(table, 0)`` (the caller counts its rows). Memory: one
        chunk with a shard-side sink; the whole output otherwise.
        """
        sink = self.spec.sink
        if sink is None:
            tables = list(chunks)
            if not tables:
                return None, 0
            return (tables[0] if len(tables) == 1 else pa.concat_tables(tables)), 0
        t = time.perf_counter()
        rows = sink.stage_chunks(epoch, part_name(self.spec.stage.name, self.spec.index),
                                 chunks)
        self.stats_["sink_seconds"] += time.perf_counter() - t
        self.stats_["rows_out"] += rows
        return None, rows

    def _upload_failed(self, err: BaseException, ack: Ack) -> None:
        self._add_context(err, epoch=ack.epoch, phase="upload")

    @ray.method(concurrency_group="io")
    def wait_uploaded(self, epoch: int, attempt: int | None = None) -> Ack:
        """Block until ``epoch`` is sealed and uploaded here; return its :class:`Ack`.

        Runs in the ``"io"`` group: it never waits behind data processing. An epoch sealed
        before the shard failed is still acknowledged once its upload is durable; any
        other epoch raises the shard's failure. ``attempt``: the caller's run attempt; a
        call of an earlier attempt that reaches a shard rolled back since (local
        recovery) raises at once, so it can neither take the ack of the replayed epoch
        of the same number nor hold the ``"io"`` thread.

        Raises:
            RuntimeError: ``attempt`` is not this shard's.
        """
        uploader = self._uploader  # first: reset() swaps the uploader after the spec
        if attempt is not None and attempt != self.spec.attempt:
            msg = (f"shard {self.name}: wait_uploaded({epoch}) of attempt {attempt} reached "
                   f"attempt {self.spec.attempt} (a call from before a recovery)")
            raise RuntimeError(msg)
        return uploader.wait(epoch)


__all__ = ["EpochUploads"]
