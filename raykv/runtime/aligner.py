"""Barrier alignment over a shard's inputs (DESIGN invariant 2), without Ray or an engine.

Contract: a :class:`BarrierAligner` is fed the items of a shard's inputs in the order
they arrive (``receive(kind, input_id, payload)``, kinds :data:`DATA`, :data:`BARRIER`,
:data:`FINISH`) and yields what the shard must do, in order:

* :class:`Data` ``(input_id, batch)``: process this batch now;
* :class:`Aligned` ``(epoch, final, marks)``: every input sent ``barrier(epoch)``
  (``finish`` when ``final``): end the epoch now. ``marks`` holds what each input sent
  with its barrier (``receive(..., mark=)``; the sources' watermark), by input.

An input that sent the barrier being aligned is *blocked*: its later items are held
back, in arrival order, and replayed (through the same rules) right after the epoch is
aligned. Hence, per input, items come out in the order they went in, and every batch an
input sent before its ``barrier(e)`` comes out before ``Aligned(e)``, every batch it sent
after, after. All inputs must send the same barriers in the same order; an unknown input
or a mismatched barrier raises ``RuntimeError``.

The shard consumes the generator fully; if handling an item raises, the shard is
poisoned and the aligner is not used again (``receive`` after an exception in the
middle of a replay is undefined).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

DATA, BARRIER, FINISH = 0, 1, 2


@dataclass(frozen=True)
class Data:
    """A batch to process now."""

    input_id: int
    batch: Any


@dataclass(frozen=True)
class Aligned:
    """``barrier(epoch)`` (``finish(epoch)`` when ``final``) arrived from every input."""

    epoch: int
    final: bool
    marks: tuple[Any, ...] = field(default=(), compare=False)


class BarrierAligner:
    """Aligns the barriers of ``num_inputs`` inputs (see the module docstring).

    Args:
        num_inputs: number of inputs whose barriers must align (>= 1).
        context: prefix of error messages (e.g. the shard's stage and name).
    """

    def __init__(self, num_inputs: int, context: str = "") -> None:
        self.num_inputs = num_inputs
        self._context = context
        self._arrived: set[int] = set()
        self._aligning: tuple[int, int] | None = None  # (kind, epoch) being aligned
        self._blocked: list[tuple[int, int, Any, Any]] = []
        self._marks: list[Any] = [None] * num_inputs

    @property
    def aligning(self) -> tuple[int, int] | None:
        """``(kind, epoch)`` of the barrier some inputs sent and others not yet, or ``None``."""
        return self._aligning

    @property
    def held(self) -> int:
        """Number of items held back behind the barrier being aligned."""
        return len(self._blocked)

    def receive(self, kind: int, input_id: int, payload: Any, mark: Any = None
                ) -> Iterator[Data | Aligned]:
        """Take one item from ``input_id``; yield what is to be done now (see module doc).

        ``mark``: for a barrier, what the input sends with it (returned in ``Aligned``).
        """
        items: deque[tuple[int, int, Any, Any]] = deque([(kind, input_id, payload, mark)])
        while items:
            kind, input_id, payload, mark = items.popleft()
            if input_id in self._arrived:
                self._blocked.append((kind, input_id, payload, mark))
                continue
            if kind == DATA:
                yield Data(input_id, payload)
                continue
            if not 0 <= input_id < self.num_inputs:
                msg = f"{self._context}: barrier from unknown input {input_id}"
                raise RuntimeError(msg)
            if self._aligning is None:
                self._aligning = (kind, payload)
            elif self._aligning != (kind, payload):
                msg = (
                    f"{self._context}: barrier mismatch: aligning {self._aligning}, "
                    f"input {input_id} sent {(kind, payload)}"
                )
                raise RuntimeError(msg)
            self._arrived.add(input_id)
            self._marks[input_id] = mark
            if len(self._arrived) == self.num_inputs:
                self._arrived = set()
                self._aligning = None
                yield Aligned(payload, kind == FINISH, tuple(self._marks))
                items.extendleft(reversed(self._blocked))
                self._blocked = []


__all__ = ["BARRIER", "DATA", "FINISH", "Aligned", "BarrierAligner", "Data"]
