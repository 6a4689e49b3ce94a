"""What a run tells the person watching it: messages and a progress bar, on stderr.

The library never prints to stdout (``--json`` owns it). Subclass :class:`Reporter` to observe
a run from Python (the pipeline and the tests do), or pass ``Reporter(show_progress=False)``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Where stderr is not a terminal (a log file, CI), progress is a plain line this often instead of a
# bar redrawn with escape codes.
PLAIN_EVERY_S = 10.0


@dataclass
class StepReport:
    """The state after one optimizer step."""

    step: int  # steps done so far
    epoch: float
    loss: float
    lr: float
    samples_per_s: float
    elapsed_s: float
    progress: float  # fraction of the run done


class Reporter:
    """Messages and a rich progress bar on stderr."""

    def __init__(self, show_progress: bool = True, console: Any = None) -> None:
        """``console``: a ``rich.console.Console`` to write to (default: one on stderr)."""
        self.show_progress = show_progress
        self._progress: Any = None
        self._task: Any = None
        self._console: Any = console
        self._plain: str | None = None  # the description, while a plain-line progress runs
        self._last_plain = 0.0
        self._pace_from: StepReport | None = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def message(self, text: str) -> None:
        # In a log (not a terminal) a message stays one line, however long: rich would wrap it at 80 columns.
        self.console.print(text, markup=False, soft_wrap=not self.console.is_terminal)

    def warning(self, text: str) -> None:
        self.console.print(f"warning: {text}", markup=False, style="yellow", soft_wrap=not self.console.is_terminal)

    def start(self, description: str) -> None:
        self._pace_from = None
        if not self.show_progress:
            return
        if not self.console.is_terminal:
            self._plain, self._last_plain = description, time.monotonic()
            return
        from rich.progress import BarColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("step {task.fields[step]}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} samples/s"),
            TextColumn("{task.fields[left]} left"),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=1.0, step=0, loss="-", speed="-", left="-")

    def step(self, report: StepReport) -> None:
        """Called after every optimizer step."""
        left = self.time_left(report)
        if self._plain is not None:
            now = time.monotonic()
            if now - self._last_plain >= PLAIN_EVERY_S or report.progress >= 1:
                self._last_plain = now
                self.message(f"{self._plain}: step {report.step}, loss {report.loss:.4f}, "
                             f"{report.samples_per_s:.0f} samples/s, {_duration(left)} left")
            return
        if self._progress is None:
            return
        self._progress.update(self._task, completed=report.progress, step=report.step, loss=f"{report.loss:.4f}",
                              speed=f"{report.samples_per_s:.0f}", left=_duration(left))

    def time_left(self, report: StepReport) -> float:
        """Seconds left at the pace since the first step of this session.

        The elapsed time before the first step (loading, scoring the held-out split with the teacher,
        earlier sessions of a resumed run) says nothing about the pace of the steps to come.
        """
        first = self._pace_from
        if first is None:
            self._pace_from = report
        elif report.progress > first.progress and report.elapsed_s > first.elapsed_s:
            pace = (report.elapsed_s - first.elapsed_s) / (report.progress - first.progress)
            return max(0.0, pace * (1 - report.progress))
        return report.elapsed_s * (1 - report.progress) / report.progress if report.progress > 0 else 0.0

    def stop(self) -> None:
        self._plain = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @contextlib.contextmanager
    def counting(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar over ``total`` items; yields ``advance(n)``. A plain line now and then off a terminal."""
        done = [0]
        if not self.show_progress or total <= 0:
            yield lambda n: None
            return
        if not self.console.is_terminal:
            last = [time.monotonic()]

            def advance_plain(n: int) -> None:
                done[0] += n
                if time.monotonic() - last[0] >= PLAIN_EVERY_S or done[0] >= total:
                    last[0] = time.monotonic()
                    self.message(f"{description}: {done[0]}/{total}")

            yield advance_plain
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task, n)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class QuietReporter(Reporter):
    """No bar, no messages: a loop run for its result alone (a data-parallel rank other than 0, a scratch run)."""

    def __init__(self) -> None:
        super().__init__(show_progress=False)

    def message(self, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        pass
