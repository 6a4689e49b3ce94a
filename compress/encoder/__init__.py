"""Knowledge distillation: a Hugging Face teacher into a small student, scored on held-out text.

Public API::

    from compress.encoder import DistillConfig, distill, run_distill_stage

    result = distill(DistillConfig(max_steps=500), work_dir)          # -> DistillResult
    record = run_distill_stage(run_dir, DistillConfig(), profile)      # -> StageRecord (RUN_DIR/distill)

Recovery after pruning: ``DistillConfig(init_student=pruned_folder, ...)`` trains an existing
student folder against the teacher with the same loop.

Heavy libraries (torch, transformers) are imported inside the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "DistillConfig",
    "DistillInterrupted",
    "DistillResult",
    "QualityReport",
    "Reporter",
    "StepReport",
    "StudentSpec",
    "TEACHERS",
    "TeacherSummary",
    "TrainingReport",
    "default_corpus",
    "distill",
    "load_corpus",
    "parse_student_spec",
    "resolve_teacher",
    "run_distill_stage",
    "split_corpus",
]

_WHERE = {
    "DistillConfig": "compress.encoder.config",
    "DistillInterrupted": "compress.training.interrupt",
    "DistillResult": "compress.encoder.result",
    "QualityReport": "compress.encoder.quality",
    "Reporter": "compress.training.progress",
    "StepReport": "compress.training.progress",
    "StudentSpec": "compress.encoder.student",
    "TEACHERS": "compress.encoder.teacher",
    "TeacherSummary": "compress.encoder.result",
    "TrainingReport": "compress.encoder.trainer",
    "default_corpus": "export.base.corpus",
    "distill": "compress.encoder.engine",
    "load_corpus": "export.base.corpus",
    "parse_student_spec": "compress.encoder.student",
    "resolve_teacher": "compress.encoder.teacher",
    "run_distill_stage": "compress.encoder.stage",
    "split_corpus": "export.base.corpus",
}

if TYPE_CHECKING:
    from compress.encoder.config import DistillConfig
    from export.base.corpus import default_corpus, load_corpus, split_corpus
    from compress.encoder.engine import distill
    from compress.encoder.result import DistillResult, TeacherSummary
    from compress.training.progress import Reporter, StepReport
    from compress.encoder.quality import QualityReport
    from compress.encoder.stage import run_distill_stage
    from compress.encoder.student import StudentSpec, parse_student_spec
    from compress.encoder.teacher import TEACHERS, resolve_teacher
    from compress.encoder.trainer import TrainingReport
    from compress.training.interrupt import DistillInterrupted


def __getattr__(name: str) -> Any:
    # Lazy: `import compress.encoder` stays cheap; the submodule loads on first use.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'compress.encoder' has no attribute {name!r}")
