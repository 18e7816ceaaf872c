"""Failure classification: what a failure means, and whether a run recovers from it.

Contract (docs/recovery.md, "Failure classification"):

* The driver wraps what it catches by where it happened: :class:`ShardFailure` (a shard
  call's error out of ``ray.get``, see :func:`shard_get`), :class:`CommitFailure` (the
  driver's commit step), :class:`HookFailure` (``on_progress``). :func:`root_cause`
  removes these and Ray's wrappers.
* :func:`classify` says ``"recover"`` or ``"fatal"``; :func:`is_transient` says whether a
  recoverable root cause comes from the environment; :class:`FailurePolicy` applies the
  repeat rule on top and returns a :class:`Verdict` per failure.
* Shard side: :func:`describe_shard_failure` gives an error raised in a shard its context
  and notes before Ray pickles it to the driver.

No actors, no store: Ray's exception types, and waiting on refs (:func:`shard_get`,
:func:`call_outcomes`: which calls answered, which failed).
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from raykv.errors import (
    CheckpointNotFoundError,
    CorruptionError,
    UserCodeError,
    add_context,
    failure_context,
)

_RECOVERABLE_RAY = tuple(
    getattr(ray.exceptions, name)
    for name in (
        "RayActorError", "ActorDiedError", "ActorUnavailableError", "ObjectLostError",
        "OwnerDiedError", "WorkerCrashedError", "NodeDiedError", "ObjectFetchTimedOutError",
        "ObjectReconstructionFailedError", "RaySystemError", "LocalRayletDiedError",
    )
    if hasattr(ray.exceptions, name)
)


# ---------------------------------------------------------------------------- wrappers


class ShardFailure(Exception):
    """A shard call failed (the wrapped error came out of ``ray.get``)."""

    def __init__(self, err: BaseException) -> None:
        super().__init__(str(err))
        self.err = err


class ReaderFailed(RuntimeError):
    """A reader refused a barrier because its loop failed; ``err`` is that failure.

    The failure travels as an attribute (``__dict__``), not only as ``__cause__``, which
    pickling drops: the driver receives it through Ray and classifies the refusal by it
    (:func:`root_cause`). Without it, two SIGKILLed shards before one commit made two
    refusals with the same message at the same epoch, a "repeated" failure that stopped
    the run.
    """

    def __init__(self, msg: str, err: BaseException | None = None) -> None:
        super().__init__(msg)
        # one that would not survive the trip is left out (the refusal is still sent)
        self.err = err if err is not None and not round_trips(err) else None


class CommitFailure(Exception):
    """The driver's commit step failed (store write, sink)."""

    def __init__(self, err: BaseException) -> None:
        super().__init__(str(err))
        self.err = err


class HookFailure(Exception):
    """``on_progress`` raised."""

    def __init__(self, err: BaseException) -> None:
        super().__init__(str(err))
        self.err = err


def shard_get(refs: Any, timeout: float | None = None) -> Any:
    """``ray.get(refs)``; a failure (not a timeout) is raised as a :class:`ShardFailure`."""
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise
    except Exception as err:
        raise ShardFailure(err) from err


