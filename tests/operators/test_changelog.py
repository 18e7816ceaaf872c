"""Changelogs between stages (``raykv.operators.changelog``): an Aggregate's epoch output
with row kinds, consumed by a second Aggregate that retracts, against pyarrow models of
the same computation over the whole input, with random epoch boundaries."""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raykv
from raykv.engines import MemOnly
from raykv.operators import Aggregate, Reduce, StatefulMap, TumblingWindow
from raykv.operators.changelog import CHANGE, DELETE, INSERT, UPDATE_AFTER, UPDATE_BEFORE
from raykv.sources import TableSource


def run_two(first: Aggregate, second: Aggregate, batches: list[pa.RecordBatch],
            cuts: set[int]) -> tuple[pa.Table | None, list[pa.RecordBatch]]:
    """Feed ``batches`` through ``first`` -> changelog -> ``second``; epochs end after the
    batch indices in ``cuts``. Returns ``second``'s final values and the changelogs."""
    with MemOnly(tempfile.mkdtemp()) as s1, MemOnly(tempfile.mkdtemp()) as s2:
        a, b = first.build(s1), second.build(s2)
        a.keep_before_images = True
        logs = []
        epoch = 0
        for i, batch in enumerate(batches):
            a.process(batch)
            if i in cuts or i == len(batches) - 1:
                epoch += 1
                log = a.changelog(epoch)
                if log is not None:
                    logs.append(log)
                    b.process(log)
                b.on_barrier(epoch)
        final = b.finish()
        return (None if final is None else pa.Table.from_batches([final])), logs


def events(n: int, users: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"user": rng.integers(0, users, n), "amount": rng.integers(-5, 50, n),
                     "country": rng.choice(["de", "fr", "it"], n)})


def as_dict(t: pa.Table | None, key: str, cols: list[str]) -> dict[Any, tuple[Any, ...]]:
    if t is None:
        return {}
    return {r[key]: tuple(r[c] for c in cols) for r in t.to_pylist()}


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 400), users=st.integers(1, 30), batch=st.integers(1, 60),
       seed=st.integers(0, 2**31), cut_every=st.integers(1, 5))
def test_aggregate_of_aggregate_and_histogram_of_counts(n: int, users: int, batch: int,
                                                        seed: int, cut_every: int) -> None:
    t = events(n, users, seed)
    batches = t.to_batches(max_chunksize=batch)
    cuts = set(range(0, len(batches), cut_every))
    per_user = t.group_by("user").aggregate([("amount", "sum"), ("amount", "count")])
    # total of per-user sums (same key): equals the plain sum per user
    got, logs = run_two(Aggregate("user", {"amount": ["sum", "count"]}),
                        Aggregate("user", {"amount_sum": ["sum", "count", "mean"]}),
                        batches, cuts)
    want = {r["user"]: (r["amount_sum"], 1, float(r["amount_sum"]))
            for r in per_user.to_pylist()}
    assert as_dict(got, "user", ["amount_sum_sum", "amount_sum_count", "amount_sum_mean"]) \
        == want
    kinds = pa.concat_tables([pa.Table.from_batches([x]) for x in logs])[CHANGE].to_pylist()
    assert set(kinds) <= {INSERT, UPDATE_BEFORE, UPDATE_AFTER}
    assert kinds.count(UPDATE_BEFORE) == kinds.count(UPDATE_AFTER)
    # histogram: how many users have n events (re-keyed on the count)
    got, _ = run_two(Aggregate("user", {"amount": ["count"]}),
                     Aggregate("amount_count", {"user": ["count"]}), batches, cuts)
    hist = per_user.group_by("amount_count").aggregate([("user", "count")])
    assert as_dict(got, "amount_count", ["user_count"]) == as_dict(
        hist, "amount_count", ["user_count"])


