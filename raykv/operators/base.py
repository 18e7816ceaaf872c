r"""The operator protocol: stage configs, the running logic's interface, reserved keys.

Every keyed stage is configured by a frozen dataclass subclassing :class:`KeyedOperator`
(picklable, validated in ``__post_init__``); ``build(store)`` makes its
:class:`OperatorLogic` inside the shard actor. The shared keyed-state core that the
built-in operators layer on is ``KeyedStateLogic`` (``keyed_state.py``), and its variant
for codec-encoded Python state is ``PyStateLogic`` (``pystate.py``).

Lifecycle of a logic (one per shard and stage): ``build -> (process* on_barrier)* finish?``.

Reserved engine keys (never produced for a user key; a binary key equal to one is
rejected): ``b"\xff\xffM"`` operator metadata (JSON), ``b"\xff\xffW"`` window watermark,
``b"\xff\xffE"`` the state of the empty key, ``b"\xff\xffT"`` the TTL horizon
(``ttl.py``). UTF-8 never contains ``0xff`` and fixed-width
keys are 1, 8, 9 or 16 bytes long, so only binary keys can collide.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from raykv.engines.base import KVStore

if TYPE_CHECKING:
    import numpy as np

META_KEY = b"\xff\xffM"
WATERMARK_KEY = b"\xff\xffW"
EMPTY_KEY = b"\xff\xffE"
TTL_KEY = b"\xff\xffT"
#: Keys holding operator metadata, not user state: skipped by ``finish`` and rescaling.
META_KEYS = frozenset({META_KEY, WATERMARK_KEY, TTL_KEY})
RESERVED_KEYS = frozenset({META_KEY, WATERMARK_KEY, EMPTY_KEY, TTL_KEY})
META_FORMAT = 1


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class KeyedOperator(ABC):
    """Base config of a keyed stage (picklable; validated on construction).

    Attributes:
        key: the key column; rows with equal keys share state and go to the same shard.
        name: stage name (the pipeline sets class name + index when ``None``).
        engine: engine name for this stage's state (``None``: the pipeline default).
        engine_params: engine parameters for this stage (``None``: the pipeline default).
        num_shards: shard count for this stage (``None``: the pipeline default).
        input: the name of the source or stage this stage reads (``None``: the stage
            before it, or for the first stage the pipeline's only source).
    """

    key: str
    name: str | None = field(default=None, kw_only=True)
    engine: str | None = field(default=None, kw_only=True)
    engine_params: dict[str, Any] | None = field(default=None, kw_only=True)
    num_shards: int | None = field(default=None, kw_only=True)
    input: str | None = field(default=None, kw_only=True)

    #: Bytes appended to the encoded key in state keys (windows: 8).
    key_suffix_len: ClassVar[int] = 0
    #: Whether results are the same whichever shard holds a key, so the skew rebalancer
    #: may move key groups between shards (``raykv.rebalance``).
    rebalance_safe: ClassVar[bool] = True
    #: Whether the stage emits a key's value again each time it changes (an updating
    #: stream, ``raykv.operators.changelog``), not only new rows.
    emits_updates: ClassVar[bool] = False
    #: Whether it also emits each update's before-image (-U) and deletions (-D), so a
    #: consumer can retract them.
    emits_retractions: ClassVar[bool] = False

    def changelog_refusal(self, *, retractions: bool) -> str | None:
        """Why this stage cannot consume an updating stream, or ``None`` when it can.

        ``retractions``: the stream carries before-images and deletions. Default: refuse
        (a stage that adds up its input would count each update again).
        """
        return "it cannot retract the values an update replaces"

    def __post_init__(self) -> None:
        _check_name("key", self.key, type(self).__name__)
        if self.name is not None:
            _check_name("name", self.name, type(self).__name__)
        if self.engine is not None:
            _check_name("engine", self.engine, type(self).__name__)
        if self.engine_params is not None and not isinstance(self.engine_params, dict):
            msg = (
                f"{type(self).__name__}.engine_params must be a dict or None, "
                f"got {type(self.engine_params).__name__}"
            )
            raise TypeError(msg)
        if self.num_shards is not None and (
            type(self.num_shards) is not int or self.num_shards < 1
        ):
            msg = (
                f"{type(self).__name__}.num_shards must be a positive int or None, "
                f"got {self.num_shards!r}"
            )
            raise ValueError(msg)
        if self.input is not None:
            _check_name("input", self.input, type(self).__name__)

    def upstreams(self) -> tuple[str | None, ...]:
        """The names of the inputs the stage reads, by side (``None``: the default input).

        One entry for a one-input stage; ``(left, right)`` for a :class:`TwoInputOperator`.
        The shard passes ``side`` (the index here) to ``OperatorLogic.process``.
        """
        return (self.input,)

    def input_keys(self) -> tuple[str, ...]:
        """The column each input is partitioned by, by side (one-input stages: ``key``)."""
        return (self.key,)

    @abstractmethod
    def build(self, store: KVStore) -> OperatorLogic:
        """Create the running logic of one shard on its open ``store``."""

    def routing_key(self, state_key: bytes) -> bytes | None:
        """The encoded user key a state key belongs to (what partitioning hashes).

        Returns ``None`` for metadata keys, which every shard holds for itself (copy them
        to each new shard when rescaling). Cost: O(1).
        """
        if state_key in META_KEYS:
            return None
        if state_key == EMPTY_KEY:
            return b""
        return state_key[: len(state_key) - self.key_suffix_len]

    def merge_metadata(self, key: bytes, values: Sequence[bytes]) -> bytes:
        """Combine one metadata key's values from several old shards (rescaling).

        ``key`` is a state key with ``routing_key(key) is None``; ``values`` are its
        values in the old shards that had it. The result goes into every new shard.
        Operator metadata must be identical everywhere (``ValueError`` otherwise).
        """
        if key == TTL_KEY:  # the largest horizon: nothing expired by an old shard comes back
            return max(values, key=lambda v: int.from_bytes(v, "little", signed=True))
        distinct = set(values)
        if len(distinct) != 1:
            msg = (
                f"{type(self).__name__}: shards disagree on metadata key {key!r} "
                f"({len(distinct)} different values); they were not written by one stage"
            )
            raise ValueError(msg)
        return values[0]


@dataclass(frozen=True)
class TwoInputOperator(KeyedOperator):
    """Base config of a keyed stage over two inputs (joins).

    Rows of both inputs with equal keys meet in one shard: each input is partitioned by
    its own key column into the same key groups (the key columns must have one type).
    The logic's ``process(batch, side)`` gets ``side`` 0 for ``left``, 1 for ``right``;
    the shard's watermark is the minimum over both inputs.

    Attributes:
        key: the key column of the output (and of both inputs unless named below).
        left: the name of the left input (a source or a stage).
        right: the name of the right input.
        left_key: the left input's key column (``None``: ``key``).
        right_key: the right input's key column (``None``: ``key``).
    """

    left: str = field(kw_only=True)
    right: str = field(kw_only=True)
    left_key: str | None = field(default=None, kw_only=True)
    right_key: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        for attr in ("left", "right"):
            _check_name(attr, getattr(self, attr), owner)
        for attr in ("left_key", "right_key"):
            if getattr(self, attr) is not None:
                _check_name(attr, getattr(self, attr), owner)
        if self.input is not None:
            msg = f"{owner} reads two inputs: name them with left= and right=, not input="
            raise ValueError(msg)
        if self.left == self.right:
            msg = (f"{owner}: left and right are both {self.left!r}; a join of an input "
                   "with itself needs the input twice under two names")
            raise ValueError(msg)

    def upstreams(self) -> tuple[str | None, ...]:
        """``(left, right)``."""
        return (self.left, self.right)

    def input_keys(self) -> tuple[str, ...]:
        """``(left_key or key, right_key or key)``."""
        return (self.left_key or self.key, self.right_key or self.key)


def _check_name(attr: str, value: object, owner: str) -> None:
    if not isinstance(value, str) or not value:
        msg = f"{owner}.{attr} must be a non-empty string, got {value!r}"
        raise TypeError(msg) if not isinstance(value, str) else ValueError(msg)


# ---------------------------------------------------------------------------- logic


class OperatorLogic(ABC):
    """The running logic of one stage on one shard (inside a shard actor, one thread).

    Call order: ``(process* on_barrier)* finish?``. ``on_barrier(e)`` is called once the
    shard has received barrier ``e`` from all inputs; its result belongs to epoch ``e``.
    """

    @abstractmethod
    def process(self, batch: pa.RecordBatch) -> None:
        """Validate ``batch`` and update state (at most one ``multi_get`` + ``multi_set``).

        The logic of a :class:`TwoInputOperator` takes ``process(batch, side)`` instead:
        ``side`` 0 is a batch of the left input, 1 of the right.
        """

    @abstractmethod
    def on_barrier(self, epoch: int) -> pa.RecordBatch | None:
        """Return this epoch's output (the changelog) or ``None`` if there is none."""

    @abstractmethod
    def finish(self) -> pa.RecordBatch | None:
        """End of bounded input: return the final output not yet emitted, or ``None``."""

    @abstractmethod
    def output_schema(self) -> pa.Schema | None:
        """Schema of the emitted batches (``None`` until the first batch or restored state)."""

    #: Set by a shard that tracks its load (``raykv.hotkeys``): a logic that groups every
    #: batch by its key anyway may keep the groups' row counts for :meth:`key_counts`.
    count_keys = False

    def key_counts(self) -> tuple[pa.Array | pa.ChunkedArray, np.ndarray] | None:
        """The last processed batch's distinct canonical keys and their row counts.

        ``None`` (the default) when the logic did not count them: the caller counts them
        itself. Taken once (a second call returns ``None``). Cost: O(1).
        """
        return None
