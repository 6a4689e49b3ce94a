"""The release chain for a causal language model: distill → export → quantize → bench → gate.

The same run directory layout and stage records as the encoder chain (``compress.pipeline``)::

    distill/    student/ (HF folder, safetensors), held_out.jsonl, loss_history.json, teacher_answers.jsonl
    export/     the student as ONNX with its KV cache (optimum's text-generation-with-past), parity-checked
    teacher/    the teacher exported the same way: the baseline every number is measured against
    quantize/   the release precision (int4 weight-only for CPU targets, fp16 for GPU ones)
    bench/      generation bench of the release, and release vs teacher with runs interleaved
    gate/       gate.json, junit.xml

Every stage is skipped when its inputs and settings are unchanged, so re-running the same
command after an interruption picks up at the first unfinished stage.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.distill.progress import Reporter
from compress.errors import CompressError
from compress.lm.config import LMDistillConfig
from compress.pipeline import bench_threads, copy_user_profile, profile_input
from compress.stage import (FileRef, StageRecord, StageTimer, is_up_to_date, read_record, stage_status,
                            write_record)

LM_STAGES = ("distill", "export", "quantize", "bench", "gate")
# What the stages after distillation take on a 2-core CPU for SmolLM2-135M and a 6-layer student:
# both exports with their parity checks, int4 with its perplexity check, the generation benches.
LM_LATER_STAGES_RESERVE_S = 240.0
BENCH_RUNS = 5
BENCH_WARMUP = 1
PARITY_TEXTS = 4
PERPLEXITY_TEXTS = 32


@dataclass
class LMChainOptions:
    """How far the chain goes and how the release is made and measured."""

    stop_after: str = "gate"
    precision: str | None = None  # None: int4-weight for CPU profiles, fp16 for GPU ones
    block_size: int = 32
    bench_runs: int = BENCH_RUNS
    bench_warmup: int = BENCH_WARMUP

    def check(self) -> None:
        if self.stop_after not in LM_STAGES:
            raise CompressError(f"--stop-after {self.stop_after!r}: choose one of {', '.join(LM_STAGES)}")
        if self.precision not in (None, "fp32", "fp16", "int8-dynamic", "int4-weight"):
            raise CompressError(f"--precision {self.precision} is not available for language models; "
                                "choose fp32, fp16, int8-dynamic or int4-weight")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise CompressError("--block-size must be a power of two, at least 16")
        if self.bench_runs < 1 or self.bench_warmup < 0:
            raise CompressError("bench runs must be at least 1 and warm-up runs not negative")


@dataclass
class LMSide:
    """One column of the final table: the teacher or the released student."""

    path: Path
    parameters: int
    size_bytes: int
    perplexity: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    tokens_per_s: float | None = None


@dataclass
class LMChainResult:
    """What ``run_lm_chain`` did and found."""

    run_dir: Path
    profile: str
    stages: dict[str, str]
    distill: StageRecord | None = None
    final_model: Path | None = None
    precision: str | None = None
    teacher: LMSide | None = None
    student: LMSide | None = None
    quality: dict[str, Any] | None = None
    speedup: float | None = None  # student tokens/s over teacher tokens/s, measured interleaved here
    host: str | None = None
    workload: tuple[int, int] | None = None  # (prompt tokens, new tokens)
    verdict: str | None = None
    gate_exit_code: int = 0
    gate_reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def release_precision(profile: Any, requested: str | None) -> str:
    """The release precision: as asked, else int4 weight-only on CPUs and fp16 on GPUs (fp32 stays fp32)."""
    if requested:
        return requested
    if profile.precision == "fp32":
        return "fp32"
    return "fp16" if profile.hardware.device == "gpu" else "int4-weight"


def run_lm_chain(run_dir: str | Path, config: LMDistillConfig, profile: Any, options: LMChainOptions | None = None,
                 reporter: Reporter | None = None) -> LMChainResult:
    """Run the causal-LM chain for ``profile`` into ``run_dir`` up to ``options.stop_after``."""
    from compress.lm.stage import run_lm_distill_stage

    options = options or LMChainOptions()
    options.check()
    reporter = reporter or Reporter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    result = LMChainResult(run_dir=run_dir, profile=profile.name, stages={})
    last = LM_STAGES.index(options.stop_after)

    def reaches(stage: str) -> bool:
        return LM_STAGES.index(stage) <= last

    config = _with_chain_budget(config, profile)
    before = read_record(run_dir / "distill")
    record = run_lm_distill_stage(run_dir, config, profile, reporter)
    result.stages["distill"] = stage_status(before, record)
    result.distill = record
    result.quality = record.metrics["quality"]
    if not reaches("export"):
        return result

    held_out = _held_out_texts(run_dir / "distill" / record.outputs["held_out"])
    student_dir = run_dir / "distill" / record.outputs["student"]
    teacher_dir = Path(record.metrics["teacher_path"])
    student_onnx = _export(student_dir, run_dir / "export", held_out, reporter, result, "export")
    teacher_onnx = _export(teacher_dir, run_dir / "teacher", held_out, reporter, result, "teacher")
    from export.lm_export import onnx_size_bytes

    result.final_model, result.precision = student_onnx, "fp32"
    result.teacher = LMSide(teacher_onnx, record.metrics["teacher_parameters"], onnx_size_bytes(teacher_onnx))
    if reaches("quantize"):
        _quantize(run_dir, profile, options, held_out, reporter, result)
    result.student = LMSide(result.final_model, record.metrics["student_parameters"],
                            onnx_size_bytes(result.final_model))
    if reaches("bench"):
        comparison = _bench(result.final_model, teacher_onnx, run_dir / "bench", profile, options, reporter, result)
        if reaches("gate"):
            _gate(comparison, run_dir / "gate", profile, record, reporter, result)
    _write_summary(run_dir, profile, teacher_dir, record, result)
    return result


# ---------------------------------------------------------------------------------------------
# Stages


def _with_chain_budget(config: LMDistillConfig, profile: Any) -> LMDistillConfig:
    """Give distillation the chain's time budget minus what the later stages need."""
    if config.step_determined and config.time_budget_s is None:
        return config
    total = config.time_budget_s if config.time_budget_s is not None else profile.distill.time_budget_s
    share = max(total - LM_LATER_STAGES_RESERVE_S, 0.4 * total)
    return dataclasses.replace(config, time_budget_s=round(share, 1))