def test_a_group_whose_rows_are_all_retracted_is_deleted_and_tombstoned() -> None:
    # user 1 moves from 1 event to 2: the histogram's bucket 1 empties
    b1 = pa.record_batch({"user": [1], "amount": [5]})
    b2 = pa.record_batch({"user": [1], "amount": [7]})
    with MemOnly(tempfile.mkdtemp()) as s1, MemOnly(tempfile.mkdtemp()) as s2:
        a = Aggregate("user", {"amount": ["count"]}).build(s1)
        b = Aggregate("amount_count", {"user": ["count"]}).build(s2)
        a.keep_before_images = True
        a.process(b1)
        b.process(a.changelog(1))
        assert b.on_barrier(1).to_pydict() == {"amount_count": [1], "user_count": [1]}
        a.process(b2)
        log = a.changelog(2)
        assert log.to_pydict() == {"user": [1, 1], "amount_count": [1, 2],
                                   CHANGE: [UPDATE_BEFORE, UPDATE_AFTER]}
        b.process(log)
        # bucket 1 is gone: its tombstone (count 0) and bucket 2's new value
        assert b.on_barrier(2).to_pydict() == {"amount_count": [1, 2], "user_count": [0, 1]}
        assert b.finish().to_pydict() == {"amount_count": [2], "user_count": [1]}
        # and as a changelog for a third stage: bucket 1 deleted
        b.keep_before_images = True
        b.process(pa.record_batch({"user": [1], "amount_count": [2],
                                   CHANGE: pa.array([DELETE], pa.int8())}))
        assert b.changelog(3).to_pydict() == {"amount_count": [2], "user_count": [1],
                                              CHANGE: [DELETE]}


def test_stages_that_cannot_retract_are_refused_when_the_pipeline_is_built() -> None:
    src = TableSource({"user": [1], "amount": [1], "t": [0]})
    first = Aggregate("user", {"amount": ["sum"]})
    for second, why in [
        (Aggregate("user", {"amount_sum": ["last", "max"]}), "last cannot be retracted: "
         "first and last mean the first and last value by arrival"),
        (Aggregate("user", {"amount_sum": ["first", "sum"]}), "first cannot be retracted"),
        (Reduce("user", max, "amount_sum"), "cannot retract"),
        (TumblingWindow("user", "t", 10, {"amount_sum": ["sum"]}), "cannot retract"),
    ]:
        with pytest.raises(ValueError, match=why) as info:
            raykv.Pipeline(source=src, stages=[first, second])
        assert "stage 'Aggregate0' (Aggregate)" in str(info.value)
        assert f"stage '{type(second).__name__}1'" in str(info.value)

    # what can consume it: a retracting Aggregate, a StatefulMap (it sees the kinds)
    raykv.Pipeline(source=src, stages=[first, Aggregate("user", {"amount_sum": "mean"})])
    raykv.Pipeline(source=src, stages=[first, Aggregate("user", {"amount_sum": ["min", "max"]})])
    raykv.Pipeline(source=src, stages=[first, StatefulMap("user", lambda s, r: (s, r))])


def _seen(state: Any, row: dict[str, Any]) -> tuple[Any, Any]:
    return None, {"kind": row[CHANGE], "sum": row["amount_sum"]}


def test_a_stateful_map_sees_the_row_kinds() -> None:
    with MemOnly(tempfile.mkdtemp()) as s1, MemOnly(tempfile.mkdtemp()) as s2:
        a = Aggregate("user", {"amount": ["sum"]}).build(s1)
        m = StatefulMap("user", _seen).build(s2)
        a.keep_before_images = True
        for epoch, amount in ((1, 5), (2, 7)):
            a.process(pa.record_batch({"user": [1], "amount": [amount]}))
            m.process(a.changelog(epoch))
        assert m.on_barrier(2).to_pydict() == {
            "user": [1, 1, 1], "kind": [INSERT, UPDATE_BEFORE, UPDATE_AFTER],
            "sum": [5, 5, 12]}


def test_a_histogram_of_reduced_values() -> None:
    """Reduce(user: max amount) -> users per max (re-keyed): the old max is retracted."""
    t = events(3_000, 200, 11)
    with MemOnly(tempfile.mkdtemp()) as s1, MemOnly(tempfile.mkdtemp()) as s2:
        a = Reduce("user", max, "amount").build(s1)
        b = Aggregate("amount", {"user": ["count"]}).build(s2)
        a.keep_before_images = True
        for epoch, batch in enumerate(t.to_batches(max_chunksize=250), start=1):
            a.process(batch)
            log = a.changelog(epoch)
            if log is not None:
                b.process(log)
        got = pa.Table.from_batches([b.finish()])
    per_user = t.group_by("user").aggregate([("amount", "max")])
    want = per_user.group_by("amount_max").aggregate([("user", "count")])
    assert as_dict(got, "amount", ["user_count"]) == as_dict(want, "amount_max", ["user_count"])


def test_a_bad_row_kind_is_refused() -> None:
    with MemOnly(tempfile.mkdtemp()) as store:
        b = Aggregate("k", {"v": ["sum"]}).build(store)
        bad = pa.record_batch({"k": [1], "v": [1], CHANGE: pa.array([7], pa.int8())})
        with pytest.raises(ValueError, match="row kind 7"):
            b.process(bad)
