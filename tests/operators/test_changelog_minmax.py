"""min and max over a changelog (issue 17): an ``Aggregate`` fed by another stage's
updates keeps per-group multisets and stays exact through updates and deletes, in two-
and three-stage chains with re-keying, against pyarrow models over the whole input, with
random epoch boundaries and mid-epoch folds; its state survives a reopen of the engine."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.engines import HybridLog, MemOnly
from raykv.operators import Aggregate
from raykv.operators.changelog import CHANGE, DELETE

PER_USER = {"amount": ["sum", "count"], "price": ["mean", "min"], "name": ["max"],
            "country": ["last"]}
PER_COUNTRY = {"amount_sum": ["min", "max", "sum"], "user": ["min", "max", "count"],
               "name_max": ["min", "max"], "price_mean": ["max"], "price_min": ["min"]}
PER_SIZE = {"amount_sum_max": ["min", "max", "count"], "name_max_min": ["max"]}


def events(n: int, users: int, countries: int, seed: int) -> pa.Table:
    """Events whose users move between countries; prices with nulls (integral floats,
    so float sums are exact in any order)."""
    rng = np.random.default_rng(seed)
    price = rng.integers(0, 40, n).astype(np.float64)
    return pa.table({
        "user": rng.integers(0, users, n),
        "amount": rng.integers(-20, 50, n),
        "price": pa.array(price, mask=rng.random(n) < 0.2),
        "name": pa.array([f"n{x}" for x in rng.integers(0, 30, n)]),
        "country": pa.array([f"c{x}" for x in rng.integers(0, countries, n)]),
    })


def run_chain(stages: Sequence[Aggregate], batches: Sequence[pa.RecordBatch],
              cuts: set[int]) -> tuple[pa.Table | None, int]:
    """Feed ``batches`` through ``stages``, each stage's changelog into the next; epochs
    end after the batch indices in ``cuts``. Returns the last stage's final values and
    how many -D rows passed between stages."""
    stores = [MemOnly(tempfile.mkdtemp()) for _ in stages]
    logics = [op.build(s) for op, s in zip(stages, stores, strict=True)]
    for logic in logics[:-1]:
        logic.keep_before_images = True
    deletes = 0
    for i, batch in enumerate(batches):
        logics[0].process(batch)
        if i not in cuts and i != len(batches) - 1:
            continue
        epoch = i + 1
        for up, down in itertools.pairwise(logics):
            log = up.changelog(epoch)
            if log is not None:
                deletes += log[CHANGE].to_pylist().count(DELETE)
                down.process(log)
        logics[-1].on_barrier(epoch)
    final = logics[-1].finish()
    for s in stores:
        s.close()
    return (None if final is None else pa.Table.from_batches([final])), deletes


def model(t: pa.Table, levels: int) -> pa.Table:
    """The same chain computed by pyarrow over the whole input."""
    per_user = t.group_by("user", use_threads=False).aggregate(
        [(c, op) for c, ops in PER_USER.items() for op in ops])
    per_country = per_user.group_by("country_last").aggregate(
        [(c, op) for c, ops in PER_COUNTRY.items() for op in ops])
    if levels == 2:
        return per_country
    return per_country.group_by("user_count").aggregate(
        [(c, op) for c, ops in PER_SIZE.items() for op in ops])


def rows(t: pa.Table | None, key: str) -> dict[Any, dict[str, Any]]:
    if t is None:
        return {}
    return {r.pop(key): r for r in t.to_pylist()}


def stages(levels: int, max_buffered_rows: int) -> list[Aggregate]:
    out = [Aggregate("user", PER_USER),
           Aggregate("country_last", PER_COUNTRY, max_buffered_rows=max_buffered_rows)]
    if levels == 3:
        out.append(Aggregate("user_count", PER_SIZE, max_buffered_rows=max_buffered_rows))
    return out


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), users=st.integers(1, 40), countries=st.integers(1, 6),
       batch=st.integers(1, 80), seed=st.integers(0, 2**31),
       cut_every=st.integers(1, 4), levels=st.sampled_from([2, 3]),
       max_buffered_rows=st.sampled_from([0, 7, 1_000_000]))
def test_min_max_of_rekeyed_changelogs_match_pyarrow(
        n: int, users: int, countries: int, batch: int, seed: int, cut_every: int,
        levels: int, max_buffered_rows: int) -> None:
    t = events(n, users, countries, seed)
    batches = t.to_batches(max_chunksize=batch)
    rng = np.random.default_rng(seed)
    cuts = {i for i in range(len(batches)) if rng.random() < 1 / cut_every}
    got, _ = run_chain(stages(levels, max_buffered_rows), batches, cuts)
    key = "country_last" if levels == 2 else "user_count"
    assert rows(got, key) == rows(model(t, levels), key)


def test_retracting_the_extreme_falls_back_to_the_next_value_and_deletes_empty_groups() -> None:
    """Users move between two countries one epoch at a time: each epoch retracts the
    current max or min of a country; a country left without users is deleted (-D)."""
    moves = [("de", 10), ("de", 20), ("de", 30), ("fr", 5)]  # users 0..3: country, amount
    first = [pa.record_batch({"user": [u], "amount": [a], "country": [c]})
             for u, (c, a) in enumerate(moves)]
    later = [(2, "fr"), (1, "fr"), (0, "fr"), (3, "de")]  # de's max leaves first
    t = pa.concat_tables([pa.Table.from_batches(first)] + [
        pa.table({"user": [u], "amount": [0], "country": [c]}) for u, c in later])
    ops = [Aggregate("user", {"amount": ["sum"], "country": ["last"]}),
           Aggregate("country_last", {"amount_sum": ["min", "max"], "user": ["count"]})]
    with MemOnly(tempfile.mkdtemp()) as s1, MemOnly(tempfile.mkdtemp()) as s2:
        a, b = ops[0].build(s1), ops[1].build(s2)
        a.keep_before_images = b.keep_before_images = True
        seen = []
        for epoch, batch in enumerate(t.to_batches(max_chunksize=1), start=1):
            a.process(batch)
            log = a.changelog(epoch)
            if log is not None:
                b.process(log)
            out = b.changelog(epoch)
            seen.append(out.to_pylist() if out is not None else [])
    de = [[r for r in epoch if r["country_last"] == "de" and r[CHANGE] in (0, 2, 3)]
          for epoch in seen]
    # de's (min, max) after each epoch: (10,10) (10,20) (10,30) - (10,20) (10,10) gone (0)
    assert [(r["amount_sum_min"], r["amount_sum_max"], r[CHANGE]) for e in de for r in e] == [
        (10, 10, 0), (10, 20, 2), (10, 30, 2), (10, 20, 2), (10, 10, 2), (10, 10, 3),
        (5, 5, 0)]


@pytest.mark.parametrize("strings", [False, True])
def test_the_multisets_survive_a_reopen_of_the_engine(tmp_path: Any, strings: bool) -> None:
    """Seal, close, reopen (what a restore does): the multisets are in the engine, so a
    retraction after the reopen still finds the next extreme."""
    col = "name" if strings else "amount"
    val = (lambda x: f"v{x:03d}") if strings else (lambda x: x)
    op = Aggregate("g", {col: ["min", "max", "count"]})

    def log(kinds: list[int], values: list[int]) -> pa.RecordBatch:
        return pa.record_batch({"g": [1] * len(kinds), col: [val(v) for v in values],
                                CHANGE: pa.array(kinds, pa.int8())})

    with HybridLog(str(tmp_path)) as store:
        logic = op.build(store)
        logic.process(log([0, 0, 0, 0], [5, 9, 7, 9]))
        assert logic.on_barrier(1).to_pylist()[0][f"{col}_max"] == val(9)
        store.seal()
    with HybridLog(str(tmp_path)) as store:
        logic = op.build(store)
        logic.process(log([1], [9]))  # one of the two 9s retracted: max stays 9
        assert logic.on_barrier(2).to_pylist()[0][f"{col}_max"] == val(9)
        logic.process(log([3, 1], [9, 5]))  # the other 9 and the min
        assert logic.on_barrier(3).to_pylist() == [
            {"g": 1, f"{col}_min": val(7), f"{col}_max": val(7), f"{col}_count": 1}]
        assert logic.export_state().to_pylist() == logic.finish().to_pylist()


def test_a_three_stage_chain_with_deletes_at_every_level() -> None:
    """Few users over many countries: countries and user-count buckets empty and are
    deleted (-D between stages) while min/max stay equal to the model's."""
    t = events(600, 4, 6, 1)
    got, deletes = run_chain(stages(3, 7), t.to_batches(max_chunksize=10), set(range(60)))
    assert deletes > 10
    assert rows(got, "user_count") == rows(model(t, 3), "user_count")


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), users=st.integers(1, 12), countries=st.integers(1, 8),
       batch=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_the_upsert_view_replayed_epoch_by_epoch_matches_the_model_of_the_prefix(
        n: int, users: int, countries: int, batch: int, seed: int) -> None:
    """What a sink gets without ``changelog=True``: per epoch the new row of each changed
    country and a tombstone (count 0) of each country that emptied. Applying those rows
    by key after every epoch gives the model of the input read so far."""
    t = events(n, users, countries, seed)
    ops = stages(2, 1_000_000)
    with MemOnly(tempfile.mkdtemp()) as s1, MemOnly(tempfile.mkdtemp()) as s2:
        a, b = ops[0].build(s1), ops[1].build(s2)
        a.keep_before_images = True
        table: dict[Any, dict[str, Any]] = {}
        done = 0
        for epoch, chunk in enumerate(t.to_batches(max_chunksize=batch), start=1):
            a.process(chunk)
            done += chunk.num_rows
            log = a.changelog(epoch)
            if log is not None:
                b.process(log)
            view = b.on_barrier(epoch)
            for key, row in rows(None if view is None else pa.Table.from_batches([view]),
                                 "country_last").items():
                if row["user_count"] == 0:
                    del table[key]  # a tombstone deletes a country that was there
                else:
                    table[key] = row
            assert table == rows(model(t.slice(0, done), 2), "country_last")


