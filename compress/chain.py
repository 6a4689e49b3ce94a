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

``compress distill`` comes in as a :class:`DistillJob` (what the user asked for, option by option);
:func:`plan_distill_job` picks the family and checks every option before anything is written, and
:func:`run_distill_job` runs the chain for it. The chain owns the order, the time budget and ``run.json``, and is the one writer of its result;
each stage is a module of :mod:`compress.stages` that returns a typed output, and a task family
(:class:`~compress.stages.family.TaskFamily`) supplies what differs between a sentence encoder and
a causal LM. Every stage goes through :func:`export.base.stages.run_stage`, so a stage whose
inputs and settings are unchanged is skipped and an interrupted run picks up at the first
unfinished stage.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.chain_state import (FOLDERS, STAGES, ChainContext, ChainOptions, ChainResult, ModelSide, PruneOptions,
                                  TableRow, bench_threads, profile_input)
from compress.parallel import close_world, world
from compress.run_directory import claimed
from compress.settings import DistillSettings
from compress.stages.bench import run_bench
from compress.stages.distill import run_distill
from compress.stages.export import run_export
from compress.stages.prune import run_prune
from compress.stages.gate import run_gate
from compress.stages.quantize import run_quantize
from compress.stages.release import run_release
from export.base.errors import CompressError
from export.base.files import sha256_file
from export.base.version import __version__
from export.runtime import DEFAULT_PROFILE

if TYPE_CHECKING:
    from compress.stages.family import TaskFamily
    from compress.training.progress import Reporter
    from export.runtime.gate import GateReport
    from export.runtime.profiles import Profile

__all__ = ["STAGES", "ChainContext", "ChainOptions", "ChainResult", "DistillJob", "ModelSide", "PlannedJob",
           "PruneOptions", "TableRow", "bench_threads", "checked_chain", "plan_distill_job", "profile_input",
           "run_chain", "run_distill_job", "with_chain_budget"]
PROFILE_COPY = "profile.yaml"


# Options of the chain itself (the rest configure distillation).
CHAIN_OPTIONS = ("stop_after", "precision", "block_size", "prune_heads", "prune_ffn", "recover_steps", "on")


@dataclass
class DistillJob:
    """What a user asked ``compress distill`` for, as option name -> value."""

    profile: str = DEFAULT_PROFILE
    teacher: str | None = None
    run_dir: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)  # options the user named (not left at their defaults)
    flags: dict[str, str] = field(default_factory=dict)  # option name -> how the command line spells it
    nproc: int = 1  # processes distilling (a recipe records it; the command line launches them)
    source: str = "compress distill"  # how the job was asked for, for the recipe's header

    def flag(self, name: str) -> str:
        return self.flags.get(name, "--" + name.replace("_", "-"))


@dataclass
class PlannedJob:
    """A job with every option checked: what the chain runs."""

    family: TaskFamily
    config: DistillSettings
    profile: Profile
    options: ChainOptions
    run_dir: Path


def plan_distill_job(job: DistillJob) -> PlannedJob:
    """Check every option of ``job`` and build what the chain needs; writes nothing, starts nothing.

    An option the teacher's family cannot use, or any other bad input, is a CompressError here.
    """
    from compress.families import family_for
    from export.runtime.profiles import load_profile

    profile = load_profile(job.profile)
    family = family_for(job.teacher, teacher_url=job.settings.get("teacher_url"))
    foreign = sorted(name for name in job.given if name in family.foreign_options)
    if foreign:
        names = ", ".join(sorted(job.flag(name) for name in foreign))
        raise CompressError(f"{names}: not used when the teacher is {family.teacher_words}; drop {'it' if len(foreign) == 1 else 'them'}")
    settings = {k: v for k, v in job.settings.items() if k not in family.foreign_options}
    chain = {name: settings.pop(name) for name in CHAIN_OPTIONS if name in settings}
    config = family.make_config({**settings, "teacher": job.teacher} if job.teacher else settings)
    prune = None
    if "prune_heads" in chain:
        defaults = profile.distill.prune
        prune = PruneOptions(
            heads=defaults.heads if chain["prune_heads"] is None else chain["prune_heads"],
            ffn=defaults.ffn if chain["prune_ffn"] is None else chain["prune_ffn"],
            recover_steps=defaults.recover_steps if chain["recover_steps"] is None else chain["recover_steps"])
    options = ChainOptions(stop_after=chain.get("stop_after", "gate"), prune=prune, precision=chain.get("precision"),
                           block_size=chain.get("block_size", 32), on=chain.get("on"))
    checked_chain(family, config, profile, options)
    return PlannedJob(family, config, profile, options, job.run_dir or Path("runs") / profile.name)


def run_distill_job(job: DistillJob, reporter: Reporter | None = None) -> tuple[TaskFamily, ChainResult]:
    """Run the whole chain for ``job``; an option the teacher's family cannot use is a CompressError."""
    from compress.parallel import init_world

    planned = plan_distill_job(job)
    init_world(planned.config.device)  # under torchrun: join the ranks (a world of one otherwise)
    try:
        result = run_chain(planned.run_dir, planned.family, planned.config, planned.profile, planned.options,
                           reporter)
    finally:
        close_world(together=False)  # the chain left the group after distillation; this is for errors
    if not result.helper:
        write_job_recipe(job, planned)
    return planned.family, result


