"""The release chain: distill → prune → export → quantize → bench → gate, in one run directory.

``RUN_DIR`` ends up holding one folder per stage, each with its ``stage.json``::

    distill/    student/ (HF folder), held_out.jsonl, loss_history.json, loss_curve.png
    prune/      the pruned student (only when the profile or the options ask for pruning)
    export/     model.onnx + tokenizer files: the student in fp32
    teacher/    model.onnx + tokenizer files: the teacher in fp32, the baseline every number is against
    quantize/   model.<precision>.onnx (absent for fp32 profiles)
    bench/      bench.json (the final model alone), compare.json (final vs teacher, runs interleaved)
    gate/       quality.json, gate.json, junit.xml
    run.json    what the run holds, where, and the verdict (read by ``compress package``)

Every stage is skipped when its inputs (by sha256) and parameters are unchanged and its outputs
exist, so re-running the same command after an interruption picks up at the first unfinished
stage. Each stage writes its folder atomically, its record last.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.distill.config import DistillConfig
from compress.distill.progress import Reporter
from compress.errors import CompressError
from compress.files import atomic_directory, atomic_write_json, sha256_file, sha256_tree
from compress.stage import (FileRef, StageRecord, StageTimer, is_up_to_date, read_record, stage_status,
                            write_record)

STAGES = ("distill", "prune", "export", "quantize", "bench", "gate")
# What the stages after distillation take on this CPU with the default teacher (measured: about
# 80 s for both exports, quantization with its checks, bench, comparison and quality evaluation);
# a time-bounded chain leaves them this much of its budget.
LATER_STAGES_RESERVE_S = 120.0
BENCH_RUNS = 100
BENCH_WARMUP = 10
QUALITY_TEXTS = 256
PROFILE_COPY = "profile.yaml"


@dataclass
class PruneOptions:
    """Structured pruning after distillation (fractions of heads and FFN neurons to remove)."""

    heads: float = 0.0
    ffn: float = 0.0
    recover_steps: int = 100

    @property
    def wanted(self) -> bool:
        return self.heads > 0 or self.ffn > 0


@dataclass
class ChainOptions:
    """How far the chain goes and what it does beyond distillation."""

    stop_after: str = "gate"
    prune: PruneOptions | None = None  # None: the profile's distill.prune
    precision: str | None = None  # None: the profile's precision
    opset: int | None = None
    bench_runs: int = BENCH_RUNS
    bench_warmup: int = BENCH_WARMUP
    quality_texts: int = QUALITY_TEXTS

    def check(self) -> None:
        if self.stop_after not in STAGES:
            raise CompressError(f"--stop-after {self.stop_after!r}: choose one of {', '.join(STAGES)}")
        if self.bench_runs < 1 or self.bench_warmup < 0 or self.quality_texts < 2:
            raise CompressError("bench runs must be at least 1, warm-up runs not negative, quality texts at least 2")


@dataclass
class ModelSide:
    """One column of the final table: the teacher or the released student."""

    path: Path
    parameters: int
    size_bytes: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    teacher_agreement: float | None = None
    neighbour_agreement: float | None = None


@dataclass
class ChainResult:
    """What ``run_chain`` did and found."""

    run_dir: Path
    profile: str
    stages: dict[str, str]  # stage -> ran | skipped | not needed
    distill: StageRecord | None = None
    final_model: Path | None = None
    precision: str | None = None
    metric: str | None = None
    teacher: ModelSide | None = None
    student: ModelSide | None = None
    speedup: float | None = None  # teacher p50 / student p50, measured interleaved on this host
    host: str | None = None
    workload: tuple[int, int | None] | None = None  # (batch size, sequence length) the latency was measured at
    quality_texts: int | None = None  # held-out texts the quality was measured on
    verdict: str | None = None
    gate_exit_code: int = 0
    gate_reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_chain(run_dir: str | Path, config: DistillConfig, profile: Any, options: ChainOptions | None = None,
              reporter: Reporter | None = None) -> ChainResult:
    """Run the chain for ``profile`` into ``run_dir`` up to ``options.stop_after`` and return what it found.

    ``config`` is the distillation's; when it sets neither a step count nor a time budget, the
    profile's ``distill.time_budget`` bounds the whole chain and distillation gets what the later
    stages are expected to leave (:data:`LATER_STAGES_RESERVE_S`).
    """
    from compress.distill.stage import run_distill_stage
    from compress.distill.teacher import resolve_teacher

    options = options or ChainOptions()
    options.check()
    reporter = reporter or Reporter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    result = ChainResult(run_dir=run_dir, profile=profile.name, stages={})
    last = STAGES.index(options.stop_after)

    def reaches(stage: str) -> bool:
        return STAGES.index(stage) <= last

    config = _with_chain_budget(config, profile)
    before = read_record(run_dir / "distill")
    distill_record = run_distill_stage(run_dir, config, profile, reporter)
    result.stages["distill"] = stage_status(before, distill_record)
    result.distill = distill_record
    teacher_name, teacher_dir = resolve_teacher(config.teacher)
    student_dir = run_dir / "distill" / distill_record.outputs["student"]
    held_out = run_dir / "distill" / distill_record.outputs["held_out"]
    if not reaches("prune"):
        return result

    prune = options.prune or PruneOptions(**profile.distill.prune.model_dump())
    model_dir = student_dir
    prune_metrics: dict[str, Any] | None = None
    if prune.wanted:
        model_dir, prune_metrics = _prune(student_dir, run_dir / "prune", teacher_dir, config, prune, profile,
                                          reporter, result)
    else:
        result.stages["prune"] = "not needed"
    if not reaches("export"):
        return result

    export = _export(model_dir, run_dir / "export", held_out, options, reporter, result, "export")
    teacher_export = _export(teacher_dir, run_dir / "teacher", held_out, options, reporter, result, "teacher")
    result.final_model, result.precision = export.onnx_path, "fp32"
    if reaches("quantize"):
        _quantize(export.onnx_path, run_dir / "quantize", profile, options, config, reporter, result)

    student_params, student_layers, student_hidden = _student_size(distill_record, prune_metrics)
    result.teacher = ModelSide(teacher_export.onnx_path, distill_record.metrics["teacher_parameters"],
                               teacher_export.onnx_path.stat().st_size)
    result.student = ModelSide(result.final_model, student_params, result.final_model.stat().st_size)
    bench_report = gate_report = quality = None
    if reaches("bench"):
        bench_report, comparison = _bench(result.final_model, teacher_export.onnx_path, run_dir / "bench", profile,
                                          options, reporter, result)
        result.student.p50_ms, result.student.p95_ms = comparison.model.latency.p50_ms, comparison.model.latency.p95_ms
        result.teacher.p50_ms, result.teacher.p95_ms = comparison.other.latency.p50_ms, comparison.other.latency.p95_ms
        result.speedup = comparison.p50_ratio
        result.host = comparison.model.host.describe()
        result.workload = (comparison.model.workload.batch_size, comparison.model.workload.sequence_length)
    if reaches("gate"):
        quality, gate_report = _gate(result.final_model, teacher_export.onnx_path, held_out, bench_report,
                                     run_dir / "gate", profile, options, reporter, result)
        result.metric = quality["metric"]
        result.student.teacher_agreement = quality["teacher_agreement"]
        result.student.neighbour_agreement = quality["neighbour_agreement"]
        result.quality_texts = quality["samples"]
        result.verdict, result.gate_exit_code = gate_report.verdict, gate_report.exit_code
        result.gate_reasons = list(gate_report.reasons)

    _write_summary(run_dir, profile, teacher_name, teacher_dir, distill_record, export.task, result,
                   (student_params, student_layers, student_hidden), quality, gate_report)
    return result


# ---------------------------------------------------------------------------------------------
# Stages


def _with_chain_budget(config: DistillConfig, profile: Any) -> DistillConfig:
    """Give distillation the chain's time budget minus what the later stages need."""
    if config.step_determined and config.time_budget_s is None:
        return config
    total = config.time_budget_s if config.time_budget_s is not None else profile.distill.time_budget_s
    share = max(total - LATER_STAGES_RESERVE_S, 0.5 * total)
    return dataclasses.replace(config, time_budget_s=round(share, 1))


