"""The aggregation spec of ``Aggregate``/``TumblingWindow``: ops, validation, stored stats.

Contract: ``normalize_aggs`` turns a user's ``aggs`` into ``{column: (ops...)}`` or raises
(``TypeError``/``ValueError``, nothing else); ``value_kind`` maps a value type to its
storage kind ('i' int64, 'u' uint64, 'f' float64, 'v' variable bytes, '' unsupported);
``AggColumn`` is one aggregated column's plan (ops, stats stored in ``STATS`` order).
Pure functions, no state, no engine access; the state layout that uses them is
``aggstate.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

OPS = ("count", "sum", "mean", "min", "max", "first", "last")
STATS = ("count", "sum", "min", "max", "first", "last")


def normalize_aggs(aggs: object, owner: str) -> dict[str, tuple[str, ...]]:
    """Validate ``aggs`` (``{column: op | [ops]}``) and return ``{column: (ops...)}``.

    Raises:
        TypeError: not a mapping of strings to strings/lists of strings.
        ValueError: empty, an unknown op, or a repeated op.
    """
    if not isinstance(aggs, Mapping) or not aggs:
        msg = (
            f"{owner}.aggs must be a non-empty dict like {{'price': ['sum', 'mean']}}, "
            f"got {aggs!r}"
        )
        raise TypeError(msg) if not isinstance(aggs, Mapping) else ValueError(msg)
    out: dict[str, tuple[str, ...]] = {}
    for col, ops in aggs.items():
        if not isinstance(col, str) or not col:
            msg = f"{owner}.aggs keys must be non-empty column names, got {col!r}"
            raise TypeError(msg)
        seq: tuple[object, ...] | None = None
        if isinstance(ops, str):
            seq = (ops,)
        elif isinstance(ops, list | tuple):
            seq = tuple(ops)
        if not seq or not all(isinstance(o, str) for o in seq):
            msg = (
                f"{owner}.aggs[{col!r}] must be an op or a non-empty list of ops "
                f"from {OPS}, got {ops!r}"
            )
            raise TypeError(msg)
        unknown = [o for o in seq if o not in OPS]
        if unknown:
            msg = f"{owner}.aggs[{col!r}] has unknown ops {unknown}; choose from {OPS}"
            raise ValueError(msg)
        if len(set(seq)) != len(seq):
            msg = f"{owner}.aggs[{col!r}] repeats an op: {list(seq)}"
            raise ValueError(msg)
        out[col] = seq  # type: ignore[assignment]
    return out


def value_kind(t: pa.DataType) -> str:
    """Storage kind of a value column: 'i', 'u', 'f', 'v' (variable) or '' (unsupported)."""
    if pa.types.is_signed_integer(t) or pa.types.is_boolean(t):
        return "i"
    if pa.types.is_temporal(t) and not pa.types.is_interval(t):
        return "i"
    if pa.types.is_unsigned_integer(t):
        return "u"
    if pa.types.is_floating(t):
        return "f"
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    ):
        return "v"
    return ""


def is_numeric(t: pa.DataType) -> bool:
    """Whether ``t`` can be summed (integer, floating point or boolean)."""
    return bool(
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    )


@dataclass(frozen=True)
class AggColumn:
    """One aggregated input column."""

    index: int
    name: str
    type: pa.DataType  # value type (dictionaries decoded)
    kind: str
    ops: tuple[str, ...]
    stats: tuple[str, ...]  # stored stats, in STATS order
    tmp: str  # name of the storage-typed column in the partial table

    def field(self, stat: str) -> str:
        """Name of ``stat``'s field in the state dtype."""
        return f"{self.index}:{stat}"
