"""Sentence encoders and classifiers: cosine or label agreement, latency at a fixed batch and length.

Distillation trains a shallower (or narrower) BERT-style student on the teacher's embeddings or
logits; it may be pruned; the release is measured by one forward pass per request, and its
quality on held-out text through onnxruntime against the teacher's own ONNX export.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from compress.chain_state import PruneOptions, TableRow, measure_against_teacher, profile_input
from compress.families import register
from compress.stages.family import ENDPOINT_OPTIONS, TaskFamily, TeacherRequest
from compress.stages.outputs import Exported, Quantized
from export.base.errors import CompressError
from export.base.files import atomic_write_json
from export.base.records import FileRef, StageRecord, read_record, stage_status
from export.base.stages import StageOutput

if TYPE_CHECKING:
    from compress.encoder.config import DistillConfig
    from compress.chain_state import ChainContext, ChainResult
    from export.base.stages import StagePlan
    from export.runtime.gate import QualityEvidence
    from export.quantize_report import QuantizeResult
    from export.runtime.release_choice import ReleaseCandidate
    from export.run_summary import QualitySummary, StudentInfo
    from export.runtime.profiles import Profile

_METRIC_LABEL = {"mean_cosine": "cosine", "argmax_agreement": "same label"}


@register
class EncoderFamily(TaskFamily):
    """Sentence embeddings (feature-extraction), text classification and token classification."""

    name: ClassVar[str] = "encoder"
    teacher_words: ClassVar[str] = "an encoder or classifier"
    # Measured with the default teacher on a 2-core AMD EPYC (2026-12-02, jetson job): 20 s for
    # both exports, quantization with its checks, bench and gate; 195-207 s for the release stage,
    # most of it the static-embedding candidate (model2vec, the teacher's embeddings of 10,000
    # texts, 600 steps) and the teacher quantized. Every second reserved is taken from training:
    # at 300 s the jetson student got 457 steps and cosine 0.909, against 983 and 0.929 at 120 s.
    later_stages_reserve_s: ClassVar[float] = 240.0
    min_distill_share: ClassVar[float] = 0.5
    dated_by_gate: ClassVar[bool] = True
    bench_runs: ClassVar[int] = 100
    bench_warmup: ClassVar[int] = 10
    foreign_options: ClassVar[tuple[str, ...]] = (
        "lm_loss", "jsd_beta", "topk", "teacher_answers", "answer_tokens", "sample", "top_p",
        "block_size", "train_anyway",
        *ENDPOINT_OPTIONS)

    @classmethod
    def claims(cls, request: TeacherRequest) -> bool:
        # Any local teacher no more specific family claimed (the default teacher included).
        return request.teacher_url is None

    def make_config(self, settings: dict[str, Any]) -> DistillConfig:
        from compress.encoder.config import DistillConfig

        temperature = settings.pop("temperature", None)
        return DistillConfig(**settings, temperature=2.0 if temperature is None else temperature)

    def distill_plan(self, ctx: ChainContext) -> StagePlan:
        from compress.encoder.stage import distill_plan

        return distill_plan(ctx.config, ctx.profile, ctx.reporter)

        return run_distill_stage(ctx.run_dir, ctx.config, ctx.profile, ctx.reporter)

    prunes: ClassVar[bool] = True

    def prune_plan(self, ctx: ChainContext) -> StagePlan | None:
        """Structured pruning of the distilled student, with a short recovery distillation, when the
        options or the profile ask for a fraction of heads or FFN neurons."""
        from compress.encoder.prune.stage import PruneConfig, prune_plan

        prune = ctx.options.prune or PruneOptions(**ctx.profile.distill.prune.model_dump())
        if not prune.wanted:
            return None
        return prune_plan(self.student_dir(ctx), ctx.run_dir / "prune",
                          PruneConfig(heads=prune.heads, ffn=prune.ffn, data=ctx.config.data,
                                      teacher=str(self.teacher_dir(ctx.distilled)), recover_steps=prune.recover_steps,
                                      compare=False),
                          profile=ctx.profile, log=lambda text: ctx.reporter.message(f"prune: {text}"))

    def export(self, ctx: ChainContext, model_dir: Path, out: Path) -> Exported:
        from export.onnx_export import export_model

        before = read_record(out)
        exported = export_model(model_dir, out, opset=ctx.options.opset, samples=self._held_out(ctx), resume=True)
        return Exported(exported.onnx_path, f"{exported.parity.metric} {exported.parity.agreement:.6f} to PyTorch",
                        stage_status(before, read_record(out)))

    def release_precision(self, ctx: ChainContext) -> str:
        from export.quantize import resolve_method

        if (ctx.options.precision or ctx.profile.precision) == "fp32":
            return "fp32"
        return resolve_method(ctx.profile, ctx.options.precision)

    def quantize(self, ctx: ChainContext, fp32: Path, method: str) -> Quantized:
        from export.quantize import BNB_METHODS, quantize_stage
        from export.runtime.gate import match_hardware
        from export.runtime.host import detect_host

        profile = ctx.profile
        if method in BNB_METHODS:
            raise CompressError(f"precision {method} is for PyTorch on a GPU and cannot be the chain's ONNX release; "
                                "run `compress quantize MODEL_DIR --method ...` on the student folder instead")
        stage_dir = ctx.run_dir / "quantize"
        before = read_record(stage_dir)
        ctx.reporter.message(f"quantize: {method} for {profile.name}, measured against the fp32 student")
        quantized = quantize_stage(fp32, profile, stage_dir, method=method,
                                   calibration_data=ctx.config.data if method == "int8-static" else None,
                                   log=lambda text: ctx.reporter.message(f"quantize: {text}"))
        status = stage_status(before, read_record(stage_dir))
        providers = quantized.speed.providers_used if quantized.speed else ["CPUExecutionProvider"]
        on_target = match_hardware(profile, detect_host(), providers).matched
        keep, why = quantized_or_fp32(quantized, profile, on_target, fp32.stat().st_size)
        # The chain says itself which model ships and why; the stage's file-copy notes are noise here, and the
        # final table's ratio is against the teacher: a note adds only what the precision is for.
        notes = [note for note in quantized.notes if not note.startswith("copied beside")
                 and not note.startswith("not faster")]
        if keep == "quantized" and quantized.speed is not None and quantized.speed.verdict != "faster":
            # No ratio here: the candidate table measures both again, interleaved, and one figure is enough.
            notes.append(f"{method} is for the target ({profile.name}); on this host the fp32 student is the faster")
        if keep == "quantized":
            return Quantized(status, quantized.out_path, method, notes)
        ctx.reporter.warning(why)
        return Quantized(status, notes=[*notes, why])

    candidate_columns = ("p50 ms", "p95 ms", "est. p95", "speed", "agree", "top-10", "rho", "q. drop")

    def candidate_cells(self, candidate: ReleaseCandidate) -> tuple[str, ...]:
        q, s = candidate.quality, candidate.speed
        estimate = s.get("estimated_p95_ms")
        neighbours, spearman = q.get("neighbour_agreement"), q.get("similarity_spearman")
        return (f"{s['p50_ms']:.2f}", f"{s['p95_ms']:.2f}", "-" if estimate is None else f"{estimate:.2f}",
                f"{candidate.speedup:.2f}x", f"{q['teacher_agreement']:.4f}",
                "-" if neighbours is None else f"{neighbours:.4f}", "-" if spearman is None else f"{spearman:.4f}",
                f"{q['quantization_drop']:.4f}")

    def release_plan(self, ctx: ChainContext, student_fp32: Path, teacher: Path) -> StagePlan:
        from compress.encoder.release_stage import encoder_release_plan

        return encoder_release_plan(ctx, student_fp32, teacher, self.teacher_dir(ctx.distilled), self._held_out(ctx),
                                    ctx.options.quality_texts)

    def measure(self, ctx: ChainContext, model: Path, teacher: Path, runs: int, warmup: int, tmp: Path) -> StageOutput:
        ctx.reporter.message(f"bench: {model.name} against the teacher, runs interleaved "
                             f"({ctx.profile.name}'s providers, threads and workload)")
        # One measurement: the table's numbers and the gate's are the release's from this run.
        # threads=None: the runtime's one thread policy, as `compress bench` and `verify --gate` use it.
        comparison = measure_against_teacher(ctx, model, teacher, runs, warmup)
        release = comparison.model
        release.to_json(tmp / "bench.json")
        comparison.to_json(tmp / "compare.json")
        return StageOutput({"bench": "bench.json", "compare": "compare.json"}, {
            "p50_ms": release.latency.p50_ms, "p95_ms": release.latency.p95_ms, "p99_ms": release.latency.p99_ms,
            "teacher_p50_ms": comparison.other.latency.p50_ms, "speedup_vs_teacher": comparison.p50_ratio,
            "host": release.host.describe(), "providers_used": list(release.session.providers_used)})

    def speed(self, bench_dir: Path) -> tuple[dict[str, Any], float | None, str]:
        from export.runtime.bench import BenchReport, ComparisonReport

        BenchReport.from_json(bench_dir / "bench.json")  # a report that no longer reads is an error here, not later
        comparison = ComparisonReport.from_json(bench_dir / "compare.json")
        release, teacher = comparison.model, comparison.other
        return ({"student_p50_ms": release.latency.p50_ms, "student_p95_ms": release.latency.p95_ms,
                 "teacher_p50_ms": teacher.latency.p50_ms, "teacher_p95_ms": teacher.latency.p95_ms,
                 "batch_size": release.workload.batch_size, "sequence_length": release.workload.sequence_length},
                comparison.p50_ratio, release.host.describe())

    def gate_inputs(self, ctx: ChainContext, model: Path, teacher: Path) -> StageRecord:
        held_out, cross, fp32 = self._held_out(ctx), self._cross_domain(ctx), self._fp32(ctx)
        return StageRecord(stage="gate", inputs={
            "model": FileRef.of(model), "teacher": FileRef.of(teacher), "held_out": FileRef.of(held_out),
            **({"cross_domain": FileRef.of(cross)} if cross is not None else {}),
            "bench": FileRef.of(ctx.run_dir / "bench" / "bench.json"), **profile_input(ctx.profile),
            **({"fp32": FileRef.of(fp32)} if fp32 is not None else {}),
        }, params={"profile": ctx.profile.name, "quality_texts": ctx.options.quality_texts})

    def quality_evidence(self, ctx: ChainContext, model: Path, teacher: Path,
                         tmp: Path) -> tuple[QualityEvidence, dict[str, str], dict[str, Any]]:
        from compress.evaluate import agreement_with_teacher, compare_outputs, model_outputs
        from export.runtime.gate import QualityEvidence
        from export.runtime.samples import read_texts

        held_out, fp32 = self._held_out(ctx), self._fp32(ctx)
        texts = read_texts(held_out)[:ctx.options.quality_texts]
        ctx.reporter.message(f"gate: {model.name} vs the teacher on {len(texts)} held-out texts, then the budgets")
        source = f"{held_out.parent.name}/{held_out.name}"
        released = model_outputs(model, texts, source=source)
        agreement = compare_outputs(released, model_outputs(teacher, texts, source=source), source=source)
        # What quantization cost, on the same texts: the release against its own fp32 export.
        drop = 0.0 if fp32 is None else 1.0 - compare_outputs(
            released, model_outputs(fp32, texts, source=source), source=source).teacher_agreement
        quality = {**dataclasses.asdict(agreement), "quantization_drop": drop}
        cross = self._cross_domain(ctx)
        if cross is not None:  # a genre never trained on: reported beside, not budgeted
            crossed = agreement_with_teacher(model, teacher, read_texts(cross)[:ctx.options.quality_texts],
                                             source=f"{cross.parent.name}/{cross.name}")
            quality["cross_domain"] = {"genre": ctx.distilled.metrics.get("cross_domain_genre"),
                                       **dataclasses.asdict(crossed)}
        atomic_write_json(tmp / "quality.json", quality)
        evidence = QualityEvidence(teacher_agreement=agreement.teacher_agreement, metric=agreement.metric,
                                   quantization_drop=drop, source="gate/quality.json",
                                   neighbour_agreement=agreement.neighbour_agreement,
                                   similarity_spearman=agreement.similarity_spearman)
        return evidence, {"quality": "quality.json"}, quality

    def gate_quality(self, ctx: ChainContext, gate_dir: Path) -> dict[str, Any] | None:
        return json.loads((gate_dir / "quality.json").read_text(encoding="utf-8"))

    def _fp32(self, ctx: ChainContext) -> Path | None:
        """The release's own fp32 export, when the release is quantized (what quantization cost is measured against)."""
        return None if ctx.result.precision == "fp32" else ctx.run_dir / "export" / "model.onnx"

    def _held_out(self, ctx: ChainContext) -> Path:
        return ctx.run_dir / "distill" / ctx.distilled.outputs["held_out"]

    def _cross_domain(self, ctx: ChainContext) -> Path | None:
        name = ctx.distilled.outputs.get("cross_domain")
        return ctx.run_dir / "distill" / name if name else None

    # -- reports ---------------------------------------------------------------------------------
    def distill_summary(self, m: dict[str, Any], run_dir: Path) -> tuple[str, list[TableRow], list[str]]:
        metric = m["teacher_agreement_metric"]
        start = m.get("initial_teacher_agreement")
        rows = [TableRow("parameters", f"{m['teacher_parameters'] / 1e6:.1f}M", f"{m['student_parameters'] / 1e6:.1f}M"),
                TableRow("layers / hidden", f"{m.get('teacher_layers', '')} / {m.get('teacher_hidden', '')}",
                         f"{m['student_layers']} / {m['student_hidden']}"),
                TableRow(f"held-out {metric} to teacher (PyTorch)", "1.0000",
                         f"{m['teacher_agreement']:.4f}" + (f" (start {start:.4f})" if start is not None else ""))]
        if m.get("accuracy") is not None:
            rows.append(TableRow("accuracy on labels", f"{m['teacher_accuracy']:.4f}", f"{m['accuracy']:.4f}"))
        if m.get("teacher_quant"):
            rows.append(TableRow(f"teacher {m['teacher_quant']} vs full precision",
                                 f"{m['teacher_quant_agreement']:.4f}", ""))
        lines = []
        by_step = ", ".join(f"{e['step']}: {e['teacher_agreement']:.3f}" for e in m.get("agreement_by_step", []))
        if by_step:
            lines.append(f"{metric} by step: {by_step}")
        lines.append(f"{m['steps']} steps ({m['epochs']:.2f} epochs, {m['samples_seen']} samples) in "
                     f"{m['train_time_s']:.0f} s on {m['device']} ({m['precision']}), {m['samples_per_s']:.1f} "
                     f"samples/s; stopped by {m['stopped_by']}; {m['held_out_examples']} held-out examples")
        if m.get("quality_projection"):
            lines.append(m["quality_projection"]["line"])
        lines.append(f"student: {Path(run_dir) / 'distill' / 'student'}")
        return f"distill: {m.get('student', '')}", rows, lines

    def table(self, result: ChainResult) -> tuple[list[TableRow], str | None]:
        rows = self.size_rows(result)
        if not rows:
            return [], None
        speed, measured = result.speed, None
        if speed is not None:
            for label, t, s in (("latency p50", speed["teacher_p50_ms"], speed["student_p50_ms"]),
                                ("latency p95", speed["teacher_p95_ms"], speed["student_p95_ms"])):
                rows.append(TableRow(label, f"{t:.2f} ms", f"{s:.2f} ms", f"{t / s:.2f}x faster"))
            measured = (f"latency: batch {speed['batch_size']}, {speed['sequence_length']} tokens, runs interleaved "
                        f"on {result.host}")
        quality = result.quality or {}
        if quality.get("teacher_agreement") is not None:
            metric = quality["metric"]
            rows.append(TableRow(f"{_METRIC_LABEL.get(metric, metric)} to teacher", "1.0000",
                                 f"{quality['teacher_agreement']:.4f}", f"{100 * quality['teacher_agreement']:.1f}%"))
            if quality.get("neighbour_agreement") is not None:
                rows.append(TableRow("top-10 neighbours", "1.0000", f"{quality['neighbour_agreement']:.4f}"))
            if quality.get("similarity_spearman") is not None:
                rows.append(TableRow("similarity ranking (Spearman)", "1.0000",
                                     f"{quality['similarity_spearman']:.4f}"))
            cross = quality.get("cross_domain")
            if cross:
                rows.append(TableRow(f"{_METRIC_LABEL.get(metric, metric)}, {cross['genre']} (never trained on)",
                                     "1.0000", f"{cross['teacher_agreement']:.4f}"))
                if cross.get("neighbour_agreement") is not None:
                    rows.append(TableRow(f"top-10 neighbours, {cross['genre']}", "1.0000",
                                         f"{cross['neighbour_agreement']:.4f}"))
                if cross.get("similarity_spearman") is not None:
                    rows.append(TableRow(f"similarity ranking, {cross['genre']}", "1.0000",
                                         f"{cross['similarity_spearman']:.4f}"))
            if measured is not None:
                measured += f"; quality on {quality['samples']} held-out texts"
        return rows, measured

    def teacher_dir(self, record: StageRecord) -> Path:
        from compress.encoder.teacher import resolve_teacher

        return resolve_teacher(record.params.get("teacher"))[1]

    def teacher_name(self, record: StageRecord) -> str:
        from compress.encoder.teacher import resolve_teacher

        return resolve_teacher(record.params.get("teacher"))[0]

    def student_size(self, ctx: ChainContext) -> StudentInfo:
        from export.run_summary import StudentInfo

        metrics = ctx.distilled.metrics
        pruned = read_record(ctx.run_dir / "prune") if ctx.result.stages.get("prune") in ("ran", "skipped") else None
        if pruned is not None:
            prune_result = pruned.metrics["result"]
            return StudentInfo(params=int(prune_result["params_after"]), layers=int(prune_result["layers_after"]),
                               hidden=int(metrics["student_hidden"]))
        return StudentInfo(params=int(metrics["student_parameters"]), layers=int(metrics["student_layers"]),
                           hidden=int(metrics["student_hidden"]))

    def task_of(self, ctx: ChainContext) -> str:
        from export.onnx_export import read_export

        return read_export(ctx.run_dir / "export").task

    def quality_summary(self, result: ChainResult) -> QualitySummary:
        from export.run_summary import QualitySummary

        quality = result.quality if result.stages.get("gate") in ("ran", "skipped") else None
        metrics = result.distill.metrics if result.distill else {}
        more_time = (metrics.get("quality_projection") or {}).get("line")
        if quality is None:
            return QualitySummary(teacher_agreement=None, metric=metrics.get("teacher_agreement_metric", ""),
                                  more_time=more_time)
        cross = quality.get("cross_domain") or {}
        return QualitySummary(teacher_agreement=quality["teacher_agreement"], metric=quality["metric"],
                              neighbour_agreement=quality["neighbour_agreement"],
                              similarity_spearman=quality.get("similarity_spearman"),
                              quantization_drop=quality["quantization_drop"], heldout_samples=quality["samples"],
                              cross_domain_genre=cross.get("genre"),
                              cross_domain_agreement=cross.get("teacher_agreement"),
                              cross_domain_neighbour_agreement=cross.get("neighbour_agreement"),
                              cross_domain_similarity_spearman=cross.get("similarity_spearman"),
                              more_time=more_time)


def quantized_or_fp32(quantized: QuantizeResult, profile: Profile, on_target: bool,
                      fp32_bytes: int) -> tuple[str, str]:
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
