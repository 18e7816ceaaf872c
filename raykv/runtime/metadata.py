"""Typed epoch metadata: what a pipeline writes into each epoch manifest's ``metadata``.

Contract: :class:`EpochMetadata` (with :class:`StageMetadata` per stage and
:class:`ShardLoad` per shard) is the ``metadata`` object of an epoch manifest written by
``Pipeline.run``. ``to_dict()`` gives exactly the JSON object raykv has written since
metadata version :data:`METADATA_VERSION` (key ``"raykv"``), and ``from_dict`` reads it
back: ``from_dict(to_dict(m)) == m`` and, for every dict raykv writes,
``to_dict(from_dict(d)) == d``, so checkpoints stay byte-compatible both ways. Older
dicts (without ``rows_total``, ``abandoned``, a stage's ``partitioning`` or
``operator_config``) are read with defaults. Metadata that no raykv pipeline wrote
(another version, no stage list: e.g. an engine store's) is rejected by ``from_dict``
with ``ValueError``; :func:`read_metadata` returns ``None`` for it instead.

Also here: :func:`encode_operator` / :func:`decode_operator` (the stage's operator
config, stored so ``raykv checkpoints export`` can rebuild the operator) and
:func:`find_stage`.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from raykv.partitioning import Partitioning

METADATA_VERSION = 2
"""Version 2: the epoch manifest's ``offsets`` hold every split's offset
(``{"splits": {id: offset}}``); version 1 held one ``{"source": offset}`` (still read)."""

READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class StageMetadata:
    """One stage of an epoch: its operator, engine and shard layout.

    Attributes:
        name: stage name.
        key: key column.
        operator: operator class name.
        operator_config: the operator config (:func:`encode_operator`), ``None`` if absent.
        engine: engine name.
        engine_params: the engine's keyword arguments.
        num_shards: shard count.
        generation: shard-name generation (changes with every rescale or rollback).
        partitioning: ``Partitioning.to_dict()`` (key groups moved by rebalancing
            included), ``None`` if absent (older checkpoints: the default assignment).
        shards: the shards' checkpoint names, by index.
    """

    name: str
    key: str
    operator: str
    operator_config: str | None
    engine: str
    engine_params: dict[str, Any]
    num_shards: int
    generation: int
    partitioning: dict[str, Any] | None
    shards: tuple[str, ...]

    def layout(self, num_key_groups: int) -> Partitioning:
        """The stage's key-group assignment (the default one when none is stored)."""
        return Partitioning.from_dict(
            self.partitioning or {"num_shards": self.num_shards,
                                  "num_key_groups": num_key_groups})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored in the epoch manifest."""
        out: dict[str, Any] = {
            "name": self.name, "key": self.key, "operator": self.operator,
            "operator_config": self.operator_config, "engine": self.engine,
            "engine_params": dict(self.engine_params), "num_shards": self.num_shards,
            "generation": self.generation, "partitioning": self.partitioning,
            "shards": list(self.shards),
        }
        for name in ("operator_config", "partitioning"):
            if out[name] is None:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageMetadata:
        """Inverse of :meth:`to_dict`."""
        part = data.get("partitioning")
        return cls(
            name=str(data["name"]), key=str(data["key"]), operator=str(data["operator"]),
            operator_config=data.get("operator_config"), engine=str(data["engine"]),
            engine_params=dict(data.get("engine_params") or {}),
            num_shards=int(data["num_shards"]), generation=int(data["generation"]),
            partitioning=dict(part) if part else None, shards=tuple(data["shards"]),
        )


@dataclass(frozen=True)
class ShardLoad:
    """One shard's load in one epoch (written when ``hot_keys > 0``).

    Attributes:
        updates: rows the shard applied in the epoch.
        updates_total: rows it applied in the run so far.
        hot_keys: its heaviest keys (``raykv.hotkeys.LoadTracker.report``).
        write_amplification: its engine's write amplification.
        cpu_seconds: CPU time it spent on its stream in the epoch.
    """

    updates: int
    updates_total: int
    hot_keys: Any
    write_amplification: float
    cpu_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored in the epoch manifest."""
        return {"updates": self.updates, "updates_total": self.updates_total,
                "hot_keys": self.hot_keys, "write_amplification": self.write_amplification,
                "cpu_seconds": self.cpu_seconds}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardLoad:
        """Inverse of :meth:`to_dict`."""
        return cls(updates=int(data["updates"]), updates_total=int(data["updates_total"]),
                   hot_keys=data["hot_keys"],
                   write_amplification=float(data["write_amplification"]),
                   cpu_seconds=float(data["cpu_seconds"]))


