"""NexmarkSource: events are a pure function of (seed, event id), whatever the reading."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.sources import NexmarkSource
from raykv.sources.nexmark import (
    DEFAULT_BASE_TIME,
    HOT_CHANNELS,
    KINDS,
    SCHEMAS,
    US_CITIES,
    US_STATES,
    kind_event_ids,
    kind_ordinal,
)


def _read(reader: object) -> pa.Table | None:
    batches = []
    while (b := reader.read()) is not None:  # type: ignore[attr-defined]
        assert b.num_rows > 0
        batches.append(b)
    return pa.Table.from_batches(batches) if batches else None


def _expected_split(whole: pa.Table, src: NexmarkSource, index: int) -> pa.Table:
    """The rows of split ``index``: its blocks' ordinal ranges of the whole stream."""
    assert src.events is not None
    parts, b = [], index
    while b * src.block_events < src.events:
        lo = kind_ordinal(src.kind, b * src.block_events)
        hi = kind_ordinal(src.kind, min((b + 1) * src.block_events, src.events))
        parts.append(whole.slice(lo, hi - lo))
        b += src.num_splits
    return pa.concat_tables(parts) if parts else whole.slice(0, 0)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(KINDS), events=st.integers(0, 3000),
       num_splits=st.integers(1, 4), block=st.integers(1, 2500),
       batch=st.integers(1, 700), batch2=st.integers(1, 700), stop=st.integers(0, 5),
       seed=st.integers(0, 2**40))
def test_same_events_whatever_the_splits_batches_and_offsets(
        kind: str, events: int, num_splits: int, block: int, batch: int, batch2: int,
        stop: int, seed: int) -> None:
    whole = NexmarkSource(kind, events=events, seed=seed, num_splits=1, batch_size=4096,
                          block_events=10_000).table()
    src = NexmarkSource(kind, events=events, seed=seed, num_splits=num_splits,
                        batch_size=batch, block_events=block)
    assert src.table().equals(whole)  # the whole-stream reader with small batches
    again = NexmarkSource(kind, events=events, seed=seed, num_splits=num_splits,
                          batch_size=batch2, block_events=block)
    total = 0
    sizes = sum(s.size or 0 for s in src.splits())  # estimates, for balancing readers
    assert sizes == pytest.approx(whole.num_rows, rel=0.05, abs=3 * num_splits)
    for split in src.splits():
        expected = _expected_split(whole, src, src.splits().index(split))
        # read `stop` batches, then reopen the split at its offset with another batch size
        reader = src.open_split(split)
        first = [b for b in (reader.read() for _ in range(stop)) if b is not None]
        rest = _read(again.open_split(split.id, reader.offset))
        got = pa.Table.from_batches(first + (rest.to_batches() if rest else []),
                                    schema=src.schema)
        assert got.equals(expected)
        total += got.num_rows
    assert total == whole.num_rows


def test_the_mix_and_the_columns() -> None:
    tables = {k: NexmarkSource(k, events=50_000, seed=3).table() for k in KINDS}
    assert {k: t.num_rows for k, t in tables.items()} == {
        "person": 1000, "auction": 3000, "bid": 46_000}
    for k, t in tables.items():
        assert t.schema == SCHEMAS[k]
        assert t.column("date_time").null_count == 0
    persons, auctions, bids = tables["person"], tables["auction"], tables["bid"]
    assert persons.column("id").to_pylist() == list(range(1000, 2000))
    assert auctions.column("id").to_pylist() == list(range(1000, 4000))
    assert set(persons.column("state").to_pylist()) == set(US_STATES)
    assert set(persons.column("city").to_pylist()) == set(US_CITIES)
    assert set(auctions.column("category").to_pylist()) == {10, 11, 12, 13, 14}
    cards = persons.column("credit_card").to_pylist()
    assert all(len(c) == 19 and c[4] == c[9] == c[14] == " " for c in cards)
    assert all(e.endswith(".com") and "@" in e for e in persons.column("email_address")
               .to_pylist())
    price = bids.column("price").to_numpy()
    assert price.min() >= 100 and price.max() <= 100_000_000
    reserve = auctions.column("reserve").to_numpy()
    assert (reserve > auctions.column("initial_bid").to_numpy()).all()
    channels = bids.column("channel").to_pylist()
    hot = sum(c in HOT_CHANNELS for c in channels) / len(channels)
    assert 0.47 < hot < 0.53  # 1/2 of bids on the 4 hot channels
    by_channel: dict[str, set[str]] = {}
    for c, u in zip(channels, bids.column("url").to_pylist(), strict=True):
        by_channel.setdefault(c, set()).add(u)
    assert all(len(u) == 1 for u in by_channel.values())  # one URL per channel
    def lengths(t: pa.Table, *cols: str) -> np.ndarray:
        return sum(pa.compute.binary_length(t.column(c)).to_numpy().astype(int) for c in cols)

    # the reference's accounting: its "current size" plus extra averages 200/500/100 bytes
    person = 8 + 19 + lengths(persons, "name", "email_address", "city", "state", "extra")
    auction = 48 + lengths(auctions, "item_name", "description", "extra")
    bid = 32 + lengths(bids, "extra")
    assert (person.mean(), auction.mean(), bid.mean()) == pytest.approx((200, 500, 100),
                                                                        rel=0.02)


