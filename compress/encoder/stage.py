"""The ``distill`` stage of a run directory: ``RUN_DIR/distill/`` and its ``stage.json``.

Skipped when its inputs (teacher folder, data file, initial student, by sha256) and parameters
are unchanged since its last successful run and its outputs still exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.encoder.config import DistillConfig
from compress.encoder.engine import (CHECKPOINT_DIR, CROSS_DOMAIN_FILE, CURVE_FILE, HELD_OUT_FILE, HISTORY_FILE, TRAIN_FILE,
                                     STUDENT_DIR, distill, resolve_student_text, resolved_config)
from compress.training.progress import Reporter
from compress.encoder.student_search import SEARCH_FILE, searches_student
from compress.encoder.teacher import resolve_task, resolve_teacher
from export.base.corpus import pin_training_data
from export.base.records import FileRef, StageRecord
from compress.stages.distill import run_distill_plan
from export.base.stages import StageOutput, StagePlan, StageRun

if TYPE_CHECKING:
    from export.runtime.profiles import Profile

STAGE = "distill"


def planned_record(config: DistillConfig, profile: Profile) -> StageRecord:
    """The record this stage would write, minus outputs and metrics (enough to decide skipping)."""
    _, teacher_dir = resolve_teacher(config.teacher)
    inputs = {"teacher": FileRef.of(teacher_dir)}
    params = resolved_config(config, resolve_task(teacher_dir, config.task), profile).params()
    pin_training_data(config.data, inputs, params)
    if config.init_student is not None:
        inputs["init_student"] = FileRef.of(Path(config.init_student))
    if config.student == "auto" and searches_student(profile):
        # The shape is searched when the stage runs; what decides it is the budget and the workload.
        params["student_resolved"] = "latency search"
        params["student_search"] = {"p95_ms": profile.budgets.latency_ms.p95, "workload": profile.workload.model_dump(),
                                    "threads": profile.runtime.intra_op_threads,
                                    "model_size_mb": profile.budgets.model_size_mb}
    else:
        params["student_resolved"] = resolve_student_text(config, profile)[0]
    params["profile"] = profile.name if profile is not None else None
    budget = config.budget_s(profile)
    if config.time_budget_s is None and budget is not None:  # the profile's
        params["time_budget_s"] = budget
    return StageRecord(stage=STAGE, inputs=inputs, params=params)


def distill_plan(config: DistillConfig, profile: Profile | None = None, reporter: Reporter | None = None
                 ) -> StagePlan:
    """The distill stage for a sentence encoder or classifier: its fingerprint and its work (the trainer's setup).

    The record's ``outputs`` are relative to ``RUN_DIR/distill``; its ``metrics`` are
    :meth:`DistillResult.metrics`.
    """
    reporter = reporter or Reporter()
    config.validate()

    def work(folder: Path) -> StageOutput:
        result = distill(config, folder, profile, reporter)
        if result is None:  # a rank other than 0: it trained, rank 0 writes
            return StageOutput({}, {})
        outputs = {"student": STUDENT_DIR, "loss_history": HISTORY_FILE, "loss_curve": CURVE_FILE,
                   "held_out": HELD_OUT_FILE, "checkpoint": CHECKPOINT_DIR}
        if (folder / SEARCH_FILE).is_file():
            outputs["student_search"] = SEARCH_FILE
        if result.train_path is not None:
            outputs["train"] = TRAIN_FILE
        if result.cross_domain_path is not None:
            outputs["cross_domain"] = CROSS_DOMAIN_FILE
        return StageOutput(outputs, result.metrics())

    return StagePlan(planned_record(config, profile), work)


def run_distill_stage(run_dir: Path, config: DistillConfig, profile: Profile | None = None,
                      reporter: Reporter | None = None) -> StageRun | None:
    """Run (or skip) the distill stage into ``run_dir/distill`` (None on ranks other than 0 under torchrun);
    what ``compress distill`` does before exporting, callable alone."""
    reporter = reporter or Reporter()
    return run_distill_plan(run_dir, distill_plan(config, profile, reporter), reporter)
