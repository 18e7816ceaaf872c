"""Sources: batches, offsets and replay (reopening at any offset yields the same suffix)."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raykv
from raykv.operators import Aggregate
from raykv.sources import (
    GeneratorSource,
    ListSource,
    ParquetSource,
    RayDataSource,
    Source,
    StopSource,
    TableSource,
)
from raykv.testing import ABORT, EOF, TestingAbort, TestingSource, zipf_events


def read_all(source: Source, offset: Any = None) -> tuple[list[pa.RecordBatch], list[Any]]:
    """All batches from ``offset`` and the reader's offset after each."""
    reader = source.open(offset)
    batches, offsets = [], []
    while (b := reader.read()) is not None:
        batches.append(b)
        offsets.append(json.loads(json.dumps(reader.offset)))  # offsets are JSON
    reader.close()
    return batches, offsets


def rows(batches: list[pa.RecordBatch]) -> list[dict[str, Any]]:
    return [r for b in batches for r in b.to_pylist()]


def assert_replayable(source: Source) -> list[dict[str, Any]]:
    """Reopening at every offset yields exactly the rows (and batches) that followed it."""
    batches, offsets = read_all(source)
    everything = rows(batches)
    for i, off in enumerate(offsets):
        rest, _ = read_all(source, off)
        assert [b.num_rows for b in rest] == [b.num_rows for b in batches[i + 1:]]
        assert rows(rest) == rows(batches[i + 1:])
    assert read_all(source, offsets[-1])[0] == [] if offsets else True
    return everything


# ---------------------------------------------------------------------------- in memory


def test_table_source_slices_and_replays() -> None:
    t = zipf_events(1_000, 50)
    src = TableSource(t, batch_size=128)
    got = assert_replayable(src)
    assert got == t.to_pylist()
    batches, offsets = read_all(src)
    assert [b.num_rows for b in batches] == [128] * 7 + [104]
    assert offsets[:2] == [128, 256] and offsets[-1] == 1_000


@pytest.mark.parametrize("data", [
    pa.record_batch({"k": [1, 2, 3]}),
    [pa.record_batch({"k": [1]}), pa.record_batch({"k": [2, 3]})],
    {"k": [1, 2, 3]},
    pa.chunked_array([[1], [2, 3]]),
])
def test_table_source_accepts_arrow_shapes(data: Any) -> None:
    if isinstance(data, pa.ChunkedArray):
        with pytest.raises(TypeError, match="TableSource data must be"):
            TableSource(data)
        return
    src = TableSource(data, batch_size=2)
    assert rows(read_all(src)[0]) == [{"k": 1}, {"k": 2}, {"k": 3}]
    assert rows(read_all(pickle.loads(pickle.dumps(src)))[0]) == rows(read_all(src)[0])


def test_table_source_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="use ListSource"):
        TableSource([{"k": 1}])
    with pytest.raises(ValueError, match="batch_size"):
        TableSource({"k": [1]}, batch_size=0)
    with pytest.raises(ValueError, match="past the end"):
        TableSource({"k": [1]}).open(5)
    with pytest.raises(ValueError, match="non-negative int"):
        TableSource({"k": [1]}).open({"file": 0})


def test_list_source() -> None:
    recs = [{"user": f"u{i % 3}", "v": i} for i in range(10)]
    assert assert_replayable(ListSource(recs, batch_size=4)) == recs
    schema = pa.schema([("user", pa.string()), ("v", pa.int32())])
    assert read_all(ListSource(recs, schema=schema))[0][0].schema == schema
    with pytest.raises(ValueError, match="schema="):
        ListSource([])
    with pytest.raises(TypeError, match="list of dicts"):
        ListSource("abc")  # type: ignore[arg-type]