@dataclass(frozen=True)
class EpochMetadata:
    """A pipeline's epoch: layout, lineage and load (see the module docstring).

    Attributes:
        num_key_groups: key groups of every stage (fixed when the pipeline is created).
        final: the input ended with this epoch.
        rows_total: source rows committed in this lineage up to this epoch.
        parent: the previous epoch of this lineage (``None`` for the first).
        abandoned: epoch ranges ``(first, last)`` a rollback abandoned.
        stages: the stages, in pipeline order.
        source: the source's ``describe()``.
        sink: the sink's ``describe()``.
        load: per stage, per shard, the epoch's load (``None``: not tracked).
        writer: the run attempt that committed the epoch: the sink publishes only what
            it staged (``Sink.for_attempt``; ``None`` in manifests older than writers).
        version: the metadata version (:data:`METADATA_VERSION`).
    """

    num_key_groups: int
    final: bool
    rows_total: int
    parent: int | None
    abandoned: tuple[tuple[int, int], ...]
    stages: tuple[StageMetadata, ...]
    source: dict[str, Any]
    sink: dict[str, Any]
    load: dict[str, dict[str, ShardLoad]] | None = None
    writer: str | None = None
    version: int = field(default=METADATA_VERSION)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored as the epoch manifest's ``metadata``."""
        out: dict[str, Any] = {
            "raykv": self.version,
            "num_key_groups": self.num_key_groups,
            "final": self.final,
            "rows_total": self.rows_total,
            "parent": self.parent,
            "abandoned": [list(r) for r in self.abandoned],
            "stages": [st.to_dict() for st in self.stages],
            "source": self.source,
            "sink": self.sink,
        }
        if self.writer is not None:
            out["writer"] = self.writer
        if self.load is not None:
            out["load"] = {stage: {shard: v.to_dict() for shard, v in shards.items()}
                           for stage, shards in self.load.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochMetadata:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: not the metadata of a raykv pipeline of this version.
        """
        if not is_pipeline_metadata(data):
            msg = "not written by a raykv pipeline (no stage metadata)"
            raise ValueError(msg)
        load = data.get("load")
        parent = data.get("parent")
        return cls(
            version=int(data["raykv"]),
            num_key_groups=int(data["num_key_groups"]),
            final=bool(data.get("final", False)),
            rows_total=int(data.get("rows_total", 0)),
            parent=None if parent is None else int(parent),
            abandoned=tuple((int(r[0]), int(r[1])) for r in data.get("abandoned", [])),
            stages=tuple(StageMetadata.from_dict(st) for st in data["stages"]),
            source=dict(data.get("source") or {}),
            sink=dict(data.get("sink") or {}),
            writer=data.get("writer"),
            load=None if load is None else {
                stage: {shard: ShardLoad.from_dict(v) for shard, v in shards.items()}
                for stage, shards in load.items()
            },
        )

    @property
    def abandoned_lists(self) -> list[list[int]]:
        """``abandoned`` as the lists sinks take (``Sink.start(abandoned=...)``)."""
        return [list(r) for r in self.abandoned]

    def stage_names(self) -> list[str]:
        """The stages' names, in order."""
        return [st.name for st in self.stages]


def is_pipeline_metadata(data: Mapping[str, Any]) -> bool:
    """Whether ``data`` is an epoch's metadata written by a raykv pipeline (a readable version)."""
    return isinstance(data.get("stages"), list) and data.get("raykv") in READABLE_VERSIONS


def read_metadata(data: Mapping[str, Any]) -> EpochMetadata | None:
    """:meth:`EpochMetadata.from_dict`, or ``None`` for metadata no pipeline wrote."""
    return EpochMetadata.from_dict(data) if is_pipeline_metadata(data) else None


def encode_operator(op: object) -> str:
    """Serialize an operator config for the epoch metadata (cloudpickle, base64)."""
    from ray import cloudpickle

    return base64.b64encode(cloudpickle.dumps(op)).decode()


def decode_operator(stage: StageMetadata) -> Any:
    """Rebuild the operator config stored by ``encode_operator``.

    Raises:
        ValueError: the epoch carries no operator config, or it cannot be unpickled here
            (e.g. a user function from a module that is not importable).
    """
    blob = stage.operator_config
    if not blob:
        msg = (f"stage {stage.name!r} carries no operator config (written by an older "
               "raykv); export needs a checkpoint written by raykv >= 0.1")
        raise ValueError(msg)
    try:
        return pickle.loads(base64.b64decode(blob))  # the checkpoint store is trusted
    except Exception as err:
        msg = (f"cannot rebuild the operator of stage {stage.name!r}: {err}; run the "
               "export where the pipeline's code is importable")
        raise ValueError(msg) from err


def find_stage(metadata: EpochMetadata, stage: str) -> StageMetadata:
    """Return the stage named ``stage`` (or at index ``stage``) of an epoch."""
    stages = metadata.stages
    for st in stages:
        if st.name == stage:
            return st
    if stage.isdigit() and int(stage) < len(stages):
        return stages[int(stage)]
    names = ", ".join(f"{i}={st.name}" for i, st in enumerate(stages)) or "none"
    msg = f"no stage {stage!r} in this epoch; its stages: {names}"
    raise ValueError(msg)


__all__ = [
    "METADATA_VERSION",
    "EpochMetadata",
    "ShardLoad",
    "StageMetadata",
    "decode_operator",
    "encode_operator",
    "find_stage",
    "is_pipeline_metadata",
    "read_metadata",
]
