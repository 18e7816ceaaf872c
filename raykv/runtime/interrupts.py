"""Ctrl-C during a run: an interrupt the driver cannot lose.

Python raises ``KeyboardInterrupt`` in whatever the main thread runs when SIGINT arrives.
When that is a finalizer (a Ray ``ObjectRef`` freed, a weakref callback), the exception
is printed as "Exception ignored in ..." and lost, and the run goes on: to its end, or
forever on a source whose read blocks (``tests/runtime/test_interrupts.py`` reproduces
it with a finalizer that signals its own process). :func:`sigint_flag` keeps
a record that survives: the handler sets an event, then raises as Python's own does; the
coordinator's control loop raises ``KeyboardInterrupt`` when it sees the event set
(:func:`raise_if_interrupted`), within one poll.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def sigint_flag(flag: threading.Event) -> Iterator[None]:
    """While the block runs, SIGINT also sets ``flag`` (then raises ``KeyboardInterrupt``).

    Only in the main thread and only over Python's default handler (a handler of the
    application's own is left alone); the previous handler is back afterwards. Cost: none
    per call beyond installing the handler.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        flag.set()
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def raise_if_interrupted(flag: threading.Event) -> None:
    """Raise ``KeyboardInterrupt`` if ``flag`` is set (an interrupt a finalizer swallowed)."""
    if flag.is_set():
        raise KeyboardInterrupt


__all__ = ["raise_if_interrupted", "sigint_flag"]
