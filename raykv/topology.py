"""The shape of a pipeline: which source or stage feeds which stage, on which side.

Contract: :func:`build_topology` turns a pipeline's named sources and its stage list into
a :class:`Topology`, or raises ``ValueError`` naming what is wrong, before anything runs.
No Ray, no I/O; the runtime reads the result to wire readers and shards.

The rules (docs/runtime.md, "Several sources and two-input stages"):

* Sources and stages share one namespace; every name is used once.
* A stage reads one input (``KeyedOperator.input``; ``None`` is the stage before it, or
  for the first stage the pipeline's only source) or two (``TwoInputOperator``: ``left``,
  ``right``). An input is a source or a stage listed *before* the reader, so the stage
  list is in data-flow order and has no cycles.
* Every source and every stage but the last feeds exactly one stage; the last stage
  feeds the sink. (Feeding one stream into two stages is not supported yet: give the
  source twice, under two names.)
* Each side of a stage is partitioned by its own key column
  (``KeyedOperator.input_keys``) into the stage's key groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from raykv.keys import value_type

SOURCE: Literal["source"] = "source"
STAGE: Literal["stage"] = "stage"


@dataclass(frozen=True)
class Input:
    """One side of a stage.

    Attributes:
        kind: ``"source"`` or ``"stage"``.
        name: the source's or the stage's name.
        index: its position among the pipeline's sources or stages.
        key: the column this side is partitioned by.
    """

    kind: Literal["source", "stage"]
    name: str
    index: int
    key: str


@dataclass(frozen=True)
class Feed:
    """Where a source or a stage sends its rows: ``stage``'s input ``side``."""

    stage: int
    side: int


@dataclass(frozen=True)
class Topology:
    """The wiring of a pipeline (see the module docstring).

    Attributes:
        sources: the source names, in the pipeline's order.
        inputs: per stage, its inputs by side.
        stage_feeds: per stage, the stage and side it feeds (``None``: the sink).
        source_feeds: per source, the stage and side it feeds.
    """

    sources: tuple[str, ...]
    inputs: tuple[tuple[Input, ...], ...]
    stage_feeds: tuple[Feed | None, ...]
    source_feeds: tuple[Feed, ...]

    def edges(self) -> list[tuple[int, int]]:
        """``(upstream stage, downstream stage)`` of every stage-to-stage link."""
        return [(s, f.stage) for s, f in enumerate(self.stage_feeds) if f is not None]

    def side_key(self, feed: Feed) -> str:
        """The key column of the input ``feed`` points at."""
        return self.inputs[feed.stage][feed.side].key

    def stage_producers(self, stage: int) -> list[int]:
        """The stages that feed ``stage``."""
        return [i.index for i in self.inputs[stage] if i.kind == STAGE]

    def source_of_stage(self, stage: int) -> list[int]:
        """The sources that feed ``stage`` directly."""
        return [i.index for i in self.inputs[stage] if i.kind == SOURCE]


def sides_of(op: Any) -> tuple[tuple[str | None, ...], tuple[str, ...]]:
    """A stage config's input names and key columns by side.

    ``KeyedOperator.upstreams()``/``input_keys()``; a duck-typed operator without them
    reads one input (its ``input``, default ``None``) by its ``key``.
    """
    ups = getattr(op, "upstreams", None)
    keys = getattr(op, "input_keys", None)
    return (ups() if ups is not None else (getattr(op, "input", None),),
            keys() if keys is not None else (op.key,))


