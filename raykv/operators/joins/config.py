"""The config base of the joins: ``how``, time columns, bounds and spans, rescaling.

Contract: :class:`JoinOperator` (a :class:`TwoInputOperator`) checks ``how`` against the
subclass's ``HOWS``, resolves the time columns (``time_column`` or ``left_time`` /
``right_time``), is never rebalanced (``rebalance_safe = False``: each shard applies its
own watermark) and merges old shards' watermark records on rescale (the largest epoch
watermark, the sum of late counts). :func:`check_bound` and :func:`span_units` validate
and convert the bounds and spans (an int in the time column's unit, or a ``timedelta``
for a timestamp column).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

import pyarrow as pa

from raykv.operators.base import WATERMARK_KEY, TwoInputOperator
from raykv.operators.joins.state import WM_RECORD


@dataclass(frozen=True)
class JoinOperator(TwoInputOperator):
    """Config base of the joins (see the module docstring)."""

    rebalance_safe: ClassVar[bool] = False
    #: The allowed values of ``how``.
    HOWS: ClassVar[tuple[str, ...]] = ("inner", "left")

    def _check_how(self, how: str) -> None:
        if how not in self.HOWS:
            msg = f"{type(self).__name__}.how must be one of {self.HOWS}, got {how!r}"
            raise ValueError(msg)

    def _check_times(self, time_column: str | None, left_time: str | None,
                     right_time: str | None, *, required: bool) -> None:
        """Resolve ``time_column`` / ``left_time`` / ``right_time`` (set both sides' names)."""
        owner = type(self).__name__
        for attr, v in (("time_column", time_column), ("left_time", left_time),
                        ("right_time", right_time)):
            if v is not None and (not isinstance(v, str) or not v):
                msg = f"{owner}.{attr} must be a non-empty column name or None, got {v!r}"
                raise TypeError(msg)
        lt = left_time or time_column
        rt = right_time or time_column
        if required and (lt is None or rt is None):
            msg = (f"{owner} needs the event-time column of both inputs: time_column=... "
                   "(or left_time=... and right_time=...)")
            raise ValueError(msg)
        object.__setattr__(self, "_times", (lt, rt))

    def time_columns(self) -> tuple[str | None, str | None]:
        """The time column of each side (``None``: the join uses none)."""
        return getattr(self, "_times", (None, None))

    def merge_metadata(self, key: bytes, values: Sequence[bytes]) -> bytes:
        """Rescale: the largest epoch watermark and the sum of late counts."""
        if key != WATERMARK_KEY:
            return super().merge_metadata(key, values)
        marks = [WM_RECORD.unpack(v) for v in values]
        return WM_RECORD.pack(max(m[0] for m in marks), sum(m[1] for m in marks))


def span_units(owner: str, name: str, value: int | timedelta, t: pa.DataType) -> int:
    """A bound or span in units of time type ``t`` (ints as they are)."""
    if isinstance(value, int):
        return value
    if not pa.types.is_timestamp(t):
        msg = f"{owner}.{name} is a timedelta but the time column is {t}; give an int"
        raise TypeError(msg)
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[t.unit]
    micros = value // timedelta(microseconds=1)
    units, rest = divmod(micros * per_second, 1_000_000)
    if rest:
        msg = f"{owner}.{name}={value} is not a whole number of {t.unit} (the time column's unit)"
        raise ValueError(msg)
    return int(units)


def check_bound(owner: str, name: str, value: object, *, positive: bool = False) -> None:
    """An int or ``timedelta`` (``> 0`` when ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, int | timedelta):
        msg = f"{owner}.{name} must be an int or a datetime.timedelta, got {type(value).__name__}"
        raise TypeError(msg)
    if positive and (value <= timedelta(0) if isinstance(value, timedelta) else value <= 0):
        msg = f"{owner}.{name} must be > 0, got {value!r}"
        raise ValueError(msg)
