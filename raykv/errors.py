"""The raykv exception hierarchy, and the context raykv attaches to failures.

Built-in exceptions are used where they fit: ``TypeError``/``ValueError`` for bad
arguments and configuration, ``KeyError`` for a missing key in mapping-style calls,
``OSError`` for I/O failures that are not ours to interpret. The classes below exist for
the conditions a caller may want to catch on purpose.

Every class here survives pickling with its type, message (``args``) and attributes
(``__notes__`` included), whatever its ``__init__`` takes: :class:`RaykvError` rebuilds
an instance without calling ``__init__``. Ray pickles the exception an actor raises to
hand it to the caller, so this is what lets a ``CorruptionError`` leave a shard actor.

Failure context: when user code (a ``StatefulMap``/``Reduce`` function, a codec, a
source, a sink) raises, raykv keeps the user's exception and records where it happened
in a dict attribute (:func:`failure_context`: ``user_code``, ``stage``, ``shard``,
``key``, ``epoch``) plus ``add_note`` lines a traceback prints. Both survive pickling, so
both reach the driver through Ray (``docs/recovery.md``, "Failure classification").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

CONTEXT_ATTR = "raykv_context"
"""The attribute holding the dict :func:`add_context` records on an exception."""


def _rebuild(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """Unpickle helper of :meth:`RaykvError.__reduce__`: ``args`` set, ``__init__`` not run."""
    return cls.__new__(cls, *args)


def _epochs_text(epochs: Sequence[int]) -> str:
    """Epochs for a message: all of them, or the ends of a long list."""
    if not epochs:
        return "none"
    if len(epochs) <= 12:
        return ", ".join(map(str, epochs))
    return (f"{', '.join(map(str, epochs[:5]))}, ..., {', '.join(map(str, epochs[-5:]))} "
            f"({len(epochs)} epochs)")


class RaykvError(Exception):
    """Base class of every error raised on purpose by raykv.

    Pickling contract (for every subclass, present and future): ``pickle.loads(
    pickle.dumps(err))`` has the same type, ``args`` (hence ``str``) and ``__dict__``
    (attributes, ``__notes__``). ``__cause__``, ``__context__`` and ``__traceback__``
    are not pickled (as for any exception).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuild from ``args`` and ``__dict__``, not by calling ``__init__`` with ``args``."""
        return (_rebuild, (type(self), self.args), self.__dict__ or None)


class CorruptionError(RaykvError):
    """A file failed an integrity check (checksum, magic number, length).

    Raised instead of ever returning wrong data. The message names the file, the offset
    when known, and the check that failed, so an operator can find and remove the file
    or restore an older epoch. When a run fails on it, the driver adds (with
    :meth:`set_restorable`) the epoch concerned and the committed epochs that are still
    intact, to the attributes and to the message.

    Attributes:
        path: the damaged or missing file (or object URL).
        check: the check that failed (``"checksum"``, ``"length"``, ``"missing file"``...).
        offset: byte offset of the damage, or ``None``.
        detail: extra text of the message.
        epoch: the committed epoch whose restore (or read) met the damage, or ``None``.
        committed: the store's committed epochs, once the driver checked (else ``None``).
        restorable: the committed epochs whose every file is present and intact (what
            ``raykv checkpoints verify`` accepts), once the driver checked (else ``None``).
        store: the checkpoint store URL those lists are about (``""`` until checked).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        check: str,
        *,
        offset: int | None = None,
        detail: str = "",
        epoch: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.check = check
        self.offset = offset
        self.detail = detail
        self.epoch = epoch
        self.committed: list[int] | None = None
        self.restorable: list[int] | None = None
        self.store = ""
        super().__init__(self._message())

    def _message(self) -> str:
        where = f" at offset {self.offset}" if self.offset is not None else ""
        extra = f": {self.detail}" if self.detail else ""
        msg = f"corrupt file {self.path}{where}: {self.check} check failed{extra}"
        if self.restorable is None or self.committed is None:
            return msg
        lost = f"epoch {self.epoch} cannot be restored; " if self.epoch is not None else ""
        intact = _epochs_text(self.restorable) if self.restorable else "none"
        msg += (
            f". {lost}committed epochs in {self.store or 'the store'}: "
            f"{_epochs_text(self.committed)}; intact (every file present and matching "
            f"its checksum): {intact}"
        )
        if self.restorable:
            newest = self.restorable[-1]
            return msg + f"; run(restore_epoch={newest}) restores the newest intact epoch"
        return msg + "; no epoch can be restored: start a new run on an empty checkpoint"

    def set_restorable(
        self, committed: Sequence[int], restorable: Sequence[int], *, store: str = "",
        epoch: int | None = None,
    ) -> None:
        """Record which committed epochs are intact and rewrite the message to say so.

        ``epoch`` fills in :attr:`epoch` if it is still unknown. Idempotent.
        """
        if self.epoch is None:
            self.epoch = epoch
        self.committed = sorted(committed)
        self.restorable = sorted(restorable)
        self.store = store
        self.args = (self._message(),)


