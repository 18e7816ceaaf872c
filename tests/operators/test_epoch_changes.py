"""``EpochChanges`` (what an epoch's folds wrote) against a dict, and its memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.operators import Aggregate
from raykv.operators.epoch_changes import EpochChanges, as_lists
from raykv.operators.packed import pack

INT_KEY = st.integers(0, 40).map(lambda i: i.to_bytes(8, "big"))
ANY_KEY = st.one_of(INT_KEY, st.binary(min_size=1, max_size=9))


@st.composite
def folds(draw: st.DrawFn) -> list[tuple[list[bytes], list[bytes]]]:
    """Adds of distinct keys: mostly 8-byte keys with 16-byte values (compact), sometimes
    another key length, value size or a delete (``b""``), which switch to lists."""
    odd = draw(st.booleans())
    out = []
    for _ in range(draw(st.integers(0, 5))):
        keys = draw(st.lists(ANY_KEY if odd else INT_KEY, unique=True, max_size=30))
        value = st.sampled_from([b"", b"x" * 3, b"y" * 16]) if odd else st.binary(
            min_size=16, max_size=16)
        out.append((keys, [draw(value) for _ in keys]))
    return out


@settings(max_examples=300, deadline=None)
@given(folds(), st.integers(1, 7), st.lists(st.booleans(), min_size=5, max_size=5))
def test_sorted_chunks_are_the_latest_values_in_key_order(
        adds: list[tuple[list[bytes], list[bytes]]], rows: int, packed: list[bool]) -> None:
    """Adds as lists or, where they pack, packed (``add_packed``), in any mix."""
    changes = EpochChanges()
    model: dict[bytes, bytes] = {}
    for (keys, values), as_packed in zip(adds, packed, strict=False):
        p = pack(keys, values) if as_packed else None
        if p is not None:
            changes.add_packed(p)
        else:
            changes.add(keys, values)
        model.update(zip(keys, values, strict=True))
    assert bool(changes) == any(keys for keys, _ in adds)
    chunks = [as_lists(c) for c in changes.sorted_chunks(rows)]
    assert all(0 < len(k) == len(v) <= rows for k, v in chunks)
    got = [(k, v) for keys, values in chunks for k, v in zip(keys, values, strict=True)]
    assert got == sorted((k, v) for k, v in model.items() if v)
    assert not changes and list(changes.sorted_chunks(rows)) == []  # emptied


def test_an_epoch_of_int_keys_is_held_in_a_few_bytes_per_key() -> None:
    """200,000 changed 8-byte keys with 16-byte values over four folds: about 24 bytes per
    key held until the barrier (as bytes objects in lists: about 115)."""
    n = 200_000
    keys = [i.to_bytes(8, "big") for i in range(n)]
    values = [i.to_bytes(16, "little") for i in range(n)]
    changes = EpochChanges()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for lo in range(0, n, n // 4):
            changes.add(keys[lo:lo + n // 4], values[lo:lo + n // 4])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (held - base) / n < 30, f"{(held - base) / n:.0f} bytes per key"
    got = [k for chunk in changes.sorted_chunks(65_536) for k in as_lists(chunk)[0]]
    assert got == keys


def test_aggregate_epochs_of_several_folds_equal_a_group_by(tmp_path: Path) -> None:
    """Folds forced every batch (tiny byte bound), keys repeating across folds and epochs:
    each barrier emits every changed key once, in key order, with its running value."""
    from raykv.engines import MemOnly

    op = Aggregate("k", {"v": ["sum", "count"]}, max_buffered_bytes=1)
    logic = op.build(MemOnly(tmp_path))
    seen: list[pa.Table] = []
    for epoch in range(3):
        touched = set()
        for b in range(4):
            ks = [(i * 7 + b + epoch * 3) % 50 - 25 for i in range(40)]
            touched.update(ks)
            batch = pa.record_batch({"k": pa.array(ks, pa.int64()),
                                     "v": pa.array([1] * 40, pa.int64())})
            logic.process(batch)
            seen.append(pa.Table.from_batches([batch]))
        out = logic.on_barrier(epoch)
        model = pa.concat_tables(seen).group_by("k").aggregate(
            [("v", "sum"), ("v", "count")]).sort_by("k")
        model = model.filter(pc.is_in(model["k"], pa.array(sorted(touched))))
        assert out.column("k").to_pylist() == sorted(touched)
        assert out.column("v_sum").to_pylist() == model["v_sum"].to_pylist()
        assert out.column("v_count").to_pylist() == model["v_count"].to_pylist()


def test_packed_adds_of_another_value_size_switch_to_lists() -> None:
    """A packed add whose values have another size than the epoch's packed ones cannot
    join their rows: both are kept (as lists) and every key keeps its own value."""
    changes = EpochChanges()
    keys = [i.to_bytes(8, "big") for i in range(6)]
    first, second = pack(keys[:4], [b"a" * 16] * 4), pack(keys[2:], [b"b" * 3] * 4)
    assert first is not None and second is not None
    changes.add_packed(first)
    changes.add_packed(second)
    got = [p for c in changes.sorted_chunks(10) for p in zip(*as_lists(c), strict=True)]
    assert got == [(k, b"a" * 16) for k in keys[:2]] + [(k, b"b" * 3) for k in keys[2:]]