def call_outcomes(refs: dict[Any, Any], deadline: float,
                  enough: Callable[[dict[Any, bool]], bool] | None = None) -> dict[Any, bool]:
    """Per name: its call in ``refs`` returned (True) or raised (False) by ``deadline``.

    ``deadline``: a ``time.monotonic()`` time. Names whose call is still waiting are left
    out; every result that ended is read (so Ray reports no error as unhandled).
    ``enough``: stop waiting as soon as it holds for the outcomes so far.
    """
    names = {ref: name for name, ref in refs.items()}
    waiting = list(refs.values())
    out: dict[Any, bool] = {}
    while waiting and not (enough is not None and enough(out)):
        ready, waiting = ray.wait(
            waiting, num_returns=len(waiting) if enough is None else 1,
            timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        for ref in ready:
            out[names[ref]] = False
            with contextlib.suppress(Exception):
                ray.get(ref)
                out[names[ref]] = True
    return out


# ---------------------------------------------------------------------------- classification


def root_cause(err: BaseException) -> BaseException:
    """Unwrap Ray task errors (nested when an actor called an actor) to the original error.

    A reader's refused barrier (:class:`ReaderFailed`) is unwrapped to its loop's failure.
    """
    for _ in range(16):
        if isinstance(err, ShardFailure | CommitFailure | HookFailure):
            err = err.err
            continue
        if isinstance(err, ReaderFailed) and err.err is not None:
            err = err.err
            continue
        cause = getattr(err, "cause", None)
        if isinstance(err, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
            err = cause
            continue
        break
    return err


def is_user_error(err: BaseException) -> bool:
    """Bad input: a ``ValueError``/``TypeError`` that is not one of Ray's errors."""
    return isinstance(err, ValueError | TypeError) and not isinstance(err, ray.exceptions.RayError)


def classify(err: BaseException) -> str:
    """``"recover"`` for failures a restart can fix, ``"fatal"`` for everything else.

    Recoverable: a shard call that failed for any reason but bad input or a corrupt /
    missing checkpoint (dead actors, lost objects, I/O errors inside a shard), and
    ``OSError`` (e.g. ``StoreUnavailableError``) in the driver's commit step. Fatal: bad
    input (``ValueError``/``TypeError``), ``CorruptionError``, ``CheckpointNotFoundError``,
    errors of the source, the sink or ``on_progress``, and interrupts.
    """
    root = root_cause(err)
    if isinstance(err, ShardFailure):
        if failure_context(root).get("phase") == "source":
            return "fatal"  # the source's own error: replay reads the same
        if is_user_error(root) or isinstance(root, CorruptionError | CheckpointNotFoundError):
            return "fatal"
        if isinstance(root, KeyboardInterrupt | SystemExit):
            return "fatal"
        return "recover"
    if isinstance(err, CommitFailure):
        if isinstance(root, CorruptionError):
            return "fatal"
        if isinstance(root, (OSError, *_RECOVERABLE_RAY)):
            return "recover"
        return "fatal"
    return "fatal"


def is_transient(root: BaseException) -> bool:
    """Whether a failure (a root cause) comes from the environment, not the data or code.

    Transient: ``OSError`` (an unreachable store, a full disk, a timeout) and Ray's system
    errors (a dead actor, worker or node, a lost object). They are retried up to
    ``max_restarts`` times however often they repeat. Every other recoverable failure is
    subject to the repeat rule (:meth:`FailurePolicy.judge`).
    """
    if isinstance(root, OSError):
        return True
    return isinstance(root, ray.exceptions.RayError) and not isinstance(
        root, ray.exceptions.RayTaskError | ray.exceptions.UnserializableException)


def failure_epoch(root: BaseException) -> int | None:
    """The epoch a failure happened in, as a shard or the driver recorded it (else ``None``).

    For a restore failure it is the epoch being restored.
    """
    epoch = failure_context(root).get("epoch")
    if epoch is None and isinstance(root, CorruptionError):
        epoch = root.epoch
    return epoch if isinstance(epoch, int) else None


@dataclass(frozen=True)
class Verdict:
    """What the driver does about one failure of a run attempt.

    Attributes:
        action: ``"recover"`` (restart from the last committed epoch) or ``"stop"``.
        reason: ``"transient"`` or ``"first occurrence"`` (recover); ``"repeated"``,
            ``"bad input"``, ``"corrupt checkpoint"``, ``"checkpoint not found"``, ``"source"`` (the
            source raised in a reader),
            ``"driver"`` (the source, the sink, the driver's commit step),
            ``"on_progress"``, ``"interrupted"``, ``"max_restarts"``, ``"no checkpoint"``
            (stop).
        error: the root cause (what ``run`` raises, or the ``__cause__`` of what it raises).
        epoch: the epoch it happened in (``failure_epoch``), or ``None`` if unknown.
        attempt: the attempt that failed (0 = the first).
        first_attempt: for ``"repeated"``, the attempt the same failure happened in first.
    """

    action: str
    reason: str
    error: BaseException
    epoch: int | None
    attempt: int
    first_attempt: int | None = None

    def record(self) -> dict[str, Any]:
        """The ``RunSummary.failures`` entry (and progress event detail) of this verdict."""
        text = f"{type(self.error).__name__}: {self.error}"
        out: dict[str, Any] = {
            "attempt": self.attempt, "epoch": self.epoch, "action": self.action,
            "reason": self.reason, "error": text if len(text) <= 300 else text[:297] + "...",
        }
        if self.first_attempt is not None:
            out["first_attempt"] = self.first_attempt
        return out

    def detail(self) -> dict[str, Any]:
        """:meth:`record` without ``epoch`` and ``error`` (a progress event has its own)."""
        out = self.record()
        del out["epoch"], out["error"]
        return out



class FailurePolicy:
    """The verdict on each failure of a run; remembers failures for the repeat rule."""

    def __init__(self) -> None:
        # repeat rule: (error type, message, epoch) -> attempt it first failed in
        self._seen: dict[tuple[str, str, int | None], int] = {}

    def judge(self, err: BaseException, attempt: int) -> Verdict:
        """Decide whether the failure ``err`` of attempt ``attempt`` is recovered from.

        1. ``classify(err) == "fatal"`` (bad input, a corrupt or missing checkpoint, a
           failure of the source, the sink or ``on_progress``, an interrupt): stop.
        2. ``is_transient`` (dead processes, lost nodes, I/O): recover (the coordinator
           still stops after ``max_restarts``).
        3. Anything else (an exception of user code, a raykv bug) is recovered from once:
           if the same error (type and message) happened at the same epoch before in
           this run, stop (``"repeated"``): replaying the same input hits it again.
        """
        root = root_cause(err)
        epoch = failure_epoch(root)
        if classify(err) != "recover":
            if isinstance(root, KeyboardInterrupt | SystemExit):
                reason = "interrupted"
            elif isinstance(root, CorruptionError):
                reason = "corrupt checkpoint"
            elif isinstance(root, CheckpointNotFoundError):
                reason = "checkpoint not found"
            elif isinstance(err, HookFailure):
                reason = "on_progress"
            elif is_user_error(root):
                reason = "bad input"
            elif failure_context(root).get("phase") == "source":
                reason = "source"
            else:
                reason = "driver"
            return Verdict("stop", reason, root, epoch, attempt)
        if is_transient(root):
            return Verdict("recover", "transient", root, epoch, attempt)
        key = (f"{type(root).__module__}.{type(root).__qualname__}", str(root), epoch)
        first = self._seen.get(key)
        if first is not None:
            return Verdict("stop", "repeated", root, epoch, attempt, first_attempt=first)
        self._seen[key] = attempt
        return Verdict("recover", "first occurrence", root, epoch, attempt)


# ---------------------------------------------------------------------------- shard side


def annotate(err: BaseException, context: str) -> BaseException:
    """Return ``err`` with ``context`` prepended (same type when possible)."""
    if isinstance(err, ray.exceptions.RayError) or not isinstance(err, ValueError | TypeError):
        return err
    text = f"{context}: {err}"
    try:
        new = type(err)(text)
    except Exception:
        new = ValueError(text) if isinstance(err, ValueError) else TypeError(text)
    new.__cause__ = err
    for note in getattr(err, "__notes__", []):
        new.add_note(note)
    ctx = failure_context(err)
    if ctx:
        add_context(new, **ctx)
    return new


def round_trips(err: BaseException) -> str:
    """``""`` if ``err`` survives Ray's pickling unchanged, else why not."""
    try:
        back = ray.cloudpickle.loads(ray.cloudpickle.dumps(err))
        same = (type(back) is type(err) and str(back) == str(err)
                and getattr(back, "__notes__", None) == getattr(err, "__notes__", None))
    except Exception as why:
        return f"{type(why).__name__}: {why}"
    return "" if same else "its type, message or notes change when it is unpickled"


def where(ctx: dict[str, Any]) -> str:
    """``stage 's', shard x, key k, epoch e`` from a failure context (parts that are known)."""
    parts = []
    if "stage" in ctx:
        parts.append(f"stage {ctx['stage']!r}")
    for name in ("shard", "key", "epoch"):
        if name in ctx:
            parts.append(f"{name} {ctx[name]}")
    return ", ".join(parts)


def describe_shard_failure(
    err: BaseException, *, context: str, key_column: str, shard: str,
    add_context: Callable[[BaseException], None],
) -> BaseException:
    """The error a failed shard call raises and poisons the shard with.

    * Ray errors (a downstream shard's failure, a dead actor) pass unchanged: the shard
      that failed first described its own error.
    * An error of user code (marked by the operator, ``raykv.errors.mark_user_code``)
      stays the user's exception object, with stage, shard and epoch added to its
      ``failure_context`` (by ``add_context``) and two notes: where it happened, and its
      traceback as formatted here (``__traceback__`` does not survive pickling). One that
      would not survive Ray's pickling unchanged is replaced by a ``UserCodeError``
      describing it.
    * Other ``ValueError``/``TypeError`` get ``context`` prepended to their message
      (:func:`annotate`); every error gets its ``failure_context``.
    """
    if isinstance(err, ray.exceptions.RayError):
        return err
    ctx = failure_context(err)
    if "user_code" not in ctx:
        err = annotate(err, context)
        add_context(err)
        return err
    if "shard" in ctx:  # described already (raised again)
        return err
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip()
    add_context(err)
    ctx = failure_context(err)
    what = f"{ctx['user_code']} raised {type(err).__name__}"
    err.add_note(f"raykv: {what} in {where(ctx)} (key column {key_column!r})")
    err.add_note(f"raykv: remote traceback (shard {shard}, pid {os.getpid()}):\n{tb}")
    why = round_trips(err)
    if not why:
        return err
    name = f"{type(err).__module__}.{type(err).__qualname__}"
    msg = (
        f"{what} in {where(ctx)}: {err}; the exception cannot be sent from the shard "
        f"actor to the driver ({why}), so raykv raises UserCodeError in its place. "
        f"Remote traceback:\n{tb}"
    )
    new = UserCodeError(msg, error_type=name, context=ctx)
    new.__cause__ = err
    return new


__all__ = [
    "CommitFailure",
    "FailurePolicy",
    "HookFailure",
    "ReaderFailed",
    "ShardFailure",
    "Verdict",
    "call_outcomes",
    "classify",
    "describe_shard_failure",
    "failure_epoch",
    "is_transient",
    "is_user_error",
    "root_cause",
    "shard_get",
]
