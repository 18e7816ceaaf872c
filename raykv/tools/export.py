"""Export the state of one stage at a committed epoch as a Parquet file.

Steps: read the epoch manifest; find the stage (by name or index) in its metadata
(:class:`raykv.runtime.metadata.EpochMetadata`); for
every shard of the stage, restore its files into a temporary directory, open the engine,
rebuild the operator from the stored config and render every key's state
(``OperatorLogic.export_state``); write all rows, sorted by key, to
``<out>/<stage>-epoch<epoch>.parquet``. Nothing in the store is written.

The output is the same table the stage's ``finish()`` would emit (Aggregate, Reduce,
open windows with their current aggregates) or, for StatefulMap, each key's state as
JSON text; pandas, pyarrow and DuckDB read it directly.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from raykv.engines import open_engine
from raykv.runtime.metadata import EpochMetadata, decode_operator, find_stage

if TYPE_CHECKING:
    from raykv.checkpointing import CheckpointStore


@dataclass(frozen=True)
class ExportResult:
    """What ``export_stage`` wrote."""

    stage: str
    rows: int
    path: Path


def export_stage(store: CheckpointStore, epoch: int, stage: str, out_dir: Path) -> ExportResult:
    """Write the state of ``stage`` at committed ``epoch`` of ``store`` to Parquet.

    Cost: downloads every file of the stage's shards once (into a temporary directory)
    and one ``items()`` pass per shard.
    """
    em = store.read_epoch(epoch)
    st = find_stage(EpochMetadata.from_dict(em.metadata), stage)
    op = decode_operator(st)
    batches: list[pa.RecordBatch] = []
    with tempfile.TemporaryDirectory(prefix="raykv-export-") as tmp:
        for i, shard in enumerate(st.shards):
            local = Path(tmp) / f"shard{i}"
            store.restore_shard(epoch, shard, local)
            engine = open_engine(st.engine, local, **st.engine_params)
            try:
                rows = op.build(engine).export_state()
            finally:
                engine.close()
            if rows is not None and rows.num_rows:
                batches.append(rows)
    table = pa.Table.from_batches(batches) if batches else pa.table({})
    if table.num_rows:
        table = table.sort_by(st.key) if st.key in table.column_names else table
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{st.name}-epoch{epoch}.parquet"
    pq.write_table(table, path)
    return ExportResult(stage=st.name, rows=table.num_rows, path=path)