def test_generator_source() -> None:
    def fn(i: int) -> pa.RecordBatch | None:
        return pa.record_batch({"i": [i, i]}) if i < 5 else None

    assert assert_replayable(GeneratorSource(fn)) == [{"i": i} for i in range(5) for _ in "ab"]
    assert len(read_all(GeneratorSource(fn, limit=3))[0]) == 3
    table_fn = GeneratorSource(lambda i: pa.table({"i": [i]}), limit=2)
    assert rows(read_all(table_fn)[0]) == [{"i": 0}, {"i": 1}]
    with pytest.raises(TypeError, match="return a pyarrow RecordBatch"):
        GeneratorSource(lambda i: [1, 2]).open().read()  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="callable"):
        GeneratorSource(42)  # type: ignore[arg-type]


def test_testing_source_markers() -> None:
    src = TestingSource([{"k": 1}, {"k": 2}, ABORT, {"k": 3}, EOF, {"k": 4}], batch_size=10)
    r = src.open()
    assert r.read().to_pylist() == [{"k": 1}, {"k": 2}]
    with pytest.raises(TestingAbort, match="item 2"):
        r.read()
    r = src.open(r.offset)  # a resumed run reads past the ABORT it already fired
    assert r.read().to_pylist() == [{"k": 3}]
    with pytest.raises(StopSource):
        r.read()
    assert r.offset == 5
    assert src.open(r.offset).read().to_pylist() == [{"k": 4}]


# ---------------------------------------------------------------------------- parquet


@pytest.fixture
def parquet_dir(tmp_path: Path) -> tuple[Path, pa.Table]:
    t = zipf_events(3_000, 100, seed=3)
    parts = []
    for d, day in enumerate(["2024-01-01", "2024-01-02"]):
        for f in range(3):
            part = t.slice((d * 3 + f) * 500, 500)
            path = tmp_path / "events" / f"day={day}" / f"part-{f}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(part, path, row_group_size=128)
            parts.append(part.append_column("day", pa.array([day] * 500)))
    return tmp_path / "events", pa.concat_tables(parts)


def test_parquet_directory_with_partitions_replays(parquet_dir: tuple[Path, pa.Table]) -> None:
    path, expected = parquet_dir
    src = ParquetSource(path, batch_size=100)
    got = assert_replayable(src)
    assert got == [{**r, "day": r["day"]} for r in expected.to_pylist()]
    batches, offsets = read_all(src)
    assert max(b.num_rows for b in batches) <= 100
    assert offsets[-1]["rows"] == 3_000 and (offsets[-1]["file"], offsets[-1]["row"]) == (5, 500)


def test_parquet_seek_at_random_offsets(parquet_dir: tuple[Path, pa.Table]) -> None:
    path, expected = parquet_dir
    rng = random.Random(7)
    files = sorted(str(p) for p in path.rglob("*.parquet"))
    for _ in range(25):
        f = rng.randrange(6)
        row = rng.randrange(500)
        offset = {"file": f, "name": files[f], "row": row, "rows": f * 500 + row}
        rest, _ = read_all(ParquetSource(path, batch_size=rng.choice([7, 64, 1000])), offset)
        assert rows(rest) == expected.slice(f * 500 + row).to_pylist()


def test_parquet_file_glob_and_columns(parquet_dir: tuple[Path, pa.Table]) -> None:
    path, expected = parquet_dir
    one = sorted(path.rglob("*.parquet"))[0]
    assert rows(read_all(ParquetSource(one))[0]) == expected.slice(0, 500).drop_columns(
        ["day"]).to_pylist()
    glob = ParquetSource(str(path / "day=2024-01-02" / "*.parquet"), columns=("user", "t"))
    got = rows(read_all(glob)[0])
    assert got == expected.slice(1_500).select(["user", "t"]).to_pylist()
    with pytest.raises(FileNotFoundError, match="no files match"):
        ParquetSource(str(path / "*.csv")).open()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ParquetSource(path / "nope").open()