class FormatVersionError(CorruptionError):
    """A file was written in a format version this raykv cannot read."""

    def __init__(self, path: str | os.PathLike[str], found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        detail = (
            f"format version {found}, this raykv reads up to {supported}; "
            "upgrade raykv to read it"
        )
        super().__init__(path, "format version", detail=detail)


class CheckpointNotFoundError(RaykvError, LookupError):
    """The requested epoch, shard or checkpoint does not exist in the store."""


class StoreUnavailableError(RaykvError, ConnectionError):
    """The checkpoint store cannot be reached (endpoint down, bucket missing, bad credentials)."""


class StoreClosedError(RaykvError):
    """An operation was attempted on an engine or store after ``close()``."""


class UserCodeError(RaykvError):
    """User code raised an exception that cannot travel from a shard actor as it is.

    raykv normally re-raises the user's own exception (with context notes, see the module
    docstring). An exception that does not survive pickling (e.g. a class whose
    ``__init__`` arguments are not its ``args``) cannot cross Ray's actor boundary, so the
    shard raises this instead; the original is then only described, by type, message and
    remote traceback, all in the message.

    Attributes:
        error_type: qualified name of the user's exception class.
        context: where it happened (``user_code``, ``stage``, ``shard``, ``key``,
            ``epoch``; see :func:`failure_context`).
    """

    def __init__(
        self, message: str, *, error_type: str = "", context: dict[str, Any] | None = None
    ) -> None:
        self.error_type = error_type
        self.context = dict(context or {})
        super().__init__(message)


# ---------------------------------------------------------------------------- context


def failure_context(err: BaseException) -> dict[str, Any]:
    """The context raykv recorded on ``err`` (empty dict when none).

    Keys (each optional): ``user_code`` (what user code ran, e.g. ``"StatefulMap.fn"``),
    ``key`` (repr of the record's key), ``stage``, ``shard``, ``epoch`` (the epoch being
    processed, or restored for ``phase == "restore"``), ``phase``.
    """
    ctx = err.__dict__.get(CONTEXT_ATTR)
    return ctx if isinstance(ctx, dict) else {}


def add_context(err: BaseException, **fields: Any) -> None:
    """Record ``fields`` on ``err`` (see :func:`failure_context`); a field set first wins.

    Fields whose value is ``None`` are skipped. The values must be picklable (use
    :func:`describe_key` for keys).
    """
    ctx = err.__dict__.setdefault(CONTEXT_ATTR, {})
    if not isinstance(ctx, dict):
        return
    for name, value in fields.items():
        if value is not None:
            ctx.setdefault(name, value)


def mark_user_code(err: BaseException, what: str, *, key: str | None = None) -> None:
    """Record that ``err`` came out of user code ``what`` for the record with ``key``.

    The innermost call wins: a user function that calls a codec keeps the codec's mark.
    """
    add_context(err, user_code=what, key=key)


def describe_key(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened to ``limit`` characters (for messages and contexts)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "CheckpointNotFoundError",
    "CorruptionError",
    "FormatVersionError",
    "RaykvError",
    "StoreClosedError",
    "StoreUnavailableError",
    "UserCodeError",
    "add_context",
    "describe_key",
    "failure_context",
    "mark_user_code",
]
