"""Vectorized pair finding for joins: equal groups, values within per-row ranges.

Contract: pure numpy functions over int64 arrays, no Python per row. A *group* is a
small non-negative int naming what must be equal for two rows to meet (a key id, or a
key and window id); a *value* an int64 (an event time) compared with per-row bounds.
"""

from __future__ import annotations

import numpy as np

_EMPTY = np.zeros(0, dtype=np.int64)


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(i, p)`` for every ``i`` and every ``p`` in ``[lo[i], hi[i])``."""
    counts = np.maximum(hi - lo, 0)
    total = int(counts.sum())
    if not total:
        return _EMPTY, _EMPTY
    i = np.repeat(np.arange(len(lo), dtype=np.int64), counts)
    start = np.cumsum(counts) - counts
    p = np.repeat(lo - start, counts) + np.arange(total, dtype=np.int64)
    return i, p


def pairs_in_range(
    lgroup: np.ndarray, llo: np.ndarray, lhi: np.ndarray, rgroup: np.ndarray, rval: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)`` with ``lgroup[i] == rgroup[j]`` and ``llo[i] <= rval[j] <= lhi[i]``.

    Returns two int64 arrays of equal length (pairs ordered by ``i``, then by
    ``rval[j]``, then ``j``). Cost: O((n + m) log(n + m) + pairs).
    """
    if not len(lgroup) or not len(rgroup):
        return _EMPTY, _EMPTY
    order = np.lexsort((np.arange(len(rval)), rval, rgroup))
    # dense ranks of every value and bound, so (group, rank) fits one int64
    ranks = np.unique(np.concatenate([rval, llo, lhi]), return_inverse=True)[1]
    m = len(rval)
    n = len(llo)
    width = np.int64(ranks.max() + 1)
    rkey = rgroup[order] * width + ranks[:m][order]
    lo = np.searchsorted(rkey, lgroup * width + ranks[m : m + n], side="left")
    hi = np.searchsorted(rkey, lgroup * width + ranks[m + n :], side="right")
    i, p = _expand(lo, hi)
    return i, order[p]


def pairs_equal(lgroup: np.ndarray, rgroup: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)`` with ``lgroup[i] == rgroup[j]`` (ordered by ``i``, then ``j``).

    Cost: O((n + m) log m + pairs).
    """
    if not len(lgroup) or not len(rgroup):
        return _EMPTY, _EMPTY
    order = np.argsort(rgroup, kind="stable")
    sorted_r = rgroup[order]
    lo = np.searchsorted(sorted_r, lgroup, side="left")
    hi = np.searchsorted(sorted_r, lgroup, side="right")
    i, p = _expand(lo, hi)
    return i, order[p]


def latest_at_or_before(
    lgroup: np.ndarray, lval: np.ndarray, rgroup: np.ndarray, rval: np.ndarray
) -> np.ndarray:
    """For each ``i``: the ``j`` of its group with the largest ``rval[j] <= lval[i]``.

    Ties: the largest ``j`` (the latest arrival); ``-1`` if there is none.

    Cost: O((n + m) log(n + m)).
    """
    out = np.full(len(lgroup), -1, dtype=np.int64)
    if not len(lgroup) or not len(rgroup):
        return out
    order = np.lexsort((np.arange(len(rval)), rval, rgroup))
    ranks = np.unique(np.concatenate([rval, lval]), return_inverse=True)[1]
    m = len(rval)
    width = np.int64(ranks.max() + 1)
    rkey = rgroup[order] * width + ranks[:m][order]
    pos = np.searchsorted(rkey, lgroup * width + ranks[m:], side="right") - 1
    ok = pos >= 0
    ok[ok] = rgroup[order[pos[ok]]] == lgroup[ok]
    out[ok] = order[pos[ok]]
    return out


def first_rows(groups: np.ndarray) -> np.ndarray:
    """Positions of the first row of each distinct group, in group order."""
    return np.unique(groups, return_index=True)[1]


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``(a[i], b[i])`` pairs sorted by ``a`` then ``b``, and each row's pair index.

    ``a`` holds small non-negative ints (ids), ``b`` any int64 (buckets). Returns an
    ``(n, 2)`` array and the inverse. Cost: one 1-D ``np.unique`` of int64 codes.
    """
    if not len(a):
        return np.zeros((0, 2), dtype=np.int64), _EMPTY
    lo = b.min()
    span = np.int64(b.max() - lo + 1)
    if span and a.max() < np.iinfo(np.int64).max // span:
        codes, inverse = np.unique(a * span + (b - lo), return_inverse=True)
        pairs = np.stack([codes // span, codes % span + lo], axis=1)
        return pairs, inverse.ravel()
    pairs, inverse = np.unique(np.stack([a, b], axis=1), axis=0, return_inverse=True)
    return pairs, inverse.ravel()
