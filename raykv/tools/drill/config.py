"""Drill configuration: what a drill runs and how it kills (:class:`DrillConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raykv.tools.demo import ZipfEvents

if TYPE_CHECKING:

    pass


MOMENTS = ("mid-batch", "upload", "acked", "recovery")
"""Kill moments a drill can choose from (see the module docstring)."""

TARGETS = ("shard", "reader")
"""Kinds of actors a drill can kill: the aggregation's shards (which also write the
ParquetSink's output) and the source reader."""

AGGS: dict[str, list[str]] = {"amount": ["sum", "count", "min", "max"]}
KEY = "user"
OUT_COLUMNS = ["user", "amount_sum", "amount_count", "amount_min", "amount_max"]


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DrillConfig:
    """What a drill runs and how it kills (a plain value; validated on construction).

    Attributes:
        kills: shard kills to survive in a row (each one detected and recovered).
        events: events in the input stream.
        keys: distinct users (zipf distributed).
        batch_size: events per source batch.
        epoch_every: source batches per epoch (deterministic epochs).
        num_shards: shard actors of the aggregation stage.
        engine: state engine (``hybridlog``, ``lsm``, ``appendlog``, ``memonly``).
        seed: seeds the kill plan (moments, shards, delays); the events are fixed.
        moments: the moments to choose from (a subset of ``MOMENTS``).
        checkpoint: base checkpoint URL; the reference and each round use a sub-folder
            (default: a temporary local folder).
        storage_options: fsspec options for ``checkpoint`` (S3 endpoint, keys).
        work_dir: folder for outputs, local engine state and the default checkpoints
            (default: a temporary folder, removed at the end).
        process_delay: seconds each shard ``process`` call sleeps (widens mid-batch).
        upload_delay: seconds each upload waits before it starts (widens mid-upload).
        restore_delay: seconds each restoring shard sleeps (widens during-recovery).
        targets: the kinds of actors to kill (a subset of ``TARGETS``).
        standby: ``Pipeline.standby`` of the drilled pipeline (idle actors that take a
            dead actor's place).

    Each delay applies only when its moment is among ``moments``.
    """

    kills: int = 20
    events: int = 60_000
    keys: int = 2_000
    batch_size: int = 1_000
    epoch_every: int = 2
    num_shards: int = 2
    engine: str = "hybridlog"
    seed: int = 0
    moments: tuple[str, ...] = MOMENTS
    checkpoint: str | None = None
    storage_options: dict[str, Any] | None = None
    work_dir: str | None = None
    process_delay: float = 0.02
    upload_delay: float = 0.3
    restore_delay: float = 0.4
    targets: tuple[str, ...] = TARGETS
    standby: int = 0

    def __post_init__(self) -> None:
        for name in ("kills", "events", "keys", "batch_size", "epoch_every", "num_shards",
                     "standby"):
            value = getattr(self, name)
            if type(value) is not int or value < (0 if name in ("kills", "standby") else 1):
                msg = f"drill {name} must be a positive int, got {value!r}"
                raise ValueError(msg)
        for name in ("process_delay", "upload_delay", "restore_delay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                msg = f"drill {name} must be a number of seconds >= 0, got {value!r}"
                raise ValueError(msg)
        moments = tuple(self.moments)
        unknown = [m for m in moments if m not in MOMENTS]
        if not moments or unknown:
            msg = (f"drill moments must be a non-empty subset of {list(MOMENTS)}, "
                   f"got {list(moments)}")
            raise ValueError(msg)
        if moments == ("recovery",):
            msg = "drill moment 'recovery' follows another kill: add another moment"
            raise ValueError(msg)
        object.__setattr__(self, "moments", moments)
        targets = tuple(self.targets)
        if not targets or any(t not in TARGETS for t in targets):
            msg = f"drill targets must be a non-empty subset of {list(TARGETS)}, got {targets}"
            raise ValueError(msg)
        object.__setattr__(self, "targets", targets)
        if self.num_batches < 2 * self.epoch_every:
            msg = (
                f"drill input too short: {self.events} events in batches of {self.batch_size} "
                f"give {self.num_batches} batches, fewer than two epochs of {self.epoch_every}; "
                "raise events or lower batch_size"
            )
            raise ValueError(msg)
        from raykv.engines import engine_class

        engine_class(self.engine)  # raises ValueError naming the known engines

    @property
    def num_batches(self) -> int:
        """Source batches in the stream."""
        return -(-self.events // self.batch_size)

    @property
    def final_epoch(self) -> int:
        """The epoch number of the final (``finish()``) epoch of a run."""
        return self.num_batches // self.epoch_every + 1

    def rows_through(self, epoch: int | None) -> int:
        """Source rows up to the end of ``epoch`` (``None``: 0); one reader, fixed epochs."""
        return min((epoch or 0) * self.epoch_every * self.batch_size, self.events)

    def generator(self) -> ZipfEvents:
        """The event stream: batch ``i`` is ``generator()(i)``."""
        return ZipfEvents(events=self.events, keys=self.keys, batch_size=self.batch_size)
