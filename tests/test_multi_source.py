"""Several sources in one pipeline and stages of two inputs, through the real runtime.

The two-input operator here (``SideCount``: rows per key from each side) keeps its state
in the engine, so restore, local recovery and rescaling apply to it as to any stage. The
model is a plain count over both inputs; kills are real ``SIGKILL``s.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import raykv
from raykv.checkpointing import CheckpointStore
from raykv.engines.base import KVStore
from raykv.keys import decode_keys, encode_keys
from raykv.operators import StatefulMap
from raykv.operators.base import OperatorLogic, TwoInputOperator
from raykv.sinks import CollectSink
from raykv.sources import TableSource


@dataclass(frozen=True)
class SideCount(TwoInputOperator):
    """Per key: rows seen on the left and on the right (an updating stream)."""

    emits_updates = True

    def build(self, store: KVStore) -> OperatorLogic:
        return _SideCountLogic(self, store)


class _SideCountLogic(OperatorLogic):
    def __init__(self, op: SideCount, store: KVStore) -> None:
        self.keys = op.input_keys()
        self.store = store
        self.changed: set[bytes] = set()

    def process(self, batch: pa.RecordBatch, side: int = 0) -> None:  # type: ignore[override]
        keys = encode_keys(batch.column(self.keys[side]), self.keys[side])
        counts = Counter(keys)
        uniq = list(counts)
        old = self.store.multi_get(uniq)
        new = []
        for k, v in zip(uniq, old, strict=True):
            pair = json.loads(v) if v else [0, 0]
            pair[side] += counts[k]
            new.append((k, json.dumps(pair).encode()))
        self.store.multi_set(new)
        self.changed.update(uniq)

    def _rows(self, keys: list[bytes]) -> pa.RecordBatch | None:
        if not keys:
            return None
        pairs = [json.loads(v) for v in self.store.multi_get(keys)]
        return pa.record_batch({
            "key": decode_keys(keys, pa.int64()),
            "left": pa.array([p[0] for p in pairs], pa.int64()),
            "right": pa.array([p[1] for p in pairs], pa.int64()),
        })

    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        keys, self.changed = sorted(self.changed), set()
        return self._rows(keys)

    def finish(self) -> pa.RecordBatch | None:
        return self._rows(sorted(k for k, _ in self.store.items()))

    def output_schema(self) -> pa.Schema | None:
        return None


def _tables(seed: int, n: int = 2400) -> tuple[pa.Table, pa.Table]:
    rng = random.Random(seed)
    left = pa.table({"user": [rng.randrange(60) for _ in range(n)],
                     "v": list(range(n))})
    right = pa.table({"uid": [rng.randrange(80) for _ in range(n)],
                      "w": list(range(n))})
    return left, right


def _model(left: pa.Table, right: pa.Table) -> dict[int, tuple[int, int]]:
    lc, rc = Counter(left["user"].to_pylist()), Counter(right["uid"].to_pylist())
    return {k: (lc.get(k, 0), rc.get(k, 0)) for k in set(lc) | set(rc)}


def _final(summary: raykv.RunSummary) -> dict[int, tuple[int, int]]:
    out = summary.output
    assert out is not None
    last = max(out["_epoch"].to_pylist()) if "_epoch" in out.column_names else None
    if last is not None:
        out = out.filter(pa.compute.equal(out["_epoch"], last))
    return {k: (a, b) for k, a, b in zip(out["key"].to_pylist(), out["left"].to_pylist(),
                                         out["right"].to_pylist(), strict=True)}


def _tag(state: Any, row: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return state, {"v": row["v"]}


def _pipeline(tmp_path: Path, left: pa.Table, right: pa.Table, **kw: Any) -> raykv.Pipeline:
    kw.setdefault("sink", CollectSink())
    kw.setdefault("num_shards", 2)
    return raykv.Pipeline(
        sources={"clicks": TableSource(left, batch_size=200),
                 "users": TableSource(right, batch_size=150)},
        stages=[StatefulMap("user", _tag, name="tagged", input="clicks"),
                SideCount("key", left="tagged", right="users", left_key="user",
                          right_key="uid", name="both")],
        checkpoint=str(tmp_path / "ckpt"), local_dir=str(tmp_path / "local"),
        epoch_every_batches=3, source_parallelism={"clicks": 2, "users": 1}, **kw)


@pytest.mark.ray
@pytest.mark.parametrize("victim", ["both", "reader-users"])
def test_a_sigkill_in_a_two_input_pipeline_replays_exactly(ray_session: Any, tmp_path: Path,
                                                            victim: str) -> None:
    """Two sources meet in a two-input stage; a SIGKILL of one of its shards or of a reader
    after epoch 2 changes nothing in the final counts, and every epoch holds both sources'
    offsets (this run is also the test of the plain two-source wiring)."""
    import ray

    left, right = _tables(2)
    killed: list[int] = []

    def kill(ev: raykv.ProgressEvent) -> None:
        if not killed and ev.kind == "committed" and ev.epoch == 2:
            name = sorted(n for n in ev.actors if n.startswith(victim))[0]
            killed.append(ray.get(ev.actors[name].ping.remote()))
            os.kill(killed[0], signal.SIGKILL)

    s = _pipeline(tmp_path, left, right, on_progress=kill, max_pending_epochs=1).run()
    assert killed and s.restarts >= 1
    assert _final(s) == _model(left, right)
    with CheckpointStore(str(tmp_path / "ckpt")) as store:
        ep = store.read_epoch(store.latest_epoch())
    splits = ep.offsets["splits"]
    assert {sid.split(":", 1)[0] for sid in splits} == {"clicks", "users"}
    assert set(ep.metadata["source"]["sources"]) == {"clicks", "users"}


@pytest.mark.ray
def test_a_stopped_two_source_run_resumes_with_other_shard_counts(ray_session: Any,
                                                                   tmp_path: Path) -> None:
    # 4,500 rows (30 batches of users): input is left after the stop at epoch 3 (with
    # 2,400 the readers, 4 epochs ahead, had read it all and the resume had no output)
    left, right = _tables(3, 4500)
    p = _pipeline(tmp_path, left, right)

    def stop(ev: raykv.ProgressEvent) -> None:
        if ev.kind == "committed" and ev.epoch == 3:
            p.stop()

    p.on_progress = stop
    first = p.run()
    assert first.output is not None
    again = _pipeline(tmp_path, left, right, num_shards=3)
    assert _final(again.run(resume=True)) == _model(left, right)


def test_bad_wiring_is_refused_before_anything_runs() -> None:
    left, right = _tables(4, 10)
    src = {"clicks": TableSource(left), "users": TableSource(right)}

    def make(stages: list[Any], sources: Any = src) -> None:
        raykv.Pipeline(sources=sources, stages=stages)

    with pytest.raises(ValueError, match="neither a source"):
        make([SideCount("k", left="clicks", right="nowhere")])
    with pytest.raises(ValueError, match="name both a source and a stage"):
        make([SideCount("k", left="clicks", right="users", name="users")])
    with pytest.raises(ValueError, match="name the one it reads with input="):
        make([StatefulMap("user", _tag)])
    with pytest.raises(ValueError, match="feeds no stage"):
        make([StatefulMap("user", _tag, input="clicks")])
    with pytest.raises(ValueError, match="read by 2 inputs"):
        make([StatefulMap("user", _tag, input="clicks", name="a"),
              SideCount("k", left="a", right="users", name="b"),
              SideCount("k", left="clicks", right="b")])
    with pytest.raises(ValueError, match="comes at or after it"):
        make([SideCount("k", left="later", right="users"),
              StatefulMap("user", _tag, input="clicks", name="later")])
    with pytest.raises(ValueError, match="not both"):
        raykv.Pipeline(source=src["clicks"], sources=src,
                       stages=[StatefulMap("user", _tag)])
    with pytest.raises(ValueError, match="left and right are both"):
        SideCount("k", left="clicks", right="clicks")
    with pytest.raises(TypeError, match=r"must be a raykv\.sources\.Source"):
        make([SideCount("k", left="clicks", right="users")],
             {"clicks": src["clicks"], "users": left})


def test_join_keys_and_columns_are_checked_against_the_sources_schemas(
        tmp_path: Path) -> None:
    left, right = _tables(5, 10)
    strings = right.set_column(0, "uid", pa.array([str(v) for v in right["uid"].to_pylist()]))

    def run(r: pa.Table, **kw: Any) -> None:
        raykv.Pipeline(sources={"clicks": TableSource(left), "users": TableSource(r)},
                       stages=[SideCount("key", left="clicks", right="users",
                                         left_key="user", **kw)],
                       checkpoint=str(tmp_path / "never")).run()

    with pytest.raises(ValueError, match=r"clicks\.user \(int64\) with users\.uid \(string\)"):
        run(strings, right_key="uid")
    with pytest.raises(ValueError, match="reads column 'nope' of source 'users'"):
        run(right, right_key="nope")
    assert not (tmp_path / "never").exists()  # refused before anything ran
