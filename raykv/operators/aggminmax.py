"""Min and max over a changelog: ``Aggregate``'s per-group multisets, in the group's value.

Used only by an ``Aggregate`` whose input carries row kinds (``raykv.operators.changelog``)
and that has ``min`` or ``max`` on some column: the append-only path never builds it. For
each such column the group's state value keeps a multiset (value -> count of live rows,
``multiset.py``) after the usual fixed layout (``aggstate.py``)::

    value = layout part (fixed fields + variable tail) | multiset section | uint32 len(section)

Each batch adds the signed count of every (group, value) pair (+1 for +I/+U rows, -1 for
-U/-D rows; one Arrow group_by per column); each fold merges them into the touched
groups' multisets and writes the smallest and largest value still held into the layout's
``min``/``max`` fields, so rendering, tombstones and the changelog stay those of the other
ops. Everything lives in the engine value, so checkpoints, restores, rescaling and
rebalancing carry it like any other state.

Why in the value and not one engine key per (group, value): the recomputation after the
extreme is retracted needs the group's values in order, which the hash engines (HybridLog,
AppendLog) cannot scan, and a suffixed key would need another routing rule. The price: a
fold rewrites a touched group's whole multiset, 16 bytes per distinct value of fixed
kinds (a group holding a million distinct values is a 16 MB value, the default
``max_value_len``; the fold then refuses it with a ``ValueError`` naming the group).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raykv.operators import multiset
from raykv.operators.aggstate import AggLayout
from raykv.operators.aggstorage import TAIL_LEN, split_tail, to_storage
from raykv.operators.changelog import CHANGE, DELETE, UPDATE_BEFORE

TRAILER = struct.Struct("<I")
#: Format tag of the multiset section (appended to the state layout id).
FORMAT = "multiset/1"


class MinMaxMultisets:
    """The multisets of the ``min``/``max`` columns of one ``Aggregate`` layout.

    Args:
        layout: the stage's state layout (its ``min``/``max`` fields are overwritten).
        key: the key column.
    """

    def __init__(self, layout: AggLayout, key: str) -> None:
        self.layout = layout
        self.key = key
        self.cols = [c for c in layout.cols if {"min", "max"} & set(c.stats)]
        self.kinds = [c.kind for c in self.cols]
        self.tag = f";{FORMAT}:" + ",".join(f"{c.index}{c.kind}" for c in self.cols)

    @staticmethod
    def wanted(layout: AggLayout) -> bool:
        """Whether ``layout`` has a ``min`` or ``max`` field (then a multiset is kept)."""
        return any({"min", "max"} & set(c.stats) for c in layout.cols)

    # ------------------------------------------------------------------ values

    @staticmethod
    def split(values: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """``(layout parts, multiset sections)`` of state values (``b""``: both empty)."""
        parts: list[bytes] = []
        sections: list[bytes] = []
        for v in values:
            if not v:
                parts.append(b"")
                sections.append(b"")
                continue
            end = len(v) - 4
            (n,) = TRAILER.unpack_from(v, end)
            parts.append(v[: end - n])
            sections.append(v[end - n : end])
        return parts, sections

    @staticmethod
    def join(part: bytes, section: bytes) -> bytes:
        """A state value from its layout part and its multiset section."""
        return part + section + TRAILER.pack(len(section))

    # ------------------------------------------------------------------ input

    def deltas(self, batch: pa.RecordBatch) -> list[pa.Table]:
        """Per multiset column, the signed row count of each (key, value) of ``batch``.

        ``batch`` is a canonical changelog batch (with ``CHANGE``). Each table has the
        columns ``k`` (key), ``v`` (storage value; float bits as int64) and ``n_sum``
        (int64). Nulls are skipped. Cost: one Arrow group_by per column.
        """
        kinds = batch.column(CHANGE)
        minus = pc.or_(pc.equal(kinds, UPDATE_BEFORE), pc.equal(kinds, DELETE))
        signs = pc.if_else(minus, pa.scalar(-1, pa.int64()), pa.scalar(1, pa.int64()))
        out = []
        for c in self.cols:
            arr = to_storage(batch.column(c.name), c.kind)
            if c.kind == "f":
                arr = arr.view(pa.int64())  # group bit patterns: NaN is one value
            t = pa.table({"k": batch.column(self.key), "v": arr, "n": signs})
            if arr.null_count:
                t = t.filter(arr.is_valid())
            out.append(t.group_by(["k", "v"], use_threads=False).aggregate([("n", "sum")]))
        return out

    # ------------------------------------------------------------------ fold

    def apply(
        self,
        old_sections: Sequence[bytes],
        new_parts: Sequence[bytes],
        key_col: pa.Array | pa.ChunkedArray,
        deltas: Sequence[Sequence[pa.Table]],
    ) -> list[bytes]:
        """The new state values: ``new_parts`` with exact min/max, and the new multisets.

        Args:
            old_sections: the multiset sections of the groups' stored values (from
                :meth:`split`; ``b""``: none), group ``g`` at ``old_sections[g]``.
            new_parts: the layout parts the kernels computed from the stored layout parts
                (their min/max fields are not meaningful over retractions).
            key_col: the groups' canonical keys, group ``g`` at ``key_col[g]``.
            deltas: per multiset column, the :meth:`deltas` tables since the last fold
                (every key among ``key_col``).

        Cost: see ``multiset.py``; plus a numpy pass over the fixed fields and, with
        string/binary columns, a Python step per group.
        """
        groups = len(old_sections)
        olds = multiset.decode(old_sections, self.kinds)
        keys = key_col.combine_chunks() if isinstance(key_col, pa.ChunkedArray) else key_col
        layout = self.layout
        size = layout.size
        st = np.frombuffer(b"".join(v[:size] for v in new_parts), layout.dtype).copy()
        tails = [split_tail(v[size:], len(layout.var_fields)) for v in new_parts] \
            if layout.var_fields else []
        merged = []
        for j, c in enumerate(self.cols):
            delta = _entries(deltas[j], keys, c.kind)
            now = multiset.merge(olds[j], delta, c.kind) if len(delta) else olds[j]
            merged.append(now)
            _has, lo, hi = multiset.extremes(now, c.kind, groups)
            for stat, vals in (("min", lo), ("max", hi)):
                if stat not in c.stats:
                    continue
                if c.kind != "v":
                    st[c.field(stat)] = vals
                    continue
                at = layout.var_fields.index((c.index, stat))
                for g, v in enumerate(vals):
                    tails[g][at] = v or b""
        sections = multiset.encode(merged, self.kinds, groups)
        fixed: list[bytes] = st.view(f"V{size}").tolist() if groups else []
        if tails:
            fixed = [f + b"".join(TAIL_LEN.pack(len(x)) + x for x in t)
                     for f, t in zip(fixed, tails, strict=True)]
        return [self.join(p, s) for p, s in zip(fixed, sections, strict=True)]


    @staticmethod
    def check_sizes(values: Sequence[bytes], key_col: pa.Array | pa.ChunkedArray, limit: int,
                    name: str) -> None:
        """Refuse a value over the engine's ``limit``, naming the group (before writing).

        Raises:
            ValueError: a group keeps too many distinct values for one engine value.
        """
        if not values or max(map(len, values)) <= limit:
            return
        i = next(i for i, v in enumerate(values) if len(v) > limit)
        msg = (
            f"{name}: the state of key {key_col[i].as_py()!r} would be "
            f"{len(values[i]):,} bytes, more than the engine's max_value_len={limit:,}: "
            "min/max over a changelog keep every distinct value of a group (16 bytes each "
            "for numbers); raise max_value_len in engine_params or aggregate fewer distinct "
            "values per group"
        )
        raise ValueError(msg)


def _entries(tables: Sequence[pa.Table], keys: pa.Array, kind: str) -> multiset.Entries:
    """The signed (group, value, count) entries of ``deltas`` tables, groups by ``keys``."""
    if not tables:
        return multiset.empty(kind)
    d = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    g = pc.index_in(d.column("k"), value_set=keys).to_numpy(zero_copy_only=False)
    n = d.column("n_sum").to_numpy(zero_copy_only=False).astype(np.int64)
    vcol = d.column("v")
    v: np.ndarray | list[bytes]
    if kind == "v":
        v = vcol.to_pylist()
    else:
        v = vcol.to_numpy(zero_copy_only=False)
        if kind == "f":
            v = np.ascontiguousarray(v, np.int64).view(np.float64)
    return multiset.Entries(np.asarray(g, np.int64), v, n)


__all__ = ["FORMAT", "MinMaxMultisets"]
