"""Sinks: output is visible only after its epoch commits, and exactly once after failures."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raykv
from raykv.operators import Aggregate
from raykv.sinks import CollectSink, ParquetSink, parse_part_file_name, part_file_name
from raykv.sources import ParquetSource, TableSource
from raykv.testing import zipf_events
from tests.test_recovery import BATCH, EVERY, Killer, N, assert_exact, published_by_epoch


def t(v: int) -> pa.Table:
    return pa.table({"k": [v]})


def test_part_names_sort_by_epoch_and_parse_back() -> None:
    names = [part_file_name(e, "Agg0-0001") for e in (2, 10, 1)]
    assert sorted(names) == [names[2], names[0], names[1]]
    assert parse_part_file_name(names[1]) == (10, "Agg0-0001")
    assert parse_part_file_name("part-0.parquet") is None


def test_collect_sink_publishes_only_committed_epochs() -> None:
    s = CollectSink()
    s.start(None, new_run=True)
    s.stage(1, "a", t(1))
    s.stage(1, "b", t(2))
    s.stage(2, "a", t(3))
    assert s.result() is None
    s.publish(1)
    assert s.result().column("k").to_pylist() == [1, 2]
    s.start(1, new_run=False)  # recovery to epoch 1: staged epoch 2 is dropped
    s.publish(2)
    assert s.result().column("k").to_pylist() == [1, 2]
    s.stage(2, "a", t(4))
    s.publish(2)
    s.stage(3, "a", t(5))
    s.publish(3)
    s.start(3, new_run=False, abandoned=[[2, 2]])  # epoch 2 abandoned by a rollback
    assert {e: tb.column("k").to_pylist() for e, tb in s.epochs().items()} == {1: [1, 2], 3: [5]}
    s.start(None, new_run=True)
    assert s.result() is None


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("part-*.parquet"))


def test_parquet_sink_two_phase(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = ParquetSink(out)
    s.start(None, new_run=True)
    s.stage(1, "agg-0000", t(1))
    s.stage(2, "agg-0000", t(2))
    assert _files(out) == []  # staged output is invisible to readers of the directory
    s.publish(1)
    assert _files(out) == [part_file_name(1, "agg-0000")]
    assert pq.read_table(out).column("k").to_pylist() == [1]
    s.publish(1)  # idempotent
    # the driver died after committing epoch 2 but before publishing it: start(2) publishes
    s2 = ParquetSink(out)
    s2.start(2, new_run=False)
    assert s2.read().column("k").to_pylist() == [1, 2]
    # a failure before epoch 3 committed: start(2) discards its staged output, and the
    # half-written file of a shard killed in the middle of stage() (found by the drill)
    s2.stage(3, "agg-0000", t(3))
    (out / "_staging" / ".0123abcd.tmp").write_bytes(b"PAR1 half a file")
    s2.start(2, new_run=False)
    assert not list((out / "_staging").glob("*"))
    assert _files(out) == [part_file_name(1, "agg-0000"), part_file_name(2, "agg-0000")]
    # rollback to epoch 1 removes what later epochs published
    s2.start(1, new_run=False)
    assert s2.read().column("k").to_pylist() == [1]


def test_parquet_sink_never_publishes_what_a_failed_attempt_stages_late(tmp_path: Path) -> None:
    """Writers fence the staging: only the committing attempt's output is published.

    A shard of a failed attempt can stage after the recovery reconciled the sink (a
    survivor completing the upload it was running, a process Ray reported dead but still
    writing: CI met one). Its epoch 2 differs from the replay's, which has no output of
    shard 1; an unfenced sink published the stale part beside the replay's.
    """
    out = tmp_path / "out"
    base = ParquetSink(out)
    a = base.for_attempt("a", None)
    a.start(None, new_run=True)
    a.stage(1, "agg-0000", t(1))
    a.publish(1)
    b = base.for_attempt("b", "a")  # attempt a failed in epoch 2; b starts at epoch 1
    b.start(1, new_run=False)
    a.stage(2, "agg-0000", t(20))  # a's shards, still running, stage epoch 2 late
    a.stage(2, "agg-0001", t(21))
    b.stage(2, "agg-0000", t(2))
    b.publish(2)
    assert base.read().column("k").to_pylist() == [1, 2]
    # b commits epoch 3; the driver dies before it publishes; a stages 3 as well
    b.stage(3, "agg-0000", t(3))
    a.stage(3, "agg-0001", t(30))
    (out / "_staging" / "a" / ".0123abcd.tmp").write_bytes(b"PAR1 half a file")
    c = base.for_attempt("c", "b")  # the next run resumes at epoch 3, committed by b
    c.start(3, new_run=False)
    assert base.read().column("k").to_pylist() == [1, 2, 3]
    assert [p.name for p in (out / "_staging").iterdir()] == []
    a.stage(4, "agg-0001", t(40))  # still later; c's close drops it, keeps its own
    c.stage(4, "agg-0000", t(4))
    c.close()
    assert [p.name for p in (out / "_staging").iterdir()] == ["c"]
    c.publish(4)
    c.close()
    assert base.read().column("k").to_pylist() == [1, 2, 3, 4]
    assert [p.name for p in (out / "_staging").iterdir()] == []


def test_a_rollbacks_first_commit_keeps_the_attempts_later_epochs(tmp_path: Path) -> None:
    """``start`` at the commit that ends a rollback publishes the own epoch, keeps the rest."""
    out = tmp_path / "out"
    base = ParquetSink(out)
    a = base.for_attempt("a", None)
    a.start(None, new_run=True)
    for e in (1, 2, 3):
        a.stage(e, "p", t(e))
        a.publish(e)
    b = base.for_attempt("b", "a")  # restore_epoch=1: the sink still sees epoch 3 until
    b.start(3, new_run=False)  # the first commit (epoch 4) says that 2-3 are abandoned
    b.stage(4, "p", t(4))
    b.stage(5, "p", t(5))  # staged before epoch 4 commits
    b.start(4, new_run=False, abandoned=[[2, 3]])
    b.publish(5)
    assert base.read().column("k").to_pylist() == [1, 4, 5]


def test_a_writer_is_a_plain_name(tmp_path: Path) -> None:
    for bad in ("", "a/b", ".x"):
        with pytest.raises(ValueError, match="writer"):
            ParquetSink(tmp_path).for_attempt(bad, None)


def test_reading_the_output_through_fsspec_lets_the_process_exit(tmp_path: Path) -> None:
    """``ParquetSink.read`` of an fsspec URL, then exit: the exit code is 0, every time.

    pyarrow's thread pool, after ``read_table`` through a Python file, aborted 4 of 30
    such processes at exit (SIGABRT, exit code 134) although the read had succeeded.
    """
    script = textwrap.dedent("""
        import pyarrow as pa
        from raykv.sinks import ParquetSink
        s = ParquetSink("memory://exit/out").for_attempt("w", None)
        s.start(None, new_run=True)
        for e in (1, 2, 3):
            s.stage(e, "p", pa.table({"k": [e]}))
            s.publish(e)
        assert s.read().column("k").to_pylist() == [1, 2, 3]
    """)
    codes = [subprocess.run([sys.executable, "-c", script], capture_output=True,
                            check=False, cwd=Path(__file__).parent.parent).returncode
             for _ in range(12)]
    assert codes == [0] * 12


def test_a_shard_staging_sink_without_a_fence_is_warned_about() -> None:
    """A sink of one's own that stages on the shards must fence its writers (or say why not)."""

    class Unfenced(CollectSink):
        stages_on_shards = True

    class Fenced(Unfenced):
        def for_attempt(self, writer: str, committed: str | None) -> Unfenced:
            return self  # e.g. nothing staged

    source = TableSource(t(1))
    with pytest.warns(UserWarning, match="Unfenced stages output on the shards.*for_attempt"):
        raykv.Pipeline(source=source, stages=[Aggregate("k", {"k": ["count"]})],
                       sink=Unfenced())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for sink in (Fenced(), ParquetSink("/tmp/raykv-unused"), CollectSink()):
            raykv.Pipeline(source=source, stages=[Aggregate("k", {"k": ["count"]})], sink=sink)


