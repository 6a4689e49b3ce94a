"""Ctrl-C during training: finish the step, save a checkpoint, stop; a second Ctrl-C stops at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.training.progress import Reporter


class DistillInterrupted(KeyboardInterrupt):
    """The run was stopped by Ctrl-C after saving a checkpoint; ``--resume`` continues it."""


@contextlib.contextmanager
def graceful_interrupt(reporter: Reporter) -> Iterator[list[bool]]:
    """First Ctrl-C sets a flag the loop checks after each step; the second one interrupts at once."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag[0] = True
        reporter.message("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to stop now)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
