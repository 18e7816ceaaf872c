"""Per-group multisets of values: the retractable state behind min/max over a changelog.

An ``Aggregate`` whose input is a changelog keeps, for each aggregated column with
``min`` or ``max``, how many live rows of each group hold each distinct non-null value.
A retraction (-U/-D) decrements a value's count; a value whose count reaches 0 is
dropped; the group's min and max are the smallest and largest values with a positive
count, so retracting the current extreme falls back to the next one exactly.

This module is the pure part (no engine, no Arrow): the byte encoding of the multisets
of one group, and a vectorized merge of many groups' old multisets with signed deltas.
``aggminmax.py`` plugs it into ``Aggregate``.

Encoding of one group's *section* (little-endian; ``docs/operators.md``), for each
multiset column in order::

    uint32 n                          distinct values held
    n x int64 count                   their counts, in ascending value order (never 0)
    fixed kinds ('i', 'u', 'f'):      n x 8-byte value (int64 | uint64 | float64 bits)
    variable kind ('v'):              n x uint32 length, then the n values' bytes

Values are ordered by number for 'i'/'u', by float value for 'f' (NaN after all numbers,
ties such as ``0.0``/``-0.0`` by bit pattern: equal bits are one entry) and bytewise for
'v'. An empty section (``b""``) means every multiset is empty. A count is normally
positive; a negative count (a retraction that arrived before its insertion) is kept so
that the later insertion cancels it, and it never makes a value a min or max.

Cost: decoding and encoding are a Python step per group and column plus one
``np.frombuffer`` per column over all groups; a merge is one ``np.lexsort`` over the old
and new entries of the touched groups (Python sorting for the variable kind), so a fold
costs O(sum of the touched groups' distinct values), and a group's state grows by 16
bytes (fixed kinds) per distinct value it holds.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_LEN = struct.Struct("<I")
_DTYPES = {"i": np.dtype("<i8"), "u": np.dtype("<u8"), "f": np.dtype("<f8")}


@dataclass
class Entries:
    """The entries of many groups' multisets of one column, sorted by (group, value).

    Attributes:
        g: int64 group of each entry (``0 <= g < groups``), ascending.
        v: the values: a numpy array (int64, uint64 or float64) for the fixed kinds, a
            list of ``bytes`` for 'v'.
        c: int64 count of each entry.
    """

    g: np.ndarray
    v: np.ndarray | list[bytes]
    c: np.ndarray

    def __len__(self) -> int:
        return len(self.g)


def empty(kind: str) -> Entries:
    """No entries."""
    v: np.ndarray | list[bytes] = [] if kind == "v" else np.zeros(0, _DTYPES[kind])
    return Entries(np.zeros(0, np.int64), v, np.zeros(0, np.int64))


def decode(sections: Sequence[bytes], kinds: Sequence[str]) -> list[Entries]:
    """The entries of each column (``kinds[j]``) of ``sections`` (group ``i`` at ``[i]``).

    Cost: with fixed kinds only, numpy gathers over the joined sections (a Python step
    per column, none per group beyond a ``len``); with a string/binary column, a Python
    step per group and value.

    Raises:
        ValueError: a section is truncated or has bytes left over (not this layout).
    """
    if "v" not in kinds:
        return _decode_fixed(sections, kinds)
    return _decode_py(sections, kinds)


def _decode_py(sections: Sequence[bytes], kinds: Sequence[str]) -> list[Entries]:
    ncols = len(kinds)
    counts: list[list[bytes]] = [[] for _ in range(ncols)]
    values: list[list[bytes]] = [[] for _ in range(ncols)]
    var: list[list[bytes]] = [[] for _ in range(ncols)]
    sizes: list[list[int]] = [[] for _ in range(ncols)]
    for sec in sections:
        pos = 0
        for j, kind in enumerate(kinds):
            if not sec:
                sizes[j].append(0)
                continue
            (n,) = N_LEN.unpack_from(sec, pos)
            pos += 4
            counts[j].append(sec[pos : pos + 8 * n])
            pos += 8 * n
            if kind == "v":
                lens = np.frombuffer(sec, "<u4", n, pos).tolist()
                pos += 4 * n
                for ln in lens:
                    var[j].append(sec[pos : pos + ln])
                    pos += ln
            else:
                values[j].append(sec[pos : pos + 8 * n])
                pos += 8 * n
            sizes[j].append(n)
        if pos != len(sec):
            msg = f"multiset section of {len(sec)} bytes does not decode ({pos} bytes used)"
            raise ValueError(msg)
    out = []
    for j, kind in enumerate(kinds):
        g = np.repeat(np.arange(len(sections), dtype=np.int64), sizes[j])
        c = np.frombuffer(b"".join(counts[j]), np.int64).copy()
        v: np.ndarray | list[bytes] = var[j] if kind == "v" else np.frombuffer(
            b"".join(values[j]), _DTYPES[kind]).copy()
        out.append(Entries(g, v, c))
    return out


def encode(columns: Sequence[Entries], kinds: Sequence[str], groups: int) -> list[bytes]:
    """The section of each of ``groups`` groups (``b""`` where every multiset is empty).

    Cost: with fixed kinds only, one numpy gather of all the bytes and a slice per group;
    with a string/binary column, a Python step per group and column.
    """
    if "v" not in kinds:
        return _encode_fixed(columns, kinds, groups)
    return _encode_py(columns, kinds, groups)


def _encode_py(columns: Sequence[Entries], kinds: Sequence[str], groups: int) -> list[bytes]:
    per_col: list[tuple[np.ndarray, bytes, bytes | list[bytes]]] = []
    for e, kind in zip(columns, kinds, strict=True):
        bounds = np.searchsorted(e.g, np.arange(groups + 1))
        raw: bytes | list[bytes] = e.v if isinstance(e.v, list) else np.asarray(
            e.v, _DTYPES[kind]).tobytes()
        per_col.append((bounds, np.asarray(e.c, np.int64).tobytes(), raw))
    out = []
    for i in range(groups):
        parts: list[bytes] = []
        any_entry = False
        for bounds, cbytes, raw in per_col:
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            any_entry |= hi > lo
            parts.append(N_LEN.pack(hi - lo))
            parts.append(cbytes[8 * lo : 8 * hi])
            if isinstance(raw, list):
                vals = raw[lo:hi]
                parts.append(np.fromiter(map(len, vals), "<u4", hi - lo).tobytes())
                parts.extend(vals)
            else:
                parts.append(raw[8 * lo : 8 * hi])
        out.append(b"".join(parts) if any_entry else b"")
    return out


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices of the ranges ``[start, start + length)``, concatenated in order."""
    starts = starts.ravel()
    lengths = lengths.ravel()
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(
        int(ends[-1]) if len(ends) else 0)


