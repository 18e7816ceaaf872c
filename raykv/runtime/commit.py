"""The commit of one epoch, in the commit thread, once every shard acknowledged it.

Contract: :meth:`EpochCommit.commit` is the ``commit`` callable of the
:class:`~raykv.runtime.committer.Committer` (one epoch at a time, in epoch order):

1. with driver I/O (``memory://`` stores), upload each shard's staged files; stage the
   output a driver-side sink receives with the acks (``CollectSink``; a ``ParquetSink``
   was staged by the shards themselves);
2. ``store.commit_epoch(e, shard manifests, offsets={"splits": {id: offset}},
   metadata=EpochMetadata)``: THE commit, one write, last;
3. ``sink.publish(e)`` on the attempt's sink (after a rollback: ``sink.start(e)``, which
   also drops the abandoned epochs' output); update the summary and the committed base;
   let the rebalancer decide; garbage-collect down to ``retain`` epochs at most every
   ``GC_INTERVAL`` seconds.

A part of the :class:`~raykv.runtime.coordinator.Coordinator`, holding a reference to it
(like the feeder and the rebalancer). It reads ``p``, ``store``, ``attempt_sink``,
``writer``, ``_stages``, ``_generations``, ``_operator_configs``, ``_num_key_groups``
and ``_base``; under the coordinator's ``_lock`` it writes ``summary`` and
``_committed``; it clears ``_abandon_on_commit`` and emits ``"acked"`` and
``"committed"``.
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import TYPE_CHECKING, Any

from raykv.runtime.committer import PendingEpoch
from raykv.runtime.layout import Base
from raykv.runtime.metadata import EpochMetadata, StageMetadata
from raykv.runtime.specs import Ack
from raykv.sinks import LATE_PART, part_name

if TYPE_CHECKING:
    from raykv.runtime.coordinator import Coordinator

log = logging.getLogger("raykv")

GC_INTERVAL = 2.0
"""Seconds between two garbage collections of the store (and at the final epoch)."""


class EpochCommit:
    """Commits fully acknowledged epochs (see the module docstring)."""

    def __init__(self, coord: Coordinator) -> None:
        self._coord = coord
        self._last_gc = 0.0

    def commit(self, pending: PendingEpoch, acks: list[Ack]) -> None:
        """Steps 1-3 of the module docstring for one fully acknowledged epoch."""
        c = self._coord
        e = pending.epoch
        c._emit("acked", e)
        sink = c.attempt_sink
        store = c.store
        manifests: dict[str, Any] = {}
        if store is not None:
            for ack in acks:
                if ack.manifest is None:  # driver I/O: upload from the shard's staging dir
                    assert ack.staging is not None
                    ack.manifest = store.upload_shard(e, ack.shard, ack.staging, ack.files,
                                                      metadata=ack.metadata)
                    shutil.rmtree(ack.staging, ignore_errors=True)
                manifests[ack.shard] = ack.manifest
        rows_out = 0
        for ack in acks:
            rows_out += ack.rows_out
            part = part_name(str(ack.metadata["stage"]), int(ack.metadata["index"]))
            for table, name in ((ack.output, part), (ack.late_output, LATE_PART + part)):
                if table is not None:  # a driver-side sink (CollectSink), late rows
                    with c._user_code(f"sink {type(sink).__name__}.stage({e}, {name!r})", e):
                        sink.stage(e, name, table)
        base = c._committed or c._base
        rows_total = base.rows_total + pending.rows
        abandoned = base.abandoned
        load = c.rebalancer.account_load(acks)
        metadata = None
        if store is not None:
            metadata = self.metadata(pending, base, rows_total, load or None)
            offsets: dict[str, Any] = {"splits": pending.offset}
            if pending.event_maxes:
                offsets["event_maxes"] = pending.event_maxes
            store.commit_epoch(e, manifests, offsets=offsets, metadata=metadata.to_dict())
        if c._abandon_on_commit:
            with c._user_code(f"sink {type(sink).__name__}.start({e})", e):
                sink.start(e, new_run=False, abandoned=abandoned)
            c._abandon_on_commit = False
        else:
            with c._user_code(f"sink {type(sink).__name__}.publish({e})", e):
                sink.publish(e)
        with c._lock:
            s = c.summary
            s.epochs_committed.append(e)
            s.last_epoch = e
            s.rows_in += pending.rows
            s.rows_out += rows_out
            for sm in manifests.values():
                s.bytes_uploaded += sm.new_bytes
                s.files_uploaded += sm.new_files
            c._committed = Base(
                epoch=e, metadata=metadata, offsets=pending.offset, rollback=False,
                abandoned=abandoned, rows_total=rows_total, event_maxes=pending.event_maxes,
            )
        c._metrics.committed(manifests)
        c._emit("committed", e, final=pending.final, rows_out=rows_out,
                   bytes_uploaded_total=s.bytes_uploaded)
        if c.p.rebalance is not None and not pending.final:
            c.rebalancer.decide(acks)
        if store is not None and (pending.final or time.monotonic() - self._last_gc > GC_INTERVAL):
            self._last_gc = time.monotonic()
            try:
                store.gc(c.p.retain)
            except OSError as err:
                log.warning("raykv: garbage collection of %s failed: %s", store.url, err)

    def metadata(self, pending: PendingEpoch, base: Base, rows_total: int,
                  load: dict[str, Any] | None) -> EpochMetadata:
        """The epoch manifest's metadata of ``pending`` (lineage from ``base``)."""
        c = self._coord
        sink = c.p.sink
        assert sink is not None
        return EpochMetadata(
            num_key_groups=c._num_key_groups,
            final=pending.final,
            rows_total=rows_total,
            parent=base.epoch,  # the previous epoch of this lineage
            abandoned=tuple((int(r[0]), int(r[1])) for r in base.abandoned),
            stages=tuple(
                StageMetadata(
                    name=st.name, key=st.key, operator=type(st.operator).__name__,
                    operator_config=c._operator_configs[st.name],
                    engine=st.engine, engine_params=st.engine_params,
                    num_shards=st.num_shards, generation=gen,
                    partitioning=st.partitioning.to_dict(), shards=tuple(st.shard_names),
                )
                for st, gen in zip(c._stages, c._generations, strict=True)
            ),
            source=c.p.describe_sources(),
            sink=sink.describe(),
            load=load,
            writer=c.writer,
        )


__all__ = ["GC_INTERVAL", "EpochCommit"]
