"""The end of input streamed to the sink (issue 15 item 4), exactly once after kills.

``ParquetSink.stage_chunks`` appends row groups to one staged file that appears only when
complete; a pipeline whose final epoch is written in many chunks gives the model's
output, also when a shard dies mid-stream (the ``"chunk"`` crash point: its ``.tmp`` file
is removed at recovery) or is killed as the final barrier goes out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raykv
from raykv.operators import Aggregate
from raykv.sinks import CollectSink, ParquetSink, part_file_name
from raykv.sources import TableSource
from raykv.testing import Faults
from tests.test_recovery import BATCH, EVERY, Killer, assert_exact, published_by_epoch, table


def _chunks(n: int, size: int) -> Iterator[pa.RecordBatch]:
    for i in range(n):
        yield pa.record_batch({"k": list(range(i * size, (i + 1) * size))})


def test_parquet_stage_chunks_writes_row_groups_of_one_staged_file(tmp_path: Path) -> None:
    s = ParquetSink(tmp_path)
    s.start(None, new_run=True)
    assert s.stage_chunks(3, "agg-0000", _chunks(4, 5)) == 20
    staged = tmp_path / "_staging" / part_file_name(3, "agg-0000")
    meta = pq.ParquetFile(staged).metadata
    assert meta.num_rows == 20 and meta.num_row_groups == 4
    assert not list((tmp_path / "_staging").glob(".*.tmp"))
    assert s.stage_chunks(3, "agg-0001", iter([])) == 0  # nothing staged for no rows
    assert not (tmp_path / "_staging" / part_file_name(3, "agg-0001")).exists()
    s.publish(3)
    assert s.read().column("k").to_pylist() == list(range(20))


def test_parquet_stage_chunks_failing_midway_leaves_nothing(tmp_path: Path) -> None:
    def broken() -> Iterator[pa.RecordBatch]:
        yield from _chunks(2, 3)
        raise RuntimeError("engine died")

    s = ParquetSink(tmp_path)
    s.start(None, new_run=True)
    with pytest.raises(RuntimeError, match="engine died"):
        s.stage_chunks(1, "agg-0000", broken())
    assert not list((tmp_path / "_staging").iterdir())


def test_a_chunk_of_another_schema_is_cast_or_refused(tmp_path: Path) -> None:
    s = ParquetSink(tmp_path)
    s.start(None, new_run=True)
    ok = [pa.record_batch({"k": pa.array([1], pa.int64())}),
          pa.record_batch({"k": pa.array([2], pa.int32())})]
    assert s.stage_chunks(1, "p", iter(ok)) == 2
    bad = [pa.record_batch({"k": [1]}), pa.record_batch({"z": ["x"]})]
    with pytest.raises(TypeError, match="first chunk"):
        s.stage_chunks(2, "p", iter(bad))


def test_collect_sink_concatenates_the_chunks() -> None:
    s = CollectSink()
    s.start(None, new_run=True)
    assert s.stage_chunks(1, "p", _chunks(3, 2)) == 6
    s.publish(1)
    result = s.result()
    assert result is not None and result.column("k").to_pylist() == list(range(6))


def _pipeline(tmp_path: Path, t: pa.Table, engine: str, **kw: Any) -> raykv.Pipeline:
    return raykv.Pipeline(
        source=TableSource(t, batch_size=BATCH),
        stages=[Aggregate("user", {"amount": ["sum", "count"]}, finish_chunk_rows=40)],
        sink=ParquetSink(tmp_path / "out"), engine=engine, num_shards=2,
        checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
        epoch_every_batches=EVERY, retain=10, source_parallelism=1, **kw,
    )


def _final_row_groups(out: Path, epoch: int) -> list[int]:
    return [pq.ParquetFile(f).metadata.num_row_groups
            for f in sorted(out.glob(f"part-e{epoch:010d}-*.parquet"))]


@pytest.mark.ray
@pytest.mark.parametrize("engine", ["lsm", "hybridlog"])
def test_final_epoch_in_chunks_equals_the_model(ray_session: Any, tmp_path: Path,
                                                engine: str) -> None:
    t = table(21)
    s = _pipeline(tmp_path, t, engine).run()
    assert s.restarts == 0
    out = tmp_path / "out"
    by_epoch = published_by_epoch(out)
    assert_exact(by_epoch, t)
    assert s.last_epoch is not None
    groups = _final_row_groups(out, s.last_epoch)
    assert len(groups) == 2 and all(g > 1 for g in groups)  # 300 keys, chunks of 40
    assert s.rows_out == sum(x.num_rows for x in by_epoch.values())


@pytest.mark.ray
def test_shard_dies_mid_stream_of_the_final_epoch(ray_session: Any, tmp_path: Path) -> None:
    """Shard 1 exits as it writes its 3rd chunk: the partial file never becomes output."""
    t = table(22)
    faults = Faults(crash_at=("Aggregate0-1", "chunk", 3))
    s = _pipeline(tmp_path, t, "lsm", faults=faults).run()
    assert s.restarts == 1
    out = tmp_path / "out"
    assert_exact(published_by_epoch(out), t)
    assert not list((out / "_staging").iterdir())
    assert s.last_epoch is not None and len(_final_row_groups(out, s.last_epoch)) == 2


@pytest.mark.ray
def test_shard_killed_as_the_final_barrier_goes_out(ray_session: Any, tmp_path: Path) -> None:
    t = table(23)
    final = t.num_rows // (BATCH * EVERY) + 1
    kill = Killer("barrier", final, index=0)
    s = _pipeline(tmp_path, t, "hybridlog", on_progress=kill).run()
    assert kill.killed and s.restarts == 1
    out = tmp_path / "out"
    assert_exact(published_by_epoch(out), t)
    assert not list((out / "_staging").iterdir())
