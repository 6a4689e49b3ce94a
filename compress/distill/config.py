"""Distillation settings, and how unset ones are filled from the profile and the machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compress.settings import DistillSettings
from export.base.errors import CompressError

DEFAULT_TIME_BUDGET_S = 600.0
# On a GPU bigger batches are nearly free; on a CPU throughput per sample barely changes
# between 32 and 64, so the smaller batch buys twice the optimizer steps in the same time.
DEFAULT_BATCH_SIZE = {"cuda": 64, "cpu": 32}



@dataclass
class DistillConfig(DistillSettings):
    """A sentence encoder's or classifier's distillation: the shared settings and the losses it trains with."""

    task: str = "auto"  # auto | feature-extraction | text-classification | token-classification
    init_student: Path | None = None  # start from this student folder instead of building one
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    split_seed: int = 0  # the held-out split; shared by every stage, independent of the training seed
    embedding_loss: str = "cosine"  # cosine | mse | cosine+mse
    hidden_weight: float | None = None  # hidden-state MSE weight; None: the profile's for embeddings, else 0
    attention_weight: float = 0.0  # last-layer attention KL weight (0 = off)
    relation_weight: float = 0.0  # sentence embeddings: weight of the in-batch similarity-structure loss (0 = off)
    relation_loss: str = "kl"  # kl | mse
    neighbour_batches: bool = False  # after the first epoch, each text beside its nearest by the teacher
    alpha: float = 0.5  # classifiers: weight of the teacher KL; labels get 1 - alpha
    temperature: float = 2.0
    dropout: bool = False  # keep the teacher config's dropout in the student while training
    eval_points: int = 4  # held-out evaluations during training (plus before and after)
    trust_remote_code: bool = False
    teacher_cache_bytes: int = 2 << 30
    checkpoint_every_s: float = 300.0
    checkpoint_every_steps: int | None = None
    log_every: int = 10

    run_only_fields: ClassVar[frozenset[str]] = DistillSettings.run_only_fields | {
        "checkpoint_every_s", "checkpoint_every_steps", "log_every"}
    later_fields: ClassVar[dict[str, object]] = {"relation_weight": 0.0, "relation_loss": "kl",
                                                 "neighbour_batches": False}

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (0 <= self.warmup_fraction < 1, "warmup fraction must be in [0, 1)"),
            (self.eval_points >= 0, "eval points must not be negative"),
            (self.log_every > 0, "log interval must be positive"),
        ]

    def validate(self) -> None:
        super().validate()
        if self.init_student is not None and not Path(self.init_student).is_dir():
            raise CompressError(f"init student folder not found: {self.init_student}")
