"""A progress bar for timed runs, on stderr (rich is imported only when one is shown)."""

from __future__ import annotations

import time


class RunProgress:
    """A rich progress bar on stderr, refreshed by hand between runs (never from a thread)."""

    def __init__(self, total: int, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=Console(stderr=True), auto_refresh=False,
                                  transient=True)
        self._progress.start()
        self._task = self._progress.add_task(label, total=total)
        self._last = 0.0

    def advance(self) -> None:
        self._progress.advance(self._task)
        now = time.monotonic()
        if now - self._last > 0.1:
            self._last = now
            self._progress.refresh()

    def close(self) -> None:
        self._progress.refresh()
        self._progress.stop()
