"""A shard's background uploads and the acknowledgements the driver waits for.

Contract: the shard hands each sealed epoch to :meth:`Uploader.queue` (in epoch order);
one daemon thread runs the shard's ``upload(ack)`` on it (``store.upload_shard``, fault
injection, stats) and then posts the :class:`Ack`; ``wait(e)`` (called from the actor's
``"io"`` group) blocks until epoch ``e``'s ack is posted and returns it once.

The uploader also holds the shard's *poison* (its first failure, :meth:`fail`), because
``wait`` decides under one lock: an epoch sealed before the shard failed is still
acknowledged once its upload is durable; any other epoch raises the shard's failure; a
failed upload fails every wait. ``on_error(err, ack)`` lets the shard describe an upload
failure (its context) before it poisons the shard.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from raykv.runtime.specs import Ack


class Uploader:
    """The upload thread, the posted acks and the shard's failure (see the module doc).

    Args:
        name: the shard's name (names the thread).
        upload: makes ``ack``'s epoch durable and fills ``ack.manifest`` (runs in the thread).
        on_error: called with an upload failure and its ack before the shard is poisoned.
    """

    def __init__(self, name: str, upload: Callable[[Ack], None],
                 on_error: Callable[[BaseException, Ack], None]) -> None:
        self._name = name
        self._upload = upload
        self._on_error = on_error
        self._cond = threading.Condition()
        self._acks: dict[int, Ack] = {}
        self._queued: set[int] = set()  # epochs sealed and handed to the upload thread
        self._uploads: queue.Queue[Ack | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._upload_failure: BaseException | None = None

    @property
    def failure(self) -> BaseException | None:
        """The shard's first failure (``None`` while it is healthy)."""
        return self._failure

    def start(self) -> None:
        """Start the upload thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"raykv-upload-{self._name}", daemon=True
            )
            self._thread.start()

    def queue(self, ack: Ack) -> None:
        """Hand a sealed epoch to the upload thread."""
        with self._cond:
            self._queued.add(ack.epoch)
        self._uploads.put(ack)

    def post(self, ack: Ack) -> None:
        """Record ``ack`` as the epoch's acknowledgement and wake its waiter."""
        with self._cond:
            self._acks[ack.epoch] = ack
            self._queued.discard(ack.epoch)
            self._cond.notify_all()

    def fail(self, err: BaseException) -> None:
        """Poison the shard with ``err`` (the first failure wins) and wake every waiter."""
        with self._cond:
            if self._failure is None:
                self._failure = err
            self._cond.notify_all()

    def wait(self, epoch: int) -> Ack:
        """Block until ``epoch`` is acknowledged; return its ack (once) or raise the failure."""
        with self._cond:
            while epoch not in self._acks:
                if self._upload_failure is not None:
                    raise self._upload_failure
                if self._failure is not None and epoch not in self._queued:
                    raise self._failure
                self._cond.wait()
            return self._acks.pop(epoch)

    def close(self, timeout: float = 60) -> None:
        """Let the thread finish the queued uploads and stop (idempotent)."""
        if self._thread is not None:
            self._uploads.put(None)
            self._thread.join(timeout=timeout)
            self._thread = None

    def abandon(self, why: BaseException, timeout: float = 60) -> None:
        """Drop the queued uploads, fail every waiter with ``why``, stop the thread.

        For a shard rolled back by local recovery: its sealed-but-uncommitted epochs will
        be replayed. An upload already running completes first (its files and shard
        manifest are orphans until that epoch is committed again, see docs/recovery.md);
        waiters of ``wait`` raise ``why`` (a blocked ``wait_uploaded`` frees the ``"io"``
        thread). Idempotent.
        """
        with self._cond:
            self._queued.clear()
            if self._failure is None:
                self._failure = why
            self._cond.notify_all()
        while True:
            try:
                self._uploads.get_nowait()
            except queue.Empty:
                break
        self.close(timeout)

    def _loop(self) -> None:
        while True:
            ack = self._uploads.get()
            if ack is None:
                return
            try:
                self._upload(ack)
                self.post(ack)
            except BaseException as err:
                self._on_error(err, ack)
                with self._cond:
                    self._upload_failure = err
                self.fail(err)
                return


__all__ = ["Uploader"]