def _prune(student_dir: Path, out: Path, teacher_dir: Path, config: DistillConfig, prune: PruneOptions, profile: Any,
           reporter: Reporter, result: ChainResult) -> tuple[Path, dict[str, Any]]:
    from compress.prune.stage import PruneConfig, prune_model

    before = read_record(out)
    pruned = prune_model(student_dir, out, PruneConfig(heads=prune.heads, ffn=prune.ffn, data=config.data,
                                                       teacher=str(teacher_dir), recover_steps=prune.recover_steps,
                                                       compare=False),
                         profile=profile, resume=True, log=lambda text: reporter.message(f"prune: {text}"))
    result.stages["prune"] = stage_status(before, read_record(out))
    if result.stages["prune"] == "skipped":
        reporter.message(f"prune: up to date in {out}; skipped")
    return out, {"params": pruned.params_after, "layers": pruned.layers_after}


def _export(model_dir: Path, out: Path, held_out: Path, options: ChainOptions, reporter: Reporter,
            result: ChainResult, name: str) -> Any:
    from export.onnx_export import export_model

    before = read_record(out)
    what = "the teacher" if name == "teacher" else "the student"
    reporter.message(f"{name}: exporting {what} to ONNX and checking parity with PyTorch")
    exported = export_model(model_dir, out, opset=options.opset, samples=held_out, resume=True)
    result.stages[name] = stage_status(before, read_record(out))
    reporter.message(f"{name}: {out / 'model.onnx'} ({exported.parity.metric} {exported.parity.agreement:.6f} "
                     f"to PyTorch, {result.stages[name]})")
    return exported


