"""Where a training step's time goes: seconds per phase, summed over a run.

The phases are the ones every trainer has (``data``, ``teacher``, ``forward``, ``backward``,
``optimizer``) and the loop's own (``evaluation``, ``logging``, ``checkpoint``). On CUDA a phase
ends with a synchronisation only when the clock is asked to be exact (``sync=True``): the queue
would otherwise bill one phase's kernels to the next, and syncing every phase costs throughput,
so only the throughput benchmark turns it on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

PHASES = ("data", "teacher", "forward", "backward", "optimizer", "evaluation", "logging", "checkpoint")


@dataclass
class StepClock:
    """Seconds spent in each phase since the clock was made."""

    device: str = "cpu"
    sync: bool = False
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name``."""
        self._synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def _synchronize(self) -> None:
        if self.sync and self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def shares(self) -> dict[str, float]:
        """Each phase's share of the timed seconds (0 everywhere before anything was timed)."""
        total = sum(self.seconds.values())
        return {name: round(value / total, 4) if total else 0.0 for name, value in self.seconds.items()}

    def rounded(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in self.seconds.items()}
