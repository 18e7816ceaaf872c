"""How a shard fails: context on its errors, the poison later calls raise, test crashes.

Contract: the :class:`ShardPoison` mixin of :class:`~raykv.runtime.shard.ShardWorker`.
A failure of any call is given its context (stage, shard, epoch; key and ``user_code``
when user code raised it: :func:`raykv.runtime.failures.describe_shard_failure`) and
poisons the shard (``_fail``): every later call raises the same error (``_check_ok``),
so the driver sees it whichever ref it waits on. ``_fault`` carries out the crash points
of ``raykv.testing.Faults`` (``os._exit``: a process death, as a ``SIGKILL`` would be).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import ray

from raykv.errors import add_context
from raykv.runtime.failures import describe_shard_failure

if TYPE_CHECKING:
    from raykv.runtime.specs import ShardSpec
    from raykv.runtime.uploader import Uploader


class ShardPoison:
    """A shard's failure handling (see the module docstring)."""

    if TYPE_CHECKING:  # what the mixin uses of the shard worker
        spec: ShardSpec
        name: str
        _context: str
        _epoch: int | None
        _uploader: Uploader
        _counts: dict[str, int]

    def _add_context(self, err: BaseException, *, epoch: int | None = None,
                     phase: str | None = None) -> None:
        """Record stage, shard and epoch on ``err`` (not on Ray's errors: not ours)."""
        if isinstance(err, ray.exceptions.RayError):
            return
        add_context(err, stage=self.spec.stage.name, shard=self.name,
                    epoch=self._epoch if epoch is None else epoch, phase=phase)

    def _contextualize(self, err: BaseException, epoch: int | None = None) -> BaseException:
        """The error a failed ``process``/``barrier``/``finish`` raises and poisons the shard with.

        ``epoch``: the epoch it belongs to (default: the one the stream is in). See
        :func:`raykv.runtime.failures.describe_shard_failure`.
        """
        return describe_shard_failure(
            err, context=self._context, key_column=self.spec.stage.key, shard=self.name,
            add_context=lambda e: self._add_context(e, epoch=epoch))

    def _fail(self, err: BaseException) -> None:
        self._uploader.fail(err)

    def _check_ok(self) -> None:
        failure = self._uploader.failure
        if failure is not None:
            raise failure

    def _fault(self, point: str) -> None:
        faults = self.spec.faults
        if faults is None or faults.crash_at is None:
            return
        prefix, at, n = faults.crash_at
        if at != point or not self.name.startswith(prefix):
            return
        if self.spec.attempt not in faults.crash_attempts:
            return
        self._counts[point] += 1
        if self._counts[point] == n:
            os._exit(1)


__all__ = ["ShardPoison"]