def _export(model_dir: Path, out: Path, texts: list[str], reporter: Reporter, result: LMChainResult,
            name: str) -> Path:
    from export.lm_export import export_causal_lm

    before = read_record(out)
    what = "the teacher" if name == "teacher" else "the student"
    reporter.message(f"{name}: exporting {what} to ONNX with its KV cache and checking parity with PyTorch")
    exported = export_causal_lm(model_dir, out, parity_texts=texts[:PARITY_TEXTS])
    result.stages[name] = stage_status(before, read_record(out))
    parity = exported.parity
    reporter.message(f"{name}: {exported.out_path} (top-1 agreement {parity.top1_agreement:.4f}, first "
                     f"{parity.greedy_tokens} greedy tokens {'identical' if parity.greedy_match else 'differ'}; "
                     f"{result.stages[name]})")
    return Path(exported.out_path)


def _quantize(run_dir: Path, profile: Any, options: LMChainOptions, texts: list[str], reporter: Reporter,
              result: LMChainResult) -> None:
    from export.lm_export import LMQuantizeResult, quantize_causal_lm

    method = release_precision(profile, options.precision)
    if method == "fp32":
        result.stages["quantize"] = "not needed"
        return
    stage_dir = run_dir / "quantize"
    export_dir = run_dir / "export"
    planned = StageRecord(stage="quantize", inputs={"model": FileRef.of(export_dir)},
                          params={"method": method, "block_size": options.block_size,
                                  "eval_texts": len(texts[:PERPLEXITY_TEXTS])})
    previous = is_up_to_date(stage_dir, planned)
    if previous is not None:
        quantized = LMQuantizeResult.from_json(previous.metrics["result"])
        result.stages["quantize"] = "skipped"
    else:
        reporter.message(f"quantize: {method} for {profile.name}, perplexity measured against the fp32 student")
        with StageTimer(planned) as record:
            quantized = quantize_causal_lm(export_dir, stage_dir, method, block_size=options.block_size,
                                           eval_texts=texts[:PERPLEXITY_TEXTS])
            record.outputs = {"model": Path(quantized.out_path).name}
            record.metrics = {"result": quantized.to_json()}
            write_record(stage_dir, record)
        result.stages["quantize"] = "ran"
    reporter.message(f"quantize: {quantized.size_mb:.1f} MiB (fp32 {quantized.fp32_size_mb:.1f}); perplexity "
                     f"{quantized.perplexity_fp32:.2f} -> {quantized.perplexity:.2f} "
                     f"({quantized.perplexity_ratio:.3f}x)")
    result.final_model, result.precision = Path(quantized.out_path), method


