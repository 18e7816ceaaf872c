"""Recovery drills: kill actors at chosen moments and prove the result is exact.

A drill runs one keyed aggregation (``Aggregate(user: sum, count, min, max)`` over a
deterministic zipf event stream, :class:`raykv.tools.demo.ZipfEvents`) with checkpoints and a
:class:`raykv.sinks.ParquetSink`, and kills a random actor of a chosen kind (``TARGETS``:
a shard, which also writes its output to the sink, or the source reader) with ``SIGKILL``
of its process (pid from ``ping()``), at a random moment, ``kills`` times in a row.
Moments (``MOMENTS``):

* ``mid-batch``: a short random delay after an epoch commits, while the shards process the
  next epoch's batches (``Faults(process_delay=...)`` keeps every call busy for a while);
* ``upload``: a short random delay after ``barrier(e)`` is sent, while the shards seal and
  upload epoch ``e`` (``Faults(upload_delay=...)`` holds every upload open);
* ``acked``: every shard acknowledged epoch ``e`` (its shard manifests are durable) and the
  driver is about to write the epoch manifest: between ack and commit;
* ``recovery``: while the replacement shards of the previous kill restore their state
  (``Faults(restore_delay=...)``); it always follows another kill.

One kill is armed at a time: it fires at its moment, the coordinator detects the dead
actor, restores every shard to the last committed epoch and replays the source; once the
new shards are ready (``"started"``), the next kill is armed. When the input ends before
every kill has fired, a new round (a fresh pipeline, checkpoint and output directory)
continues with the remaining kills.

Exactness: epochs end every ``epoch_every`` batches, so they are identical run to run. A
failure-free *reference run* of the same pipeline is compared with a plain ``pyarrow``
group_by model (changelog of each epoch, and the final values of the last epoch), then
every drill round must publish exactly the reference's Parquet output, epoch by epoch
(read back with pyarrow), leave nothing staged, and leave a store that ``verify()``s.

Per kill the drill records when it struck, the epoch the shards were restored from, the
events replayed (rows of the epochs sent but not committed, read again), the
time to detect the failure and the recovery time (kill to new shards ready).

Example::

    result = run_drill(DrillConfig(kills=5, events=20_000))
    print(format_table(result.kills))
    assert result.ok, result.problems

Cost: one reference run plus one run per round; every kill costs an actor teardown and
restart (about 1-3 s on a laptop) plus the replay.
"""

from __future__ import annotations

from raykv.tools.drill.config import AGGS, KEY, MOMENTS, OUT_COLUMNS, TARGETS, DrillConfig
from raykv.tools.drill.killer import plan_kills
from raykv.tools.drill.model import diff_outputs, expected_epochs, read_published
from raykv.tools.drill.report import DrillResult, KillRecord, format_table, summarize
from raykv.tools.drill.run import run_drill

__all__ = [
    "AGGS",
    "KEY",
    "MOMENTS",
    "OUT_COLUMNS",
    "TARGETS",
    "DrillConfig",
    "DrillResult",
    "KillRecord",
    "diff_outputs",
    "expected_epochs",
    "format_table",
    "plan_kills",
    "read_published",
    "run_drill",
    "summarize",
]
