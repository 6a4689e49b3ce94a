"""Distillation settings, and how unset ones are filled from the profile and the machine."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from export.base.errors import CompressError, require

DEVICES = ("auto", "cpu", "cuda")
DEFAULT_TIME_BUDGET_S = 600.0
# On a GPU bigger batches are nearly free; on a CPU throughput per sample barely changes
# between 32 and 64, so the smaller batch buys twice the optimizer steps in the same time.
DEFAULT_BATCH_SIZE = {"cuda": 64, "cpu": 32}

# Fields that change how a run is carried out but not what it computes.
_RUN_ONLY_FIELDS = {"resume", "device", "threads", "checkpoint_every_s", "checkpoint_every_steps", "log_every"}


@dataclass
class DistillConfig:
    """Everything that decides a distillation run (``None`` = filled in from the profile or the machine).

    Step plan: ``max_steps`` and/or ``epochs`` make a step-determined run (reproducible, resumable
    to the same weights). When neither is given the run is bounded by ``time_budget_s`` (default:
    the profile's ``distill.time_budget``); when a time budget is given as well, whichever limit
    comes first ends the run.
    """

    teacher: str | None = None  # model folder or registered name; None = all-minilm-l6-v2
    task: str = "auto"  # auto | feature-extraction | text-classification | token-classification
    student: str = "auto"  # spec (layers=3, layers=0,2,5, layers=4,hidden=256,...), a config .json, or auto
    init_student: Path | None = None  # start from this student folder instead of building one
    data: Path | None = None  # .txt/.jsonl/.csv/.tsv; None = the default corpus
    max_steps: int | None = None
    epochs: float | None = None
    time_budget_s: float | None = None
    batch_size: int | None = None  # None: 64 on CUDA, 32 on CPU
    lr: float = 5e-4
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    seed: int = 0
    split_seed: int = 0  # the held-out split; shared by every stage, independent of the training seed
    max_length: int = 128
    embedding_loss: str = "cosine"  # cosine | mse | cosine+mse
    hidden_weight: float = 0.0  # hidden-state MSE weight (0 = off)
    attention_weight: float = 0.0  # last-layer attention KL weight (0 = off)
    alpha: float = 0.5  # classifiers: weight of the teacher KL; labels get 1 - alpha
    temperature: float = 2.0
    dropout: bool = False  # keep the teacher config's dropout in the student while training
    eval_points: int = 4  # held-out evaluations during training (plus before and after)
    teacher_quant: str | None = None  # 8bit | 4bit (bitsandbytes)
    trust_remote_code: bool = False
    teacher_cache_bytes: int = 2 << 30
    device: str = "auto"
    threads: int | None = None  # CPU: torch threads; None = the cores this process may use
    resume: bool = False
    checkpoint_every_s: float = 300.0
    checkpoint_every_steps: int | None = None
    log_every: int = 10

    def validate(self) -> None:
        """Reject settings that cannot work, with the option's name in the message."""
        checks = [
            (self.max_steps is None or self.max_steps > 0, "--max-steps must be positive"),
            (self.epochs is None or self.epochs > 0, "--epochs must be positive"),
            (self.time_budget_s is None or self.time_budget_s > 0, "--time-budget must be positive"),
            (self.batch_size is None or self.batch_size > 0, "--batch-size must be positive"),
            (self.lr > 0, "--lr must be positive"),
            (0 <= self.warmup_fraction < 1, "warmup fraction must be in [0, 1)"),
            (self.max_length >= 8, "max length must be at least 8 tokens"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
            (self.eval_points >= 0, "eval points must not be negative"),
            (self.log_every > 0, "log interval must be positive"),
            (self.threads is None or self.threads > 0, "--threads must be positive"),
        ]
        require(checks)
        if self.data is not None and not Path(self.data).is_file():
            raise CompressError(f"data file not found: {self.data}")
        if self.init_student is not None and not Path(self.init_student).is_dir():
            raise CompressError(f"init student folder not found: {self.init_student}")

    @property
    def step_determined(self) -> bool:
        return self.max_steps is not None or self.epochs is not None

    def params(self) -> dict[str, Any]:
        """The settings that determine the result (the stage fingerprint and the resume check)."""
        data = {k: v for k, v in asdict(self).items() if k not in _RUN_ONLY_FIELDS}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


def resolve_device(requested: str) -> tuple[str, str | None]:
    """(device, warning): CUDA when asked for or available; ``cuda`` without a GPU is an error.

    ``auto`` falls back to the CPU with a one-line warning. An explicit ``--device cuda`` on a
    machine without CUDA stops with exit 2 instead: a job sized for a GPU should not quietly
    take hours on a CPU.
    """
    import torch

    available = torch.cuda.is_available()
    if requested == "cuda":
        if not available:
            raise CompressError(f"--device cuda: no CUDA device is available (torch {torch.__version__}); "
                                "use --device auto or --device cpu")
        return "cuda", None
    if requested == "cpu":
        return "cpu", None
    if available:
        return "cuda", None
    return "cpu", "no CUDA device: distilling on the CPU, in fp32; a GPU is much faster"


def cpu_threads() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