def _quantize(fp32: Path, stage_dir: Path, profile: Any, options: ChainOptions, config: DistillConfig,
              reporter: Reporter, result: ChainResult) -> None:
    from export.gate import match_hardware
    from export.host import detect_host
    from export.quantize import BNB_METHODS, quantize_stage, resolve_method

    if (options.precision or profile.precision) == "fp32":
        result.stages["quantize"] = "not needed"
        return
    method = resolve_method(profile, options.precision)
    if method in BNB_METHODS:
        raise CompressError(f"precision {method} is for PyTorch on a GPU and cannot be the chain's ONNX release; "
                            "run `compress quantize MODEL_DIR --method ...` on the student folder instead")
    before = read_record(stage_dir)
    reporter.message(f"quantize: {method} for {profile.name}, measured against the fp32 student")
    quantized = quantize_stage(fp32, profile, stage_dir, method=method,
                               calibration_data=config.data if method == "int8-static" else None,
                               log=lambda text: reporter.message(f"quantize: {text}"))
    result.stages["quantize"] = stage_status(before, read_record(stage_dir))
    keep, why = choose_release(quantized, profile, match_hardware(
        profile, detect_host(), quantized.speed.providers_used if quantized.speed else ["CPUExecutionProvider"]
    ).matched, fp32.stat().st_size)
    # The chain says itself which model ships and why; the stage's file-copy notes are noise here.
    result.notes.extend(note for note in quantized.notes
                        if not note.startswith("copied beside") and not (keep == "fp32" and note.startswith("not faster")))
    if keep == "quantized":
        result.final_model, result.precision = quantized.out_path, method
    else:
        result.notes.append(why)
        reporter.warning(why)


def choose_release(quantized: Any, profile: Any, on_target: bool, fp32_bytes: int) -> tuple[str, str]:
    """``("quantized" | "fp32", why)``: the model the release ships.

    The quantized model ships unless it costs more quality than the profile allows, or it is
    measurably slower on hardware that matches the profile while the fp32 model fits the size
    budget. Speed measured on other hardware says nothing about the target, so it decides nothing.
    """
    budget_mb = profile.budgets.model_size_mb
    fp32_fits = budget_mb is None or fp32_bytes / 2**20 <= budget_mb
    if not quantized.within_budget and fp32_fits:
        return "fp32", (f"{quantized.method} costs {quantized.quality_drop:.4f} of agreement, more than the profile's "
                        f"{quantized.max_quantization_drop:.4f}: the release keeps the fp32 student")
    speed = quantized.speed
    if on_target and speed is not None and speed.verdict == "slower" and fp32_fits:
        return "fp32", (f"{quantized.method} is {1 / speed.speedup:.2f}x slower than fp32 on this host, which matches "
                        f"{profile.name}: the release keeps the fp32 student")
    return "quantized", ""


