"""The release chain, one for every task family: distill → prune → export → quantize → bench → gate.

``RUN_DIR`` ends up holding one folder per stage, each with its ``stage.json``::

    distill/    student/ (HF folder), held_out.jsonl, loss_history.json (+ the family's own files)
    prune/      the pruned student (encoders, when the profile or the options ask for pruning)
    export/     model.onnx + tokenizer files: the student in fp32, parity-checked against PyTorch
    teacher/    model.onnx + tokenizer files: the teacher in fp32, the baseline every number is against
    quantize/   the release precision (absent for fp32 profiles)
    release/    candidates.json: every model that could ship, measured side by side, and the one chosen
                (causal LMs; with the teacher quantized beside the student)
    bench/      bench.json (the release alone), compare.json (release vs teacher, runs interleaved)
    gate/       gate.json, junit.xml (+ quality.json for encoders)
    run.json    what the run holds, where, and the verdict (read by ``compress package``)

The chain owns the order, the time budget and ``run.json``; a :class:`~compress.families.TaskFamily`
supplies what differs between a sentence encoder and a causal LM. Every stage goes through
:func:`export.base.stages.run_stage`, so a stage whose inputs and settings are unchanged is skipped
and an interrupted run picks up at the first unfinished stage.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from compress.chain_state import (STAGES, ChainContext, ChainOptions, ChainResult, ModelSide, PruneOptions, TableRow,
                                  bench_threads, profile_input)
from compress.parallel import close_world, world
from compress.settings import DistillSettings
from compress.run_directory import claimed
from export.base.files import sha256_file
from export.base.version import __version__

if TYPE_CHECKING:
    from compress.distill.progress import Reporter
    from compress.families.base import TaskFamily
    from export.runtime.gate import GateReport
    from export.runtime.profiles import Profile

__all__ = ["STAGES", "ChainContext", "ChainOptions", "ChainResult", "ModelSide", "PruneOptions", "TableRow",
           "bench_threads", "checked_chain", "profile_input", "run_chain", "with_chain_budget"]
PROFILE_COPY = "profile.yaml"


def run_chain(run_dir: str | Path, family: TaskFamily, config: DistillSettings, profile: Profile,
              options: ChainOptions | None = None, reporter: Reporter | None = None) -> ChainResult:
    """Run the chain for ``profile`` into ``run_dir`` up to ``options.stop_after`` and return what it found.

    ``config`` is the family's distillation config; when it sets neither a step count nor a time
    budget, the profile's ``distill.time_budget`` bounds the whole chain and distillation gets what
    the family's later stages are expected to leave.
    """
    from compress.distill.progress import Reporter

    options = options or ChainOptions()
    config = checked_chain(family, config, profile, options)  # before anything is written
    run_dir = Path(run_dir)
    last = STAGES.index(options.stop_after)

    def reaches(stage: str) -> bool:
        return STAGES.index(stage) <= last

    if not world().is_main:
        return _help_distill(run_dir, family, config, profile, options)
    with claimed(run_dir):
        return _run(run_dir, family, config, profile, options, reporter or Reporter(), reaches)


def checked_chain(family: TaskFamily, config: DistillSettings, profile: Profile,
                  options: ChainOptions) -> DistillSettings:
    """Every option of a chain checked, nothing written: the config distillation will run with.

    Bad input fails here, before a run directory exists (and, under ``--nproc``, before a rank starts).
    """
    options.check()
    family.check_options(options)
    if options.on:
        from export.remote import parse_target

        parse_target(options.on)  # a bad board address fails now, not after training
    config = with_chain_budget(config, profile, family.later_stages_reserve_s, family.min_distill_share)
    config.validate()
    return config


def _help_distill(run_dir: Path, family: TaskFamily, config: DistillSettings, profile: Profile,
                  options: ChainOptions) -> ChainResult:
    """A rank other than 0 under torchrun: train its shard of distillation, write nothing, leave."""
    from compress.distill.progress import QuietReporter

    result = ChainResult(run_dir=run_dir, family=family.name, profile=profile.name, stages={}, helper=True)
    family.distill(ChainContext(run_dir, config, profile, options, QuietReporter(), result))
    close_world()
    return result


def _run(run_dir: Path, family: TaskFamily, config: DistillSettings, profile: Profile, options: ChainOptions,
         reporter: Reporter, reaches: Callable[[str], bool]) -> ChainResult:
    result = ChainResult(run_dir=run_dir, family=family.name, profile=profile.name, stages={})
    ctx = ChainContext(run_dir, config, profile, options, reporter, result)
    distilled = family.distill(ctx)
    close_world()  # the stages after distillation run once, here
    result.stages["distill"], result.distill = distilled.status, distilled.record
    if not reaches("prune"):
        return result

    model_dir = family.prune(ctx)
    if not reaches("export"):
        return result

    student_onnx = _export(ctx, family, model_dir, "export")
    teacher_onnx = _export(ctx, family, family.teacher_dir(ctx.distilled), "teacher")
    result.final_model, result.precision = student_onnx, "fp32"
    if reaches("quantize"):
        family.quantize(ctx, student_onnx)
    if reaches("bench"):
        family.choose_release(ctx, student_onnx, teacher_onnx)

    result.teacher = ModelSide(teacher_onnx, family.teacher_parameters(ctx.distilled), family.size_bytes(teacher_onnx))
    result.student = ModelSide(result.final_model, family.student_size(ctx).params,
                               family.size_bytes(result.final_model))
    gate_report: GateReport | None = None
    if reaches("bench"):
        family.bench(ctx, result.final_model, teacher_onnx, bench_threads(profile, result.notes))
        if reaches("gate"):
            gate_report = family.gate(ctx, result.final_model, teacher_onnx)
            result.verdict, result.gate_exit_code = gate_report.verdict, gate_report.exit_code
            result.gate_reasons = list(gate_report.reasons)
    if result.quality is None:
        result.quality = family.distill_quality(ctx.distilled)
    result.rows, result.measured = family.table(result)
    _write_summary(ctx, family, gate_report)
    return result


def with_chain_budget(config: DistillSettings, profile: Profile, reserve_s: float, min_share: float
                      ) -> DistillSettings:
    """Give distillation the chain's time budget minus what the later stages need (at least ``min_share``)."""
    if config.step_determined and config.time_budget_s is None:
        return config
    total = config.time_budget_s if config.time_budget_s is not None else profile.distill.time_budget_s
    share = max(total - reserve_s, min_share * total)
    return dataclasses.replace(config, time_budget_s=round(share, 1))


