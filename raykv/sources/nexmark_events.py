"""The Nexmark events themselves: vectorized generation of any range of event ids.

Every event is a pure function of ``(seed, event id)``: its kind, ids, time and every
random field come from counter-based randomness (numpy's Philox, keyed by the seed, with
the counter taken from the event's ordinal within its kind), never from a stateful stream.
So any split, offset or batch size yields the same events, and a replay after a failure
reproduces them exactly. The rules follow the reference generator (github.com/nexmark/
nexmark, ``nexmark-flink/.../generator``) with its default configuration; where raykv's
differs, the docstring of :class:`NexmarkSource` says so.

The rules, per event id ``e`` (``e % 50``: 0 a person, 1-3 an auction, 4-49 a bid):

* time: ``date_time = base_time + e * 1000 // rate`` (int64 ms; one timeline, in order).
* person: id ``1000 + e // 50``; name from 11 first and 9 last names; email
  ``<3-6 chars>@<3-4 chars>.com``; credit card four ``%04d`` groups; one of 10 cities and
  6 states, chosen independently; ``extra`` padding to an average of 200 bytes.
* auction: id ``1000 + 3 * (e // 50) + e % 50 - 1``; seller with probability 3/4 the hot
  seller (first person of the last batch of 100), else one of the last 1000 persons or up
  to 10 not yet created; category ``10 + [0, 5)``; ``initial_bid`` a price,
  ``reserve = initial_bid + price``; ``expires = date_time + 1 + [0, 2 h)`` where ``h`` is
  the event time to generate 100 more auctions; ``item_name`` 3-19 chars, ``description``
  3-99 (letters, spaces in 1/13, trimmed); ``extra`` to an average of 500 bytes.
* bid: auction with probability 1/2 the hot auction (first of the last batch of 100), else
  one of the last 100 auctions or up to 10 not yet created; bidder with probability 3/4 the
  hot bidder (second person of the last batch of 100), else as a seller; price
  ``round(10 ** (6 u) * 100)`` (1 to 100,000,000 cents); channel with probability 1/2 one
  of 4 hot ones (Google, Facebook, Baidu, Apple) else one of 10,000 ``channel-<i>``, each
  with a fixed URL; ``extra`` to an average of 100 bytes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.lib.stride_tricks import as_strided

KINDS = ("person", "auction", "bid")
PROPORTIONS, TOTAL_PROPORTION = {"person": 1, "auction": 3, "bid": 46}, 50
"""Events of each kind per 50 (the reference's 1/3/46: 2 %, 6 %, 92 %)."""
_FIRST_OFFSET = {"person": 0, "auction": 1, "bid": 4}
_KIND_CODE = {"person": 0, "auction": 1, "bid": 2}
_WORDS = {"person": 16, "auction": 12, "bid": 8}  # random uint64 per event (multiple of 4)

FIRST_PERSON_ID = FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID, NUM_CATEGORIES = 10, 5
ID_LEAD = 10  # ids of persons/auctions not yet created that may be referenced
HOT_BATCH = 100  # hot seller/bidder/auction: the first (bidder: second) of the last 100
NUM_IN_FLIGHT_AUCTIONS, NUM_ACTIVE_PEOPLE = 100, 1000
HOT_AUCTION_RATIO, HOT_SELLERS_RATIO, HOT_BIDDERS_RATIO = 2, 4, 4  # hot: all but 1 in n
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
NUM_CHANNELS = 10_000
AVG_BYTES = {"person": 200, "auction": 500, "bid": 100}
US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
US_CITIES = ("Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend",
             "Redmond", "Seattle", "Kent", "Cheyenne")
FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah",
               "Deiter", "Walter")
LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones",
              "Noris")
DEFAULT_RATE = 10_000
DEFAULT_BASE_TIME = 1_436_918_400_000  # 2015-07-15 00:00:00 UTC, in ms
DEFAULT_BLOCK_EVENTS = 10_000
_POOL_BYTES = 1 << 20
_MAX_TEXT = 1024  # longest random string (an auction's extra is at most ~540)

_I64, _STR = pa.int64(), pa.string()
SCHEMAS = {
    "person": pa.schema([("id", _I64), ("name", _STR), ("email_address", _STR),
                         ("credit_card", _STR), ("city", _STR), ("state", _STR),
                         ("date_time", _I64), ("extra", _STR)]),
    "auction": pa.schema([("id", _I64), ("item_name", _STR), ("description", _STR),
                          ("initial_bid", _I64), ("reserve", _I64), ("date_time", _I64),
                          ("expires", _I64), ("seller", _I64), ("category", _I64),
                          ("extra", _STR)]),
    "bid": pa.schema([("auction", _I64), ("bidder", _I64), ("price", _I64),
                      ("channel", _STR), ("url", _STR), ("date_time", _I64),
                      ("extra", _STR)]),
}
"""Column names and types per kind (the Nexmark schema in snake_case; times in int64 ms)."""