def write_job_recipe(job: DistillJob, planned: PlannedJob) -> Path:
    """``RUN_DIR/recipe.yaml``: every option of ``job`` its family uses, so ``--config`` repeats the run."""
    from compress.recipe import SECTIONS, write_recipe

    settings = {name: value for name, value in job.settings.items() if name not in planned.family.foreign_options}
    settings["time_budget"] = settings.pop("time_budget_s", None)
    settings.update(profile_name=job.profile, teacher=job.teacher, run_dir=str(planned.run_dir), nproc=job.nproc)
    known = {name for section in SECTIONS for name in section.keys.values()}
    return write_recipe(planned.run_dir / "recipe.yaml", {k: v for k, v in settings.items() if k in known},
                        source=job.source)


def run_chain(run_dir: str | Path, family: TaskFamily, config: DistillSettings, profile: Profile,
              options: ChainOptions | None = None, reporter: Reporter | None = None) -> ChainResult:
    """Run the chain for ``profile`` into ``run_dir`` up to ``options.stop_after`` and return what it found.

    ``config`` is the family's distillation config; when it sets neither a step count nor a time
    budget, the profile's ``distill.time_budget`` bounds the whole chain and distillation gets what
    the family's later stages are expected to leave.
    """
    from compress.training.progress import Reporter

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
    from compress.training.progress import QuietReporter

    result = ChainResult(run_dir=run_dir, family=family.name, profile=profile.name, stages={}, helper=True)
    run_distill(ChainContext(run_dir, config, profile, options, QuietReporter(), result), family)
    close_world()
    return result


def _run(run_dir: Path, family: TaskFamily, config: DistillSettings, profile: Profile, options: ChainOptions,
         reporter: Reporter, reaches: Callable[[str], bool]) -> ChainResult:
    """The stages in order, each taking what the ones before made; the result assembled from their outputs."""
    result = ChainResult(run_dir=run_dir, family=family.name, profile=profile.name, stages={})
    ctx = ChainContext(run_dir, config, profile, options, reporter, result)
    distilled = run_distill(ctx, family)
    assert distilled is not None  # this is rank 0, which writes
    close_world()  # the stages after distillation run once, here
    result.stages["distill"], result.distill = distilled.status, distilled.record
    if not reaches("prune"):
        return result
    pruned = run_prune(ctx, family)
    if pruned.status is not None:
        result.stages["prune"] = pruned.status
    if not reaches("export"):
        return result

    student = run_export(ctx, family, pruned.model_dir, "export")
    teacher = run_export(ctx, family, family.teacher_dir(ctx.distilled), "teacher")
    result.stages["export"], result.stages["teacher"] = student.status, teacher.status
    result.final_model, result.precision = student.model, "fp32"
    if reaches("quantize"):
        quantized = run_quantize(ctx, family, student.model)
        result.stages["quantize"] = quantized.status
        result.notes.extend(quantized.notes)
        if quantized.model is not None:
            result.final_model, result.precision = quantized.model, quantized.precision
    if reaches("bench"):
        released = run_release(ctx, family, student.model, teacher.model)
        if released is not None:
            result.stages["release"], result.release = released.status, released.choice
            if released.model is not None:
                result.final_model, result.precision = released.model, released.precision
    result.teacher = ModelSide(teacher.model, family.teacher_parameters(ctx.distilled),
                               family.size_bytes(teacher.model))
    result.student = ModelSide(result.final_model, family.student_size(ctx).params,
                               family.size_bytes(result.final_model))
    gate_report = _measure(ctx, family, teacher.model, reaches)
    if result.quality is None:
        result.quality = family.distill_quality(ctx.distilled)
    result.rows, result.measured = family.table(result)
    _write_summary(ctx, family, gate_report)
    return result


def _measure(ctx: ChainContext, family: TaskFamily, teacher: Path, reaches: Callable[[str], bool]
             ) -> GateReport | None:
    """Bench and gate the release (as far as the chain goes); the verdict, when the gate ran."""
    result = ctx.result
    if not reaches("bench"):
        return None
    assert result.final_model is not None
    benched = run_bench(ctx, family, result.final_model, teacher, bench_threads(ctx.profile, result.notes))
    result.stages["bench"] = benched.status
    result.speed, result.speedup, result.host = benched.speed, benched.speedup, benched.host
    if not reaches("gate"):
        return None
    gated = run_gate(ctx, family, result.final_model, teacher)
    result.stages["gate"], result.quality = gated.status, gated.quality
    result.verdict, result.gate_exit_code = gated.report.verdict, gated.report.exit_code
    result.gate_reasons = list(gated.report.reasons)
    return gated.report


def with_chain_budget(config: DistillSettings, profile: Profile, reserve_s: float, min_share: float
                      ) -> DistillSettings:
    """Give distillation the chain's time budget minus what the later stages need (at least ``min_share``)."""
    total = config.budget_s(profile)
    if total is None:
        return config
    share = max(total - reserve_s, min_share * total)
    return dataclasses.replace(config, time_budget_s=round(share, 1))


# ---------------------------------------------------------------------------------------------
# run.json


def _write_summary(ctx: ChainContext, family: TaskFamily, gate_report: GateReport | None) -> None:
    from export.base.files import sha256_tree
    from export.run_summary import ReportPaths, RunSummary, TeacherInfo, write_run_summary

    result, record = ctx.result, ctx.distilled
    stages = {name: f"{name}/stage.json" for name in FOLDERS if result.stages.get(name) in ("ran", "skipped")}
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
