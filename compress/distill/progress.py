"""What a run tells the person watching it: messages and a progress bar, on stderr.

The library never prints to stdout (``--json`` owns it). Subclass :class:`Reporter` to observe
a run from Python (the pipeline and the tests do), or pass ``Reporter(show_progress=False)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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

    def __init__(self, show_progress: bool = True) -> None:
        self.show_progress = show_progress
        self._progress: Any = None
        self._task: Any = None
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def message(self, text: str) -> None:
        self.console.print(text, markup=False)

    def warning(self, text: str) -> None:
        self.console.print(f"warning: {text}", markup=False, style="yellow")

    def start(self, description: str) -> None:
        if not self.show_progress:
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
        if self._progress is None:
            return
        left = report.elapsed_s * (1 - report.progress) / report.progress if report.progress > 0 else 0.0
        self._progress.update(self._task, completed=report.progress, step=report.step, loss=f"{report.loss:.4f}",
                              speed=f"{report.samples_per_s:.0f}", left=_duration(left))

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"
