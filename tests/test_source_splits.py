"""Split-based sources: every split replays from its own offset, and the splits together
hold exactly the rows of the whole input; DirectorySource reads arriving files once each.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raykv.sources import (
    DirectorySource,
    GeneratorSource,
    ListSource,
    ParquetSource,
    Source,
    SourceReader,
    Split,
    TableSource,
)
from raykv.sources.memory import TABLE_SPLITS
from raykv.testing import zipf_events


def drain(reader: SourceReader, limit: int | None = None) -> tuple[list[dict[str, Any]], Any]:
    """Rows of up to ``limit`` non-empty batches (all when None), and the offset after."""
    out: list[dict[str, Any]] = []
    n = 0
    while limit is None or n < limit:
        b = reader.read()
        if b is None or b.num_rows == 0:
            break
        out.extend(b.to_pylist())
        n += 1
    return out, json.loads(json.dumps(reader.offset))


def whole(source: Source) -> list[dict[str, Any]]:
    rows, _ = drain(source.open())
    return rows


def assert_split_replay(source: Source, split: Split) -> list[dict[str, Any]]:
    """Reopening a split at each offset it reported yields exactly the rows after it."""
    reader = source.open_split(split)
    rows: list[dict[str, Any]] = []
    marks: list[tuple[int, Any]] = [(0, reader.offset)]
    while (b := reader.read()) is not None and b.num_rows:
        rows.extend(b.to_pylist())
        marks.append((len(rows), json.loads(json.dumps(reader.offset))))
    for consumed, offset in marks:
        rest, _ = drain(source.open_split(split.id, offset))
        assert rest == rows[consumed:], (split.id, offset)
    return rows


def assert_splits_cover(source: Source) -> list[Split]:
    """Split ids are unique and stable, and their rows are exactly the whole input's."""
    splits = source.splits()
    assert len({s.id for s in splits}) == len(splits)
    assert [s.id for s in source.splits()] == [s.id for s in splits]
    assert [s.id for s in pickle.loads(pickle.dumps(source)).splits()] == [s.id for s in splits]
    got = [r for s in splits for r in assert_split_replay(source, s)]
    assert got == whole(source)  # splits in order hold the stream in order
    return splits


def key(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)


# ---------------------------------------------------------------------------- in memory


@pytest.mark.parametrize(("n", "batch"), [(0, 10), (5, 10), (1_000, 128), (10_000, 7)])
def test_table_source_splits(n: int, batch: int) -> None:
    src = TableSource(zipf_events(n, 20) if n else {"k": pa.array([], pa.int64())},
                      batch_size=batch)
    splits = assert_splits_cover(src)
    assert 1 <= len(splits) <= TABLE_SPLITS
    assert sum(s.size or 0 for s in splits) == n
    for s in splits[:-1]:
        assert (s.size or 0) % batch == 0  # whole batches: the same boundaries as open()


def test_list_source_splits_and_bad_split_offsets() -> None:
    src = ListSource([{"k": i % 3, "v": i} for i in range(100)], batch_size=10)
    splits = assert_splits_cover(src)
    with pytest.raises(ValueError, match="has no split 'rows 5-6'"):
        src.open_split("rows 5-6")
    with pytest.raises(ValueError, match="non-negative int"):
        src.open_split(splits[0], -1)
    with pytest.raises(ValueError, match="offset is 999"):
        src.open_split(splits[0], 999)


class _OneStream(Source):
    """A user's source that defines only ``open``."""

    def open(self, offset: Any = None) -> SourceReader:
        return TableSource({"k": [1, 2, 3]}, batch_size=2).open(offset)


def test_a_source_without_splits_is_one_split() -> None:
    src = _OneStream()
    assert src.splits() == [Split("all")]
    assert assert_splits_cover(src) and drain(src.open_split("all", 2))[0] == [{"k": 3}]
    with pytest.raises(ValueError, match="has no split"):
        src.open_split("part-1")


# ---------------------------------------------------------------------------- generator


def _gen(partition: int, offset: int) -> pa.RecordBatch | None:
    if offset >= 3 + partition:  # partitions of different lengths
        return None
    return pa.record_batch({"p": [partition] * 2, "i": [offset, offset]})


def test_generator_partitions_are_splits() -> None:
    src = GeneratorSource(_gen, partitions=3)
    splits = src.splits()
    assert [s.id for s in splits] == ["partition 0", "partition 1", "partition 2"]
    for s in splits:
        rows = assert_split_replay(src, s)
        p = int(s.id.split()[1])
        assert rows == [{"p": p, "i": i} for i in range(3 + p) for _ in range(2)]
    # the whole-stream reader interleaves them and replays from its offset exactly
    reader = src.open()
    first, off = drain(reader, 4)
    rest, _ = drain(src.open(off))
    assert first + rest == whole(src)
    assert sorted(map(key, whole(src))) == sorted(
        key(r) for s in splits for r in drain(src.open_split(s))[0])
    with pytest.raises(ValueError, match="needs an offset"):
        src.open([0, 0, 0])
    with pytest.raises(ValueError, match="partitions must be a positive int"):
        GeneratorSource(_gen, partitions=0)
    assert GeneratorSource(lambda i: None).splits() == [Split("all")]


