"""TopN against a plain-Python model: random rows, barriers, watermarks, restarts, bad input."""

from __future__ import annotations

import datetime as dt
import doctest
import functools
import math
import pickle
import random
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raykv.operators.topn as topn_module
from raykv.engines import ENGINES, MemOnly
from raykv.keys import encode_keys
from raykv.operators import TopN
from raykv.operators.base import META_KEY, WATERMARK_KEY
from tests.operators.helpers import open_engine_or_skip, reopen, state


def _cmp_values(a: Any, b: Any, descending: bool = False) -> int:
    """Arrow's order: nulls last, NaN after every number (both directions)."""
    rank_a = 2 if a is None else 1 if isinstance(a, float) and math.isnan(a) else 0
    rank_b = 2 if b is None else 1 if isinstance(b, float) and math.isnan(b) else 0
    if rank_a or rank_b:
        return (rank_a > rank_b) - (rank_a < rank_b)
    c = (a > b) - (a < b)
    return -c if descending else c


class TopNModel:
    """Plain-Python top-n per key and window, row by row (the reference)."""

    def __init__(self, size: int, slide: int, n: int, by: str, descending: bool,
                 lateness: int = 0, columns: tuple[str, ...] = ("t", "v", "s")) -> None:
        self.size, self.slide, self.n, self.by = size, slide, n, by
        self.descending, self.lateness = descending, lateness
        self.columns = columns
        self.max_seen: int | None = None
        self.external: int | None = None
        self.windows: dict[tuple[Any, int], list[dict[str, Any]]] = {}
        self.late = 0
        self.late_rows: list[dict[str, Any]] = []

    def watermark(self) -> int | None:
        if self.external is not None:
            return self.external - self.lateness
        return None if self.max_seen is None else self.max_seen - self.lateness

    def add(self, batch: pa.RecordBatch) -> None:
        for row in batch.to_pylist():
            t = row["t"]
            if self.external is None:
                self.max_seen = t if self.max_seen is None else max(self.max_seen, t)
            wm = self.watermark()
            first = ((t - self.size) // self.slide + 1) * self.slide
            if wm is not None and first + self.size <= wm:
                self.late += 1
                self.late_rows.append(row)
                continue
            s = first
            while s <= t:
                self.windows.setdefault((row["k"], s), []).append(row)
                s += self.slide

    def _cmp(self, a: dict[str, Any], b: dict[str, Any]) -> int:
        c = _cmp_values(a[self.by], b[self.by], self.descending)
        for col in self.columns:
            if c or col == self.by:
                continue
            c = _cmp_values(a[col], b[col])
        return c

    def close(self, everything: bool = False) -> list[dict[str, Any]]:
        wm = self.watermark()
        if wm is None and not everything:
            return []
        done = sorted((w for w in self.windows if everything or w[1] + self.size <= wm),
                      key=lambda w: (w[1], w[0]))
        out = []
        for k, s in done:
            rows = sorted(self.windows.pop((k, s)), key=functools.cmp_to_key(self._cmp))
            for rank, r in enumerate(rows[: self.n], 1):
                out.append({"k": k, "window_start": s, "window_end": s + self.size,
                            "rank": rank, **{c: r[c] for c in self.columns}})
        return out


def events(rng: random.Random, n: int, t0: int, keys: list[Any], jitter: int,
           floats: bool = False) -> pa.RecordBatch:
    def v() -> Any:
        if rng.random() < 0.1:
            return None
        if floats:
            return float("nan") if rng.random() < 0.05 else float(rng.randrange(-5, 5))
        return rng.randrange(-5, 5)  # many ties

    return pa.record_batch({
        "k": [rng.choice(keys) for _ in range(n)],
        "t": pa.array([t0 + i * 3 + rng.randrange(-jitter, jitter + 1) for i in range(n)],
                      pa.int64()),
        "v": pa.array([v() for _ in range(n)], pa.float64() if floats else pa.int64()),
        "s": pa.array([None if rng.random() < 0.2 else rng.choice("abc") for _ in range(n)],
                      pa.string()),
    })


def normalized(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows as tuples, NaN made comparable."""
    def fix(x: Any) -> Any:
        return "NaN" if isinstance(x, float) and math.isnan(x) else x
    return [tuple(fix(x) for x in r.values()) for r in rows]


def out_rows(out: pa.RecordBatch | None) -> list[tuple[Any, ...]]:
    return [] if out is None else normalized(out.to_pylist())


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize(("size", "slide", "n", "descending", "lateness", "floats", "keys"), [
    (60, 60, 1, True, 0, False, [-5, 0, 7]),
    (60, 60, 3, False, 20, True, ["a", "", "bb", "é"]),
    (60, 20, 2, True, 10, False, [1, 2, 3, 4]),
    (50, 15, 4, False, 0, True, ["x", "y"]),
])
def test_matches_python_model(tmp_path: Path, engine: str, size: int, slide: int, n: int,
                              descending: bool, lateness: int, floats: bool,
                              keys: list[Any]) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    op = TopN("k", "v", n, "t", size, None if slide == size else slide,
              descending=descending, allowed_lateness=lateness, late="emit",
              max_buffered_rows=rng.choice([0, 30, 1_000_000]))
    make = lambda p: open_engine_or_skip(engine, p)  # noqa: E731
    store = make(tmp_path / "s")
    logic = op.build(store)
    model = TopNModel(size, slide, n, "v", descending, lateness)
    t = -200  # negative times: windows floor
    restart = rng.randrange(1, 6)
    for e in range(1, 7):
        late_before = len(model.late_rows)
        for _ in range(rng.randrange(1, 4)):
            b = events(rng, rng.randrange(1, 40), t, keys, jitter=40, floats=floats)
            t += 3 * b.num_rows
            logic.process(b)
            model.add(b)
        assert out_rows(logic.on_barrier(e)) == normalized(model.close()), f"epoch {e}"
        assert logic.late_events == model.late
        late = logic.late_rows()
        assert normalized(late.to_pylist() if late else []) == \
            normalized(model.late_rows[late_before:])
        if e == restart:
            store, logic = reopen(store, make, op)
    assert out_rows(logic.finish()) == normalized(model.close(everything=True))
    assert {k for k, _ in store.items()} <= {META_KEY, WATERMARK_KEY}
    store.close()


def test_external_watermark_and_timestamps(tmp_path: Path) -> None:
    rng = random.Random(5)
    op = TopN("k", "v", 2, "t", dt.timedelta(seconds=1), dt.timedelta(milliseconds=500))
    logic = op.build(MemOnly(tmp_path))
    model = TopNModel(1000, 500, 2, "v", True)
    logic.advance_watermark(None)
    model.external = -(1 << 62)
    t = 0
    for e in range(1, 6):
        b = events(rng, 50, t, [1, 2], jitter=100)
        t += 150
        ts = b.set_column(1, "t", b.column("t").view(pa.timestamp("ms")))
        logic.process(ts)
        model.add(b)
        logic.advance_watermark(t - 200)
        model.external = t - 200
        got = logic.on_barrier(e)
        want = model.close()
        rows = [] if got is None else got.to_pylist()
        for r in rows:
            for c in ("window_start", "window_end", "t"):
                r[c] = int(pa.scalar(r[c], pa.timestamp("ms")).cast(pa.int64()).as_py())
        assert normalized(rows) == normalized(want)
        assert logic.late_events == model.late


TIE_SCHEMA = pa.schema([("k", pa.int64()), ("t", pa.int64()), ("v", pa.int64()),
                        ("s", pa.string())])


def test_tie_break_ignores_arrival_order(tmp_path: Path) -> None:
    rows = [{"k": 1, "t": i, "v": 5, "s": s} for i, s in enumerate("cab")] + \
        [{"k": 1, "t": 9, "v": 5, "s": None}]
    outs = []
    for i, perm in enumerate([rows, rows[::-1], rows[1:] + rows[:1]]):
        logic = TopN("k", "v", 2, "t", 100).build(MemOnly(tmp_path / str(i)))
        for r in perm:
            logic.process(pa.RecordBatch.from_pylist([r], schema=TIE_SCHEMA))
        outs.append(logic.finish().to_pylist())  # type: ignore[union-attr]
    assert outs[0] == outs[1] == outs[2]
    assert [r["t"] for r in outs[0]] == [0, 1]  # ties: by t ascending


def test_dictionary_columns_and_export(tmp_path: Path) -> None:
    logic = TopN("k", "v", 1, "t", 10).build(MemOnly(tmp_path))
    b = pa.record_batch({"k": pa.array(["a", "b", "a"]).dictionary_encode(),
                         "t": pa.array([1, 2, 3], pa.int64()),
                         "v": pa.array([1, 2, 3], pa.int64()),
                         "tag": pa.array(["x", "y", "z"]).dictionary_encode()})
    logic.process(b)
    exported = logic.export_state()
    assert exported is not None
    assert exported.to_pydict()["tag"] == ["z", "y"]
    out = logic.finish()
    assert out is not None and out.schema.field("tag").type == pa.string()
    assert out.to_pydict()["k"] == ["a", "b"]


# ---------------------------------------------------------------------------- bad input


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        TopN("k", "v", 0, "t", 10)
    with pytest.raises(ValueError, match="differ from the key"):
        TopN("k", "k", 1, "t", 10)
    with pytest.raises(ValueError, match="slide must be <= size"):
        TopN("k", "v", 1, "t", 10, 20)
    with pytest.raises(ValueError, match="size must be > 0"):
        TopN("k", "v", 1, "t", 0)
    with pytest.raises(ValueError, match="late must be"):
        TopN("k", "v", 1, "t", 10, late="keep")
    with pytest.raises(TypeError, match="descending must be a bool"):
        TopN("k", "v", 1, "t", 10, descending="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_buffered_rows"):
        TopN("k", "v", 1, "t", 10, max_buffered_rows=-1)
    with pytest.raises(TypeError, match="by must be"):
        TopN("k", None, 1, "t", 10)  # type: ignore[arg-type]


def test_bad_input(tmp_path: Path) -> None:
    store = MemOnly(tmp_path)
    logic = TopN("k", "v", 1, "t", 10).build(store)
    with pytest.raises(ValueError, match="column 'v' is missing"):
        logic.process(pa.record_batch({"k": [1], "t": [1]}))
    with pytest.raises(TypeError, match="time column 't' must be a signed integer"):
        logic.process(pa.record_batch({"k": [1], "t": [1.0], "v": [1]}))
    with pytest.raises(TypeError, match="column 'l' is list"):
        logic.process(pa.record_batch({"k": [1], "t": [1], "v": [1], "l": [[1]]}))
    with pytest.raises(ValueError, match="clash"):
        logic.process(pa.record_batch({"k": [1], "t": [1], "v": [1], "rank": [1]}))
    with pytest.raises(ValueError, match="size must be <= 2"):
        TopN("k", "v", 1, "t", (1 << 62) + 1).build(MemOnly(tmp_path / "x")).process(
            pa.record_batch({"k": [1], "t": [1], "v": [1]}))
    assert state(store) == {}
    logic.process(pa.record_batch({"k": [1], "t": [1], "v": [1]}))
    before = state(store)
    with pytest.raises(ValueError, match="null at row 1"):
        logic.process(pa.record_batch({"k": [1, 2], "t": [1, None], "v": [1, 2]}))
    with pytest.raises(ValueError, match="another schema"):
        logic.process(pa.record_batch({"k": [1], "t": [1], "v": ["x"]}))
    assert state(store) == before
    with pytest.raises(ValueError, match="state layout"):
        TopN("k", "v", 2, "t", 10).build(store)


def test_pickle_and_doctest() -> None:
    op = TopN("k", "v", 3, "t", dt.timedelta(seconds=10), descending=False)
    assert pickle.loads(pickle.dumps(op)) == op
    assert doctest.testmod(topn_module).failed == 0


# ---------------------------------------------------------------------------- rescale


def rescale_run(op: Any, make: Any, path: Path, epochs: list[tuple[list[pa.RecordBatch], int]],
                at: int) -> list[dict[str, Any]]:
    """Run ``epochs`` (batches, then the external watermark and a barrier) on one shard
    until epoch ``at``, copy its state by ``routing_key`` into two shards (metadata
    merged with ``merge_metadata``) and run the rest on both, each fed its keys' rows.
    Returns every output row."""
    store = make(path / "old")
    logic = op.build(store)
    logic.advance_watermark(None)
    out: list[dict[str, Any]] = []
    for e, (batches, wm) in enumerate(epochs[:at], 1):
        for b in batches:
            logic.process(b)
        logic.advance_watermark(wm)
        out += rows_of(logic.on_barrier(e))
    owner = lambda enc: zlib.crc32(enc) % 2  # noqa: E731
    stores = [make(path / f"new{i}") for i in range(2)]
    meta: dict[bytes, list[bytes]] = {}
    for k, v in store.items():
        r = op.routing_key(k)
        if r is None:
            meta.setdefault(k, []).append(v)
        else:
            stores[owner(r)].set(k, v)
    for k, vs in meta.items():
        for s in stores:
            s.set(k, op.merge_metadata(k, vs))
    logics = [op.build(s) for s in stores]
    for e, (batches, wm) in enumerate(epochs[at:], at + 1):
        for b in batches:
            shard = [owner(k) for k in encode_keys(b.column("k"), "k")]
            for i, lg in enumerate(logics):
                part = b.filter(pa.array([s == i for s in shard]))
                if part.num_rows:
                    lg.process(part)
        for lg in logics:
            lg.advance_watermark(wm)
            out += rows_of(lg.on_barrier(e))
    for lg in logics:
        out += rows_of(lg.finish())
    return out


def rows_of(out: pa.RecordBatch | None) -> list[dict[str, Any]]:
    return [] if out is None else out.to_pylist()


def sort_rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(normalized(rows), key=repr)


@pytest.mark.parametrize("engine", ["memonly", "lsm"])
def test_rescale_gives_the_same_rows(tmp_path: Path, engine: str) -> None:
    rng = random.Random(11)
    epochs = []
    t = 0
    for _ in range(6):
        batches = [events(rng, 30, t + 90 * i, ["a", "b", "c", "d", ""], jitter=20)
                   for i in range(2)]
        t += 180
        epochs.append((batches, t - 60))
    op = TopN("k", "v", 2, "t", 100, 50)
    make = lambda p: open_engine_or_skip(engine, p)  # noqa: E731
    whole = rescale_run(op, make, tmp_path / "a", epochs, at=len(epochs))
    split = rescale_run(op, make, tmp_path / "b", epochs, at=3)
    assert sort_rows(split) == sort_rows(whole)
    assert len(whole) > 50


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    size=st.integers(1, 12),
    slide_div=st.integers(1, 3),
    lateness=st.integers(0, 6),
    descending=st.booleans(),
    buffered=st.sampled_from([0, 1_000_000]),
    epochs=st.lists(st.lists(st.lists(st.tuples(st.integers(0, 2), st.integers(-10, 40),
                                                st.one_of(st.none(), st.integers(0, 3))),
                                      min_size=1, max_size=6),
                             max_size=3), min_size=1, max_size=4),
)
def test_hypothesis_against_model(n: int, size: int, slide_div: int, lateness: int,
                                  descending: bool, buffered: int,
                                  epochs: list[list[list[tuple[int, int, int | None]]]]) -> None:
    """Any batches, epochs, window shapes and orders: the logic's rows are the model's."""
    import tempfile

    slide = max(1, size // slide_div)
    op = TopN("k", "v", n, "t", size, slide, descending=descending,
              allowed_lateness=lateness, max_buffered_rows=buffered)
    with MemOnly(tempfile.mkdtemp()) as store:
        logic = op.build(store)
        model = TopNModel(size, slide, n, "v", descending, lateness)
        for e, batches in enumerate(epochs, 1):
            for rows_ in batches:
                b = pa.RecordBatch.from_pylist(
                    [{"k": k, "t": t, "v": v, "s": None} for k, t, v in rows_], schema=TIE_SCHEMA)
                logic.process(b)
                model.add(b)
            assert out_rows(logic.on_barrier(e)) == normalized(model.close())
            assert logic.late_events == model.late
        assert out_rows(logic.finish()) == normalized(model.close(everything=True))


def test_watermark_before_any_row(tmp_path: Path) -> None:
    """A shard that gets watermarks but no rows (external mode) emits nothing, no error."""
    logic = TopN("k", "v", 1, "t", 10).build(MemOnly(tmp_path))
    logic.advance_watermark(None)
    logic.advance_watermark(100)
    assert logic.on_barrier(1) is None and logic.finish() is None
