"""Schema comparison for keyed stages and the feeder: equal columns, readable differences.

Contract: ``same_columns`` compares names and types in order (nullability and metadata
ignored); ``describe_schema_change`` says how a schema differs from an expected one
(missing, extra, retyped or reordered columns); ``schema_mismatch`` is the message of a
stage's batch whose schema differs from its first batch. Pure functions.
"""

from __future__ import annotations

import pyarrow as pa


def same_columns(a: pa.Schema, b: pa.Schema) -> bool:
    """Same column names and types in the same order (nullability and metadata ignored)."""
    return a.names == b.names and all(x.type == y.type for x, y in zip(a, b, strict=True))


def describe_schema_change(expected: pa.Schema, got: pa.Schema) -> str:
    """Say how ``got`` differs from ``expected``: missing, extra, retyped or reordered columns."""
    parts = []
    exp = {f.name: f.type for f in expected}
    new = {f.name: f.type for f in got}
    missing = [n for n in exp if n not in new]
    extra = [n for n in new if n not in exp]
    changed = [f"{n!r} is {new[n]} (was {exp[n]})" for n in exp if n in new and new[n] != exp[n]]
    if missing:
        parts.append(f"missing columns {missing}")
    if extra:
        parts.append(f"extra columns {extra}")
    if changed:
        parts.append("column " + ", ".join(changed))
    if not parts:
        parts.append(f"columns in another order {got.names} (was {expected.names})")
    return "; ".join(parts)


def schema_mismatch(expected: pa.Schema, got: pa.Schema) -> str:
    """The error text for a stage batch whose schema is not its first batch's."""
    return (
        "the batch has another schema than the first batch of this stage: "
        + describe_schema_change(expected, got)
        + "; every batch of a stage must have the same columns and types"
    )
