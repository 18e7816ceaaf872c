"""Export the state of one stage at a committed epoch as a Parquet file.

Steps: read the epoch manifest; find the stage (by name or index) in its metadata; for
every shard of the stage, restore its files into a temporary directory, open the engine,
rebuild the operator from the stored config and render every key's state
(``OperatorLogic.export_state``); write all rows, sorted by key, to
``<out>/<stage>-epoch<epoch>.parquet``. Nothing in the store is written.

The output is the same table the stage's ``finish()`` would emit (Aggregate, Reduce,
open windows with their current aggregates) or, for StatefulMap, each key's state as
JSON text; pandas, pyarrow and DuckDB read it directly.
"""

from __future__ import annotations

import base64
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from raykv.engines import open_engine

if TYPE_CHECKING:
    from raykv.checkpointing import CheckpointStore


@dataclass(frozen=True)
class ExportResult:
    """What ``export_stage`` wrote."""

    stage: str
    rows: int
    path: Path


def encode_operator(op: object) -> str:
    """Serialize an operator config for the epoch metadata (cloudpickle, base64)."""
    from ray import cloudpickle

    return base64.b64encode(cloudpickle.dumps(op)).decode()


def decode_operator(stage: dict[str, Any]) -> Any:
    """Rebuild the operator config stored by ``encode_operator``.

    Raises:
        ValueError: the epoch carries no operator config, or it cannot be unpickled here
            (e.g. a user function from a module that is not importable).
    """
    blob = stage.get("operator_config")
    if not blob:
        msg = (f"stage {stage.get('name')!r} carries no operator config (written by an older "
               "raykv); export needs a checkpoint written by raykv >= 0.1")
        raise ValueError(msg)
    try:
        return pickle.loads(base64.b64decode(blob))  # the checkpoint store is trusted
    except Exception as err:
        msg = (f"cannot rebuild the operator of stage {stage.get('name')!r}: {err}; run the "
               "export where the pipeline's code is importable")
        raise ValueError(msg) from err


def find_stage(metadata: dict[str, Any], stage: str) -> dict[str, Any]:
    """Return the stage entry named ``stage`` (or at index ``stage``) from epoch metadata."""
    stages = metadata.get("stages") or []
    for st in stages:
        if st.get("name") == stage:
            return dict(st)
    if stage.isdigit() and int(stage) < len(stages):
        return dict(stages[int(stage)])
    names = ", ".join(f"{i}={st.get('name')}" for i, st in enumerate(stages)) or "none"
    msg = f"no stage {stage!r} in this epoch; its stages: {names}"
    raise ValueError(msg)


def export_stage(store: CheckpointStore, epoch: int, stage: str, out_dir: Path) -> ExportResult:
    """Write the state of ``stage`` at committed ``epoch`` of ``store`` to Parquet.

    Cost: downloads every file of the stage's shards once (into a temporary directory)
    and one ``items()`` pass per shard.
    """
    em = store.read_epoch(epoch)
    st = find_stage(em.metadata, stage)
    op = decode_operator(st)
    batches: list[pa.RecordBatch] = []
    with tempfile.TemporaryDirectory(prefix="raykv-export-") as tmp:
        for i, shard in enumerate(st.get("shards", [])):
            local = Path(tmp) / f"shard{i}"
            store.restore_shard(epoch, shard, local)
            engine = open_engine(st["engine"], local, **(st.get("engine_params") or {}))
            try:
                rows = op.build(engine).export_state()
            finally:
                engine.close()
            if rows is not None and rows.num_rows:
                batches.append(rows)
    table = pa.Table.from_batches(batches) if batches else pa.table({})
    if table.num_rows:
        table = table.sort_by(st["key"]) if st.get("key") in table.column_names else table
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{st['name']}-epoch{epoch}.parquet"
    pq.write_table(table, path)
    return ExportResult(stage=str(st["name"]), rows=table.num_rows, path=path)