def test_event_times_and_referential_rules() -> None:
    events, rate = 100_000, 10_000
    t = {k: NexmarkSource(k, events=events, seed=11, rate=rate).table() for k in KINDS}
    for kind, table in t.items():
        ids = kind_event_ids(kind, 0, table.num_rows)
        times = table.column("date_time").to_numpy()
        assert (times == DEFAULT_BASE_TIME + ids * 1000 // rate).all()
        assert (np.diff(times) >= 0).all()
    bids, auctions, persons = t["bid"], t["auction"], t["person"]
    bid_ids = kind_event_ids("bid", 0, bids.num_rows)
    last_auction = 1000 + np.array([kind_ordinal("auction", int(e)) for e in bid_ids]) - 1
    last_person = 1000 + np.array([kind_ordinal("person", int(e)) for e in bid_ids]) - 1
    auction, bidder = bids.column("auction").to_numpy(), bids.column("bidder").to_numpy()
    # a bid's auction: one of the last 100 auctions, or one of 10 not yet created (the
    # reference's lead); the hot auction (half the bids) always exists already
    assert (auction <= last_auction + 10).all()
    assert (auction >= np.maximum(last_auction - 100, 1000)).all()
    assert np.mean(auction <= last_auction) > 0.95
    assert (bidder <= last_person + 10).all() and (bidder >= 1000).all()
    assert np.mean(bidder <= last_person) > 0.97
    assert np.isin(auction, auctions.column("id").to_numpy()).mean() > 0.999
    assert np.isin(bidder, persons.column("id").to_numpy()).mean() > 0.999
    a_ids = kind_event_ids("auction", 0, auctions.num_rows)
    last_p = 1000 + np.array([kind_ordinal("person", int(e) + 1) for e in a_ids]) - 1
    seller = auctions.column("seller").to_numpy()
    assert (seller <= last_p + 10).all() and np.mean(seller <= last_p) > 0.9
    hot = np.mean(seller == (last_p - 1000) // 100 * 100 + 1000)
    assert 0.72 < hot < 0.78  # 3/4 of auctions by the hot seller
    created = auctions.column("date_time").to_numpy()
    expires = auctions.column("expires").to_numpy()
    horizon = 1666 * 1000 // rate  # the time to generate 100 more auctions
    assert (expires > created).all() and (expires - created <= 2 * horizon + 1).all()


def test_unbounded_source_is_the_bounded_prefix() -> None:
    src = NexmarkSource("bid", events=None, seed=5, num_splits=3, batch_size=1000,
                        block_events=700)
    bounded = NexmarkSource("bid", events=3 * 700 * 4, seed=5, num_splits=3,
                            batch_size=1000, block_events=700)
    assert not src.bounded and bounded.bounded
    for split in src.splits():
        assert split.size is None
        r = src.open_split(split)
        got = pa.Table.from_batches([r.read() for _ in range(2)])
        want = _read(bounded.open_split(split.id))
        assert want is not None and got.num_rows == 2000
        assert got.equals(want.slice(0, 2000))
    with pytest.raises(ValueError, match="bounded"):
        src.table()


def _digest(table: pa.Table) -> str:
    return hashlib.sha256(json.dumps(table.to_pylist()).encode()).hexdigest()[:16]


PINNED = {"person": "a61ce5d85cd8ede6", "auction": "87f8cea508733255", "bid": "73307600c21de691"}


def test_deterministic_across_processes_and_pinned() -> None:
    digests = {k: _digest(NexmarkSource(k, events=5000, seed=42).table()) for k in KINDS}
    code = ("from tests.test_nexmark_source import _digest; from raykv.sources import "
            "NexmarkSource as S; import json; print(json.dumps({k: _digest(S(k, events=5000,"
            " seed=42).table()) for k in ('person', 'auction', 'bid')}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert json.loads(out) == digests
    assert digests == PINNED  # a change of the rules (or of numpy's Philox) shows here
    other = {k: _digest(NexmarkSource(k, events=5000, seed=43).table()) for k in KINDS}
    assert all(other[k] != digests[k] for k in KINDS)


def test_pickle_and_describe() -> None:
    src = NexmarkSource("auction", events=1000, seed=1, num_splits=2)
    assert pickle.loads(pickle.dumps(src)) == src
    d = src.describe()
    assert d["type"] == "NexmarkSource" and d["kind"] == "auction" and d["seed"] == 1
    json.dumps(d)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"kind": "bids"}, "kind must be one of"),
    ({"events": -1}, "events must be an int >= 0 or None"),
    ({"events": 1.5}, "events must be"),
    ({"seed": True}, "seed must be an int >= 0"),
    ({"seed": -3}, "seed must be"),
    ({"num_splits": 0}, "num_splits must be an int >= 1"),
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"rate": 0}, "rate must be an int >= 1"),
    ({"block_events": 0}, "block_events must be"),
    ({"base_time": "now"}, "base_time must be"),
])
def test_bad_parameters(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NexmarkSource(**kwargs)  # type: ignore[arg-type]


def test_bad_splits_and_offsets() -> None:
    src = NexmarkSource("bid", events=100_000, num_splits=2, block_events=1000)
    with pytest.raises(ValueError, match="has no split 'nexmark 2/2'"):
        src.open_split("nexmark 2/2")
    with pytest.raises(ValueError, match="has no split"):
        src.open_split("nexmark 0/3")  # a checkpoint of another num_splits
    with pytest.raises(ValueError, match="event id of its blocks"):
        src.open_split("nexmark 1/2", 500)  # block 0 belongs to split 0
    for bad in (-1, "10", 2.0, [1]):
        with pytest.raises(ValueError, match="offset"):
            src.open_split("nexmark 0/2", bad)
        with pytest.raises(ValueError, match="offset"):
            src.open(bad)
    assert src.open_split("nexmark 1/2", 1500).read().num_rows > 0
    assert src.open_split("nexmark 0/2", 10**9).read() is None  # past the end
