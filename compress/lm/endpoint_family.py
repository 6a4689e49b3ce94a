"""Causal LMs taught by a teacher you can only query (an OpenAI-compatible endpoint).

Everything after distillation is the causal-LM chain's: export with the KV cache, int4 or fp16,
the generation bench, the gate. What differs is the teacher: there are no weights to export or
time, so the local model the student started from (``--student-from``) is the baseline of every
speed and size ratio, and quality is agreement with the teacher's answers on held-out prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from compress.chain_state import TableRow
from compress.families import register
from compress.stages.family import ENDPOINT_OPTIONS, TeacherRequest
from compress.lm.family import CausalLMFamily

if TYPE_CHECKING:
    from compress.chain_state import ChainContext, ChainResult
    from compress.lm.config import EndpointDistillConfig
    from export.base.records import StageRecord
    from export.base.stages import StagePlan
    from export.run_summary import QualitySummary


@register
class EndpointLMFamily(CausalLMFamily):
    """A causal-LM student that learns from an endpoint's answers (and top-k, when the tokenizers match)."""

    name: ClassVar[str] = "causal-lm-endpoint"
    teacher_words: ClassVar[str] = "an endpoint (--teacher-url)"
    foreign_options: ClassVar[tuple[str, ...]] = tuple(
        name for name in CausalLMFamily.foreign_options if name not in ENDPOINT_OPTIONS) + ("teacher_quant", "train_anyway")
    agreement_metric: ClassVar[str] = "answer_token_agreement"
    baseline_label: ClassVar[str] = "starting model"

    claim_priority: ClassVar[int] = 20

    @classmethod
    def claims(cls, request: TeacherRequest) -> bool:
        return request.teacher_url is not None

    def config_type(self) -> type[EndpointDistillConfig]:
        from compress.lm.config import EndpointDistillConfig

        return EndpointDistillConfig

    def distill_plan(self, ctx: ChainContext) -> StagePlan:
        from compress.lm.endpoint_stage import endpoint_distill_plan

        return endpoint_distill_plan(ctx.config, ctx.profile, ctx.reporter)

        return run_endpoint_distill_stage(ctx.run_dir, ctx.config, ctx.profile, ctx.reporter)

    def release_plan(self, ctx: ChainContext, student_fp32: Path, teacher: Path) -> None:
        """The endpoint's teacher has no weights here to quantize: the student's release is the release."""
        return None

    def teacher_agreement(self, metrics: dict[str, Any]) -> float:
        return float(metrics["quality"]["after"]["token_agreement"])

    def perplexity_ratio(self, metrics: dict[str, Any]) -> float | None:
        return None  # the teacher's own perplexity is not known here

    # -- what the baseline is ----------------------------------------------------------------------
    def teacher_name(self, record: StageRecord) -> str:
        return str(record.metrics["teacher"])

    def teacher_parameters(self, record: StageRecord) -> int:
        return int(record.metrics["base_parameters"])

    def answers_provenance(self, record: StageRecord) -> dict[str, str]:
        return {"answers_from": str(record.metrics["teacher_url"]),
                "answers_sha256": str(record.metrics["answers"]["sha256"])}

    # -- reports ---------------------------------------------------------------------------------
    def distill_summary(self, m: dict[str, Any], run_dir: Path) -> tuple[str, list[TableRow], list[str]]:
        t, before, after = m["training"], m["quality"]["before"], m["quality"]["after"]
        answers, match = m["answers"], m["token_match"]
        skipped = sum(answers["skipped"].values())
        return "", [], [
            f"teacher: {m['teacher']} at {m['teacher_url']}: {m['teacher_answers']} answers "
            f"({answers['reused']} cached, {answers['asked']} asked{f', {skipped} skipped' if skipped else ''}); "
            f"{match['reason']}",
            f"distill: {m['student_from']} -> {m['student']} (layers {','.join(map(str, m['student_layers']))}); "
            f"{m['base_parameters'] / 1e6:.1f}M -> {m['student_parameters'] / 1e6:.1f}M parameters",
            f"{t['steps']} steps ({t['epochs']:.2f} epochs) in {t['train_time_s']:.0f} s on {t['device']}, "
            f"{t['tokens_per_s']:.0f} tokens/s; stopped by {t['stopped_by']}; {m['train_examples']} answers to learn "
            f"from, {m['held_out_examples']} held out",
            f"against the teacher's held-out answers, before -> after: token agreement {before['token_agreement']:.4f} "
            f"-> {after['token_agreement']:.4f}; exact match {before['exact_match']:.3f} -> {after['exact_match']:.3f} "
            f"({after['greedy_prompts']} prompts); perplexity {before['perplexity']:.2f} -> {after['perplexity']:.2f}",
            f"student: {Path(run_dir) / 'distill' / 'student'}",
        ]

    def quality_rows(self, result: ChainResult) -> list[TableRow]:
        # The baseline is the local model the student started from (the endpoint has no weights here).
        if result.distill is None:
            return []
        base, after = result.distill.metrics["quality"]["base"], result.distill.metrics["quality"]["after"]
        return [TableRow("agreement with the teacher's answers", f"{base['token_agreement']:.4f}",
                         f"{after['token_agreement']:.4f}"),
                TableRow("exact match with the teacher's answers", f"{base['exact_match']:.3f}",
                         f"{after['exact_match']:.3f}"),
                TableRow("perplexity of the teacher's answers", f"{base['perplexity']:.2f}",
                         f"{after['perplexity']:.2f}", f"{after['perplexity'] / base['perplexity']:.2f}x")]

    def table(self, result: ChainResult) -> tuple[list[TableRow], str | None]:
        rows, measured = super().table(result)
        if measured and result.distill is not None:
            measured += (f"; the starting model is {result.distill.metrics['student_from']} (the endpoint's teacher is "
                         "not here to time); quality on the teacher's held-out answers")
        return rows, measured

    def quality_summary(self, result: ChainResult) -> QualitySummary:
        from export.run_summary import QualitySummary

        after = result.distill.metrics["quality"]["after"] if result.distill else {}
        return QualitySummary(teacher_agreement=after.get("token_agreement"), metric=self.agreement_metric,
                              heldout_samples=after.get("prompts"))
