"""When a run stops and what learning rate each step uses.

The learning rate follows linear warm-up then cosine decay to zero over the run's *progress*,
a fraction in [0, 1]:

* step-determined runs (``max_steps`` / ``epochs``): progress = steps done / planned steps,
  so the schedule, and a resumed run, are exactly reproducible;
* time-bounded runs: progress = training time spent (including the step about to run, from the
  mean step time so far) / time available, so the rate reaches zero as the budget runs out
  whatever the machine's speed. No throughput guess is needed up front.

With both limits, progress is the larger of the two fractions and the run stops at whichever
comes first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    base_lr: float
    warmup_fraction: float
    total_steps: int | None
    budget_s: float | None  # training seconds available

    def __post_init__(self) -> None:
        if self.total_steps is None and self.budget_s is None:
            raise ValueError("a schedule needs a step count or a time budget")

    def progress(self, step: int, elapsed_s: float) -> float:
        """Fraction of the run done once step ``step`` (0-based) finishes."""
        fractions = []
        if self.total_steps is not None:
            fractions.append((step + 1) / self.total_steps)
        if self.budget_s is not None:
            mean_step = elapsed_s / step if step > 0 else 0.0
            fractions.append((elapsed_s + mean_step) / self.budget_s)
        return min(1.0, max(fractions))

    def lr(self, progress: float) -> float:
        """Linear warm-up over the first ``warmup_fraction``, then cosine decay to zero."""
        if self.warmup_fraction > 0 and progress < self.warmup_fraction:
            return self.base_lr * progress / self.warmup_fraction
        span = max(1e-12, 1.0 - self.warmup_fraction)
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - self.warmup_fraction) / span)))

    def finished(self, steps_done: int, elapsed_s: float) -> str | None:
        """Why the run stops before another step (``max_steps`` / ``time_budget``), or None."""
        if self.total_steps is not None and steps_done >= self.total_steps:
            return "max_steps"
        if self.budget_s is not None:
            mean_step = elapsed_s / steps_done if steps_done else 0.0
            if elapsed_s + mean_step > self.budget_s:
                return "time_budget"
        return None