def build_topology(source_names: Sequence[str], stages: Sequence[Any],
                   stage_names: Sequence[str]) -> Topology:
    """The :class:`Topology` of ``stages`` (in order) over the named sources.

    Cost: O(stages + sources).

    Raises:
        ValueError: a name used twice, an input that does not exist or comes later in the
            list, a source or stage that feeds no stage or two, or a stage without the
            default input it would need.
    """
    taken = set(source_names) & set(stage_names)
    if taken:
        msg = (f"{sorted(taken)} name both a source and a stage; sources and stages share "
               "one namespace (stage inputs refer to them by name)")
        raise ValueError(msg)
    src_index = {n: i for i, n in enumerate(source_names)}
    stage_index = {n: i for i, n in enumerate(stage_names)}
    inputs: list[tuple[Input, ...]] = []
    feeds: dict[tuple[str, int], list[Feed]] = {}
    for s, op in enumerate(stages):
        sides: list[Input] = []
        for side, (name, key) in enumerate(zip(*sides_of(op), strict=True)):
            where = f"stage {stage_names[s]!r} ({type(op).__name__})"
            if name is None:
                if s > 0:
                    name = stage_names[s - 1]
                elif len(source_names) == 1:
                    name = source_names[0]
                else:
                    msg = (f"{where} is the first stage of a pipeline with several sources "
                           f"({list(source_names)}): name the one it reads with input=")
                    raise ValueError(msg)
            if name in src_index:
                ref = Input(SOURCE, name, src_index[name], key)
            elif name in stage_index and stage_index[name] < s:
                ref = Input(STAGE, name, stage_index[name], key)
            elif name in stage_index:
                msg = (f"{where} reads stage {name!r}, which comes at or after it in the "
                       "stage list; list stages in data-flow order (inputs first)")
                raise ValueError(msg)
            else:
                msg = (f"{where} reads {name!r}, which is neither a source "
                       f"({list(source_names)}) nor a stage ({list(stage_names)})")
                raise ValueError(msg)
            sides.append(ref)
            feeds.setdefault((ref.kind, ref.index), []).append(Feed(s, side))
        inputs.append(tuple(sides))

    def single(kind: str, index: int, name: str) -> Feed:
        got = feeds.get((kind, index), [])
        if len(got) == 1:
            return got[0]
        if not got:
            msg = (f"{kind} {name!r} feeds no stage; every source and every stage but the "
                   "last must be the input of a stage (the last stage feeds the sink)")
        else:
            readers = [stage_names[f.stage] for f in got]
            msg = (f"{kind} {name!r} is read by {len(got)} inputs ({readers}); one stream "
                   "feeds one stage: give the source twice under two names")
        raise ValueError(msg)

    last = len(stages) - 1
    if (STAGE, last) in feeds:  # cannot happen: inputs come earlier in the list
        raise AssertionError(stage_names[last])
    return Topology(
        sources=tuple(source_names),
        inputs=tuple(inputs),
        stage_feeds=tuple(None if s == last else single(STAGE, s, stage_names[s])
                          for s in range(len(stages))),
        source_feeds=tuple(single(SOURCE, i, n) for i, n in enumerate(source_names)),
    )


def _needed(op: Any, side: int, key: str) -> list[str]:
    """The columns side ``side`` of ``op`` reads: its key and its time column, if any."""
    cols = [key]
    named = getattr(op, ("left_time", "right_time")[side], None) if side < 2 else None
    time = named or getattr(op, "time_column", None)
    if isinstance(time, str):
        cols.append(time)
    return cols


def check_schemas(topology: Topology, stages: Sequence[Any], stage_names: Sequence[str],
                  schemas: Mapping[str, pa.Schema | None]) -> None:
    """Check the stages that read sources of known schema (``Source.input_schema()``).

    Cost: O(columns). Sides fed by a stage, or by a source whose schema is unknown, are
    checked by the shards on their first batch instead.

    Raises:
        ValueError: a source lacks a key or time column a stage reads from it, or the
            two key columns of a two-input stage differ in type.
    """
    for s, op in enumerate(stages):
        where = f"stage {stage_names[s]!r} ({type(op).__name__})"
        types: list[pa.DataType | None] = []
        for side, inp in enumerate(topology.inputs[s]):
            schema = schemas.get(inp.name) if inp.kind == SOURCE else None
            if schema is None:
                types.append(None)
                continue
            for col in _needed(op, side, inp.key):
                if col not in schema.names:
                    msg = (f"{where} reads column {col!r} of source {inp.name!r}, which has "
                           f"columns {schema.names}; name an existing column")
                    raise ValueError(msg)
            types.append(value_type(schema.field(inp.key).type))
        if len(types) == 2 and None not in types and types[0] != types[1]:
            left, right = topology.inputs[s]
            msg = (f"{where} joins {left.name}.{left.key} ({types[0]}) with "
                   f"{right.name}.{right.key} ({types[1]}): the key columns must have one "
                   "type (equal keys must hash alike); cast one side first")
            raise ValueError(msg)


__all__ = ["SOURCE", "STAGE", "Feed", "Input", "Topology", "build_topology", "check_schemas",
           "sides_of"]
