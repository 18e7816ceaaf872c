"""The Nexmark queries raykv runs as pipelines today, each equal to its batch model.

A :class:`Query` names the source kinds it reads, its stages (built from a
:class:`~benchmarks.nexmark.models.Config`), whether the sources' watermark drives it, and
``finalize``: the renames/column order that turn the pipeline's collected output into the
model's columns (the comparison and nothing else; the benchmark's sink discards rows).

q3, q4, q8, q9 and q20 join two streams: they read two named sources
(``Pipeline(sources=...)``, one per kind) and exist when raykv has those
(:data:`SEVERAL_SOURCES`; else they are in :data:`MODEL_ONLY`). q15 and q16
count distinct bidders and auctions at once without a fan-out: each bid becomes two rows,
(group, bidder) and (group, auction), counted per id, and the changelog of those counts
(0/1 flags per distinct count) is summed per group with retraction.

Updating queries (q17-q19, no window) emit their final values at the end of input:
``output = "final"`` compares the last epoch's output (the upsert view's final values);
window and stateless queries (``"all"``) compare the union of every epoch's output.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import raykv
from benchmarks.nexmark.models import (
    BID_COLUMNS,
    Q2_MODULO,
    Q3_CATEGORY,
    Q3_STATES,
    Q19_N,
    Q20_CATEGORY,
    RANK1,
    RANK2,
    Config,
    _day,
    _euros,
    q14_batch,
)
from raykv.operators import (
    Aggregate,
    Filter,
    IntervalJoin,
    Join,
    KeyedOperator,
    Map,
    SessionWindow,
    SlidingWindow,
    TopN,
    TumblingWindow,
    WindowJoin,
)
from raykv.sinks import Sink

EVER = 1 << 61
"""A window size no event time reaches: one window holding everything, emitted at the end
(TopN without a window, for q18/q19)."""
Q5_TIES = 20  # q5 keeps up to this many auctions tied for the most bids in a window
Q7_TIES = 5  # q7: bids tied for the highest price in a window
PROCESSING_LATENESS_MS = 60_000  # q12: how far behind the newest processing time a row may be

TWO_SOURCES = {
    "q3": "a join of persons and auctions (two sources)",
    "q4": "a join of auctions and bids (two sources), then two aggregations",
    "q8": "a window join of persons and auctions (two sources)",
    "q9": "a join of auctions and bids (two sources), then a top 1",
    "q20": "a join of bids and auctions (two sources)",
}
SEVERAL_SOURCES = "sources" in {f.name for f in dataclasses.fields(raykv.Pipeline)}
"""Whether this raykv runs pipelines of several named sources (the joins need them)."""
MODEL_ONLY = {} if SEVERAL_SOURCES else TWO_SOURCES
"""Queries with a model but no raykv pipeline yet, and what they need."""


@dataclass(frozen=True)
class Query:
    """One query as a raykv pipeline (see the module docstring)."""

    name: str
    stages: Callable[[Config], list[KeyedOperator]]
    finalize: Callable[[pa.Table], pa.Table]
    kinds: tuple[str, ...] = ("bid",)
    output: str = "all"  # "all": the union of every epoch's output; "final": the last epoch's
    watermark: bool = True


# ---- the stages' functions (module level, so that cloudpickle ships them by name) --------

def _select(columns: list[str], batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch.select(columns)


def _q1(batch: pa.RecordBatch) -> pa.RecordBatch:
    b = batch.select(["auction", "bidder", "price", "date_time", "extra"])
    return b.set_column(2, "price", _euros(b.column("price")))


def _q2(batch: pa.RecordBatch) -> pa.RecordBatch:
    keep = np.asarray(batch.column("auction")) % Q2_MODULO == 0
    return batch.filter(pa.array(keep)).select(["auction", "price"])


def _with_window(size: int, batch: pa.RecordBatch) -> pa.RecordBatch:
    t = np.asarray(batch.column("date_time"))
    return batch.append_column("window", pa.array(t - t % size))


def _ties(group: str, value: str, columns: tuple[tuple[str, str], ...],
          batch: pa.RecordBatch) -> pa.RecordBatch:
    """A TopN's rows equal to their group's rank-1 ``value``, as ``columns`` (from, to).

    A group's ranked rows come out of the TopN together (one window of one key, emitted
    at one barrier by one shard), so they are in the same batch.
    """
    key = np.asarray(batch.column(group))
    val = np.asarray(batch.column(value))
    first = np.asarray(batch.column("rank")) == 1
    best = dict(zip(key[first].tolist(), val[first].tolist(), strict=True))
    keep = np.array([best[k] == v for k, v in zip(key.tolist(), val.tolist(), strict=True)],
                    dtype=bool)
    out = batch.filter(pa.array(keep, pa.bool_()))
    return pa.RecordBatch.from_arrays([out.column(a) for a, _ in columns],
                                      names=[b for _, b in columns])


def _hops(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A hop window's end becomes the event time (``date_time``) of its count."""
    return batch.rename_columns({"window_start": "hop_start", "window_end": "date_time"})


