"""What every family's distillation config shares: the step plan, the data, the machine, the checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from export.base.errors import CompressError, require
from export.runtime.limits import MAX_BATCH as MAX_BATCH_SIZE
from export.runtime.limits import MAX_SEQUENCE as MAX_LENGTH
from export.runtime.limits import MAX_THREADS

if TYPE_CHECKING:
    from export.runtime.profiles import Profile

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class DistillSettings:
    """The settings of ``compress distill`` that both task families read (``None`` = filled in later).

    Step plan: ``max_steps`` and/or ``epochs`` make a step-determined run (reproducible, resumable
    to the same weights). When neither is given the run is bounded by ``time_budget_s`` (default:
    the profile's ``distill.time_budget``); when a time budget is given as well, whichever limit
    comes first ends the run.
    """

    teacher: str | None = None
    student: str = "auto"
    data: Path | None = None  # None: the default corpus
    max_steps: int | None = None
    epochs: float | None = None
    time_budget_s: float | None = None
    batch_size: int | None = None  # None: the family's default for the device
    lr: float = 5e-4
    seed: int = 0
    max_length: int = 128
    temperature: float = 1.0
    teacher_quant: str | None = None  # 8bit | 4bit (bitsandbytes)
    device: str = "auto"
    threads: int | None = None  # CPU: torch threads; None = the cores this process may use
    resume: bool = False
    # Train the whole budget even when the probe forecasts the profile's floor out of reach.
    train_anyway: bool = False

    # Fields that change how a run is carried out but not what it computes.
    run_only_fields: ClassVar[frozenset[str]] = frozenset({"resume", "device", "threads"})
    # Fields added after runs were made, with their defaults: at the default a field is left out of
    # the fingerprint, so a run made before it existed still skips its finished stages.
    later_fields: ClassVar[dict[str, Any]] = {"train_anyway": False}
    min_max_length: ClassVar[int] = 8

    def checks(self) -> list[tuple[bool, str]]:
        """``(ok, message)`` for every setting; a family adds its own."""
        return [
            (self.max_steps is None or self.max_steps > 0, "--max-steps must be positive"),
            (self.epochs is None or self.epochs > 0, "--epochs must be positive"),
            (self.time_budget_s is None or self.time_budget_s > 0, "--time-budget must be positive"),
            (self.batch_size is None or 0 < self.batch_size <= MAX_BATCH_SIZE,
             f"--batch-size must be in 1..{MAX_BATCH_SIZE}"),
            (self.lr > 0, "--lr must be positive"),
            (self.temperature > 0, "--temperature must be positive"),
            (self.min_max_length <= self.max_length <= MAX_LENGTH,
             f"--max-length must be in {self.min_max_length}..{MAX_LENGTH} tokens"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
            (self.threads is None or 0 < self.threads <= MAX_THREADS, f"--threads must be in 1..{MAX_THREADS}"),
        ]

    def validate(self) -> None:
        """Reject settings that cannot work, with the option's name in the message."""
        require(self.checks())
        if self.data is not None and not Path(self.data).is_file():
            raise CompressError(f"data file not found: {self.data}")

    @property
    def step_determined(self) -> bool:
        return self.max_steps is not None or self.epochs is not None

    def budget_s(self, profile: Profile | None) -> float | None:
        """The seconds distillation may take: the user's time budget, else the profile's when no step
        count decides the run (None: steps decide, or there is no profile to ask). The one place the
        fallback is written."""
        if self.time_budget_s is not None:
            return self.time_budget_s
        if self.step_determined or profile is None:
            return None
        return profile.distill.time_budget_s

    def params(self) -> dict[str, Any]:
        """The settings that determine the result (the stage fingerprint and the resume check)."""
        data = {k: v for k, v in asdict(self).items() if k not in self.run_only_fields
                and not (k in self.later_fields and v == self.later_fields[k])}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
