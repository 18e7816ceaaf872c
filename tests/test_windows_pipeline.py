"""Sliding and session windows in pipelines on the session Ray (2 shards), against models.

One reader (``source_parallelism=1``): each shard sees its keys' rows in table order, and
epoch ``e`` ends after batch ``2e`` (``epoch_every_batches=2``). The operators' watermark
is still each shard's own (issue 13 item 1 will bring the sources'), so the model runs
once per shard over the rows whose key the shard owns, with the same barriers; the
stage's output of each epoch must be the union of the shards' models, late rows dropped
alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import raykv
from raykv.keys import encode_keys
from raykv.operators import SessionWindow, SlidingWindow
from raykv.partitioning import Partitioning
from raykv.sources import TableSource
from tests.operators.test_session import SessionModel
from tests.operators.test_sliding import SlidingModel

pytestmark = pytest.mark.ray

N = 6_000
BATCH = 750  # 8 batches, 4 epochs
AGGS = {"v": ["sum", "count", "min", "max", "first", "last", "mean"]}


def table(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    t = np.arange(N, dtype=np.int64) * 3 + rng.integers(-40, 41, N)  # out of order
    v = rng.integers(-50, 50, N)
    return pa.table({"k": rng.integers(0, 40, N).astype(np.int64), "t": t,
                     "v": pa.array(v, pa.int64(), mask=rng.random(N) < 0.1)})


def expected(model_of: Any, data: pa.Table, shards: int) -> dict[int, list[dict[str, Any]]]:
    """Output rows per epoch: one model per shard over its keys, barriers every 2 batches."""
    owner = Partitioning(num_shards=shards).shard_of_keys(encode_keys(data.column("k"), "k"))
    models = [model_of() for _ in range(shards)]
    out: dict[int, list[dict[str, Any]]] = {}
    batches = data.to_batches(max_chunksize=BATCH)
    for e in range(len(batches) // 2):
        rows: list[dict[str, Any]] = []
        for i in (2 * e, 2 * e + 1):
            b = batches[i]
            mine = owner[i * BATCH: i * BATCH + b.num_rows]
            for s, m in enumerate(models):
                m.add(b.filter(pa.array(mine == s)))
        for m in models:
            rows += m.close()
        out[e + 1] = rows
    out[len(out) + 1] = [r for m in models for r in m.close(everything=True)]
    return out


def by_window(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    def norm(r: dict[str, Any]) -> tuple[Any, ...]:
        mean = r["v_mean"]
        return (r["window_start"], r["k"], r["window_end"], r["v_sum"], r["v_count"],
                r["v_min"], r["v_max"], r["v_first"], r["v_last"],
                None if mean is None else round(mean, 9))
    return sorted(map(norm, rows))


@pytest.mark.parametrize("kind", ["sliding", "session"])
def test_window_pipeline_matches_per_shard_models(ray_session: Any, tmp_path: Path,
                                                  kind: str) -> None:
    data = table(seed=7 if kind == "sliding" else 8)
    if kind == "sliding":
        op: Any = SlidingWindow("k", "t", 60, 15, AGGS, allowed_lateness=20)
        want = expected(lambda: SlidingModel(60, 15, 20), data, 2)
    else:
        op = SessionWindow("k", "t", 100, AGGS, allowed_lateness=20)
        want = expected(lambda: SessionModel(100, 20), data, 2)
    summary = raykv.Pipeline(
        source=TableSource(data, batch_size=BATCH), stages=[op], num_shards=2,
        engine="hybridlog", epoch_every_batches=2, checkpoint=str(tmp_path / "ckpt"),
        local_dir=str(tmp_path / "local"), source_parallelism=1,
    ).run()
    got = {e: by_window(t.to_pylist()) for e, t in summary.output_by_epoch.items()}
    want_rows = {e: by_window(rows) for e, rows in want.items() if rows}
    assert got == want_rows
    assert sum(len(r) for r in want_rows.values()) > 100
    assert len(got) >= 3  # windows closed at barriers, not only at finish
