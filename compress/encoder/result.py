"""What encoder distillation made: the student, its quality, the teacher as used, how training went."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.training.projection import Projection
from compress.encoder.quality import QualityReport
from compress.encoder.trainer import TrainingReport
from export.base.tasks import Task


@dataclass
class TeacherSummary:
    """The teacher as used: where from, how big, and (when quantized) how far from full precision."""

    name: str
    path: str
    task: Task
    parameters: int
    layers: int
    hidden: int
    memory_footprint_bytes: int  # of the teacher used for training (the quantized one with teacher_quant)
    quant: str | None = None
    fp_memory_footprint_bytes: int | None = None
    quant_quality: QualityReport | None = None  # quantized teacher vs full-precision teacher, held-out


@dataclass
class DistillResult:
    """What :func:`distill` produced and measured."""

    student_dir: Path
    task: Task
    student_spec: str
    student_description: str
    student_parameters: int
    student_layers: int
    student_hidden: int
    teacher: TeacherSummary
    quality: QualityReport  # student vs the full-precision teacher on the held-out split
    initial_quality: QualityReport | None  # the student before training (None when resumed)
    training: TrainingReport
    device: str
    precision: str  # bf16-autocast or fp32
    threads: int | None
    batch_size: int
    corpus: str
    train_examples: int
    held_out_examples: int
    history_path: Path
    curve_path: Path
    held_out_path: Path
    checkpoint_dir: Path
    warnings: list[str] = field(default_factory=list)
    train_path: Path | None = None  # the training split (runs made before it was kept have none)
    cross_domain_path: Path | None = None  # a genre never trained on (the default corpus's quotations)
    cross_domain_genre: str | None = None
    projection: Projection | None = None  # what more training time would buy, against the profile's floor

    def metrics(self) -> dict[str, Any]:
        """The flat metrics recorded in ``stage.json``."""
        q = self.quality
        metrics: dict[str, Any] = {
            "task": self.task,
            "teacher_agreement": q.teacher_agreement,
            "teacher_agreement_metric": q.metric,
            "neighbour_agreement": q.neighbour_agreement,
            "similarity_spearman": q.similarity_spearman,
            "accuracy": q.accuracy,
            "teacher_accuracy": q.teacher_accuracy,
            "initial_teacher_agreement": self.initial_quality.teacher_agreement if self.initial_quality else None,
            "agreement_by_step": [{"step": e["step"], "teacher_agreement": e["teacher_agreement"]}
                                  for e in self.training.history if e.get("teacher_agreement") is not None],
            "held_out_examples": self.held_out_examples,
            "train_examples": self.train_examples,
            "corpus": self.corpus,
            "cross_domain_genre": self.cross_domain_genre,
            "steps": self.training.steps,
            "epochs": self.training.epochs,
            "samples_seen": self.training.samples_seen,
            "samples_per_s": self.training.samples_per_s,
            "train_time_s": self.training.train_time_s,
            "world_size": self.training.world_size,
            "backend": self.training.backend,
            "rank_samples_per_s": self.training.rank_samples_per_s,
            "allreduce_share": self.training.allreduce_share,
            "stopped_by": self.training.stopped_by,
            "resumed_from_step": self.training.resumed_from_step,
            "teacher_outputs": self.training.teacher_cache,
            "useful_tokens": self.training.tokens,
            "teacher_tokens": self.training.teacher_tokens,
            "phase_seconds": self.training.phase_seconds,
            "teacher_parameters": self.teacher.parameters,
            "teacher_layers": self.teacher.layers,
            "teacher_hidden": self.teacher.hidden,
            "student_parameters": self.student_parameters,
            "parameter_ratio": round(self.student_parameters / self.teacher.parameters, 4),
            "student_layers": self.student_layers,
            "student_hidden": self.student_hidden,
            "student": self.student_description,
            "device": self.device,
            "precision": self.precision,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "teacher_memory_footprint_bytes": self.teacher.memory_footprint_bytes,
            "teacher_quant": self.teacher.quant,
        }
        if self.teacher.quant_quality is not None:
            metrics["teacher_fp_memory_footprint_bytes"] = self.teacher.fp_memory_footprint_bytes
            metrics["teacher_quant_agreement"] = self.teacher.quant_quality.teacher_agreement
            metrics["teacher_quant_neighbour_agreement"] = self.teacher.quant_quality.neighbour_agreement
        if self.projection is not None:
            metrics["quality_projection"] = self.projection.to_json()
        return metrics