def _export(ctx: ChainContext, family: TaskFamily, model_dir: Path, name: str) -> Path:
    what = "the teacher" if name == "teacher" else "the student"
    ctx.reporter.message(f"{name}: exporting {what} to ONNX and checking parity with PyTorch")
    exported = family.export(ctx, model_dir, ctx.run_dir / name)
    ctx.result.stages[name] = exported.status
    ctx.reporter.message(f"{name}: {exported.model} ({exported.parity}, {exported.status})")
    return exported.model


# ---------------------------------------------------------------------------------------------
# run.json


def _write_summary(ctx: ChainContext, family: TaskFamily, gate_report: GateReport | None) -> None:
    from export.base.files import sha256_tree
    from export.run_summary import ReportPaths, RunSummary, TeacherInfo, write_run_summary

    result, record = ctx.result, ctx.distilled
    stages = {name: f"{name}/stage.json" for name in ("distill", "prune", "export", "teacher", "quantize", "release",
                                                      "bench", "gate")
              if result.stages.get(name) in ("ran", "skipped")}
    teacher_dir = family.teacher_dir(record)
    weights = teacher_dir / "model.safetensors"
    # The run's identity is its distillation: re-running later stages keeps the id and date.
    finished = record.finished_at or record.started_at
    gated = gate_report is not None
    summary = RunSummary(
        run_id=f"{re.sub(r'[^0-9]', '', finished)[:14]}-{ctx.profile.name}",
        created_at=gate_report.created_at if gate_report is not None and family.dated_by_gate else finished,
        profile=ctx.profile.name, task=family.task_of(ctx), precision=result.precision or "fp32",
        teacher=TeacherInfo(name=family.teacher_name(record), path=str(teacher_dir),
                            weights_sha256=sha256_file(weights) if weights.is_file() else sha256_tree(teacher_dir),
                            params=int(family.teacher_parameters(record)), **family.answers_provenance(record)),
        student=family.student_size(ctx),
        final_model=str(result.final_model.relative_to(ctx.run_dir)),
        quality=family.quality_summary(result),
        tool_version=__version__, stages=stages, profile_file=copy_user_profile(ctx.run_dir, ctx.profile),
        reports=ReportPaths(bench="bench/bench.json" if "bench" in stages else None,
                            gate="gate/gate.json" if gated else None, junit="gate/junit.xml" if gated else None,
                            loss_history=f"distill/{record.outputs['loss_history']}"),
        verdict=result.verdict,
    )
    write_run_summary(ctx.run_dir, summary)


def copy_user_profile(run_dir: Path, profile: Profile) -> str | None:
    """A user's own profile file travels with the run (package and verify gate against it)."""
    from export.runtime.profiles import is_shipped

    if profile.source is None or is_shipped(profile.source):
        return None
    target = run_dir / PROFILE_COPY
    if not target.is_file() or sha256_file(target) != sha256_file(profile.source):
        shutil.copy2(profile.source, target.with_suffix(".yaml.tmp"))
        target.with_suffix(".yaml.tmp").replace(target)
    return PROFILE_COPY
