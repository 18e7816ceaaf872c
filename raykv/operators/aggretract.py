"""How ``Aggregate`` retracts: the partials of a changelog batch and the groups it empties.

Over a changelog input (``raykv.operators.changelog``) every row is counted in a hidden
field, :data:`ROWS`: +I/+U rows add their partials, -U/-D rows subtract theirs (count and
sum negated), and a group whose row count falls to zero is deleted. Min and max are kept
apart, as multisets (``aggminmax.py``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raykv.operators.aggstate import AggLayout
from raykv.operators.changelog import split_signs

#: The hidden column a changelog input's rows are counted in (a key with none is deleted).
ROWS = "\x00rows"


def signed_partials(layout: AggLayout, batch: pa.RecordBatch, key: str) -> list[pa.Table]:
    """Partials of a changelog batch by ``key``: added rows, then retracted rows negated.

    Cost: one Arrow group_by per sign present in the batch.
    """
    out = []
    for rows, sign in zip(split_signs(batch), (1, -1), strict=True):
        if not rows.num_rows:
            continue
        rows = rows.append_column(ROWS, pa.array(np.ones(rows.num_rows, np.int64)))
        part = layout.partials(rows, [key])
        if sign < 0:
            for name in part.column_names:
                if name.endswith(("_count", "_sum")) and name.startswith("\x00"):
                    i = part.schema.get_field_index(name)
                    part = part.set_column(i, name, pc.negate(part.column(name)))
        out.append(part)
    return out


def drop_empty(layout: AggLayout, keys: list[bytes], new: list[bytes],
               deleted: set[bytes]) -> list[bytes]:
    """``new`` with the values of groups left without rows replaced by ``b""`` (delete).

    ``deleted`` (the epoch's deleted keys) gains those keys and loses the others.
    Cost: one NumPy view of the fixed fields; Python per key only when some emptied.
    """
    if not keys:
        return new
    st = np.frombuffer(b"".join(v[:layout.size] for v in new), layout.dtype)  # fixed fields
    empty = st[layout.cols[-1].field("count")] <= 0  # the hidden ROWS column
    if not empty.any():
        deleted.difference_update(keys)
        return new
    out = []
    for k, v, gone in zip(keys, new, empty.tolist(), strict=True):
        if gone:
            deleted.add(k)
            out.append(b"")
        else:
            deleted.discard(k)
            out.append(v)
    return out


__all__ = ["ROWS", "drop_empty", "signed_partials"]
