"""The ``distill`` stage of a run directory: ``RUN_DIR/distill/`` and its ``stage.json``.

Skipped when its inputs (teacher folder, data file, initial student, by sha256) and parameters
are unchanged since its last successful run and its outputs still exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.distill.config import DistillConfig
from compress.distill.corpus import DEFAULT_CORPUS_NAME, default_corpus
from compress.distill.engine import (CHECKPOINT_DIR, CURVE_FILE, HELD_OUT_FILE, HISTORY_FILE, STUDENT_DIR, distill,
                                     resolve_student_text)
from compress.distill.progress import Reporter
from compress.distill.teacher import resolve_teacher
from compress.stage import FileRef, StageRecord, StageTimer, is_up_to_date, write_record

STAGE = "distill"


def planned_record(config: DistillConfig, profile: Any) -> StageRecord:
    """The record this stage would write, minus outputs and metrics (enough to decide skipping)."""
    _, teacher_dir = resolve_teacher(config.teacher)
    inputs = {"teacher": FileRef.of(teacher_dir)}
    params = config.params()
    if config.data is not None:
        inputs["data"] = FileRef.of(Path(config.data))
    else:
        params["data"] = DEFAULT_CORPUS_NAME
        params["default_corpus_sha256"] = default_corpus().sha256
    if config.init_student is not None:
        inputs["init_student"] = FileRef.of(Path(config.init_student))
    student_text, _ = resolve_student_text(config, profile)
    params["student_resolved"] = student_text
    params["profile"] = profile.name if profile is not None else None
    if config.time_budget_s is None and not config.step_determined and profile is not None:
        params["time_budget_s"] = profile.distill.time_budget_s
    return StageRecord(stage=STAGE, inputs=inputs, params=params)


def run_distill_stage(run_dir: Path, config: DistillConfig, profile: Any = None,
                      reporter: Reporter | None = None) -> StageRecord:
    """Run (or skip) the distill stage into ``run_dir/distill`` and return its record.

    The record's ``outputs`` are relative to ``run_dir/distill``; its ``metrics`` are
    :meth:`DistillResult.metrics`. A skipped stage returns the previous record unchanged.
    """
    reporter = reporter or Reporter()
    config.validate()
    stage_dir = Path(run_dir) / STAGE
    record = planned_record(config, profile)
    previous = is_up_to_date(stage_dir, record)
    if previous is not None:
        reporter.message(f"distill: up to date in {stage_dir} (inputs and settings unchanged); skipped")
        return previous
    with StageTimer(record):
        result = distill(config, stage_dir, profile, reporter)
    record.outputs = {
        "student": STUDENT_DIR,
        "loss_history": HISTORY_FILE,
        "loss_curve": CURVE_FILE,
        "held_out": HELD_OUT_FILE,
        "checkpoint": CHECKPOINT_DIR,
    }
    record.metrics = result.metrics()
    write_record(stage_dir, record)
    return record
