"""``NexmarkSource``: Nexmark's person/auction/bid streams as a split-based source.

The events come from :mod:`raykv.sources.nexmark_events` (the rules, and why every event
is a pure function of ``(seed, event id)``); this module deals them into splits of
interleaved id blocks and reads them as batches from an offset (the next event id).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raykv.sources.base import (
    DEFAULT_BATCH_SIZE,
    Offset,
    Source,
    SourceReader,
    Split,
    check_batch_size,
    unknown_split,
)
from raykv.sources.nexmark_events import (
    DEFAULT_BASE_TIME,
    DEFAULT_BLOCK_EVENTS,
    DEFAULT_RATE,
    HOT_CHANNELS,
    KINDS,
    PROPORTIONS,
    SCHEMAS,
    TOTAL_PROPORTION,
    US_CITIES,
    US_STATES,
    generate,
    kind_event_ids,
    kind_ordinal,
)


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if type(value) is not int or value < minimum:
        what = f"an int >= {minimum}" + (" or None" if allow_none else "")
        msg = f"NexmarkSource {name} must be {what}, got {value!r}"
        raise ValueError(msg)


@dataclass(frozen=True)
class NexmarkSource(Source):
    """One Nexmark stream (persons, auctions or bids), generated; see the module docstring.

    Args:
        kind: ``"person"``, ``"auction"`` or ``"bid"``: the events this source emits. Two
            sources with the same ``seed``, ``events``, ``rate`` and ``base_time`` but
            different kinds are two views of one event sequence (a bid's auction and
            bidder are the persons and auctions of the other sources), so a pipeline can
            read them as two inputs.
        events: total events of all kinds (about 2 % persons, 6 % auctions, 92 % bids);
            ``None``: unbounded.
        seed: any non-negative int; the events are a pure function of it and their id.
        num_splits: splits, read in parallel by reader actors.
        batch_size: rows per batch (of this kind).
        rate: events per second of event time (the reference's ``first-event.rate``,
            default 10,000 as in its configuration; its benchmark suite uses 10,000,000).
        base_time: event time of event 0, ms since the epoch.
        block_events: event ids per block; split ``i`` of ``n`` holds blocks ``i, i + n,
            i + 2n, ...``, so all splits advance through event time together (each in
            time order) and an unbounded source splits too.

    Offsets: the next event id to consider (an int), for a split as for the whole stream;
    a split's offset is always an id of one of its blocks (or past ``events``).

    Where it differs from the reference generator (all on purpose): it is seeded and
    counter-based (the reference draws from an unseeded ``SplittableRandom`` stream, and
    its URL table from a static one); event time is one timeline of event ids (the
    reference gives each of its parallel generators its own timeline, ``numEventGenerators
    > 1``); a bid's bidder is ``1000 + person`` (the reference adds ``FIRST_PERSON_ID``
    twice, so its bidders never match a person id); random strings are substrings of
    seeded 1 MiB pools (the reference builds names and descriptions char by char);
    ``outOfOrderGroupSize`` (1, i.e. in order, by default in the reference) is not
    implemented: every split is in event-time order.

    Cost: vectorized numpy/pyarrow, O(rows) per batch: 2-3 million events/s of the bid
    stream on one core (``benchmarks/README.md``, "Nexmark"); the first use of a seed in
    a process builds its text pools and URL table (~0.1 s).

    Example:
        >>> src = NexmarkSource("bid", events=100_000, seed=7, num_splits=2, batch_size=100)
        >>> [s.id for s in src.splits()]
        ['nexmark 0/2', 'nexmark 1/2']
        >>> r = src.open_split("nexmark 1/2")   # blocks 1, 3, 5, ...: ids 10000-19999, ...
        >>> b = r.read()
        >>> b.num_rows, b.schema.names[:3], r.offset
        (100, ['auction', 'bidder', 'price'], 10112)
    """

    kind: str = "bid"
    events: int | None = 1_000_000
    seed: int = 0
    num_splits: int = 4
    batch_size: int = DEFAULT_BATCH_SIZE
    rate: int = DEFAULT_RATE
    base_time: int = DEFAULT_BASE_TIME
    block_events: int = DEFAULT_BLOCK_EVENTS

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            msg = f"NexmarkSource kind must be one of {KINDS}, got {self.kind!r}"
            raise ValueError(msg)
        _check_int("events", self.events, 0, allow_none=True)
        for name, minimum in (("seed", 0), ("num_splits", 1), ("rate", 1), ("base_time", 0),
                              ("block_events", 1)):
            _check_int(name, getattr(self, name), minimum)
        check_batch_size(self.batch_size)

    @property
    def schema(self) -> pa.Schema:
        """The columns of this kind (:data:`SCHEMAS`)."""
        return SCHEMAS[self.kind]

    def input_schema(self) -> pa.Schema:
        """:attr:`schema`, for the pipeline's checks before it runs."""
        return SCHEMAS[self.kind]

    @property
    def bounded(self) -> bool:
        """True unless ``events`` is ``None``."""
        return self.events is not None

    def splits(self) -> list[Split]:
        """``num_splits`` splits ``"nexmark i/n"``; size: about the rows of this kind."""
        n, b, total = self.num_splits, self.block_events, self.events
        if total is None:
            return [Split(f"nexmark {i}/{n}") for i in range(n)]
        full, rest = divmod(total, b)  # full blocks, then a partial one (split full % n)
        ids = [(full // n + (i < full % n)) * b + (rest if i == full % n else 0)
               for i in range(n)]
        return [Split(f"nexmark {i}/{n}", ids[i] * PROPORTIONS[self.kind] // TOTAL_PROPORTION)
                for i in range(n)]

    def open(self, offset: Offset | None = None) -> SourceReader:
        """Return a reader over every event of this kind in id order from ``offset``."""
        return _NexmarkReader(self, 1, self._offset(offset, 0, 1, "the stream"))

    def open_split(self, split: Split | str, offset: Offset | None = None) -> SourceReader:
        """Return a reader over one split's blocks from ``offset`` (``None``: its start)."""
        split_id = split.id if isinstance(split, Split) else split
        ids = [s.id for s in self.splits()]
        if split_id not in ids:
            raise unknown_split(self, split_id)
        i = ids.index(split_id)
        return _NexmarkReader(self, self.num_splits,
                              self._offset(offset, i, self.num_splits, split_id))

    def _offset(self, offset: Offset | None, index: int, stride: int, what: str) -> int:
        if offset is None:
            return index * self.block_events
        if type(offset) is not int or offset < 0 or (offset // self.block_events) % stride \
                != index:
            msg = (f"NexmarkSource offset of {what} must be an event id of its blocks "
                   f"(block_events={self.block_events}), got {offset!r}")
            raise ValueError(msg)
        return offset

    def table(self) -> pa.Table:
        """All events of this kind, in id order (bounded only). Cost: O(events)."""
        if self.events is None:
            msg = "NexmarkSource.table() needs a bounded source (events=None is unbounded)"
            raise ValueError(msg)
        reader = self.open()
        batches = []
        while (batch := reader.read()) is not None:
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=self.schema)

    def describe(self) -> dict[str, Any]:
        """Type and every parameter (the events are a function of them)."""
        return {"type": type(self).__name__, "kind": self.kind, "events": self.events,
                "seed": self.seed, "num_splits": self.num_splits,
                "batch_size": self.batch_size, "rate": self.rate,
                "base_time": self.base_time, "block_events": self.block_events}


class _NexmarkReader(SourceReader):
    """Blocks ``index, index + stride, ...``: up to ``batch_size`` rows of the kind a read."""

    def __init__(self, src: NexmarkSource, stride: int, start: int) -> None:
        self._src = src
        self._stride = stride
        self._next = start  # an id of the split's blocks (checked by the source)

    def read(self) -> pa.RecordBatch | None:
        src, kind = self._src, self._src.kind
        block, end = src.block_events, src.events
        limit = math.inf if end is None else end
        ranges: list[tuple[int, int]] = []
        rows, cur = 0, self._next
        while rows < src.batch_size and cur < limit:
            b = cur // block
            stop = (b + 1) * block if end is None else min((b + 1) * block, end)
            lo, hi = kind_ordinal(kind, cur), kind_ordinal(kind, stop)
            take = min(hi - lo, src.batch_size - rows)
            if take:
                ranges.append((lo, lo + take))
                rows += take
            if lo + take < hi:
                cur = int(kind_event_ids(kind, lo + take, 1)[0])
            else:
                cur = (b + self._stride) * block
        self._next = cur
        if not ranges:
            return None
        return generate(kind, src.seed, ranges, src.rate, src.base_time)

    @property
    def offset(self) -> int:
        return self._next


__all__ = [  # the generation's names are re-exported for users of this module
    "DEFAULT_BASE_TIME", "DEFAULT_BLOCK_EVENTS", "DEFAULT_RATE", "HOT_CHANNELS", "KINDS",
    "PROPORTIONS", "SCHEMAS", "TOTAL_PROPORTION", "US_CITIES", "US_STATES", "NexmarkSource",
    "kind_event_ids", "kind_ordinal",
]