def _encode_fixed(columns: Sequence[Entries], kinds: Sequence[str], groups: int) -> list[bytes]:
    """:func:`encode` for fixed kinds: one gather builds every group's section."""
    ncols = len(kinds)
    starts = np.zeros((groups, 3 * ncols), np.int64)
    lengths = np.zeros((groups, 3 * ncols), np.int64)
    held = np.zeros(groups, np.int64)
    src: list[np.ndarray] = []
    base = 0
    at = np.arange(groups, dtype=np.int64)
    for j, (e, kind) in enumerate(zip(columns, kinds, strict=True)):
        bounds = np.searchsorted(e.g, np.arange(groups + 1))
        lo, n = bounds[:-1].astype(np.int64), np.diff(bounds).astype(np.int64)
        cbytes = np.ascontiguousarray(e.c, "<i8").view(np.uint8)
        vbytes = np.ascontiguousarray(e.v, _DTYPES[kind]).view(np.uint8)
        for k, (arr, start, length) in enumerate((
                (n.astype("<u4").view(np.uint8), 4 * at, np.full(groups, 4)),
                (cbytes, 8 * lo, 8 * n), (vbytes, 8 * lo, 8 * n))):
            starts[:, 3 * j + k] = base + start
            lengths[:, 3 * j + k] = length
            src.append(arr)
            base += len(arr)
        held += n
    lengths[held == 0] = 0  # a group with no entry at all: b""
    raw = np.concatenate(src)[_ranges(starts, lengths)].tobytes() if src else b""
    offs = np.concatenate([[0], np.cumsum(lengths.sum(axis=1))]).tolist()
    return [raw[offs[i] : offs[i + 1]] for i in range(groups)]


