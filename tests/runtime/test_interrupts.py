"""Ctrl-C is not lost when it lands in a finalizer (raykv.runtime.interrupts)."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from raykv.runtime.interrupts import raise_if_interrupted, sigint_flag


@pytest.fixture(autouse=True)
def python_sigint() -> Iterator[None]:
    """Python's own SIGINT handler, whatever this process inherited.

    A process started in the background by a non-interactive shell (as CI runs the
    suite) inherits SIGINT ignored, and Python then installs no handler of its own.
    """
    prev = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, prev)


class SignalsInDel:
    """Sends SIGINT to this process from ``__del__`` and runs Python there while it lands."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # the handler runs here, inside the finalizer
            pass


def test_an_interrupt_in_a_finalizer_is_kept_and_raised_later() -> None:
    flag = threading.Event()
    with sigint_flag(flag):
        # freed at once: Python prints its KeyboardInterrupt as "Exception ignored" and
        # goes on (pytest reports it as an unraisable-exception warning)
        SignalsInDel()
        gc.collect()
        assert flag.is_set()  # ... but recorded
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted(flag)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ordinary_interrupt_still_raises_at_once() -> None:
    flag = threading.Event()
    with pytest.raises(KeyboardInterrupt), sigint_flag(flag):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert flag.is_set()


def test_a_handler_of_the_application_is_left_alone() -> None:
    seen: list[int] = []
    prev = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        flag = threading.Event()
        with sigint_flag(flag):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        assert seen == [signal.SIGINT] and not flag.is_set()
    finally:
        signal.signal(signal.SIGINT, prev)
