"""Sinks: where committed output goes, exactly once.

Output of the last stage arrives at the driver per epoch and per shard (the changelog
the operators emit at each barrier, and their final values at the end of bounded input).
A sink sees it in two phases, driven by the coordinator::

    for_attempt(writer, committed).start(epoch, new_run, abandoned)
        (stage(e, part, table)*  publish(e))*  close()

* ``stage`` keeps the output of an epoch that is not committed yet (on disk for
  :class:`ParquetSink`, in memory for :class:`CollectSink`).
* ``publish(e)`` makes it visible; the coordinator calls it only after the epoch
  manifest of ``e`` is written (the commit), in epoch order.
* ``start(e, abandoned=ranges)`` reconciles with the committed lineage ending at epoch
  ``e``, at the start of a run and after every recovery: staged output of epochs ``<= e``
  is published (the driver may have died between commit and publish), staged output of
  epochs ``> e`` is discarded (never committed), and published output of epochs ``> e``
  or inside an ``abandoned`` range ``[lo, hi]`` is removed (epochs a rollback with
  ``restore_epoch`` left behind; the ranges are stored in every later epoch manifest).
  Names are deterministic per (epoch, stage, shard), so publishing twice is harmless.
* ``for_attempt(writer, committed)`` binds the sink to one run attempt (the coordinator
  calls ``start``, ``publish`` and ``close`` on the bound sink and sends it to the
  shards): ``publish`` and ``start`` publish only output staged by the attempt that
  committed the epoch (its ``writer`` is stored in the epoch manifest), so output a
  shard of a failed attempt stages after the recovery is never published.

After any sequence of failures, published output holds every committed epoch's output
of the lineage exactly once and nothing else.

Where ``stage`` runs: a sink with ``stages_on_shards = True`` (:class:`ParquetSink`) is
sent to the last stage's shard actors, and each shard stages its own output of an epoch
(in its upload thread, before it acknowledges the epoch), so no output row passes
through the driver; the driver only calls ``start``, ``publish`` and ``close``. Other
sinks (:class:`CollectSink`, a user's own) stay in the driver and receive each shard's
output with its acknowledgement.
"""

from raykv.sinks.base import (
    LATE_PART,
    CollectSink,
    Sink,
    parse_part_file_name,
    part_file_name,
    part_name,
)
from raykv.sinks.parquet import ParquetSink

__all__ = ["LATE_PART", "CollectSink", "ParquetSink", "Sink", "parse_part_file_name",
           "part_file_name", "part_name"]