def test_rekeying_sends_the_update_before_to_the_old_keys_shard() -> None:
    """A user moving from one country to another: the changelog split by the next stage's
    key (what a shard does before sending, ``split_batch``) puts the -U row at the shard
    of the old country and the +U row at the new one's; each shard's Aggregate retracts
    or adds there, so the old country loses the user (-D: it had no other) and the new
    one gains them, min/max included."""
    from raykv.operators.changelog import INSERT, UPDATE_AFTER, UPDATE_BEFORE
    from raykv.partitioning import Partitioning, split_batch

    part = Partitioning(num_shards=4)
    countries = [f"c{i}" for i in range(40)]
    shard = {c: int(part.shard_of_keys([c.encode()])[0]) for c in countries}
    old, new = next((a, b) for a in countries for b in countries if shard[a] != shard[b])
    first = Aggregate("user", {"country": ["last"]})
    second = Aggregate("country_last", {"user": ["count", "min", "max"]})
    stores = [MemOnly(tempfile.mkdtemp()) for _ in range(5)]
    up = first.build(stores[0])
    up.keep_before_images = True
    downs = [second.build(s) for s in stores[1:]]
    for d in downs:
        d.keep_before_images = True
    seen: list[dict[str, Any]] = []
    for epoch, (user, country) in enumerate([(7, old), (9, new), (7, new)], start=1):
        up.process(pa.record_batch({"user": [user], "country": [country]}))
        for s, rows_of_shard in split_batch(up.changelog(epoch), "country_last",
                                            part).items():
            seen += [{"shard": s, **r} for r in rows_of_shard.to_pylist()]
            downs[s].process(rows_of_shard)
        out = {r["country_last"]: r for d in downs
               if (log := d.changelog(epoch)) is not None for r in log.to_pylist()}
    moved = [r for r in seen if r["user"] == 7]
    assert [(r["shard"], r["country_last"], r[CHANGE]) for r in moved] == [
        (shard[old], old, INSERT), (shard[old], old, UPDATE_BEFORE),
        (shard[new], new, UPDATE_AFTER)]
    assert out[old][CHANGE] == DELETE
    assert (out[new]["user_count"], out[new]["user_min"], out[new]["user_max"]) == (2, 7, 9)
    for s in stores:
        s.close()
