"""The changelog between stages: every row carries its kind, so updates compose.

A stage whose operator keeps a value per key and emits it again when it changes
(``Aggregate``) sends the next stage a *changelog*: each row has the column
:data:`CHANGE` (``int8``) with one of

=====  ===================  ============================================================
value  name                 meaning
=====  ===================  ============================================================
0      ``INSERT``           a new key's first value (+I)
1      ``UPDATE_BEFORE``    the value a key had before this epoch, retracted (-U)
2      ``UPDATE_AFTER``     the key's new value (+U); follows its -U
3      ``DELETE``           the key's last value, retracted; the key is gone (-D)
=====  ===================  ============================================================

A consumer adds the rows of kinds 0 and 2 and retracts those of kinds 1 and 3, so a
second stage sees every first-stage key once, with its latest value, however many epochs
changed it (Flink's row kinds; RisingWave's and Arroyo's updating streams). A re-keyed
consumer gets the -U row at the shard of the old row's key and the +U row at the new
one's, because each carries its whole row.

Which operator does what (checked when the pipeline is built, :func:`check_chain`):

* emits a changelog: ``Aggregate`` and ``Reduce`` (:attr:`KeyedOperator.emits_updates`
  and :attr:`KeyedOperator.emits_retractions`; the shard sets ``keep_before_images``
  and calls ``changelog(epoch)`` instead of ``on_barrier``/``finish`` when another
  stage follows);
* insert-only (no ``CHANGE`` column needed): sources, ``StatefulMap``,
  ``TumblingWindow``;
* consumes a changelog: ``Aggregate`` with ``count``, ``sum`` and ``mean`` (exact:
  retraction subtracts) and ``min``/``max`` (exact: a multiset of values per group,
  ``aggminmax.py``), a key whose rows all were retracted is deleted; ``StatefulMap``
  sees ``CHANGE`` in each row and decides. Refused with an error naming both stages:
  ``Aggregate`` with ``first``/``last`` (defined by arrival order, which a changelog
  does not keep), ``Reduce`` and ``TumblingWindow`` (their functions cannot retract).

The last stage's output goes to the sink as before (the new values of the keys that
changed, the final values at the end of bounded input): the changelog is what stages
send each other.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CHANGE = "_change"
"""Name of the row-kind column of a changelog (``int8``)."""

INSERT, UPDATE_BEFORE, UPDATE_AFTER, DELETE = 0, 1, 2, 3
KIND_NAMES = ("+I", "-U", "+U", "-D")


#: Why order-dependent aggregations (``Aggregate``'s ``first``/``last``) are refused over
#: a changelog (``Aggregate.changelog_refusal``).
ORDER_DEPENDENT = (
    "first and last mean the first and last value by arrival, and a changelog's arrival "
    "order is not the events' order (updates from several upstream shards interleave, and "
    "once the row holding the first or last value is retracted, which value took its "
    "place depends on that order), so they have no exact meaning over retractions; use "
    "min/max, or first/last in the upstream stage"
)

def is_changelog(schema: pa.Schema) -> bool:
    """Whether batches of ``schema`` carry row kinds."""
    return CHANGE in schema.names


def split_signs(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """``(added rows, retracted rows)`` of a changelog batch, without the ``CHANGE`` column.

    Raises:
        ValueError: a kind that is not one of the four.
    """
    kinds = batch.column(CHANGE)
    bad = pc.or_(pc.less(kinds, INSERT), pc.greater(kinds, DELETE))
    if pc.any(bad).as_py():
        value = kinds.filter(bad)[0].as_py()
        msg = f"column {CHANGE!r} holds row kind {value!r}; row kinds are 0-3 ({KIND_NAMES})"
        raise ValueError(msg)
    minus = pc.or_(pc.equal(kinds, UPDATE_BEFORE), pc.equal(kinds, DELETE))
    body = batch.drop_columns([CHANGE])
    return body.filter(pc.invert(minus)), body.filter(minus)


def with_kinds(rows: pa.RecordBatch, kinds: Sequence[int] | np.ndarray) -> pa.RecordBatch:
    """``rows`` with the ``CHANGE`` column appended."""
    return rows.append_column(CHANGE, pa.array(np.asarray(kinds, dtype=np.int8), pa.int8()))


def check_chain(stages: Sequence[Any], names: Sequence[str],
                edges: Sequence[tuple[int, int]] | None = None) -> None:
    """Refuse a stage that cannot consume the changelog its upstream stage emits.

    ``names``: the stages' names, in order; ``edges``: ``(upstream, downstream)`` stage
    indexes (default: each stage feeds the next).

    Raises:
        ValueError: naming the consuming stage, the upstream stage and why.
    """
    links = list(itertools.pairwise(range(len(stages)))) if edges is None else edges
    for i, j in links:
        up, down = stages[i], stages[j]
        if not getattr(up, "emits_updates", False):
            continue
        why = down.changelog_refusal(retractions=getattr(up, "emits_retractions", False))
        if why is not None:
            first = f"stage {names[i]!r} ({type(up).__name__})"
            second = f"stage {names[j]!r} ({type(down).__name__})"
            msg = (
                f"{second} reads the updates that {first} emits (a key's "
                f"value again each time it changes), and {why}, so its results would "
                "include every value an update replaced. Put a StatefulMap in between that "
                "decides what an update means, or compute it from the events instead"
            )
            raise ValueError(msg)


__all__ = ["CHANGE", "DELETE", "INSERT", "KIND_NAMES", "ORDER_DEPENDENT", "UPDATE_AFTER",
           "UPDATE_BEFORE", "check_chain", "is_changelog", "split_signs", "with_kinds"]