def _bench(model: Path, teacher: Path, stage_dir: Path, profile: Any, options: LMChainOptions, reporter: Reporter,
           result: LMChainResult) -> Any:
    from export.generation_bench import GenerationComparison, compare_generation_bench

    threads = bench_threads(profile, result.notes)
    planned = StageRecord(stage="bench", inputs={"model": FileRef.of(model), "teacher": FileRef.of(teacher),
                                                 **profile_input(profile)},
                          params={"profile": profile.name, "runs": options.bench_runs,
                                  "warmup": options.bench_warmup, "threads": threads})
    previous = is_up_to_date(stage_dir, planned)
    if previous is not None:
        comparison = GenerationComparison.from_json(stage_dir / previous.outputs["compare"])
        result.stages["bench"] = "skipped"
    else:
        reporter.message(f"bench: generating with {model.name} and the teacher, runs interleaved on this host")
        with StageTimer(planned) as record:
            comparison = compare_generation_bench(model, teacher, profile, runs=options.bench_runs,
                                                  warmup=options.bench_warmup, threads=threads)
            stage_dir.mkdir(parents=True, exist_ok=True)
            comparison.to_json(stage_dir / "compare.json")
            comparison.model.to_json(stage_dir / "bench.json")
            record.outputs = {"compare": "compare.json", "bench": "bench.json"}
            write_record(stage_dir, record)
        result.stages["bench"] = "ran"
    _fill_speed(result.student, comparison.model)
    _fill_speed(result.teacher, comparison.other)
    if result.student.tokens_per_s and result.teacher.tokens_per_s:
        result.speedup = result.student.tokens_per_s / result.teacher.tokens_per_s
    result.host = comparison.model.host.describe()
    result.workload = (comparison.model.prompt_length, comparison.model.new_tokens)
    return comparison


def _fill_speed(side: LMSide | None, report: Any) -> None:
    if side is not None:
        side.ttft_ms, side.tpot_ms, side.tokens_per_s = report.ttft_ms.p50, report.tpot_ms.p50, report.tokens_per_s


def _gate(comparison: Any, stage_dir: Path, profile: Any, record: StageRecord, reporter: Reporter,
          result: LMChainResult) -> None:
    from export.gate import GateReport, QualityEvidence, gate, write_junit

    bench_json = result.run_dir / "bench" / "bench.json"
    distill_json = result.run_dir / "distill" / "stage.json"
    planned = StageRecord(stage="gate", inputs={"bench": FileRef.of(bench_json), "distill": FileRef.of(distill_json),
                                                **profile_input(profile)},
                          params={"profile": profile.name})
    previous = is_up_to_date(stage_dir, planned)
    if previous is not None:
        verdict = GateReport.from_json(stage_dir / previous.outputs["gate"])
        result.stages["gate"] = "skipped"
    else:
        quality = record.metrics["quality"]
        evidence = QualityEvidence(teacher_agreement=float(quality["next_token_agreement"]),
                                   metric="next_token_agreement", source=str(distill_json))
        with StageTimer(planned) as gate_record:
            verdict = gate(comparison.model, profile, evidence)
            stage_dir.mkdir(parents=True, exist_ok=True)
            verdict.to_json(stage_dir / "gate.json")
            write_junit(verdict, stage_dir / "junit.xml")
            gate_record.outputs = {"gate": "gate.json", "junit": "junit.xml"}
            gate_record.metrics = {"verdict": verdict.verdict}
            write_record(stage_dir, gate_record)
        result.stages["gate"] = "ran"
    result.verdict, result.gate_exit_code = verdict.verdict, verdict.exit_code
    result.gate_reasons = list(verdict.reasons)


# ---------------------------------------------------------------------------------------------
# Helpers


def _write_summary(run_dir: Path, profile: Any, teacher_dir: Path, record: StageRecord, result: LMChainResult) -> None:
    """``run.json``: what ``compress package`` reads (task ``text-generation``)."""
    from compress import __version__
    from compress.files import sha256_tree
    from export.run_summary import (QualitySummary, ReportPaths, RunSummary, StudentInfo, TeacherInfo,
                                    write_run_summary)

    m = record.metrics
    stages = {name: f"{name}/stage.json" for name in ("distill", "export", "teacher", "quantize", "bench", "gate")
              if result.stages.get(name) in ("ran", "skipped")}
    gated = "gate" in stages
    finished = record.finished_at or record.started_at
    quality = m["quality"]
    summary = RunSummary(
        run_id=f"{re.sub(r'[^0-9]', '', finished)[:14]}-{profile.name}",
        created_at=finished, profile=profile.name, task="text-generation", precision=result.precision or "fp32",
        teacher=TeacherInfo(name=m["teacher"], path=str(teacher_dir), weights_sha256=sha256_tree(teacher_dir),
                            params=int(m["teacher_parameters"])),
        student=StudentInfo(params=int(m["student_parameters"]), layers=len(m["student_layers"]),
                            hidden=int(m["hidden"])),
        final_model=str(result.final_model.relative_to(run_dir)),
        quality=QualitySummary(teacher_agreement=quality["next_token_agreement"], metric="next_token_agreement",
                               heldout_samples=quality["samples"]),
        tool_version=__version__, stages=stages, profile_file=copy_user_profile(run_dir, profile),
        reports=ReportPaths(bench="bench/bench.json" if "bench" in stages else None,
                            gate="gate/gate.json" if gated else None, junit="gate/junit.xml" if gated else None,
                            loss_history=f"distill/{record.outputs['loss_history']}"),
        verdict=result.verdict,
    )
    write_run_summary(run_dir, summary)


def _held_out_texts(path: Path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row.get("prompt", "") + row.get("completion", "")).strip() for row in rows]
