"""Distillation settings, and how unset ones are filled from the profile and the machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compress.settings import DistillSettings
from compress.training.device import TRAIN_PRECISIONS
from export.base.errors import CompressError

DEFAULT_TIME_BUDGET_S = 600.0
# Once the step got cheap (bf16, the teacher's states cached), what is fixed per step (AdamW, gradient
# clipping, Python) dominated a batch of 32 short texts: 64 trains more tokens a second and, in the same
# time, a better student. The jetson student with 330 s of distillation on a 2-core Xeon (2026-12-04,
# benchmarks/results/step_recipes-330s.json): batch 64 cosine 0.9426, top-10 0.689, Spearman 0.909;
# batch 32 with frozen word embeddings 0.9375, 0.680, 0.903.
DEFAULT_BATCH_SIZE = {"cuda": 64, "cpu": 64}
EMBEDDINGS = ("auto", "frozen", "trained")
# ``--embeddings frozen`` keeps the teacher's word embeddings: two thirds of the jetson student's parameters,
# whose dense gradient and AdamW update are a large part of a batch-32 step. Batch 64 (above) was measured
# with them trained, and ``auto`` trains them.
FROZEN_EMBEDDINGS_BY_DEFAULT = False


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
    teacher_cache_bytes: int = 2 << 30  # each of the teacher's caches (final outputs; mapped hidden states on disk)
    train_precision: str = "auto"  # auto | fp32 | bf16: autocast where the device computes bf16 natively
    teacher_state_cache: bool = True  # layer transfer: keep the teacher's mapped hidden states after first use
    embeddings: str = "auto"  # auto | frozen | trained: the student's word embeddings (the teacher's, copied)
    checkpoint_every_s: float = 300.0
    checkpoint_every_steps: int | None = None
    log_every: int = 10

    run_only_fields: ClassVar[frozenset[str]] = DistillSettings.run_only_fields | {
        "checkpoint_every_s", "checkpoint_every_steps", "log_every"}
    # train_precision and teacher_state_cache are fingerprinted as resolved (compress.encoder.engine.resolved_config):
    # fp32, and no state cache where nothing reads hidden states, are how every run trained before them.
    later_fields: ClassVar[dict[str, object]] = {"relation_weight": 0.0, "relation_loss": "kl",
                                                 "neighbour_batches": False, "train_precision": "fp32",
                                                 "teacher_state_cache": False, "embeddings": "trained",
                                                 "train_anyway": False}

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (0 <= self.warmup_fraction < 1, "warmup fraction must be in [0, 1)"),
            (self.eval_points >= 0, "eval points must not be negative"),
            (self.log_every > 0, "log interval must be positive"),
            (self.embeddings in EMBEDDINGS, f"--embeddings must be one of {', '.join(EMBEDDINGS)}"),
            (self.train_precision in TRAIN_PRECISIONS,
             f"--train-precision must be one of {', '.join(TRAIN_PRECISIONS)}"),
        ]

    def embeddings_frozen(self, device: str) -> bool:
        """Whether the word embeddings stay as the teacher's (``auto``: see FROZEN_EMBEDDINGS_BY_DEFAULT)."""
        if self.embeddings == "auto":
            return FROZEN_EMBEDDINGS_BY_DEFAULT and not device.startswith("cuda")
        return self.embeddings == "frozen"

    def validate(self) -> None:
        super().validate()
        if self.init_student is not None and not Path(self.init_student).is_dir():
            raise CompressError(f"init student folder not found: {self.init_student}")
        if self.train_precision == "bf16":
            from compress.training.device import resolve_device, resolve_train_precision

            resolve_train_precision(self.train_precision, resolve_device(self.device)[0])  # a CPU without bf16: exit 2
