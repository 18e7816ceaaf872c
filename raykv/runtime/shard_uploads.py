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
from typing import TYPE_CHECKING, Any

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

    def _upload_failed(self, err: BaseException, ack: Ack) -> None:
        self._add_context(err, epoch=ack.epoch, phase="upload")

    @ray.method(concurrency_group="io")
    def wait_uploaded(self, epoch: int) -> Ack:
        """Block until ``epoch`` is sealed and uploaded here; return its :class:`Ack`.

        Runs in the ``"io"`` group: it never waits behind data processing. An epoch sealed
        before the shard failed is still acknowledged once its upload is durable; any
        other epoch raises the shard's failure.
        """
        return self._uploader.wait(epoch)


__all__ = ["EpochUploads"]