# ---------------------------------------------------------------------------- parquet


def _write_parquet(folder: Path, files: int, rows: int, row_group: int) -> pa.Table:
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for f in range(files):
        t = pa.table({"k": [(f * 7 + i) % 11 for i in range(rows)],
                      "v": list(range(f * rows, (f + 1) * rows))})
        pq.write_table(t, folder / f"part-{f:03d}.parquet", row_group_size=row_group)
        parts.append(t)
    return pa.concat_tables(parts)


@pytest.mark.parametrize("split_rows", [None, 1, 250, 10_000])
def test_parquet_source_splits(tmp_path: Path, split_rows: int | None) -> None:
    table = _write_parquet(tmp_path / "in", files=3, rows=1_000, row_group=200)
    src = ParquetSource(str(tmp_path / "in"), batch_size=64, split_rows=split_rows)
    splits = assert_splits_cover(src)
    assert [r for s in splits for r in drain(src.open_split(s))[0]] == table.to_pylist()
    if split_rows is None or split_rows >= 1_000:
        assert len(splits) == 3
        if split_rows is None:
            assert all((s.size or 0) == os.path.getsize(s.id) for s in splits)
    else:
        assert len(splits) == 3 * (5 if split_rows == 1 else 3)  # 250 -> groups of 2,2,1
        assert sum(s.size or 0 for s in splits) == table.num_rows


def test_parquet_split_of_a_vanished_file_names_it(tmp_path: Path) -> None:
    _write_parquet(tmp_path / "in", files=2, rows=10, row_group=5)
    src = ParquetSource(str(tmp_path / "in"))
    splits = src.splits()
    os.remove(splits[1].id)
    with pytest.raises(FileNotFoundError, match=r"part-001\.parquet.*gone"):
        src.open_split(splits[1])
    assert drain(src.open_split(splits[0]))[0]  # the other split still reads


# ---------------------------------------------------------------------------- directory


def _write(folder: Path, name: str, rows: list[dict[str, Any]], fmt: str = "parquet") -> None:
    """Write the way the documented rule says: under a hidden name, then rename."""
    hidden = folder / f"_{name}.inprogress"
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    if fmt == "parquet":
        pq.write_table(table, hidden, row_group_size=7)
    elif fmt == "csv":
        pcsv.write_csv(table, hidden)
    else:
        hidden.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.rename(hidden, folder / name)


SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.int64())])


def _rows(start: int, n: int) -> list[dict[str, Any]]:
    return [{"k": i % 5, "v": i} for i in range(start, start + n)]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_directory_source_reads_each_file_once_in_name_order(tmp_path: Path, fmt: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder, f"b.{fmt}", _rows(20, 20), fmt)
    _write(folder, f"a.{fmt}", _rows(0, 20), fmt)
    (folder / f"_c.{fmt}").write_text("half-written")  # never read
    (folder / f".d.{fmt}").write_text("half-written")
    src = DirectorySource(str(folder), format=fmt, batch_size=6, schema=SCHEMA,
                          poll_interval=0.0)
    reader = src.open()
    got, off = drain(reader)  # stops at the first idle (empty) batch
    assert got == _rows(0, 40)
    assert off == {"done": f"b.{fmt}", "count": 2, "file": "", "row": 0}
    assert reader.read().num_rows == 0  # idle, not the end: the source is unbounded
    _write(folder, f"c.{fmt}", _rows(40, 9), fmt)  # the writer renames when done
    assert drain(reader)[0] == _rows(40, 9)
    bounded = DirectorySource(str(folder), format=fmt, batch_size=6, schema=SCHEMA, watch=False)
    assert src.splits() == [Split("all")]  # watching: one stream, whatever arrives
    assert [s.id for s in bounded.splits()] == [f"a.{fmt}", f"b.{fmt}", f"c.{fmt}"]
    assert assert_split_replay(bounded, bounded.splits()[1]) == _rows(20, 20)
    assert not src.bounded and bounded.bounded
    assert whole(bounded) == _rows(0, 49) and bounded.open().read() is not None


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_directory_source_restarts_never_skip_or_repeat(tmp_path: Path, seed: int) -> None:
    """Files arrive while a reader reads and is reopened at random offsets: every row once."""
    rnd = random.Random(seed)
    folder = tmp_path / f"in-{seed}"
    folder.mkdir()
    src = DirectorySource(str(folder), batch_size=rnd.randint(1, 9), poll_interval=0.0)
    written: list[dict[str, Any]] = []
    read: list[dict[str, Any]] = []
    reader, files = src.open(), 0
    for _ in range(rnd.randint(3, 12)):
        action = rnd.random()
        if action < 0.4:
            n = rnd.randint(0, 15)
            _write(folder, f"part-{files:05d}.parquet", _rows(len(written), n))
            written += _rows(len(written), n)
            files += 1
        elif action < 0.8:
            rows, _ = drain(reader, rnd.randint(1, 4))
            read += rows
        else:  # a restart: a new reader at the last offset
            reader = src.open(json.loads(json.dumps(reader.offset)))
    read += drain(reader)[0]
    assert read == written