def _bench(model: Path, teacher: Path, stage_dir: Path, profile: Any, options: ChainOptions, reporter: Reporter,
           result: ChainResult) -> tuple[Any, Any]:
    from export.bench import BenchReport, ComparisonReport, compare_bench, run_bench

    threads = bench_threads(profile, result.notes)
    planned = StageRecord(stage="bench", inputs={"model": FileRef.of(model), "teacher": FileRef.of(teacher),
                                                 **profile_input(profile)},
                          params={"profile": profile.name, "runs": options.bench_runs, "warmup": options.bench_warmup,
                                  "threads": threads})
    if (previous := is_up_to_date(stage_dir, planned)) is not None:
        result.stages["bench"] = "skipped"
        reporter.message(f"bench: up to date in {stage_dir}; skipped")
        return (BenchReport.from_json(stage_dir / previous.outputs["bench"]),
                ComparisonReport.from_json(stage_dir / previous.outputs["compare"]))
    reporter.message(f"bench: {model.name} alone, then against the teacher, runs interleaved "
                     f"({profile.name}'s providers, threads and workload)")
    with StageTimer(planned) as record, atomic_directory(stage_dir) as tmp:
        alone = run_bench(model, profile, runs=options.bench_runs, warmup=options.bench_warmup, threads=threads,
                          progress=False)
        comparison = compare_bench(model, teacher, profile, runs=options.bench_runs, warmup=options.bench_warmup,
                                   threads=threads, progress=False)
        alone.to_json(tmp / "bench.json")
        comparison.to_json(tmp / "compare.json")
        record.outputs = {"bench": "bench.json", "compare": "compare.json"}
        record.metrics = {"p50_ms": alone.latency.p50_ms, "p95_ms": alone.latency.p95_ms,
                          "p99_ms": alone.latency.p99_ms, "teacher_p50_ms": comparison.other.latency.p50_ms,
                          "speedup_vs_teacher": comparison.p50_ratio, "host": alone.host.describe(),
                          "providers_used": list(alone.session.providers_used)}
        write_record(tmp, record)
    result.stages["bench"] = "ran"
    return alone, comparison


def _gate(model: Path, teacher: Path, held_out: Path, bench_report: Any, stage_dir: Path, profile: Any,
          options: ChainOptions, reporter: Reporter, result: ChainResult) -> tuple[dict[str, Any], Any]:
    from compress.evaluate import agreement_with_teacher
    from export.gate import GateReport, QualityEvidence, gate, write_junit
    from export.samples import read_texts

    fp32 = None if result.precision == "fp32" else stage_dir.parent / "export" / "model.onnx"
    planned = StageRecord(stage="gate", inputs={
        "model": FileRef.of(model), "teacher": FileRef.of(teacher), "held_out": FileRef.of(held_out),
        "bench": FileRef.of(bench_report_path(stage_dir)), **profile_input(profile),
        **({"fp32": FileRef.of(fp32)} if fp32 is not None else {}),
    }, params={"profile": profile.name, "quality_texts": options.quality_texts})
    if (previous := is_up_to_date(stage_dir, planned)) is not None:
        result.stages["gate"] = "skipped"
        reporter.message(f"gate: up to date in {stage_dir}; skipped")
        quality = _read_json(stage_dir / previous.outputs["quality"])
        return quality, GateReport.from_json(stage_dir / previous.outputs["gate"])
    texts = read_texts(held_out)[:options.quality_texts]
    reporter.message(f"gate: {model.name} vs the teacher on {len(texts)} held-out texts, then the budgets")
    with StageTimer(planned) as record, atomic_directory(stage_dir) as tmp:
        source = f"{held_out.parent.name}/{held_out.name}"
        agreement = agreement_with_teacher(model, teacher, texts, source=source)
        # What quantization cost, on the same texts: the release against its own fp32 export.
        quantization_drop = 0.0 if fp32 is None else \
            1.0 - agreement_with_teacher(model, fp32, texts, source=source).teacher_agreement
        quality = {**dataclasses.asdict(agreement), "quantization_drop": quantization_drop}
        evidence = QualityEvidence(teacher_agreement=agreement.teacher_agreement, metric=agreement.metric,
                                   quantization_drop=quantization_drop, source="gate/quality.json")
        report = gate(bench_report, profile, evidence)
        atomic_write_json(tmp / "quality.json", quality)
        report.to_json(tmp / "gate.json")
        write_junit(report, tmp / "junit.xml")
        record.outputs = {"quality": "quality.json", "gate": "gate.json", "junit": "junit.xml"}
        record.metrics = {"verdict": report.verdict, **quality}
        write_record(tmp, record)
    result.stages["gate"] = "ran"
    return quality, report