# ---- ids: ordinals within a kind and the reference's "last id" rules -------------------

def kind_ordinal(kind: str, event_id: int) -> int:
    """How many events of ``kind`` have an event id below ``event_id``. Cost: O(1)."""
    first, count = _FIRST_OFFSET[kind], PROPORTIONS[kind]
    q, r = divmod(event_id, TOTAL_PROPORTION)
    return q * count + min(max(r - first, 0), count)


def kind_event_ids(kind: str, first_ordinal: int, n: int) -> np.ndarray:
    """Event ids (int64) of the ``n`` events of ``kind`` from ordinal ``first_ordinal``."""
    j = np.arange(first_ordinal, first_ordinal + n, dtype=np.int64)
    count = PROPORTIONS[kind]
    return (j // count) * TOTAL_PROPORTION + _FIRST_OFFSET[kind] + j % count


def last_person(e: np.ndarray) -> np.ndarray:
    """Base-0 id of the last person created at or before event ``e`` (reference rule)."""
    return e // TOTAL_PROPORTION  # one person per 50, at offset 0


def last_auction(e: np.ndarray) -> np.ndarray:
    """Base-0 id of the last auction created at or before event ``e`` (-1: none yet)."""
    epoch, off = e // TOTAL_PROPORTION, e % TOTAL_PROPORTION
    return np.where(off < 1, epoch * 3 - 1, epoch * 3 + np.minimum(off - 1, 2))


def _next_person(e: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A random active person (base 0): one of the last 1000, or up to 10 ahead."""
    num = last_person(e) + 1
    active = np.minimum(num, NUM_ACTIVE_PEOPLE)
    return num - active + _below(w, active + ID_LEAD)


def _next_auction(e: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A random in-flight auction (base 0): one of the last 100, or up to 10 ahead."""
    hi = last_auction(e)
    lo = np.maximum(hi - NUM_IN_FLIGHT_AUCTIONS, 0)
    return lo + _below(w, hi - lo + 1 + ID_LEAD)


def _below(w: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Uniform ints in ``[0, n)`` (int64) from uint64 words (bias below ``n / 2**64``)."""
    return (w % np.asarray(n, dtype=np.uint64)).astype(np.int64)


def _price(w: np.ndarray) -> np.ndarray:
    """The reference's price: ``round(10 ** (6 u) * 100)`` (round half up), int64."""
    u = (w >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))  # [0, 1), 53 bits
    return np.floor(np.power(10.0, u * 6.0) * 100.0 + 0.5).astype(np.int64)


def _extra_lengths(current: np.ndarray, average: int, w: np.ndarray) -> np.ndarray:
    """Padding so ``current + extra`` averages ``average`` (+-20 %), as the reference."""
    d = np.maximum(average - current, 0)
    delta = np.floor(d * 0.2 + 0.5).astype(np.int64)
    return d - delta + np.where(delta > 0, _below(w, np.maximum(2 * delta, 1)), 0)


# ---- per-seed tables: text pools and the channel/URL table -----------------------------

@dataclass(frozen=True)
class _Tables:
    text: np.ndarray  # uint8 letters with a space in 1/13 (names, descriptions, emails)
    letters: np.ndarray  # uint8 letters only (extra)
    channels: pa.Array  # 4 hot channels, then channel-0 .. channel-9999
    urls: pa.Array


def _key(seed: int) -> np.ndarray:
    return np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)


@functools.lru_cache(maxsize=8)
def _tables(seed: int) -> _Tables:
    """The fixed strings of one seed (1 MiB pools, 10,004 URLs). Cost: ~0.1 s once."""
    rng = np.random.Generator(np.random.Philox(key=_key(seed), counter=[0, 0, 0, 1]))
    letters = (rng.integers(0, 26, _POOL_BYTES) + ord("a")).astype(np.uint8)
    text = np.where(rng.integers(0, 13, _POOL_BYTES) == 0, ord(" "),
                    rng.integers(0, 26, _POOL_BYTES) + ord("a")).astype(np.uint8)
    n = len(HOT_CHANNELS) + NUM_CHANNELS  # URL paths: 3 parts of 3-4 chars, '_' in 1/13
    chars = np.where(rng.integers(0, 13, (n, 3, 4)) == 0, ord("_"),
                     rng.integers(0, 26, (n, 3, 4)) + ord("a")).astype(np.uint8)
    sizes = 3 + rng.integers(0, 2, (n, 3))
    with_id = rng.integers(0, 10, n) > 0
    urls = []
    for i in range(n):
        parts = [chars[i, j, :sizes[i, j]].tobytes().decode() for j in range(3)]
        url = f"https://www.nexmark.com/{'/'.join(parts)}/item.htm?query=1"
        c = i - len(HOT_CHANNELS)
        if c >= 0 and with_id[i]:
            rev = int(f"{c:032b}"[::-1], 2)  # Java's abs(Integer.reverse(c))
            url += f"&channel_id={abs(rev - (1 << 32) if rev >= 1 << 31 else rev)}"
        urls.append(url)
    channels = list(HOT_CHANNELS) + [f"channel-{i}" for i in range(NUM_CHANNELS)]
    return _Tables(text, letters, pa.array(channels, _STR), pa.array(urls, _STR))


def _substrings(pool: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A string array of ``pool[starts[i]:starts[i] + lengths[i]]``.

    Cost: a row gather of ``max(lengths)`` bytes per row from a strided view of the pool,
    then one boolean compress (about 6x faster than a byte-index gather).
    """
    n = len(lengths)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    width = int(lengths.max()) if n else 0
    view = as_strided(pool, shape=(len(pool) - width + 1, width), strides=(1, 1))
    data = view[starts][np.arange(width) < lengths[:, None]]
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _random_text(pool: np.ndarray, lengths: np.ndarray, w: np.ndarray,
                 trim: bool) -> pa.Array:
    """Random substrings of ``pool`` (lengths at most :data:`_MAX_TEXT`); trimmed of spaces."""
    out = _substrings(pool, _below(w, len(pool) - _MAX_TEXT), lengths)
    return pc.utf8_trim(out, " ") if trim else out


def _lengths(arr: pa.Array) -> np.ndarray:
    return pc.binary_length(arr).to_numpy().astype(np.int64)


_NAMES = pa.array([f"{f} {la}" for f in FIRST_NAMES for la in LAST_NAMES], _STR)
_NAME_LEN = np.array([len(f) + 1 + len(la) for f in FIRST_NAMES for la in LAST_NAMES])
_CITIES, _STATES = pa.array(US_CITIES, _STR), pa.array(US_STATES, _STR)
_CITY_LEN = np.array([len(c) for c in US_CITIES])


# ---- the three generators: event ids and random words in, a record batch out ---------

def _randoms(seed: int, kind: str, first_ordinal: int, n: int) -> np.ndarray:
    """The ``(n, words)`` uint64 randoms of ordinals ``first_ordinal ..`` of ``kind``.

    Philox in counter mode: ordinal ``j`` owns counters ``j * words / 4 + 1 ..``, so the
    words of an event never depend on which others are generated with it.
    """
    words = _WORDS[kind]
    gen = np.random.Philox(key=_key(seed),
                           counter=[first_ordinal * (words // 4), _KIND_CODE[kind], 0, 0])
    return gen.random_raw(n * words).reshape(n, words)


def _times(e: np.ndarray, rate: int, base_time: int) -> np.ndarray:
    return base_time + e * 1000 // rate


def _person(e: np.ndarray, r: np.ndarray, seed: int, rate: int, base: int) -> pa.RecordBatch:
    t = _tables(seed)
    name_idx = _below(r[:, 0], len(FIRST_NAMES)) * len(LAST_NAMES) + _below(r[:, 1],
                                                                            len(LAST_NAMES))
    user = _random_text(t.text, 3 + _below(r[:, 2], 4), r[:, 3], trim=True)
    domain = _random_text(t.text, 3 + _below(r[:, 4], 2), r[:, 5], trim=True)
    email = pc.binary_join_element_wise(user, domain, "@")
    email = pc.binary_join_element_wise(email, pa.scalar("", _STR), ".com")
    groups = [pc.utf8_lpad(pa.array(_below(r[:, 6 + g], 10_000)).cast(_STR), 4, "0")
              for g in range(4)]
    card = pc.binary_join_element_wise(*groups, " ")
    city = _below(r[:, 10], len(US_CITIES))
    state = _below(r[:, 11], len(US_STATES))
    current = 8 + _NAME_LEN[name_idx] + _lengths(email) + 19 + _CITY_LEN[city] + 2
    extra = _random_text(t.letters, _extra_lengths(current, AVG_BYTES["person"], r[:, 12]),
                         r[:, 13], trim=False)
    cols = [pa.array(FIRST_PERSON_ID + last_person(e)), _NAMES.take(name_idx), email, card,
            _CITIES.take(city), _STATES.take(state), pa.array(_times(e, rate, base)), extra]
    return pa.RecordBatch.from_arrays(cols, schema=SCHEMAS["person"])


def _auction(e: np.ndarray, r: np.ndarray, seed: int, rate: int, base: int) -> pa.RecordBatch:
    t = _tables(seed)
    hot_seller = (last_person(e) // HOT_BATCH) * HOT_BATCH
    seller = np.where(_below(r[:, 0], HOT_SELLERS_RATIO) > 0, hot_seller,
                      _next_person(e, r[:, 1])) + FIRST_PERSON_ID
    initial = _price(r[:, 3])
    ts = _times(e, rate, base)
    events_for_auctions = NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION // PROPORTIONS["auction"]
    horizon = _times(e + events_for_auctions, rate, base) - ts
    expires = ts + 1 + _below(r[:, 5], np.maximum(horizon * 2, 1))
    name = _random_text(t.text, 3 + _below(r[:, 6], 17), r[:, 7], trim=True)
    desc = _random_text(t.text, 3 + _below(r[:, 8], 97), r[:, 9], trim=True)
    current = 8 + _lengths(name) + _lengths(desc) + 40
    extra = _random_text(t.letters, _extra_lengths(current, AVG_BYTES["auction"], r[:, 10]),
                         r[:, 11], trim=False)
    cols = [pa.array(FIRST_AUCTION_ID + last_auction(e)), name, desc, pa.array(initial),
            pa.array(initial + _price(r[:, 4])), pa.array(ts), pa.array(expires),
            pa.array(seller), pa.array(FIRST_CATEGORY_ID + _below(r[:, 2], NUM_CATEGORIES)),
            extra]
    return pa.RecordBatch.from_arrays(cols, schema=SCHEMAS["auction"])


def _bid(e: np.ndarray, r: np.ndarray, seed: int, rate: int, base: int) -> pa.RecordBatch:
    t = _tables(seed)
    flags = r[:, 0]
    hot_auction = (last_auction(e) // HOT_BATCH) * HOT_BATCH
    auction = np.where(_below(flags, HOT_AUCTION_RATIO) > 0, hot_auction,
                       _next_auction(e, r[:, 1])) + FIRST_AUCTION_ID
    hot_bidder = (last_person(e) // HOT_BATCH) * HOT_BATCH + 1
    bidder = np.where(_below(flags >> np.uint64(8), HOT_BIDDERS_RATIO) > 0, hot_bidder,
                      _next_person(e, r[:, 2])) + FIRST_PERSON_ID
    hot = _below(flags >> np.uint64(16), 2) > 0
    channel = np.where(hot, _below(flags >> np.uint64(24), len(HOT_CHANNELS)),
                       len(HOT_CHANNELS) + _below(r[:, 4], NUM_CHANNELS))
    lengths = _extra_lengths(np.full(len(e), 32), AVG_BYTES["bid"], flags >> np.uint64(32))
    extra = _random_text(t.letters, lengths, r[:, 5], trim=False)
    cols = [pa.array(auction), pa.array(bidder), pa.array(_price(r[:, 3])),
            t.channels.take(channel), t.urls.take(channel), pa.array(_times(e, rate, base)),
            extra]
    return pa.RecordBatch.from_arrays(cols, schema=SCHEMAS["bid"])


_MAKERS = {"person": _person, "auction": _auction, "bid": _bid}


def generate(kind: str, seed: int, ranges: list[tuple[int, int]], rate: int = DEFAULT_RATE,
             base_time: int = DEFAULT_BASE_TIME) -> pa.RecordBatch:
    """The events of ``kind`` with ordinals in each ``[lo, hi)`` of ``ranges``, in order.

    A pure function of its arguments; the rows of an ordinal are the same whatever the
    ranges around it. Cost: O(rows) vectorized, one Philox call per range.
    """
    ranges = [(lo, hi) for lo, hi in ranges if hi > lo]
    if not ranges:
        return pa.RecordBatch.from_pylist([], schema=SCHEMAS[kind])
    e = np.concatenate([kind_event_ids(kind, lo, hi - lo) for lo, hi in ranges])
    r = np.concatenate([_randoms(seed, kind, lo, hi - lo) for lo, hi in ranges])
    return _MAKERS[kind](e, r, seed, rate, base_time)


# ---- the source ------------------------------------------------------------------------