def _processing_time(batch: pa.RecordBatch) -> pa.RecordBatch:
    now = int(time.time() * 1000)
    return batch.select(["bidder"]).append_column("p_time",
                                                  pa.array(np.full(batch.num_rows, now)))


def _q17_rows(batch: pa.RecordBatch) -> pa.RecordBatch:
    t = np.asarray(batch.column("date_time"))
    price = np.asarray(batch.column("price"))
    key = (t // 86_400_000) * 10**12 + np.asarray(batch.column("auction"))
    return pa.RecordBatch.from_pydict({
        "key": key, "auction": batch.column("auction"),
        "day": _day(pa.chunked_array([batch.column("date_time")])).combine_chunks(),
        "price": batch.column("price"),
        "rank1": (price < RANK1).astype(np.int64),
        "rank2": ((price >= RANK1) & (price < RANK2)).astype(np.int64),
        "rank3": (price >= RANK2).astype(np.int64)})


def _pair_key(batch: pa.RecordBatch) -> pa.RecordBatch:
    key = (np.asarray(batch.column("bidder")) << 32) + np.asarray(batch.column("auction"))
    return batch.select(BID_COLUMNS).append_column("pair", pa.array(key))


_STATS = [f"{r}_{w}" for w in ("bids", "bidders", "auctions")
          for r in ("total", "rank1", "rank2", "rank3")]


def _distinct_rows(by_channel: bool, batch: pa.RecordBatch) -> pa.RecordBatch:
    """q15/q16 stage 1: each bid twice, as (group, bidder) and as (group, auction).

    ``group`` is the day (q16: channel and day); ``rank1..3`` flag the bid's price rank.
    The next stage aggregates per (group, role, id); a count of those rows with a rank
    flag set is a distinct count.
    """
    day = _day(pa.chunked_array([batch.column("date_time")])).combine_chunks()
    group = pc.binary_join_element_wise(batch.column("channel"), day, "|") if by_channel \
        else day
    price = np.asarray(batch.column("price"))
    ranks = {"rank1": price < RANK1, "rank2": (price >= RANK1) & (price < RANK2),
             "rank3": price >= RANK2}
    cols: dict[str, Any] = {}
    for role, ids in (("b", batch.column("bidder")), ("a", batch.column("auction"))):
        part = {"key": pc.binary_join_element_wise(group, role, ids.cast(pa.string()), "|"),
                "group": group, "day": day, "role": pa.array([role] * batch.num_rows),
                **{r: pa.array(m.astype(np.int64)) for r, m in ranks.items()}}
        if by_channel:
            part["channel"] = batch.column("channel")
            part["minute"] = _day(pa.chunked_array([batch.column("date_time")]),
                                  "%H:%M").combine_chunks()
        for name, values in part.items():
            cols.setdefault(name, []).append(values)
    return pa.RecordBatch.from_pydict({n: pa.concat_arrays(v) for n, v in cols.items()})


def _distinct_flags(by_channel: bool, batch: pa.RecordBatch) -> pa.RecordBatch:
    """q15/q16 stage 3, on the changelog of the (group, role, id) counts: per row the
    bids it holds (bidder rows only) and 0/1 per distinct count it adds to."""
    bidder = np.asarray(batch.column("role_first")) == "b"
    count = np.asarray(batch.column("key_count"))
    sums = {r: np.asarray(batch.column(f"{r}_sum")) for r in ("rank1", "rank2", "rank3")}
    out: dict[str, Any] = {"group": batch.column("group_first"),
                           "day": batch.column("day_first")}
    if by_channel:
        out["channel"] = batch.column("channel_first")
        out["minute"] = batch.column("minute_max")
    out["total_bids"] = np.where(bidder, count, 0)
    for r, v in sums.items():
        out[f"{r}_bids"] = np.where(bidder, v, 0)
    for what, mine in (("bidders", bidder), ("auctions", ~bidder)):
        out[f"total_{what}"] = mine.astype(np.int64)
        for r, v in sums.items():
            out[f"{r}_{what}"] = (mine & (v > 0)).astype(np.int64)
    out["_change"] = batch.column("_change")
    return pa.RecordBatch.from_pydict(out)


def _distinct(by_channel: bool, c: Config) -> list[KeyedOperator]:
    first = {"group": "first", "day": "first", "role": "first"}
    extra: dict[str, Any] = {"channel": "first", "minute": "max"} if by_channel else {}
    last: dict[str, Any] = {n: "sum" for n in _STATS}
    last.update({"day": "max"})
    if by_channel:
        last.update({"channel": "max", "minute": "max"})
    return [Map("bidder", functools.partial(_distinct_rows, by_channel), name="roles"),
            Aggregate("key", {**first, **extra, "key": "count", "rank1": "sum",
                              "rank2": "sum", "rank3": "sum"}, name="per_id"),
            Map("group_first", functools.partial(_distinct_flags, by_channel), name="flags"),
            Aggregate("group", last, name="per_group")]


def _distinct_result(by_channel: bool, t: pa.Table) -> pa.Table:
    names = {f"{n}_sum": n for n in _STATS}
    names.update({"day_max": "day", "channel_max": "channel", "minute_max": "minute"})
    cols = (["channel", "day", "minute"] if by_channel else ["day"]) + _STATS
    return _rename(names, cols, t)


# ---- the queries ---------------------------------------------------------------------

def _q5(c: Config) -> list[KeyedOperator]:
    out = (("auction", "auction"), ("auction_count", "num"), ("hop_start", "window_start"),
           ("date_time", "window_end"))
    return [SlidingWindow("auction", "date_time", c.hop_size_ms, c.hop_slide_ms,
                          {"auction": "count"}, name="bids_per_window"),
            Map("auction", _hops, name="hops"),
            TopN("hop_start", "auction_count", Q5_TIES, "date_time", c.hop_slide_ms,
                 name="top_auctions"),
            Map("hop_start", functools.partial(_ties, "hop_start", "auction_count", out),
                name="ties")]


def _q7(c: Config) -> list[KeyedOperator]:
    out = tuple((n, n) for n in ("auction", "bidder", "price", "date_time", "extra",
                                 "window_start", "window_end"))
    return [Map("auction", functools.partial(_with_window, c.window_ms), name="window"),
            TopN("window", "price", Q7_TIES, "date_time", c.window_ms, name="top_bids"),
            Map("window", functools.partial(_ties, "window", "price", out), name="ties")]


def _max_auction_ms(c: Config) -> int:
    """An upper bound of ``expires - date_time`` (the generator's auction length rule)."""
    return 2 * (1666 * 1000 // c.rate + 1) + 1


def _in_flight(c: Config) -> list[KeyedOperator]:
    """Auctions joined with their bids made in ``[date_time, expires]`` (q4, q9): an
    IntervalJoin over the longest auction, then the bid time checked against expires."""
    return [IntervalJoin("auction", time_column="date_time", lower=0,
                         upper=_max_auction_ms(c), left="auction", right="bid",
                         left_key="id", right_key="auction", name="in_flight"),
            Filter("auction", pc.field("date_time_right") <= pc.field("expires"),
                   name="until_expiry")]


def _bid_first(batch: pa.RecordBatch) -> pa.RecordBatch:
    """q9: the bid's time right after the key, so TopN breaks price ties by it first."""
    names = ["auction", "date_time_right"] + [n for n in batch.schema.names
                                              if n not in ("auction", "date_time_right")]
    return batch.select(names).rename_columns(
        {"date_time_right": "bid_date_time", "extra_right": "bid_extra"})


def _pair_window(batch: pa.RecordBatch) -> pa.RecordBatch:
    """q8: a (person, window) key for the distinct pairs."""
    key = np.asarray(batch.column("id")) * 10**13 + np.asarray(batch.column("window_start"))
    return batch.select(["id", "name", "window_start"]).append_column("pair", pa.array(key))


_Q9_AUCTION = ["item_name", "description", "initial_bid", "reserve", "date_time", "expires",
               "seller", "category", "extra"]


def _q9_result(t: pa.Table) -> pa.Table:
    """The auction (``id`` and its columns), then the winning bid's columns."""
    cols = {"id": t.column("auction"), **{n: t.column(n) for n in _Q9_AUCTION},
            **{n: t.column(n) for n in ("auction", "bidder", "price", "bid_date_time",
                                        "bid_extra")}}
    return pa.table(cols)


def _joins() -> list[Query]:
    """The queries over two sources (a join of two named sources)."""
    return [
        Query("q3", lambda c: [
            Filter("seller", pc.field("category") == Q3_CATEGORY, input="auction",
                   name="category10"),
            Filter("id", pc.is_in(pc.field("state"), pa.array(Q3_STATES)), input="person",
                   name="states"),
            Join("seller", left="category10", right="states", right_key="id")],
              functools.partial(_rename, {}, ["name", "city", "state", "id"]),
              kinds=("auction", "person")),
        Query("q4", lambda c: [
            *_in_flight(c),
            Aggregate("auction", {"price": "max", "category": "first"}, name="winners"),
            Aggregate("category_first", {"price_max": "mean"}, name="per_category")],
              functools.partial(_rename, {"category_first": "category",
                                          "price_max_mean": "final"},
                                ["category", "final"]),
              kinds=("auction", "bid"), output="final"),
        Query("q8", lambda c: [
            WindowJoin("id", time_column="date_time", size=c.window_ms, left="person",
                       right="auction", right_key="seller", name="new_sellers"),
            Map("id", _pair_window, name="pairs"),
            Aggregate("pair", {"id": "first", "name": "first", "window_start": "first"})],
              functools.partial(_rename, {"id_first": "id", "name_first": "name",
                                          "window_start_first": "window_start"},
                                ["id", "name", "window_start"]),
              kinds=("person", "auction"), output="final"),
        Query("q9", lambda c: [*_in_flight(c), Map("auction", _bid_first, name="bid_first"),
                               TopN("auction", "price", 1, "date_time", EVER)],
              _q9_result, kinds=("auction", "bid")),
        Query("q20", lambda c: [
            Filter("id", pc.field("category") == Q20_CATEGORY, input="auction",
                   name="category10"),
            Join("auction", left="bid", right="category10", right_key="id")],
              functools.partial(_rename, {
                  "date_time": "bid_date_time", "extra": "bid_extra",
                  "date_time_right": "auction_date_time", "extra_right": "auction_extra"},
                  ["auction", "bidder", "price", "channel", "url", "bid_date_time",
                   "bid_extra", "item_name", "description", "initial_bid", "reserve",
                   "auction_date_time", "expires", "seller", "category", "auction_extra"]),
              kinds=("bid", "auction")),
    ]


def _rename(mapping: dict[str, str], columns: list[str], t: pa.Table) -> pa.Table:
    t = t.rename_columns([mapping.get(n, n) for n in t.column_names])
    return t.select(columns)


QUERIES: dict[str, Query] = {q.name: q for q in [
    Query("q0", lambda c: [Map("auction", functools.partial(
        _select, ["auction", "bidder", "price", "date_time", "extra"]))], lambda t: t),
    Query("q1", lambda c: [Map("auction", _q1)], lambda t: t),
    Query("q2", lambda c: [Map("auction", _q2)], lambda t: t),
    Query("q5", _q5, lambda t: t),
    Query("q7", _q7, lambda t: t),
    Query("q11", lambda c: [SessionWindow("bidder", "date_time", c.session_gap_ms,
                                          {"bidder": "count"})],
          functools.partial(_rename, {"bidder_count": "bid_count"},
                            ["bidder", "bid_count", "window_start", "window_end"])),
    Query("q12", lambda c: [
        Map("bidder", _processing_time, name="p_time"),
        TumblingWindow("bidder", "p_time", c.window_ms, {"bidder": "count"},
                       allowed_lateness=PROCESSING_LATENESS_MS)],
          lambda t: t.group_by("bidder").aggregate([("bidder_count", "sum")]).rename_columns(
              ["bidder", "bid_count"]), watermark=False),
    Query("q14", lambda c: [Map("auction", q14_batch)], lambda t: t),
    Query("q15", functools.partial(_distinct, False),
          functools.partial(_distinct_result, False), output="final"),
    Query("q16", functools.partial(_distinct, True),
          functools.partial(_distinct_result, True), output="final"),
    Query("q17", lambda c: [
        Map("auction", _q17_rows, name="ranks"),
        Aggregate("key", {"auction": "first", "day": "first",
                          "price": ["count", "min", "max", "mean", "sum"],
                          "rank1": "sum", "rank2": "sum", "rank3": "sum"})],
          functools.partial(_rename, {
              "auction_first": "auction", "day_first": "day", "price_count": "total_bids",
              "rank1_sum": "rank1_bids", "rank2_sum": "rank2_bids", "rank3_sum": "rank3_bids",
              "price_min": "min_price", "price_max": "max_price", "price_mean": "avg_price",
              "price_sum": "sum_price"},
              ["auction", "day", "total_bids", "rank1_bids", "rank2_bids", "rank3_bids",
               "min_price", "max_price", "avg_price", "sum_price"]), output="final"),
    Query("q18", lambda c: [Map("auction", _pair_key, name="pair"),
                            TopN("pair", "date_time", 1, "date_time", EVER)],
          functools.partial(_rename, {}, BID_COLUMNS)),
    Query("q19", lambda c: [TopN("auction", "price", Q19_N, "date_time", EVER)],
          functools.partial(_rename, {"rank": "rank_number"}, [*BID_COLUMNS, "rank_number"])),
    *(_joins() if SEVERAL_SOURCES else []),
]}
"""Every query raykv runs as a pipeline today, by name."""


class DiscardSink(Sink):
    """A sink that drops every row on the shards (Flink's ``blackhole``): no row reaches
    the driver, so a benchmark measures the pipeline, not the collection of its output."""

    stages_on_shards = True

    def start(self, epoch: int | None, *, new_run: bool,
              abandoned: Any = ()) -> None:
        """Nothing to reconcile."""

    def stage(self, epoch: int, part: str, table: pa.Table) -> None:
        """Drop ``table``."""

    def publish(self, epoch: int) -> None:
        """Nothing to publish."""

    def for_attempt(self, writer: str, committed: str | None) -> Sink:
        """Itself: nothing is staged, so no stale writer can publish anything."""
        return self


def pipeline(name: str, config: Config, *, num_splits: int = 2, batch_size: int = 16_384,
             **kwargs: Any) -> raykv.Pipeline:
    """The raykv pipeline of query ``name`` over the events of ``config``.

    ``kwargs`` go to :class:`raykv.Pipeline` (``sink``, ``num_shards``, ``checkpoint``,
    ``epoch_every_batches``, ...).
    """
    q = QUERIES[name]
    sources = {k: config.source(k, num_splits=num_splits, batch_size=batch_size)
               for k in q.kinds}
    if len(sources) == 1:
        kwargs["source"] = sources[q.kinds[0]]
    else:
        kwargs["sources"] = sources  # named by kind: "person", "auction", "bid"
    if q.watermark:
        kwargs.setdefault("watermark", raykv.Watermark("date_time",
                                                       max_delay=config.watermark_delay_ms))
    return raykv.Pipeline(stages=q.stages(config), **kwargs)


def result(name: str, summary: Any) -> pa.Table:
    """The query's result from a run's :class:`~raykv.RunSummary` (a ``CollectSink``),
    in the model's columns."""
    q = QUERIES[name]
    epochs = summary.output_by_epoch
    if q.output == "final":
        tables = [epochs[max(epochs)]] if epochs else []
    else:
        tables = [epochs[e] for e in sorted(epochs)]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pa.table({})
    return q.finalize(pa.concat_tables(tables, promote_options="default"))


__all__ = ["MODEL_ONLY", "QUERIES", "DiscardSink", "Query", "pipeline", "result"]