def bench_report_path(gate_dir: Path) -> Path:
    return gate_dir.parent / "bench" / "bench.json"


def profile_input(profile: Any) -> dict[str, FileRef]:
    """A profile read from a file is a stage input: its budgets live there, so editing it re-runs the stage."""
    return {"profile": FileRef.of(profile.source)} if profile.source is not None else {}


def bench_threads(profile: Any, notes: list[str]) -> int | None:
    """The profile's intra-op threads, capped at this host's usable cores (the cap noted in ``notes``).

    More threads than cores measure contention, not the model; on such a host the profile's
    hardware does not match anyway, and the gate says unverified.
    """
    from export.host import detect_host

    threads = profile.runtime.intra_op_threads
    cores = detect_host().usable_cores
    if threads is not None and threads > cores:
        notes.append(f"benchmarked with {cores} threads, this host's usable cores ({profile.name} runs {threads})")
        return cores
    return threads


def _student_size(distill_record: StageRecord, prune_metrics: dict[str, Any] | None) -> tuple[int, int, int]:
    metrics = distill_record.metrics
    if prune_metrics is not None:
        return prune_metrics["params"], prune_metrics["layers"], metrics["student_hidden"]
    return metrics["student_parameters"], metrics["student_layers"], metrics["student_hidden"]


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# run.json


def _write_summary(run_dir: Path, profile: Any, teacher_name: str, teacher_dir: Path, distill_record: StageRecord,
                   task: str, result: ChainResult, student: tuple[int, int, int], quality: dict[str, Any] | None,
                   gate_report: Any) -> None:
    from compress import __version__
    from export.run_summary import (QualitySummary, ReportPaths, RunSummary, StudentInfo, TeacherInfo,
                                    write_run_summary)

    profile_file = copy_user_profile(run_dir, profile)
    stages = {name: f"{folder}/stage.json" for name, folder in
              (("distill", "distill"), ("prune", "prune"), ("export", "export"), ("teacher", "teacher"),
               ("quantize", "quantize"), ("bench", "bench"), ("gate", "gate"))
              if result.stages.get(name) in ("ran", "skipped")}
    weights = teacher_dir / "model.safetensors"
    # The run's identity is its distillation: re-running later stages keeps the id and date.
    finished = distill_record.finished_at or distill_record.started_at
    summary = RunSummary(
        run_id=f"{re.sub(r'[^0-9]', '', finished)[:14]}-{profile.name}",
        created_at=(gate_report.created_at if gate_report is not None else finished),
        profile=profile.name, task=task, precision=result.precision or "fp32",
        teacher=TeacherInfo(name=teacher_name, path=str(teacher_dir),
                            weights_sha256=sha256_file(weights) if weights.is_file() else sha256_tree(teacher_dir),
                            params=int(distill_record.metrics["teacher_parameters"])),
        student=StudentInfo(params=int(student[0]), layers=int(student[1]), hidden=int(student[2])),
        final_model=str(result.final_model.relative_to(run_dir)),
        quality=QualitySummary(
            teacher_agreement=quality["teacher_agreement"] if quality else None,
            metric=quality["metric"] if quality else distill_record.metrics.get("teacher_agreement_metric", ""),
            neighbour_agreement=quality["neighbour_agreement"] if quality else None,
            quantization_drop=quality["quantization_drop"] if quality else None,
            heldout_samples=quality["samples"] if quality else None,
        ),
        tool_version=__version__, stages=stages, profile_file=profile_file,
        reports=ReportPaths(
            bench="bench/bench.json" if "bench" in stages else None,
            gate="gate/gate.json" if gate_report is not None else None,
            junit="gate/junit.xml" if gate_report is not None else None,
            loss_history=f"distill/{distill_record.outputs['loss_history']}",
        ),
        verdict=gate_report.verdict if gate_report is not None else None,
    )
    write_run_summary(run_dir, summary)


def copy_user_profile(run_dir: Path, profile: Any) -> str | None:
    """A user's own profile file travels with the run (package and verify gate against it)."""
    from export.profiles import is_shipped

    if profile.source is None or is_shipped(profile.source):
        return None
    target = run_dir / PROFILE_COPY
    if not target.is_file() or sha256_file(target) != sha256_file(profile.source):
        shutil.copy2(profile.source, target.with_suffix(".yaml.tmp"))
        target.with_suffix(".yaml.tmp").replace(target)
    return PROFILE_COPY