def test_parquet_changed_files_are_detected(parquet_dir: tuple[Path, pa.Table]) -> None:
    path, _ = parquet_dir
    src = ParquetSource(path, batch_size=500)
    _, offsets = read_all(src)
    first = sorted(path.rglob("*.parquet"))[0]
    first.rename(first.with_name("zzz.parquet"))  # file #0 is now another file
    with pytest.raises(ValueError, match="changed since the checkpoint"):
        src.open(offsets[2])


def test_parquet_new_files_are_read_on_resume(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table({"k": [1, 2]}), d / "a.parquet")
    src = ParquetSource(d)
    _, offsets = read_all(src)
    pq.write_table(pa.table({"k": [3]}), d / "b.parquet")
    assert rows(read_all(src, offsets[-1])[0]) == [{"k": 3}]


# ---------------------------------------------------------------------------- ray data


class _Batches:
    """A duck-typed dataset: ``iter_batches`` over a table (what RayDataSource calls)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.iterations = 0

    def iter_batches(self, *, batch_size: int, batch_format: str) -> Any:
        assert batch_format == "pyarrow"
        self.iterations += 1
        for i in range(0, self.table.num_rows, batch_size):
            yield self.table.slice(i, batch_size)  # a Table, as Ray Data yields


def test_ray_data_source_offsets_skip_rows() -> None:
    t = zipf_events(1_000, 40, seed=4)
    ds = _Batches(t)
    src = RayDataSource(ds, batch_size=300)
    assert assert_replayable(src) == t.to_pylist()
    assert rows(read_all(src, 450)[0]) == t.slice(450).to_pylist()  # inside a batch
    with pytest.raises(ValueError, match="past the end"):
        src.open(5_000)
    with pytest.raises(TypeError, match=r"ray\.data\.Dataset"):
        RayDataSource(t)


@pytest.mark.ray
def test_ray_data_source_replays(ray_session: Any) -> None:
    # ray.data needs pandas (ray[data]); this environment may not have it
    pytest.importorskip("pandas", reason="ray.data needs pandas (pip install 'ray[data]')")
    import ray.data

    t = zipf_events(2_000, 40, seed=4)
    ds = ray.data.from_arrow(t).map_batches(lambda b: b, batch_format="pyarrow")
    src = RayDataSource(ds, batch_size=300)
    batches, offsets = read_all(src)
    assert rows(batches) == t.to_pylist()
    assert offsets[-1] == 2_000
    for off in (offsets[0], offsets[3], 1_234):
        assert rows(read_all(src, off)[0]) == t.slice(off).to_pylist()
    with pytest.raises(ValueError, match="past the end"):
        src.open(5_000)
    with pytest.raises(TypeError, match=r"ray\.data\.Dataset"):
        RayDataSource(t)


@pytest.mark.ray
def test_pipeline_over_parquet_files(ray_session: Any, tmp_path: Path,
                                     parquet_dir: tuple[Path, pa.Table]) -> None:
    path, expected = parquet_dir
    p = raykv.Pipeline(
        source=ParquetSource(path, batch_size=256), stages=[Aggregate("day", {"qty": ["sum"]})],
        engine="memonly", checkpoint=str(tmp_path / "ckpt"), epoch_every_batches=4,
        local_dir=str(tmp_path / "local"),
    )
    s = p.run()
    final = s.output_by_epoch[s.last_epoch].sort_by("day")
    model = expected.group_by("day").aggregate([("qty", "sum")]).sort_by("day")
    assert final["day"].equals(model["day"]) and final["qty_sum"].equals(model["qty_sum"])
    offsets = raykv.checkpointing.CheckpointStore(str(tmp_path / "ckpt")).read_epoch(
        s.last_epoch).offsets
    # every file is a split, each at its end
    split_ids = [sp.id for sp in ParquetSource(path).splits()]
    assert sorted(offsets["splits"]) == sorted(split_ids)
    assert sum(offsets["splits"].values()) == 3_000
