"""Causal language models: perplexity and next-token agreement, generation speed with the KV cache.

Distillation trains a layer-subset student on the teacher's cached top-k log-probabilities; the
release is exported with its KV cache (ONNX Runtime's fused decoder ops for Llama-family models),
quantized to int4 weight-only on CPUs (fp16 on GPUs) with its perplexity measured before and
after, and benchmarked by greedy generation: time to first token, time per output token, tokens
per second.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from compress.chain_state import TableRow, measure_against_teacher, profile_input
from compress.families import register
from compress.stages.family import ENDPOINT_OPTIONS, TaskFamily, TeacherRequest
from compress.stages.outputs import Exported, Quantized
from export.base.errors import CompressError
from export.base.records import FileRef, StageRecord, read_record, stage_status
from export.base.stages import StageOutput
from export.base.tasks import TEXT_GENERATION

if TYPE_CHECKING:
    from compress.lm.config import LMDistillConfig
    from compress.chain_state import ChainContext, ChainOptions, ChainResult
    from export.base.stages import StagePlan
    from export.runtime.gate import QualityEvidence
    from export.run_summary import QualitySummary, StudentInfo
    from export.runtime.profiles import Profile
    from export.runtime.release_choice import ReleaseCandidate

LM_PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-weight", "int4-weight")
PARITY_TEXTS = 4


@register
class CausalLMFamily(TaskFamily):
    """Text generation with a decoder-only model (Llama, Qwen2, GPT-2 layouts)."""

    name: ClassVar[str] = "causal-lm"
    teacher_words: ClassVar[str] = "a language model"
    # On a 2-core CPU for SmolLM2-135M and a 6-layer student: both exports with their parity
    # checks, int4 with its perplexity check, the teacher quantized and every candidate measured,
    # the generation benches.
    later_stages_reserve_s: ClassVar[float] = 360.0
    min_distill_share: ClassVar[float] = 0.4
    bench_runs: ClassVar[int] = 5
    bench_warmup: ClassVar[int] = 1
    foreign_options: ClassVar[tuple[str, ...]] = (
        "task", "embedding_loss", "hidden_weight", "attention_weight", "relation_weight", "relation_loss",
        "neighbour_batches", "train_precision", "teacher_state_cache", "alpha", "trust_remote_code", "prune_heads",
        "prune_ffn", "recover_steps",
        *ENDPOINT_OPTIONS)

    claim_priority: ClassVar[int] = 10

    @classmethod
    def claims(cls, request: TeacherRequest) -> bool:
        """A registered language model, or a folder whose config names a causal-LM architecture."""
        from compress.lm.teacher import REGISTERED_TEACHERS
        from export.base.tasks import is_causal_lm

        if request.teacher_url is not None or request.teacher is None:
            return False
        path = Path(request.teacher)
        return is_causal_lm(path) if path.is_dir() else request.teacher.lower() in REGISTERED_TEACHERS

    def make_config(self, settings: dict[str, Any]) -> LMDistillConfig:
        renamed = {"lm_loss": "loss", "jsd_beta": "beta"}
        values = {renamed.get(k, k): v for k, v in settings.items()}
        values["temperature"] = 1.0 if values.get("temperature") is None else values["temperature"]
        return self.config_type()(**values)

    def config_type(self) -> type[LMDistillConfig]:
        from compress.lm.config import LMDistillConfig

        return LMDistillConfig

    def check_options(self, options: ChainOptions) -> None:
        if options.stop_after == "prune":
            raise CompressError("--stop-after prune: language models are not pruned; stop after distill or export")
        if options.prune is not None and options.prune.wanted:
            raise CompressError("--prune-heads/--prune-ffn: language models are not pruned by heads or neurons")
        if options.precision not in (None, *LM_PRECISIONS):
            raise CompressError(f"--precision {options.precision} is not available for language models; "
                                f"choose {', '.join(LM_PRECISIONS[:-1])} or {LM_PRECISIONS[-1]}")

    def distill_plan(self, ctx: ChainContext) -> StagePlan:
        from compress.lm.stage import lm_distill_plan

        return lm_distill_plan(ctx.config, ctx.profile, ctx.reporter)

        return run_lm_distill_stage(ctx.run_dir, ctx.config, ctx.profile, ctx.reporter)

    def export(self, ctx: ChainContext, model_dir: Path, out: Path) -> Exported:
        from export.lm_export import export_causal_lm

        before = read_record(out)
        exported = export_causal_lm(model_dir, out, parity_texts=self._held_out_texts(ctx)[:PARITY_TEXTS])
        parity = exported.parity
        return Exported(Path(exported.out_path),
                        f"top-1 agreement {parity.top1_agreement:.4f} to PyTorch, first {parity.greedy_tokens} greedy "
                        f"tokens {'identical' if parity.greedy_match else 'differ'}",
                        stage_status(before, read_record(out)))

    def release_precision(self, ctx: ChainContext) -> str:
        return release_precision(ctx.profile, ctx.options.precision)

    def quantize(self, ctx: ChainContext, fp32: Path, method: str) -> Quantized:
        from compress.lm.quantize_stage import run_lm_quantize_stage

        return run_lm_quantize_stage(ctx, fp32, method, self._held_out_texts(ctx))

    def release_plan(self, ctx: ChainContext, student_fp32: Path, teacher: Path) -> StagePlan | None:
        from compress.lm.release_stage import lm_release_plan

        return lm_release_plan(ctx, student_fp32, teacher, self._held_out_texts(ctx), _quantization_cost(ctx))

    candidate_columns = ("tok/s", "speed", "TTFT ms", "ppl", "agree")

    def candidate_cells(self, candidate: ReleaseCandidate) -> tuple[str, ...]:
        q, s = candidate.quality, candidate.speed
        return (f"{s['tokens_per_s']:.1f}", f"{candidate.speedup:.2f}x", f"{s['ttft_ms']:.0f}",
                f"{q['perplexity_ratio']:.3f}x", f"{q['next_token_agreement']:.3f}")

    def released_candidate(self, result: ChainResult) -> ReleaseCandidate | None:
        """The release's own measurements among the candidates (None: no release stage ran)."""
        if result.release is None or result.final_model is None:
            return None
        return next((c for c in result.release.candidates
                     if (result.run_dir / c.model).resolve() == result.final_model.resolve()), None)

    def measure(self, ctx: ChainContext, model: Path, teacher: Path, runs: int, warmup: int, tmp: Path) -> StageOutput:
        ctx.reporter.message(f"bench: generating with {model.name} and the teacher, runs interleaved on this host")
        # threads=None: the runtime's one thread policy, as `compress bench` and `verify --gate` use it.
        comparison = measure_against_teacher(ctx, model, teacher, runs, warmup)
        comparison.to_json(tmp / "compare.json")
        comparison.model.to_json(tmp / "bench.json")
        return StageOutput({"compare": "compare.json", "bench": "bench.json"})

    def speed(self, bench_dir: Path) -> tuple[dict[str, Any], float | None, str]:
        from export.runtime.generation_bench import GenerationComparison

        comparison = GenerationComparison.from_json(bench_dir / "compare.json")
        student, other = comparison.model, comparison.other
        speed = {"student_tokens_per_s": student.tokens_per_s, "teacher_tokens_per_s": other.tokens_per_s,
                 "student_ttft_ms": student.ttft_ms.p50, "teacher_ttft_ms": other.ttft_ms.p50,
                 "student_tpot_ms": student.tpot_ms.p50, "teacher_tpot_ms": other.tpot_ms.p50,
                 "prompt_length": student.prompt_length, "new_tokens": student.new_tokens}
        speedup = student.tokens_per_s / other.tokens_per_s if student.tokens_per_s and other.tokens_per_s else None
        return speed, speedup, student.host.describe()

    def gate_inputs(self, ctx: ChainContext, model: Path, teacher: Path) -> StageRecord:
        inputs = {"bench": FileRef.of(ctx.run_dir / "bench" / "bench.json"),
                  "distill": FileRef.of(ctx.run_dir / "distill" / "stage.json"), **profile_input(ctx.profile)}
        if ctx.result.stages.get("quantize") in ("ran", "skipped"):
            inputs["quantize"] = FileRef.of(ctx.run_dir / "quantize" / "stage.json")
        if self.released_candidate(ctx.result) is not None:
            inputs["release"] = FileRef.of(ctx.run_dir / "release" / "candidates.json")
        return StageRecord(stage="gate", inputs=inputs, params={"profile": ctx.profile.name})

    def quality_evidence(self, ctx: ChainContext, model: Path, teacher: Path,
                         tmp: Path) -> tuple[QualityEvidence, dict[str, str], dict[str, Any]]:
        from export.runtime.gate import QualityEvidence

        released = self.released_candidate(ctx.result)
        if released is not None:  # the release's own figures, measured as ONNX beside the others
            quantized = released.precision != "fp32"
            return QualityEvidence(
                teacher_agreement=released.quality["next_token_agreement"], metric=self.agreement_metric,
                source=str(ctx.run_dir / "release" / "candidates.json"),
                perplexity_ratio=released.quality["perplexity_ratio"],
                quantization_perplexity_ratio=released.quality["quantization_perplexity_ratio"] if quantized
                else None), {}, {}
        return QualityEvidence(teacher_agreement=self.teacher_agreement(ctx.distilled.metrics),
                               metric=self.agreement_metric, source=str(ctx.run_dir / "distill" / "stage.json"),
                               perplexity_ratio=self.perplexity_ratio(ctx.distilled.metrics),
                               quantization_perplexity_ratio=_quantization_cost(ctx)), {}, {}

    def gate_quality(self, ctx: ChainContext, gate_dir: Path) -> dict[str, Any] | None:
        return ctx.distilled.metrics["quality"]  # the student's, from distillation (PyTorch)

    agreement_metric: ClassVar[str] = "next_token_agreement"

    def teacher_agreement(self, metrics: dict[str, Any]) -> float:
        """The release's agreement with its teacher, as the gate judges it."""
        return float(metrics["quality"]["next_token_agreement"])

    def perplexity_ratio(self, metrics: dict[str, Any]) -> float | None:
        """The student's held-out perplexity over the teacher's (None when there is no teacher to score)."""
        quality = metrics["quality"]
        return round(float(quality["student_perplexity"]) / float(quality["teacher_perplexity"]), 4)

    def _held_out_texts(self, ctx: ChainContext) -> list[str]:
        from compress.lm.stage import read_held_out_texts

        return read_held_out_texts(ctx.run_dir / "distill" / ctx.distilled.outputs["held_out"])

    # -- reports ---------------------------------------------------------------------------------
    def distill_summary(self, m: dict[str, Any], run_dir: Path) -> tuple[str, list[TableRow], list[str]]:
        t, q = m["training"], m["quality"]
        return "", [], [
            f"distill: {m['student']} -> teacher layers {','.join(map(str, m['student_layers']))}; "
            f"{m['teacher_parameters'] / 1e6:.1f}M -> {m['student_parameters'] / 1e6:.1f}M parameters",
            f"{t['steps']} steps ({t['epochs']:.2f} epochs) in {t['train_time_s']:.0f} s on {t['device']} "
            f"({t['precision']}), {t['tokens_per_s']:.0f} tokens/s; stopped by {t['stopped_by']}; "
            f"{m['train_examples']} training texts ({m['teacher_answers']} answered by the teacher), "
            f"{m['held_out_examples']} held out",
            f"held-out (PyTorch): perplexity teacher {q['teacher_perplexity']:.2f}, student "
            f"{q['student_perplexity']:.2f}; next-token agreement {q['next_token_agreement']:.4f}; greedy "
            f"agreement {q['greedy_agreement']:.4f} ({q['greedy_tokens']} tokens over {q['greedy_prompts']} prompts)",
            f"student: {Path(run_dir) / 'distill' / 'student'}",
        ]

    def table(self, result: ChainResult) -> tuple[list[TableRow], str | None]:
        rows = self.size_rows(result)
        if not rows:
            return [], None
        speed, measured = result.speed, None
        if speed is not None and speed["student_tokens_per_s"] and speed["teacher_tokens_per_s"]:
            t, s = speed["teacher_tokens_per_s"], speed["student_tokens_per_s"]
            rows.append(TableRow("tokens/s", f"{t:.1f}", f"{s:.1f}", f"{s / t:.2f}x faster"))
            for label, key in (("time to first token p50", "ttft_ms"), ("time per token p50", "tpot_ms")):
                t, s = speed[f"teacher_{key}"], speed[f"student_{key}"]
                rows.append(TableRow(label, f"{t:.1f} ms", f"{s:.1f} ms", f"{t / s:.2f}x faster"))
            measured = (f"generation: {speed['prompt_length']}-token prompt, {speed['new_tokens']} new tokens, "
                        f"greedy, runs interleaved on {result.host}; perplexity on the held-out split")
        return rows + self.quality_rows(result), measured

    def quality_rows(self, result: ChainResult) -> list[TableRow]:
        """The table's quality rows: perplexity and agreement on the held-out split (of the release itself,
        as ONNX, when the release stage measured it; else of the student in PyTorch)."""
        released = self.released_candidate(result)
        if released is not None:
            q = released.quality
            teacher_ppl = q["perplexity"] / q["perplexity_ratio"]
            return [TableRow("perplexity (held-out, ONNX)", f"{teacher_ppl:.2f}", f"{q['perplexity']:.2f}",
                             f"{q['perplexity_ratio']:.2f}x"),
                    TableRow("next-token agreement", "1.0000", f"{q['next_token_agreement']:.4f}")]
        quality = result.quality or {}
        if not quality:
            return []
        return [TableRow("perplexity (held-out, PyTorch fp32)", f"{quality['teacher_perplexity']:.2f}",
                         f"{quality['student_perplexity']:.2f}",
                         f"{quality['student_perplexity'] / quality['teacher_perplexity']:.2f}x"),
                TableRow("next-token agreement", "1.0000", f"{quality['next_token_agreement']:.4f}")]

    def distill_quality(self, record: StageRecord) -> dict[str, float] | None:
        return record.metrics["quality"]

    def teacher_dir(self, record: StageRecord) -> Path:
        return Path(record.metrics["teacher_path"])

    def teacher_name(self, record: StageRecord) -> str:
        return str(record.metrics["teacher"])

    def student_size(self, ctx: ChainContext) -> StudentInfo:
        from export.run_summary import StudentInfo

        m = ctx.distilled.metrics
        released = self.released_candidate(ctx.result)
        if released is not None and released.source == "teacher":
            return StudentInfo(params=int(m["teacher_parameters"]), layers=int(m["teacher_layers"]),
                               hidden=int(m["hidden"]), released_from="teacher")
        return StudentInfo(params=int(m["student_parameters"]), layers=len(m["student_layers"]), hidden=int(m["hidden"]))

    def task_of(self, ctx: ChainContext) -> str:
        return TEXT_GENERATION

    def quality_summary(self, result: ChainResult) -> QualitySummary:
        from export.run_summary import QualitySummary

        released = self.released_candidate(result)
        metrics = result.distill.metrics if result.distill else {}
        more_time = (metrics.get("forecast") or {}).get("line")
        if released is not None:
            return QualitySummary(teacher_agreement=released.quality["next_token_agreement"],
                                  metric="next_token_agreement", heldout_samples=int(released.quality["texts"]),
                                  more_time=more_time)
        quality = metrics.get("quality", {})
        return QualitySummary(teacher_agreement=quality.get("next_token_agreement"), metric="next_token_agreement",
                              heldout_samples=quality.get("samples"), more_time=more_time)


def _quantization_cost(ctx: ChainContext) -> float | None:
    """What the quantize stage's precision cost in perplexity (None when the release is fp32)."""
    if ctx.result.stages.get("quantize") not in ("ran", "skipped"):
        return None
    return float(read_record(ctx.run_dir / "quantize").metrics["result"]["perplexity_ratio"])


def release_precision(profile: Profile, requested: str | None) -> str:
    """The release precision: as asked, else int4 weight-only on CPUs and fp16 on GPUs (fp32 stays fp32)."""
    if requested:
        return requested
    if profile.precision == "fp32":
        return "fp32"
    return "fp16" if profile.hardware.device == "gpu" else "int4-weight"
