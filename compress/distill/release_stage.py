"""The encoder's release candidates: the student in each precision, measured side by side.

After distillation the chain has the student's fp32 export and, for profiles that quantize, its
quantized copy. The stage times both interleaved with the fp32 teacher in one process (the
profile's workload and runtime settings), scores both on the held-out split against the teacher
(cosine or label agreement, top-10 neighbours) and against the fp32 student (what quantization
cost), and releases the fastest that meets the profile's quality floor, quantization budget and
size budget (:func:`export.runtime.release_choice.choose_release`). When ``--student auto``
searched the shape, each candidate also carries the latency model's p95 for it on this host, so
the model's error is a measured figure. The stage itself is :mod:`compress.stages.release`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from export.base.records import FileRef, StageRecord
from export.base.stages import StageOutput, StagePlan
from export.runtime.bench import BudgetFigure
from export.runtime.release_choice import CANDIDATES_FILE, ReleaseCandidate, ReleaseChoice, choose_release

if TYPE_CHECKING:
    from compress.chain_state import ChainContext

STAGE = "release"
RELEASE_BENCH_RUNS = 100


def _estimates(ctx: ChainContext) -> dict[str, float]:
    """The latency search's p95 on this host for the chosen shape, per precision (empty: no search)."""
    from compress.distill.student_search import StudentSearch

    name = ctx.distilled.outputs.get("student_search")
    if not name:
        return {}
    search = StudentSearch.from_json(ctx.run_dir / "distill" / name)
    chosen = next((c for c in search.candidates if c.spec == search.chosen), None)
    return dict(chosen.host_p95_ms) if chosen is not None else {}


def encoder_release_plan(ctx: ChainContext, student_fp32: Path, teacher_fp32: Path,
                         held_out: Path, quality_texts: int) -> StagePlan:
    """The release stage: the student in each precision measured beside the teacher, the release chosen."""
    from compress.chain_state import profile_input

    from export.quantize import read_quantize

    contenders = [("student fp32", student_fp32, "fp32")]
    if ctx.result.stages.get("quantize") in ("ran", "skipped"):  # whichever the quantize stage preferred
        quantized = read_quantize(ctx.run_dir / "quantize")
        contenders.append((f"student {quantized.method}", ctx.run_dir / "quantize" / quantized.out_path.name,
                           quantized.method))
    runs = ctx.options.bench_runs or RELEASE_BENCH_RUNS
    inputs = {**{name: FileRef.of(path) for name, path, _ in contenders}, "teacher": FileRef.of(teacher_fp32),
              "held_out": FileRef.of(held_out), **profile_input(ctx.profile)}
    estimates = _estimates(ctx)
    planned = StageRecord(stage=STAGE, inputs=inputs, params={
        "profile": ctx.profile.name, "runs": runs, "texts": quality_texts, "estimates": estimates})

    def work(tmp: Path) -> StageOutput:
        choice = measure_candidates(ctx, contenders, teacher_fp32, held_out, quality_texts, runs, estimates)
        choice.to_json(tmp / CANDIDATES_FILE)
        return StageOutput({"candidates": CANDIDATES_FILE}, {"released": choice.released, "why": choice.why})

    return StagePlan(planned, work)


def measure_candidates(ctx: ChainContext, contenders: list[tuple[str, Path, str]], teacher_fp32: Path,
                       held_out: Path, quality_texts: int, runs: int, estimates: dict[str, float]) -> ReleaseChoice:
    """Time ``contenders`` interleaved with the teacher, score them on held-out text, choose."""
    from compress.evaluate import compare_outputs, model_outputs
    from export.runtime.bench import bench_interleaved
    from export.runtime.samples import read_texts

    texts = read_texts(held_out)[:quality_texts]
    source = f"{held_out.parent.name}/{held_out.name}"
    ctx.reporter.message(f"release: timing {len(contenders)} candidates interleaved with the teacher ({runs} runs "
                         f"each), then scoring them on {len(texts)} held-out texts")
    reports = bench_interleaved([teacher_fp32, *(path for _, path, _ in contenders)], ctx.profile, runs=runs,
                                warmup=min(10, runs), progress=False)
    teacher_speed, measured = reports[0], reports[1:]
    budgets = ctx.profile.budgets
    # Each model runs once on the texts; every comparison reads those outputs.
    teacher_out = model_outputs(teacher_fp32, texts, source=source)
    outputs = [model_outputs(path, texts, source=source) for _, path, _ in contenders]
    fp32 = outputs[0]
    candidates = []
    for (name, path, precision), report, out in zip(contenders, measured, outputs):
        agreement = compare_outputs(out, teacher_out, source=source)
        drop = 0.0 if out is fp32 else 1.0 - compare_outputs(out, fp32, source=source).teacher_agreement
        speed = {"p50_ms": round(report.latency.p50_ms, 3), "p95_ms": round(report.latency.p95_ms, 3)}
        estimate = estimates.get("int8-dynamic" if precision.startswith("int8") else precision)
        if estimate is not None:
            speed["estimated_p95_ms"] = round(estimate, 3)
            speed["estimate_error"] = round(estimate / report.latency.p95_ms - 1.0, 4)
        quality = {"teacher_agreement": round(agreement.teacher_agreement, 4), "quantization_drop": round(drop, 4),
                   "texts": len(texts)}
        if agreement.neighbour_agreement is not None:
            quality["neighbour_agreement"] = round(agreement.neighbour_agreement, 4)
        if agreement.similarity_spearman is not None:
            quality["similarity_spearman"] = round(agreement.similarity_spearman, 4)
        candidates.append(ReleaseCandidate(
            name=name, model=str(path.relative_to(ctx.run_dir)), source="student", precision=precision,
            parameters=int(ctx.distilled.metrics["student_parameters"]), size_mb=round(report.model.size_mb, 2),
            speedup=round(teacher_speed.latency.p50_ms / report.latency.p50_ms, 3), speed=speed, quality=quality,
            checks=[BudgetFigure("quality.min_teacher_agreement", budgets.quality.min_teacher_agreement,
                                 quality["teacher_agreement"], agreement.metric, ">="),
                    BudgetFigure("quality.max_quantization_drop", budgets.quality.max_quantization_drop,
                                 quality["quantization_drop"], "agreement lost to quantization", "<="),
                    BudgetFigure("quality.min_neighbour_agreement", budgets.quality.min_neighbour_agreement,
                                 quality.get("neighbour_agreement"), "top-10 neighbours kept", ">="),
                    BudgetFigure("quality.min_similarity_spearman", budgets.quality.min_similarity_spearman,
                                 quality.get("similarity_spearman"), "Spearman of pairwise cosines", ">="),
                    BudgetFigure("model_size_mb", budgets.model_size_mb, round(report.model.size_mb, 2), "MiB", "<=")]))
    choice = choose_release(candidates)
    choice.measured_on = (f"{teacher_speed.host.describe()}: batch {teacher_speed.workload.batch_size}, "
                          f"{teacher_speed.workload.sequence_length} tokens, {runs} runs interleaved with the fp32 "
                          f"teacher (p50 {teacher_speed.latency.p50_ms:.2f} ms); quality on {len(texts)} held-out "
                          "texts")
    return choice

