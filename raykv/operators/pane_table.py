"""``PaneTable``: closed sliding-window panes held in memory, sorted by (user key, start).

Contract: a table lists panes of one shard, each once, sorted by ``(uid, ps)`` where
``uid`` indexes ``users`` (sorted, distinct encoded user keys: so ``uid`` order is the
encoded-key order) and ``ps`` is the pane start; ``keys`` are their state keys and
``st``/``tails`` their decoded aggregation states (``panes.decode_states``).
``SlidingWindow`` keeps the panes that can no longer change (closed: their first window
has ended by the watermark, so every later event for them is late) in such a table between
barriers, as an accelerator only: the engine holds the same states, and a table rebuilt
from the engine (after a restore, or after panes were evicted to keep the table under its
byte budget) gives the same output.

Cost: all numpy (object arrays for keys and tails), no Python loop per pane except in
:meth:`PaneTable.build` (one dict lookup per pane); :meth:`union` is O(p) when the new
panes come after the old ones of each user (the usual case: a stable merge of two sorted
runs), O(p log p) otherwise, plus O(u log u) for ``u`` distinct user keys. Memory:
``layout.size`` bytes per pane plus the key, the tail and about 40 bytes of index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raykv.operators.aggstate import AggLayout
from raykv.operators.panes import decode_states


def objects(items: Sequence[bytes]) -> np.ndarray:
    """``items`` as a 1-d numpy object array (fancy indexing without a Python loop)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


@dataclass(frozen=True)
class PaneTable:
    """Panes sorted by ``(uid, ps)`` with their decoded states (see the module docstring)."""

    users: list[bytes]
    uid: np.ndarray
    ps: np.ndarray
    #: Fixed parts of the states as ``V{layout.size}`` (fast to index; view them as
    #: ``layout.dtype`` to read fields).
    st: np.ndarray
    #: Variable tails (object array of bytes), ``None`` when the layout has none.
    tails: np.ndarray | None
    #: State keys (object array of bytes).
    keys: np.ndarray

    @classmethod
    def empty(cls, layout: AggLayout) -> PaneTable:
        """A table without panes."""
        none = np.zeros(0, np.int64)
        tails = objects([]) if layout.var_fields else None
        return cls([], none, none, np.zeros(0, f"V{layout.size}"), tails, objects([]))

    @classmethod
    def build(
        cls, layout: AggLayout, keys: list[bytes], ps: np.ndarray, values: Sequence[bytes]
    ) -> PaneTable:
        """A table from the panes ``keys[i]`` (start ``ps[i]``) ``-> values[i]``.

        ``keys`` are state keys (encoded user key + 8-byte suffix), in any order, distinct.
        """
        uniq, uid = _user_ids(keys)
        st, tails = decode_states(layout, values)
        ps = np.asarray(ps, dtype=np.int64)
        table = cls(uniq, uid, ps, st.view(f"V{layout.size}"),
                    None if tails is None else objects(tails), objects(keys))
        return table.take(_order(uid, ps))

    def __len__(self) -> int:
        return len(self.uid)

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the panes (states, keys, tails, index)."""
        per = 16 + 2 * 40 + (len(self.keys[0]) if len(self.keys) else 0)
        if self.tails is not None:
            per += 40 + (len(self.tails[0]) if len(self.tails) else 0)
        return int(self.st.nbytes) + per * len(self.uid)

    def take(self, idx: np.ndarray) -> PaneTable:
        """The panes at ``idx`` (in that order; keep ``idx`` increasing to stay sorted)."""
        tails = None if self.tails is None else self.tails[idx]
        return PaneTable(self.users, self.uid[idx], self.ps[idx], self.st[idx], tails,
                         self.keys[idx])

    def union(self, other: PaneTable) -> PaneTable:
        """Both tables' panes in one table (their panes must differ)."""
        if not len(other):
            return self
        if not len(self):
            return other
        uniq = sorted(set(self.users).union(other.users))
        pos = {u: i for i, u in enumerate(uniq)}
        mine = np.fromiter(map(pos.__getitem__, self.users), np.int64, len(self.users))
        theirs = np.fromiter(map(pos.__getitem__, other.users), np.int64, len(other.users))
        uid = np.concatenate([mine[self.uid], theirs[other.uid]])
        ps = np.concatenate([self.ps, other.ps])
        order = np.argsort(uid, kind="stable")  # merges the two sorted runs
        u, p = uid[order], ps[order]
        if len(u) > 1 and not np.all((u[1:] > u[:-1]) | (p[1:] > p[:-1])):
            order = _order(uid, ps)
        tails = None
        if self.tails is not None and other.tails is not None:
            tails = np.concatenate([self.tails, other.tails])[order]
        return PaneTable(uniq, uid[order], ps[order],
                         np.concatenate([self.st, other.st])[order], tails,
                         np.concatenate([self.keys, other.keys])[order])


def _order(uid: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """The permutation sorting distinct ``(uid, ps)`` pairs (one int64 sort when it fits)."""
    if not len(uid):
        return np.zeros(0, np.intp)
    base = int(ps.min())
    span = int(ps.max()) - base + 1
    if (int(uid.max()) + 1) * span < (1 << 62):
        out: np.ndarray = np.argsort(uid * span + (ps - base))
        return out
    return np.lexsort((ps, uid))


def _user_ids(keys: list[bytes]) -> tuple[list[bytes], np.ndarray]:
    """The sorted distinct user keys of state ``keys`` and each key's index among them.

    Vectorized when every state key is 16 bytes (8-byte user keys: integer and temporal
    key columns); one slice and one dict lookup per key otherwise.
    """
    buf = b"".join(keys)
    if len(buf) == 16 * len(keys):
        words = np.frombuffer(buf, dtype=">u8")[0::2]
        found, uid = np.unique(words, return_inverse=True)
        users: list[bytes] = found.astype(">u8").view("V8").tolist()
        return users, uid.astype(np.int64)
    split = [k[:-8] for k in keys]
    uniq = sorted(set(split))
    pos = {u: i for i, u in enumerate(uniq)}
    return uniq, np.fromiter(map(pos.__getitem__, split), dtype=np.int64, count=len(split))