def test_parquet_sink_refuses_to_mix_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = ParquetSink(out)
    s.start(None, new_run=True)
    s.stage(1, "p", t(1))
    s.publish(1)
    (out / "notes.txt").write_text("kept")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ParquetSink(out).start(None, new_run=True)
    ParquetSink(out, overwrite=True).start(None, new_run=True)
    assert _files(out) == [] and (out / "notes.txt").read_text() == "kept"
    with pytest.raises(FileNotFoundError, match="no published output"):
        ParquetSink(out).read()


def test_parquet_sink_on_an_fsspec_url() -> None:
    url = f"memory://raykv-sink-{uuid.uuid4().hex[:8]}/out"
    s = ParquetSink(url)
    s.start(None, new_run=True)
    s.stage(1, "p", t(7))
    fs = fsspec.filesystem("memory")
    assert not [p for p in fs.ls(url[len("memory://"):], detail=False) if "part-" in p]
    s.publish(1)
    assert s.read().column("k").to_pylist() == [7]
    s.stage(2, "p", t(8))
    s.start(1, new_run=False)
    s.publish(2)
    assert s.read().column("k").to_pylist() == [7]


@pytest.mark.ray
def test_parquet_in_parquet_out_exactly_once_after_a_kill(ray_session: Any,
                                                          tmp_path: Path) -> None:
    """ParquetSource -> Aggregate -> ParquetSink; a shard dies mid-run."""
    table = zipf_events(N, 300, seed=31)
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    for i in range(0, N, 3_000):
        pq.write_table(table.slice(i, 3_000), src_dir / f"events-{i:06d}.parquet")
    out = tmp_path / "out"
    kill = Killer("barrier", 3, index=1, wait_dead=True)  # later batches meet the dead shard
    p = raykv.Pipeline(
        source=ParquetSource(src_dir, batch_size=BATCH),
        stages=[Aggregate("user", {"amount": ["sum", "count"]})], sink=ParquetSink(out),
        engine="lsm", checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
        epoch_every_batches=EVERY, retain=10, on_progress=kill, source_parallelism=1,
    )
    s = p.run()
    assert kill.killed and s.restarts == 1
    assert s.output is None  # ParquetSink does not collect
    assert_exact(published_by_epoch(out), table)
    assert not list((out / "_staging").glob("*"))
