"""Exactness: the expected output of a failure-free run (plain pyarrow), read-back, diff."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from raykv.tools.drill.config import AGGS, KEY, OUT_COLUMNS, DrillConfig

if TYPE_CHECKING:

    pass


# ---------------------------------------------------------------------------- checks


def expected_epochs(cfg: DrillConfig) -> dict[int, pa.Table]:
    """The output of a failure-free run, per epoch, from a plain pyarrow group_by.

    Epoch ``e < final`` holds the changelog: the running aggregates of the users that had
    events in ``e``; the final epoch holds every user's final aggregates.
    """
    table = cfg.generator().table()
    rows = cfg.batch_size * cfg.epoch_every
    aggs = [(col, op) for col, ops in AGGS.items() for op in ops]
    out: dict[int, pa.Table] = {}

    def model(t: pa.Table) -> pa.Table:
        g = pa.TableGroupBy(t, KEY, use_threads=False).aggregate(aggs)
        return g.select(OUT_COLUMNS).sort_by(KEY)

    for e in range(1, cfg.final_epoch):
        m = model(table.slice(0, rows * e))
        recent = pc.unique(table.slice(rows * (e - 1), rows)[KEY])
        out[e] = m.filter(pc.is_in(m[KEY], value_set=recent))
    out[cfg.final_epoch] = model(table)
    return out


def read_published(path: str | Path, storage_options: dict[str, Any] | None = None
                   ) -> dict[int, pa.Table]:
    """Read a ParquetSink directory back with pyarrow: epoch -> its output (sorted by key)."""
    import fsspec
    import pyarrow.parquet as pq

    from raykv.sinks import parse_part_file_name

    fs, root = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
    parts: dict[int, list[pa.Table]] = {}
    for p in sorted(fs.ls(root, detail=False)):
        parsed = parse_part_file_name(p.rstrip("/").rsplit("/", 1)[-1])
        if parsed is None:
            continue
        with fs.open(p, "rb") as f:
            # no thread pool: see ParquetSink.read (an abort at the process's exit)
            parts.setdefault(parsed[0], []).append(pq.read_table(f, use_threads=False))
    return {e: pa.concat_tables(ts).sort_by(KEY) for e, ts in sorted(parts.items())}


def diff_outputs(got: dict[int, pa.Table], want: dict[int, pa.Table], what: str) -> list[str]:
    """Describe every difference between two epoch -> output mappings (empty: equal)."""
    problems: list[str] = []
    if sorted(got) != sorted(want):
        problems.append(f"{what}: epochs {sorted(got)}, expected {sorted(want)}")
    for e in sorted(set(got) & set(want)):
        g = got[e].select(OUT_COLUMNS).sort_by(KEY)
        w = want[e].select(OUT_COLUMNS).sort_by(KEY)
        if g.num_rows != w.num_rows:
            problems.append(f"{what}: epoch {e} has {g.num_rows} rows, expected {w.num_rows}")
            continue
        for col in OUT_COLUMNS:
            if not g[col].equals(w[col]):
                bad = pc.index(pc.not_equal(g[col], w[col]), True).as_py()
                problems.append(
                    f"{what}: epoch {e} column {col!r} differs at user "
                    f"{g[KEY][bad].as_py()}: {g[col][bad].as_py()} != {w[col][bad].as_py()}"
                )
                break
    return problems