def _decode_fixed(sections: Sequence[bytes], kinds: Sequence[str]) -> list[Entries]:
    """:func:`decode` for fixed kinds: numpy gathers over the joined sections."""
    groups = len(sections)
    lens = np.fromiter(map(len, sections), np.int64, groups)
    raw = np.frombuffer(b"".join(sections), np.uint8)
    ends = np.cumsum(lens)
    pos = ends - lens
    live = np.flatnonzero(lens > 0)
    out = []
    for kind in kinds:
        n = np.zeros(groups, np.int64)
        if (pos[live] + 4 > ends[live]).any():
            msg = "multiset section is truncated (no room for a value count)"
            raise ValueError(msg)
        n[live] = raw[_ranges(pos[live], np.full(len(live), 4))].view("<u4")
        cstart = pos + 4
        vstart = cstart + 8 * n
        pos = np.where(lens > 0, vstart + 8 * n, pos)
        if (pos > ends).any():
            msg = "multiset section is truncated (fewer values than its count says)"
            raise ValueError(msg)
        c = raw[_ranges(cstart, 8 * n)].view("<i8")
        v = raw[_ranges(vstart, 8 * n)].view(_DTYPES[kind])
        out.append(Entries(np.repeat(np.arange(groups, dtype=np.int64), n), v, c))
    if (pos != ends).any():
        i = int(np.argmax(pos != ends))
        msg = (f"multiset section of {lens[i]} bytes does not decode "
               f"({pos[i] - ends[i] + lens[i]} bytes used)")
        raise ValueError(msg)
    return out


def merge(old: Entries, delta: Entries, kind: str) -> Entries:
    """``old`` plus the signed counts of ``delta`` (any order, repeats allowed), sorted.

    Entries whose count sums to 0 are dropped. Cost: one sort of both (numpy for fixed
    kinds, Python for 'v').
    """
    if kind == "v":
        return _merge_var(old, delta)
    g = np.concatenate([old.g, delta.g])
    v = np.concatenate([np.asarray(old.v), np.asarray(delta.v, _DTYPES[kind])])
    c = np.concatenate([old.c, delta.c])
    if kind == "f":
        bits = v.view(np.int64)
        order = np.lexsort((bits, v, g))
    else:
        bits = v
        order = np.lexsort((v, g))
    g, v, c, bits = g[order], v[order], c[order], bits[order]
    if not len(g):
        return Entries(g, v, c)
    new = np.ones(len(g), dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (bits[1:] != bits[:-1])
    starts = np.flatnonzero(new)
    c = np.add.reduceat(c, starts)
    keep = c != 0
    return Entries(g[starts][keep], v[starts][keep], c[keep])


def _merge_var(old: Entries, delta: Entries) -> Entries:
    total: dict[tuple[int, bytes], int] = {}
    for part in (old, delta):
        for gi, vi, ci in zip(part.g.tolist(), part.v, part.c.tolist(), strict=True):
            total[gi, vi] = total.get((gi, vi), 0) + ci
    kept = sorted((k, c) for k, c in total.items() if c)
    g = np.fromiter((k[0] for k, _ in kept), np.int64, len(kept))
    c = np.fromiter((n for _, n in kept), np.int64, len(kept))
    return Entries(g, [k[1] for k, _ in kept], c)


def extremes(
    e: Entries, kind: str, groups: int
) -> tuple[np.ndarray, np.ndarray | list[bytes | None], np.ndarray | list[bytes | None]]:
    """``(has, mins, maxs)`` per group over the values with a positive count.

    ``has[i]``: group ``i`` holds some value. Float min/max skip NaN unless the group
    holds only NaN (Arrow's rule). Where ``has`` is false, a fixed kind's min/max is 0
    and a variable kind's ``None``.
    """
    pos = np.flatnonzero(e.c > 0)
    gp = e.g[pos]
    has = np.zeros(groups, dtype=bool)
    has[gp] = True
    if kind == "v":
        vals = e.v
        assert isinstance(vals, list)
        mins: list[bytes | None] = [None] * groups
        maxs: list[bytes | None] = [None] * groups
        for gi, i in zip(gp.tolist(), pos.tolist(), strict=True):
            if mins[gi] is None:
                mins[gi] = vals[i]
            maxs[gi] = vals[i]  # ascending: the last one wins
        return has, mins, maxs
    v = np.asarray(e.v)
    lo = np.zeros(groups, v.dtype)
    hi = np.zeros(groups, v.dtype)
    # entries are sorted by (group, value): a group's first positive entry is its min,
    # its last positive (float: non-NaN) entry its max
    groups_lo, at = np.unique(gp, return_index=True)
    lo[groups_lo] = v[pos[at]]
    cand = pos[~np.isnan(v[pos])] if kind == "f" else pos
    gc = e.g[cand]
    groups_hi, at = np.unique(gc[::-1], return_index=True)
    hi[groups_hi] = v[cand[len(cand) - 1 - at]]
    if kind == "f":  # a group holding only NaN: its max is NaN too
        num = np.zeros(groups, dtype=bool)
        num[groups_hi] = True
        hi[has & ~num] = np.nan
    return has, lo, hi


__all__ = ["Entries", "decode", "empty", "encode", "extremes", "merge"]