def test_directory_source_refuses_files_it_would_skip_or_repeat(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.parquet", "d.parquet"):
        _write(folder, name, _rows(0, 3))
    src = DirectorySource(str(folder), poll_interval=0.0)
    reader = src.open()
    drain(reader)
    offset = reader.offset
    _write(folder, "a.parquet", _rows(0, 3))  # sorts before files already read
    with pytest.raises(ValueError, match="sorting before files already read"):
        src.open(offset)
    os.remove(folder / "a.parquet")
    os.remove(folder / "b.parquet")  # a file already read vanished
    with pytest.raises(ValueError, match=r"2 files up to 'd.parquet' were read, but 1"):
        src.open(offset)


def test_directory_source_errors_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder, "a.parquet", _rows(0, 30))
    src = DirectorySource(str(folder), batch_size=10, poll_interval=0.0)
    reader = src.open()
    reader.read()
    offset = reader.offset
    assert offset["file"] == "a.parquet" and offset["row"] == 10
    os.remove(folder / "a.parquet")
    with pytest.raises(FileNotFoundError, match=r"'a\.parquet'.*read up to row 10.*gone"):
        src.open(offset)
    (folder / "b.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ValueError, match=r"cannot read 'b\.parquet'.*as parquet"):
        drain(src.open())
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        DirectorySource(str(tmp_path / "nope")).open()
    with pytest.raises(ValueError, match="format must be one of"):
        DirectorySource(str(folder), format="xml")
    with pytest.raises(ValueError, match="done/count/file/row"):
        src.open({"file": 3})


@pytest.mark.s3
def test_directory_source_on_s3(s3_bucket: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    import s3fs

    url, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    local = tmp_path / "w"
    local.mkdir()
    for i in range(3):
        _write(local, f"part-{i}.parquet", _rows(i * 10, 10))
        fs.put(str(local / f"part-{i}.parquet"), f"{url}/in/part-{i}.parquet")
    fs.pipe(f"{url}/in/_part-3.parquet", b"still uploading")
    src = DirectorySource(f"{url}/in", batch_size=4, storage_options=options, watch=False)
    assert [s.id for s in src.splits()] == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    reader = src.open()
    first, off = drain(reader, 4)
    assert first + drain(src.open(off))[0] == _rows(0, 30)
    assert assert_split_replay(src, src.splits()[2]) == _rows(20, 10)


# ---------------------------------------------------------------------------- in a pipeline


@pytest.mark.ray
def test_directory_source_pipeline_with_files_arriving_a_kill_and_a_resume(
    ray_session: Any, tmp_path: Path
) -> None:
    """Files arrive during two runs; a shard is SIGKILLed; the totals count every row once."""
    import signal

    import ray

    import raykv
    from raykv.operators import Aggregate

    folder = tmp_path / "in"
    folder.mkdir()
    per_file, written = 40, 0  # two batches: one epoch per file

    def arrive(n: int) -> None:
        nonlocal written
        for _ in range(n):
            _write(folder, f"part-{written // per_file:04d}.parquet", _rows(written, per_file))
            written += per_file

    arrive(3)
    state = {"killed": False, "stop_at": 0}
    holder: dict[str, raykv.Pipeline] = {}

    def on_progress(ev: raykv.ProgressEvent) -> None:
        if ev.kind != "committed":
            return
        if ev.epoch == 2 and not state["killed"]:  # more files, then a real SIGKILL
            arrive(2)
            state["killed"] = True
            handle = ev.shards[sorted(ev.shards)[0]]
            os.kill(ray.get(handle.ping.remote()), signal.SIGKILL)
        if ev.rows_in >= state["stop_at"]:
            holder["p"].stop()

    p = raykv.Pipeline(
        source=DirectorySource(str(folder), batch_size=20, poll_interval=0.02),
        stages=[Aggregate("k", {"v": ["sum", "count"]})],
        engine="memonly", num_shards=2, epoch_every_batches=2, max_pending_epochs=1,
        checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
        on_progress=on_progress,
    )
    holder["p"] = p
    state["stop_at"] = 5 * per_file
    first = p.run()
    assert first.stopped and first.restarts == 1 and state["killed"]
    arrive(3)  # while no run is going
    state["stop_at"] = 8 * per_file - first.rows_in
    second = p.run(resume=True)
    assert second.stopped and first.rows_in + second.rows_in == written == 8 * per_file
    final = pa.concat_tables(
        [second.output_by_epoch[e] for e in sorted(second.output_by_epoch)]
    ).to_pylist()
    latest = {r["k"]: r for r in final}  # the changelog's last value of each key
    model: dict[int, list[int]] = {}
    for r in _rows(0, written):
        s = model.setdefault(r["k"], [0, 0])
        s[0] += r["v"]
        s[1] += 1
    assert {k: [r["v_sum"], r["v_count"]] for k, r in latest.items()} == model
