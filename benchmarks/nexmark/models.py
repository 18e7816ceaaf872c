"""Batch models of the Nexmark queries: plain pyarrow/numpy over the whole generated tables.

Each ``qN(inputs, config) -> pa.Table`` computes the query's *final* result over bounded
input, the way raykv defines it (its docstring says where that differs from the nexmark
project's Flink SQL, ``nexmark-flink/src/main/resources/queries/qN.sql``). Results of an
updating query (a join or a group-by without a window) are its final values at the end of
input, the upsert view raykv's sinks show by default. Windows are by event time
(``date_time``, int64 ms since the epoch, UTC) and their sizes live in :class:`Config`.
Compare a pipeline's output with :func:`canonical` (rows sorted by every column).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raykv.sources.nexmark import KINDS, NexmarkSource

BID_COLUMNS = ["auction", "bidder", "price", "channel", "url", "date_time", "extra"]
EURO_RATE = 0.908  # q1, q14: dollars to euros
Q2_MODULO = 123  # q2: bids on every 123rd auction
Q3_STATES = ("OR", "ID", "CA")
Q3_CATEGORY = Q20_CATEGORY = 10
RANK1, RANK2 = 10_000, 1_000_000  # q15-q17: price ranks (< 10,000; < 1,000,000; more)
Q19_N = 10


@dataclass(frozen=True)
class Config:
    """One Nexmark run: the generated events and the window sizes of the queries.

    Attributes:
        events: total events (all kinds); seed, rate: as :class:`NexmarkSource`.
        window_ms: tumbling windows (q7, q8, q12): 10 s as in the SQL.
        hop_size_ms, hop_slide_ms: sliding windows of q5: 10 s every 2 s.
        session_gap_ms: q11's session gap: 10 s.
        watermark_delay_ms: the sources' declared out-of-orderness (the SQL's 4 s).
    """

    events: int = 1_000_000
    seed: int = 0
    rate: int = 10_000
    window_ms: int = 10_000
    hop_size_ms: int = 10_000
    hop_slide_ms: int = 2_000
    session_gap_ms: int = 10_000
    watermark_delay_ms: int = 4_000

    def source(self, kind: str, **kwargs: Any) -> NexmarkSource:
        """The :class:`NexmarkSource` of ``kind`` for this config (``kwargs``: splits...)."""
        return NexmarkSource(kind, events=self.events, seed=self.seed, rate=self.rate,
                             **kwargs)

    def with_events(self, events: int) -> Config:
        """This config with another event count."""
        return replace(self, events=events)


@dataclass(frozen=True)
class Inputs:
    """The three generated tables of one :class:`Config`."""

    person: pa.Table
    auction: pa.Table
    bid: pa.Table


@functools.lru_cache(maxsize=4)
def inputs(config: Config) -> Inputs:
    """Generate (once per config and process) the person, auction and bid tables."""
    return Inputs(*(config.source(k).table() for k in KINDS))


def canonical(table: pa.Table) -> pa.Table:
    """``table`` with its rows sorted by every column (for an order-free comparison)."""
    table = table.combine_chunks()
    return table.sort_by([(c, "ascending") for c in table.column_names])


def _start(t: pa.ChunkedArray | pa.Array, size: int) -> np.ndarray:
    times = np.asarray(t)
    return times - times % size


def _day(t: pa.ChunkedArray, fmt: str = "%Y-%m-%d") -> pa.Array:
    return pc.strftime(t.cast(pa.timestamp("ms", tz="UTC")), format=fmt)


def _euros(price: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.multiply(price.cast(pa.float64()), EURO_RATE)


# ---- stateless ---------------------------------------------------------------------

def q0(i: Inputs, c: Config) -> pa.Table:
    """Pass-through: ``auction, bidder, price, date_time, extra`` of every bid."""
    return i.bid.select(["auction", "bidder", "price", "date_time", "extra"])


def q1(i: Inputs, c: Config) -> pa.Table:
    """Currency conversion: q0 with ``price = price * 0.908`` as float64 (SQL: DECIMAL(23, 3))."""
    t = q0(i, c)
    return t.set_column(2, "price", _euros(t.column("price")))


def q2(i: Inputs, c: Config) -> pa.Table:
    """Selection: ``auction, price`` of the bids on auctions with ``auction % 123 == 0``."""
    keep = np.asarray(i.bid.column("auction")) % Q2_MODULO == 0
    return i.bid.filter(pa.array(keep)).select(["auction", "price"])


def q14(i: Inputs, c: Config) -> pa.Table:
    """Calculation: bids with ``1e6 < price * 0.908 < 5e7``, their euro price, a time type
    and the count of ``c`` in ``extra``.

    ``bid_time_type``: ``dayTime`` for hours 8-18, ``nightTime`` for hours <= 6 or >= 20,
    else ``otherTime``; the hour of ``date_time`` in UTC (the SQL's is in the session's
    time zone). Columns: ``auction, bidder, price, bid_time_type, date_time, extra,
    c_counts``.
    """
    return q14_batch(i.bid)


def q14_batch(bids: pa.Table | pa.RecordBatch) -> pa.Table:
    """q14 over any bids (the pipeline's Map stage runs this very function per batch)."""
    euros = _euros(bids.column("price"))
    keep = pc.and_(pc.greater(euros, 1_000_000), pc.less(euros, 50_000_000))
    t = pa.Table.from_batches([bids]) if isinstance(bids, pa.RecordBatch) else bids
    t = t.filter(keep)
    hour = (np.asarray(t.column("date_time")) // 3_600_000) % 24
    kind = np.where((hour >= 8) & (hour <= 18), "dayTime",
                    np.where((hour <= 6) | (hour >= 20), "nightTime", "otherTime"))
    return pa.table({
        "auction": t.column("auction"), "bidder": t.column("bidder"),
        "price": _euros(t.column("price")), "bid_time_type": pa.array(kind, pa.string()),
        "date_time": t.column("date_time"), "extra": t.column("extra"),
        "c_counts": pc.count_substring(t.column("extra"), "c").cast(pa.int64())})


# ---- windows -----------------------------------------------------------------------

def q5(i: Inputs, c: Config) -> pa.Table:
    """Hot items: per sliding window (10 s every 2 s), the auctions with the most bids.

    Columns ``auction, num, window_start, window_end``: every auction whose bid count in
    the window equals the window's largest (ties: all of them). Windows are
    ``[k * 2 s, k * 2 s + 10 s)``, as the SQL's HOP.
    """
    t = np.asarray(i.bid.column("date_time"))
    auction = np.asarray(i.bid.column("auction"))
    size, slide = c.hop_size_ms, c.hop_slide_ms
    last = t - t % slide
    starts, auctions = [], []
    for j in range(-(-size // slide)):
        s = last - j * slide
        keep = s + size > t
        starts.append(s[keep])
        auctions.append(auction[keep])
    counts = pa.table({"auction": np.concatenate(auctions), "window_start":
                       np.concatenate(starts)}).group_by(["auction", "window_start"]).aggregate(
        [([], "count_all")]).rename_columns(["auction", "window_start", "num"])
    best = counts.group_by("window_start").aggregate([("num", "max")])
    out = counts.join(best, "window_start").filter(
        pc.equal(pc.field("num"), pc.field("num_max")))
    return pa.table({"auction": out.column("auction"), "num": out.column("num"),
                     "window_start": out.column("window_start"),
                     "window_end": pc.add(out.column("window_start"), size)})


def q7(i: Inputs, c: Config) -> pa.Table:
    """Highest bid: per 10 s tumbling window, the bids with the window's largest price.

    Columns ``auction, bidder, price, date_time, extra, window_start, window_end``. A bid
    belongs to the window ``[start, start + 10 s)`` holding its time. The SQL joins every
    bid with the window maxima on ``price`` and ``date_time BETWEEN end - 10 s AND end``,
    inclusive at both ends, so a bid at exactly a window's end also matches the previous
    window when its price equals that window's max; raykv does not (half-open windows).
    """
    b = i.bid.append_column("window_start", pa.array(_start(i.bid.column("date_time"),
                                                            c.window_ms)))
    best = b.group_by("window_start").aggregate([("price", "max")])
    out = b.join(best, "window_start").filter(pc.equal(pc.field("price"),
                                                       pc.field("price_max")))
    return out.select(["auction", "bidder", "price", "date_time", "extra",
                       "window_start"]).append_column(
        "window_end", pc.add(out.column("window_start"), c.window_ms))


def q8(i: Inputs, c: Config) -> pa.Table:
    """Monitor new users: persons who created an auction in the 10 s window they joined in.

    Columns ``id, name, window_start`` (the SQL's ``stime``): distinct (person, window)
    pairs where the person's ``date_time`` and one of their auctions' fall in the same
    tumbling window.
    """
    p = pa.table({"id": i.person.column("id"), "name": i.person.column("name"),
                  "window_start": _start(i.person.column("date_time"), c.window_ms)})
    a = pa.table({"id": i.auction.column("seller"),
                  "window_start": _start(i.auction.column("date_time"), c.window_ms)})
    a = a.group_by(["id", "window_start"]).aggregate([])
    return p.join(a, ["id", "window_start"], join_type="inner").select(
        ["id", "name", "window_start"])


def q11(i: Inputs, c: Config) -> pa.Table:
    """User sessions: bids per bidder and session (gap 10 s).

    Columns ``bidder, bid_count, window_start, window_end``: a session is a maximal run
    of a bidder's bids less than ``gap`` apart; it starts at its first bid and ends at its
    last bid + ``gap`` (the SQL's SESSION_START/SESSION_END).
    """
    t = pa.table({"bidder": i.bid.column("bidder"), "t": i.bid.column("date_time")})
    t = t.sort_by([("bidder", "ascending"), ("t", "ascending")])
    bidder, times = np.asarray(t.column("bidder")), np.asarray(t.column("t"))
    new = np.ones(len(times), dtype=bool)
    new[1:] = (bidder[1:] != bidder[:-1]) | (times[1:] - times[:-1] >= c.session_gap_ms)
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(times)) - 1
    return pa.table({"bidder": bidder[starts], "bid_count": (ends - starts + 1).astype(np.int64),
                     "window_start": times[starts],
                     "window_end": times[ends] + c.session_gap_ms})


def q12(i: Inputs, c: Config) -> pa.Table:
    """Processing-time windows: bids per bidder and 10 s window of processing time.

    Processing time differs run to run, so the model is what any run must add up to:
    ``bidder, bid_count`` summed over all of a bidder's windows (the pipeline's output is
    summed per bidder before the comparison).
    """
    return i.bid.group_by("bidder").aggregate([([], "count_all")]).rename_columns(
        ["bidder", "bid_count"])


# ---- joins -------------------------------------------------------------------------

def q3(i: Inputs, c: Config) -> pa.Table:
    """Local item suggestion: sellers in OR, ID or CA and their auctions of category 10.

    Columns ``name, city, state, id`` (the auction's id): every (auction, person) pair
    with ``seller = person.id`` (an inner join over the whole streams; a seller created
    after the auction, one of the reference's id leads, still matches).
    """
    p = i.person.filter(pc.is_in(i.person.column("state"), pa.array(Q3_STATES)))
    a = i.auction.filter(pc.equal(i.auction.column("category"), Q3_CATEGORY))
    a = pa.table({"seller": a.column("seller"), "auction": a.column("id")})
    p = p.select(["id", "name", "city", "state"]).rename_columns(["seller", "name", "city",
                                                                   "state"])
    out = a.join(p, "seller", join_type="inner")
    return pa.table({"name": out.column("name"), "city": out.column("city"),
                     "state": out.column("state"), "id": out.column("auction")})


def _in_flight_bids(i: Inputs) -> pa.Table:
    """Pairs (auction, bid) with the bid made between the auction's creation and expiry.

    Columns ``auction, category, price, bid_date_time, _a, _b`` (row numbers of the
    auction and the bid in their tables). Cost: one hash join on narrow columns.
    """
    a = pa.table({"auction": i.auction.column("id"), "category": i.auction.column("category"),
                  "date_time": i.auction.column("date_time"),
                  "expires": i.auction.column("expires"),
                  "_a": np.arange(i.auction.num_rows)})
    b = pa.table({"auction": i.bid.column("auction"), "price": i.bid.column("price"),
                  "bid_date_time": i.bid.column("date_time"), "_b": np.arange(i.bid.num_rows)})
    t = pc.field("bid_date_time")
    out = a.join(b, "auction", join_type="inner")
    return out.filter((t >= pc.field("date_time")) & (t <= pc.field("expires")))


def q4(i: Inputs, c: Config) -> pa.Table:
    """Average price for a category: the mean winning price of the auctions per category.

    Columns ``category, final``: an auction's winning price is its largest bid made in
    ``[date_time, expires]``; ``final`` is their mean per category, float64 (the SQL's AVG
    of a BIGINT is a BIGINT, truncated).
    """
    j = _in_flight_bids(i)
    wins = j.group_by(["auction", "category"]).aggregate([("price", "max")])
    out = wins.group_by("category").aggregate([("price_max", "mean")])
    return out.rename_columns(["category", "final"]).select(["category", "final"])


def q9(i: Inputs, c: Config) -> pa.Table:
    """Winning bids: each auction with its highest bid made in ``[date_time, expires]``.

    Columns: the auction's (``id, item_name, ..., extra``), then ``auction, bidder, price,
    bid_date_time, bid_extra``. Ties on price go to the earliest bid (as the SQL), then
    to the smallest other columns (``bidder, channel, url, bid_extra``; the SQL's
    ROW_NUMBER picks any).
    """
    j = _in_flight_bids(i)
    bids = i.bid.take(j.column("_b"))
    j = pa.table({"auction": j.column("auction"), "price": j.column("price"),
                  "bid_date_time": j.column("bid_date_time"), "bidder": bids.column("bidder"),
                  "channel": bids.column("channel"), "url": bids.column("url"),
                  "bid_extra": bids.column("extra"), "_a": j.column("_a")})
    j = j.sort_by([("auction", "ascending"), ("price", "descending"),
                   ("bid_date_time", "ascending"), ("bidder", "ascending"),
                   ("channel", "ascending"), ("url", "ascending"), ("bid_extra", "ascending")])
    a = np.asarray(j.column("auction"))
    first = np.ones(len(a), dtype=bool)
    first[1:] = a[1:] != a[:-1]
    w = j.filter(pa.array(first))
    out = {n: i.auction.column(n).take(w.column("_a")) for n in i.auction.column_names}
    out.update({n: w.column(n) for n in ("auction", "bidder", "price", "bid_date_time",
                                         "bid_extra")})
    return pa.table(out)


def q20(i: Inputs, c: Config) -> pa.Table:
    """Expand bid with auction: every bid with its auction, for auctions of category 10.

    Columns ``auction, bidder, price, channel, url, bid_date_time, bid_extra, item_name,
    description, initial_bid, reserve, auction_date_time, expires, seller, category,
    auction_extra`` (an inner join over the whole streams).
    """
    a = i.auction.filter(pc.equal(i.auction.column("category"), Q20_CATEGORY))
    a = a.rename_columns([{"id": "auction", "date_time": "auction_date_time",
                           "extra": "auction_extra"}.get(n, n) for n in a.column_names])
    b = i.bid.rename_columns([{"date_time": "bid_date_time", "extra": "bid_extra"}.get(n, n)
                              for n in i.bid.column_names])
    out = b.join(a, "auction", join_type="inner")
    return out.select(["auction", "bidder", "price", "channel", "url", "bid_date_time",
                       "bid_extra", "item_name", "description", "initial_bid", "reserve",
                       "auction_date_time", "expires", "seller", "category",
                       "auction_extra"])


# ---- unwindowed group-bys (final values) -------------------------------------------

def _ranks(bids: pa.Table) -> list[tuple[str, pa.Table]]:
    price = bids.column("price")
    return [("total", bids), ("rank1", bids.filter(pc.less(price, RANK1))),
            ("rank2", bids.filter(pc.and_(pc.greater_equal(price, RANK1),
                                          pc.less(price, RANK2)))),
            ("rank3", bids.filter(pc.greater_equal(price, RANK2)))]


def _rank_stats(bids: pa.Table, keys: list[str], distinct: bool) -> pa.Table:
    """Per group of ``keys``: bids, and with ``distinct`` bidders and auctions, per rank."""
    out = bids.group_by(keys).aggregate([])
    for what in ["bids"] + (["bidders", "auctions"] if distinct else []):
        for rank, t in _ranks(bids):
            aggs: list[Any] = ([([], "count_all")] if what == "bids" else
                               [(what[:-1], "count_distinct")])
            g = t.group_by(keys).aggregate(aggs).rename_columns([*keys, f"{rank}_{what}"])
            out = out.join(g, keys, join_type="left outer")
            out = out.set_column(out.num_columns - 1, f"{rank}_{what}",
                                 pc.fill_null(out.column(f"{rank}_{what}"), 0))
    return out


def q15(i: Inputs, c: Config) -> pa.Table:
    """Bidding statistics per day: bids, distinct bidders and auctions, by price rank.

    Columns ``day`` (``yyyy-MM-dd`` of ``date_time`` in UTC), then ``total_bids,
    rank1_bids, rank2_bids, rank3_bids``, the same for ``_bidders`` and ``_auctions``
    (distinct counts); ranks: price < 10,000; < 1,000,000; the rest.
    """
    b = i.bid.select(["bidder", "auction", "price"]).append_column(
        "day", _day(i.bid.column("date_time")))
    return _rank_stats(b, ["day"], distinct=True)


def q16(i: Inputs, c: Config) -> pa.Table:
    """Channel statistics per day: q15 per ``(channel, day)``, plus ``minute``.

    ``minute`` is the latest ``HH:mm`` (UTC) of the group's bids. Columns ``channel, day,
    minute``, then q15's twelve counts.
    """
    b = i.bid.select(["channel", "bidder", "auction", "price"]).append_column(
        "day", _day(i.bid.column("date_time"))).append_column(
        "minute", _day(i.bid.column("date_time"), "%H:%M"))
    stats = _rank_stats(b, ["channel", "day"], distinct=True)
    minute = b.group_by(["channel", "day"]).aggregate([("minute", "max")]).rename_columns(
        ["channel", "day", "minute"])
    out = minute.join(stats, ["channel", "day"])
    return out.select(["channel", "day", "minute"] + [n for n in stats.column_names
                                                      if n not in ("channel", "day")])


def q17(i: Inputs, c: Config) -> pa.Table:
    """Auction statistics per day: per ``(auction, day)`` bids by rank and price stats.

    Columns ``auction, day, total_bids, rank1_bids, rank2_bids, rank3_bids, min_price,
    max_price, avg_price, sum_price``; ``avg_price`` is float64 (the SQL's is BIGINT).
    """
    b = i.bid.select(["auction", "price"]).append_column("day",
                                                         _day(i.bid.column("date_time")))
    stats = _rank_stats(b, ["auction", "day"], distinct=False)
    prices = b.group_by(["auction", "day"]).aggregate(
        [("price", "min"), ("price", "max"), ("price", "mean"), ("price", "sum")])
    prices = prices.rename_columns(["auction", "day", "min_price", "max_price", "avg_price",
                                    "sum_price"])
    return stats.join(prices, ["auction", "day"])


def q18(i: Inputs, c: Config) -> pa.Table:
    """Last bid per ``(bidder, auction)``: the one with the latest ``date_time``.

    Columns as a bid's. Ties on time go to the smallest other columns (``price, channel,
    url, extra``), raykv's TopN rule, so the result never depends on arrival order (the
    SQL's ROW_NUMBER picks any).
    """
    b = i.bid.sort_by([("bidder", "ascending"), ("auction", "ascending"),
                       ("date_time", "descending"), ("price", "ascending"),
                       ("channel", "ascending"), ("url", "ascending"), ("extra", "ascending")])
    k1, k2 = np.asarray(b.column("bidder")), np.asarray(b.column("auction"))
    first = np.ones(len(k1), dtype=bool)
    first[1:] = (k1[1:] != k1[:-1]) | (k2[1:] != k2[:-1])
    return b.filter(pa.array(first)).select(BID_COLUMNS)


def q19(i: Inputs, c: Config) -> pa.Table:
    """Auction top 10: the 10 highest-priced bids of each auction, ranked.

    Columns as a bid's plus ``rank_number`` (1-10). Ties on price go to the smallest
    other columns in schema order (``bidder, channel, url, date_time, extra``), raykv's
    TopN rule (the SQL's ROW_NUMBER picks any).
    """
    b = i.bid.sort_by([("auction", "ascending"), ("price", "descending"),
                       ("bidder", "ascending"), ("channel", "ascending"),
                       ("url", "ascending"), ("date_time", "ascending"),
                       ("extra", "ascending")])
    a = np.asarray(b.column("auction"))
    new = np.ones(len(a), dtype=bool)
    new[1:] = a[1:] != a[:-1]
    starts = np.flatnonzero(new)
    rank = np.arange(len(a)) - np.repeat(starts, np.diff(np.append(starts, len(a)))) + 1
    keep = rank <= Q19_N
    return b.filter(pa.array(keep)).append_column("rank_number", pa.array(rank[keep]))


Model = Callable[[Inputs, Config], pa.Table]
MODELS: dict[str, Model] = {
    "q0": q0, "q1": q1, "q2": q2, "q3": q3, "q4": q4, "q5": q5, "q7": q7, "q8": q8,
    "q9": q9, "q11": q11, "q12": q12, "q14": q14, "q15": q15, "q16": q16, "q17": q17,
    "q18": q18, "q19": q19, "q20": q20,
}
"""Every query with a model, by name, in the suite's order."""


def run_model(name: str, config: Config) -> pa.Table:
    """The final result of query ``name`` over the events of ``config``."""
    return MODELS[name](inputs(config), config)
