"""rowsort.RowCodec round trips random groups of rows of every orderable type."""

from __future__ import annotations

import decimal
import random
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from raykv.operators.rowsort import RowCodec, rank_in_runs, stored_schema

TYPES: list[tuple[pa.DataType, Any]] = [
    (pa.int8(), lambda r: r.randrange(-128, 128)),
    (pa.int64(), lambda r: r.randrange(-(1 << 63), 1 << 63)),
    (pa.uint16(), lambda r: r.randrange(1 << 16)),
    (pa.float32(), lambda r: r.choice([0.5, -2.0, float("inf")])),
    (pa.float64(), lambda r: r.uniform(-1e9, 1e9)),
    (pa.bool_(), lambda r: r.random() < 0.5),
    (pa.string(), lambda r: r.choice(["", "a", "é€", "x" * 40, "y" * 300])),
    (pa.large_string(), lambda r: r.choice(["", "bb"])),
    (pa.binary(), lambda r: bytes(r.randrange(256) for _ in range(r.randrange(5)))),
    (pa.large_binary(), lambda r: b"\x00\xff"),
    (pa.binary(3), lambda r: bytes([r.randrange(256)] * 3)),
    (pa.decimal128(10, 2), lambda r: decimal.Decimal(r.randrange(-10**6, 10**6)) / 100),
    (pa.timestamp("ms"), lambda r: r.randrange(-10**12, 10**12)),
    (pa.date32(), lambda r: r.randrange(-1000, 30000)),
    (pa.duration("us"), lambda r: r.randrange(10**9)),
    (pa.null(), lambda r: None),
]


@pytest.mark.parametrize("seed", range(8))
def test_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    types = rng.sample(TYPES, rng.randrange(1, len(TYPES) + 1))
    schema = pa.schema([pa.field(f"c{i}", t) for i, (t, _) in enumerate(types)])
    m = rng.randrange(1, 60)
    cols = [pa.array([None if rng.random() < 0.2 else gen(rng) for _ in range(m + 3)], t)
            for t, gen in types]
    table = pa.Table.from_arrays(cols, schema=schema).slice(2, m)  # offsets != 0
    cuts = sorted(rng.sample(range(1, m), min(m - 1, rng.randrange(0, 6)))) if m > 1 else []
    bounds = [0, *cuts, m]
    codec = RowCodec(schema)
    values = codec.encode(table, bounds)
    assert len(values) == len(bounds) - 1
    back, counts = codec.decode(values)
    assert counts.tolist() == np.diff(bounds).tolist()
    back.validate(full=True)
    assert back.to_pylist() == table.to_pylist()
    some = [values[i] for i in range(0, len(values), 2)]  # any subset, any order
    part, _ = codec.decode(some[::-1])
    want = [table.slice(bounds[i], bounds[i + 1] - bounds[i]).to_pylist()
            for i in range(0, len(values), 2)][::-1]
    assert part.to_pylist() == [r for g in want for r in g]


def test_rank_in_runs_and_schema() -> None:
    assert rank_in_runs(np.array([3, 3, 5, 7, 7, 7])).tolist() == [0, 1, 0, 0, 1, 2]
    assert rank_in_runs(np.array([], dtype=np.int64)).tolist() == []
    s = pa.schema([("k", pa.int64()), ("d", pa.dictionary(pa.int32(), pa.string()))])
    assert stored_schema(s, "k", "op") == pa.schema([("d", pa.string())])
    with pytest.raises(TypeError, match="'x' is struct"):
        stored_schema(pa.schema([("x", pa.struct([("a", pa.int8())]))]), "k", "op")
