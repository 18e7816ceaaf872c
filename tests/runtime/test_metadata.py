"""``raykv.runtime.metadata``: typed epoch metadata reads and writes the JSON raykv writes.

``WRITTEN`` is an epoch's metadata as ``Pipeline.run`` has written it since version 1
(two stages, one rebalanced, load tracked, after a rollback); a real run's is checked too.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from raykv.checkpointing.manifests import normalize_json
from raykv.partitioning import HASH
from raykv.runtime.metadata import (
    METADATA_VERSION,
    EpochMetadata,
    ShardLoad,
    StageMetadata,
    decode_operator,
    encode_operator,
    find_stage,
    read_metadata,
)

STAGE0: dict[str, Any] = {
    "name": "agg", "key": "user", "operator": "Aggregate", "operator_config": "b64==",
    "engine": "lsm", "engine_params": {"memtable_bytes": 1024}, "num_shards": 2,
    "generation": 1,
    "partitioning": {"num_key_groups": 8, "num_shards": 2, "hash": HASH,
                     "moved": [[3, 0]]},
    "shards": ["agg-0of2-g1", "agg-1of2-g1"],
}
WRITTEN: dict[str, Any] = {
    "raykv": 1, "num_key_groups": 8, "final": False, "rows_total": 1200, "parent": 4,
    "abandoned": [[5, 7]],
    "stages": [STAGE0, {**STAGE0, "name": "map", "operator": "StatefulMap", "engine_params": {},
                        "generation": 0, "partitioning": {"num_key_groups": 8, "num_shards": 1,
                                                          "hash": HASH},
                        "num_shards": 1, "shards": ["map-0of1-g0"]}],
    "source": {"type": "TableSource", "rows": 5000},
    "sink": {"type": "MemorySink"},
    "load": {"agg": {"agg-0of2-g1": {"updates": 10, "updates_total": 30,
                                     "hot_keys": [["k1", 4]], "write_amplification": 1.25,
                                     "cpu_seconds": 0.0123}}},
}


def test_version_2_is_written_and_version_1_still_read() -> None:
    """Version 2 moved the offsets to one per split; the metadata dict itself is alike."""
    assert METADATA_VERSION == 2 and WRITTEN["raykv"] == 1
    assert EpochMetadata.from_dict(WRITTEN).version == 1
    assert EpochMetadata.from_dict({**WRITTEN, "raykv": 2}).version == 2
    with pytest.raises(ValueError, match="not written by a raykv pipeline"):
        EpochMetadata.from_dict({**WRITTEN, "raykv": 3})


@pytest.mark.parametrize("drop", [(), ("load",), ("load", "abandoned_empty", "parent_none")])
def test_round_trips_both_ways(drop: tuple[str, ...]) -> None:
    d = copy.deepcopy(WRITTEN)
    if "load" in drop:
        del d["load"]
    if "abandoned_empty" in drop:
        d["abandoned"] = []
    if "parent_none" in drop:
        d["parent"] = None
    d = normalize_json(d, "epoch metadata")  # what the store writes and reads back
    meta = EpochMetadata.from_dict(d)
    assert meta.to_dict() == d
    assert json.dumps(meta.to_dict(), sort_keys=True) == json.dumps(d, sort_keys=True)
    assert EpochMetadata.from_dict(meta.to_dict()) == meta


def test_typed_fields() -> None:
    meta = EpochMetadata.from_dict(WRITTEN)
    assert meta.version == 1 and meta.parent == 4 and meta.abandoned == ((5, 7),)
    assert meta.abandoned_lists == [[5, 7]]
    assert meta.stage_names() == ["agg", "map"]
    st = meta.stages[0]
    assert st.shards == ("agg-0of2-g1", "agg-1of2-g1") and st.generation == 1
    assert st.layout(8).owners[3] == 0 and st.layout(8).num_shards == 2
    assert meta.load is not None
    assert meta.load["agg"]["agg-0of2-g1"] == ShardLoad(10, 30, [["k1", 4]], 1.25, 0.0123)


def test_older_metadata_reads_with_defaults() -> None:
    old = copy.deepcopy(WRITTEN)
    for k in ("rows_total", "abandoned", "load"):
        del old[k]
    for st in old["stages"]:
        del st["partitioning"], st["operator_config"], st["engine_params"]
    meta = EpochMetadata.from_dict(old)
    assert meta.rows_total == 0 and meta.abandoned == () and meta.load is None
    stage = meta.stages[0]
    assert stage.partitioning is None and stage.operator_config is None
    assert stage.engine_params == {}
    assert stage.layout(8).num_shards == 2 and not stage.layout(8).moved
    assert "partitioning" not in stage.to_dict() and "operator_config" not in stage.to_dict()


def test_metadata_no_pipeline_wrote_is_rejected() -> None:
    for d in ({"engine": "lsm"}, {**WRITTEN, "raykv": 3}, {"raykv": 1, "stages": None}):
        assert read_metadata(d) is None
        with pytest.raises(ValueError, match="not written by a raykv pipeline"):
            EpochMetadata.from_dict(d)
    assert read_metadata(WRITTEN) == EpochMetadata.from_dict(WRITTEN)


def test_find_stage_by_name_or_index() -> None:
    meta = EpochMetadata.from_dict(WRITTEN)
    assert find_stage(meta, "map").name == "map"
    assert find_stage(meta, "0").name == "agg"
    with pytest.raises(ValueError, match="no stage 'x' in this epoch; its stages: 0=agg, 1=map"):
        find_stage(meta, "x")


def test_operator_config_round_trips() -> None:
    from raykv.operators import Aggregate

    op = Aggregate(key="user", aggs={"amount": ["sum"]})
    stage = StageMetadata.from_dict({**STAGE0, "operator_config": encode_operator(op)})
    back = decode_operator(stage)
    assert type(back) is Aggregate and back.key == "user"
    with pytest.raises(ValueError, match="carries no operator config"):
        decode_operator(StageMetadata.from_dict({**STAGE0, "operator_config": None}))


def test_a_real_run_writes_what_the_types_read(ray_session: Any, tmp_path: Path) -> None:
    import raykv
    from raykv.checkpointing import CheckpointStore

    table = pa.table({"user": [f"u{i % 7}" for i in range(200)], "amount": list(range(200))})
    ckpt = f"file://{tmp_path / 'ckpt'}"
    raykv.Pipeline(
        source=raykv.sources.TableSource(table, batch_size=50),
        stages=[raykv.operators.Aggregate(key="user", aggs={"amount": ["sum"]})],
        checkpoint=ckpt, num_shards=2, epoch_every_batches=2, hot_keys=4,
        local_dir=str(tmp_path / "local"),
    ).run()
    store = CheckpointStore(ckpt)
    for e in store.epochs():
        d = store.read_epoch(e).metadata
        meta = EpochMetadata.from_dict(d)
        assert meta.to_dict() == d
        assert EpochMetadata.from_dict(meta.to_dict()) == meta
    assert meta.final and meta.load is not None
