"""What a causal-LM distillation run is asked to do: one dataclass, validated, fingerprinted."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from export.base.errors import CompressError, require

DEFAULT_LM_TEACHER = "smollm2"
LOSSES = ("forward_kl", "reverse_kl", "jsd")
DEVICES = ("auto", "cpu", "cuda")
# On a CPU one step of a 50M-parameter student over a 49k vocabulary is already seconds; on a GPU
# a bigger batch is nearly free.
DEFAULT_LM_BATCH_SIZE = {"cuda": 32, "cpu": 8}
# Fields that change how a run is carried out but not what it computes.
_RUN_ONLY_FIELDS = {"resume", "device", "threads"}


@dataclass
class LMDistillConfig:
    """Settings of ``compress distill`` for a causal-LM teacher (the options of the same names)."""

    teacher: str = DEFAULT_LM_TEACHER
    student: str = "auto"  # "layers=N", "layers=0,5,10", or auto: a fifth of the teacher's layers
    data: Path | None = None
    max_steps: int | None = None
    epochs: float | None = None
    time_budget_s: float | None = None
    batch_size: int | None = None
    lr: float = 5e-4
    seed: int = 0
    loss: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5  # generalized JSD's mixing weight
    topk: int = 64  # teacher logits kept per position (0: the full vocabulary, no cache)
    teacher_answers: int = 0  # prompts the teacher answers for sequence-level distillation
    answer_tokens: int = 64
    sample: bool = False
    top_p: float = 1.0
    answer_temperature: float = 1.0
    ce_weight: float = 0.5  # weight of next-token cross-entropy on the teacher's answers, when there are any
    max_length: int = 128
    teacher_quant: str | None = None
    device: str = "auto"
    threads: int | None = None
    resume: bool = False

    def validate(self) -> None:
        """Reject settings that cannot work, with the option's name in the message."""
        checks = [
            (self.max_steps is None or self.max_steps > 0, "--max-steps must be positive"),
            (self.epochs is None or self.epochs > 0, "--epochs must be positive"),
            (self.time_budget_s is None or self.time_budget_s > 0, "--time-budget must be positive"),
            (self.batch_size is None or self.batch_size > 0, "--batch-size must be positive"),
            (self.lr > 0, "--lr must be positive"),
            (self.loss in LOSSES, f"--lm-loss must be one of {', '.join(LOSSES)}"),
            (self.temperature > 0, "--temperature must be positive"),
            (0 < self.beta < 1, "--jsd-beta must be between 0 and 1"),
            (self.topk >= 0, "--topk must not be negative"),
            (self.teacher_answers >= 0, "--teacher-answers must not be negative"),
            (self.answer_tokens > 0, "--answer-tokens must be positive"),
            (0 < self.top_p <= 1, "--top-p must be in (0, 1]"),
            (self.max_length >= 16, "--max-length must be at least 16 tokens"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
            (self.threads is None or self.threads > 0, "--threads must be positive"),
        ]
        require(checks)
        if self.data is not None and not Path(self.data).is_file():
            raise CompressError(f"data file not found: {self.data}")

    @property
    def step_determined(self) -> bool:
        return self.max_steps is not None or self.epochs is not None

    def params(self) -> dict[str, Any]:
        """The settings that determine the result (the stage fingerprint)."""
        data = {k: v for k, v in asdict(self).items() if k not in _RUN_ONLY_FIELDS}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


def resolve_lm_student(spec: str, teacher_layers: int) -> str:
    """The student spec to build: ``auto`` keeps a fifth of the teacher's layers (at least 2)."""
    if spec == "auto":
        return f"layers={max(2, round(teacher_layers / 5))}"
    return spec
