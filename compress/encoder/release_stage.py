"""The encoder's release candidates: every kind of model that could ship, measured side by side.

After distillation the chain has the student's fp32 export and, for profiles that quantize, its
quantized copy. Beside them the stage makes the teacher itself in that precision (often the
safest speed-up) and, for sentence encoders, a static-embedding student
(:mod:`compress.encoder.static_student`: the far, fast end). It times them all interleaved with
the fp32 teacher in one process (the profile's workload and runtime settings), scores them on the
held-out split against the teacher (cosine or label agreement, top-10 neighbours, Spearman) and
against their own fp32 model (what quantization cost), draws them (``candidates.png``: speed
against quality, the floor, the release), and releases the fastest that meets the profile's quality floor, quantization budget and
size budget (:func:`export.runtime.release_choice.choose_release`). When ``--student auto``
searched the shape, each candidate also carries the latency model's p95 for it on this host, so
the model's error is a measured figure. The stage itself is :mod:`compress.stages.release`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from compress.encoder.static_student import StaticSettings
from export.base.records import FileRef, StageRecord
from export.base.stages import StageOutput, StagePlan
from export.runtime.bench import BudgetFigure
from export.runtime.release_choice import CANDIDATES_FILE, ReleaseCandidate, ReleaseChoice, choose_release

if TYPE_CHECKING:
    from compress.chain_state import ChainContext

STAGE = "release"
CANDIDATES_PLOT = "candidates.png"
RELEASE_BENCH_RUNS = 100


def _estimates(ctx: ChainContext) -> dict[str, float]:
    """The latency search's p95 on this host for the chosen shape, per precision (empty: no search)."""
    from compress.encoder.student_search import StudentSearch

    name = ctx.distilled.outputs.get("student_search")
    if not name:
        return {}
    search = StudentSearch.from_json(ctx.run_dir / "distill" / name)
    chosen = next((c for c in search.candidates if c.spec == search.chosen), None)
    return dict(chosen.host_p95_ms) if chosen is not None else {}


class Contender(NamedTuple):
    """A model to measure: its name, file, precision, what it was made from, and its size in parameters."""

    name: str
    model: Path
    precision: str
    source: str  # student | teacher | static
    parameters: int


def encoder_release_plan(ctx: ChainContext, student_fp32: Path, teacher_fp32: Path, teacher_dir: Path,
                         held_out: Path, quality_texts: int) -> StagePlan:
    """The release stage: the student in each precision, the teacher quantized and the static student
    measured beside the fp32 teacher, and the release chosen."""
    from compress.chain_state import profile_input
    from export.quantize import read_quantize

    student_params = int(ctx.distilled.metrics["student_parameters"])
    contenders = [Contender("student fp32", student_fp32, "fp32", "student", student_params)]
    teacher_method = None
    if ctx.result.stages.get("quantize") in ("ran", "skipped"):  # whichever the quantize stage preferred
        quantized = read_quantize(ctx.run_dir / "quantize")
        contenders.append(Contender(f"student {quantized.method}", ctx.run_dir / "quantize" /
                                    quantized.out_path.name, quantized.method, "student", student_params))
        teacher_method = quantized.method
    train = ctx.distilled.outputs.get("train")
    train_path = ctx.run_dir / "distill" / train if train else None
    static = StaticSettings() if train_path is not None and _static_fits(teacher_fp32) else None
    runs = ctx.options.bench_runs or RELEASE_BENCH_RUNS
    inputs = {**{c.name: FileRef.of(c.model) for c in contenders}, "teacher": FileRef.of(teacher_fp32),
              "held_out": FileRef.of(held_out), **profile_input(ctx.profile)}
    if static is not None and train_path is not None:
        inputs["train"] = FileRef.of(train_path)
    estimates = _estimates(ctx)
    planned = StageRecord(stage=STAGE, inputs=inputs, params={
        "profile": ctx.profile.name, "runs": runs, "texts": quality_texts, "estimates": estimates,
        "teacher_candidate": teacher_method, "static": dataclasses.asdict(static) if static else None})
    teacher_params = int(ctx.distilled.metrics.get("teacher_parameters") or 0)

    def work(tmp: Path) -> StageOutput:
        measured = list(contenders)
        if teacher_method is not None:
            measured.append(_teacher_quantized(ctx, teacher_fp32, teacher_method, tmp, teacher_params))
        if static is not None and train_path is not None:
            measured.append(_static_student(ctx, teacher_dir, teacher_fp32, train_path, static, tmp))
        choice = measure_candidates(ctx, measured, teacher_fp32, held_out, quality_texts, runs, estimates)
        for candidate in choice.candidates:  # paths as they will be once the stage folder is in place
            candidate.model = _relative(Path(candidate.model), tmp, ctx.run_dir)
        choice.to_json(tmp / CANDIDATES_FILE)
        from export.plots import candidates_png

        (tmp / CANDIDATES_PLOT).write_bytes(candidates_png(choice, ctx.profile.name))
        return StageOutput({"candidates": CANDIDATES_FILE, "plot": CANDIDATES_PLOT},
                           {"released": choice.released, "why": choice.why})

    return StagePlan(planned, work)


def _static_fits(teacher_fp32: Path) -> bool:
    """A static student stands in for a sentence encoder (``sentence_embedding``) or a text classifier
    (``logits`` per text); a token classifier labels tokens in context, which a static model cannot."""
    import onnx

    from export.onnx_export import SENTENCE_EMBEDDING

    outputs = {o.name: o for o in onnx.load(str(teacher_fp32), load_external_data=False).graph.output}
    if SENTENCE_EMBEDDING in outputs:
        return True
    logits = outputs.get("logits")
    return logits is not None and len(logits.type.tensor_type.shape.dim) == 2


def _teacher_quantized(ctx: ChainContext, teacher_fp32: Path, method: str, tmp: Path, parameters: int) -> Contender:
    """The teacher in the release's precision: often the safest speed-up, and sometimes the best release."""
    from export.quantize import quantize_model

    ctx.reporter.message(f"release: the teacher in {method}, to stand beside the students")
    out = tmp / f"teacher-{method}" / "model.onnx"
    out.parent.mkdir(parents=True)
    result = quantize_model(teacher_fp32, ctx.profile, out, method=method, compare=False)
    return Contender(f"teacher {result.method}", Path(result.out_path), result.method, "teacher", parameters)


def _static_student(ctx: ChainContext, teacher_dir: Path, teacher_fp32: Path, train_path: Path,
                    settings: StaticSettings, tmp: Path) -> Contender:
    from compress.encoder.static_student import build_static_student
    from export.runtime.samples import read_texts

    model = build_static_student(teacher_dir, teacher_fp32, read_texts(train_path), tmp / "static", settings,
                                 ctx.reporter)
    import onnx

    table = next(t for t in onnx.load(str(model)).graph.initializer if t.name == "token_vectors")
    return Contender("static fp32", model, "fp32", "static", int(table.dims[0] * table.dims[1]))


def _relative(path: Path, tmp: Path, run_dir: Path) -> str:
    """``path`` relative to the run directory, with the stage's temporary folder read as its final place."""
    try:
        return str(Path(STAGE) / path.relative_to(tmp))
    except ValueError:
        return str(path.resolve().relative_to(run_dir.resolve()))


def measure_candidates(ctx: ChainContext, contenders: list[Contender], teacher_fp32: Path,
                       held_out: Path, quality_texts: int, runs: int, estimates: dict[str, float]) -> ReleaseChoice:
    """Time ``contenders`` interleaved with the teacher, score them on held-out text, choose."""
    from compress.evaluate import compare_outputs, model_outputs
    from export.runtime.bench import bench_interleaved
    from export.runtime.samples import read_texts

    texts = read_texts(held_out)[:quality_texts]
    source = f"{held_out.parent.name}/{held_out.name}"
    ctx.reporter.message(f"release: timing {len(contenders)} candidates interleaved with the teacher ({runs} runs "
                         f"each), then scoring them on {len(texts)} held-out texts")
    reports = bench_interleaved([teacher_fp32, *(c.model for c in contenders)], ctx.profile, runs=runs,
                                warmup=min(10, runs), progress=False)
    teacher_speed, measured = reports[0], reports[1:]
    budgets = ctx.profile.budgets
    # Each model runs once on the texts; every comparison reads those outputs.
    teacher_out = model_outputs(teacher_fp32, texts, source=source)
    outputs = [model_outputs(c.model, texts, source=source) for c in contenders]
    fp32 = outputs[0]
    candidates = []
    for (name, path, precision, origin, parameters), report, out in zip(contenders, measured, outputs):
        agreement = compare_outputs(out, teacher_out, source=source)
        # What quantization cost: against the student's fp32, or the teacher's own for the teacher quantized.
        baseline = {"student": fp32, "teacher": teacher_out}.get(origin)
        drop = 0.0 if baseline is None or out is baseline else \
            1.0 - compare_outputs(out, baseline, source=source).teacher_agreement
        speed = {"p50_ms": round(report.latency.p50_ms, 3), "p95_ms": round(report.latency.p95_ms, 3)}
        estimate = estimates.get("int8-dynamic" if precision.startswith("int8") else precision) \
            if origin == "student" else None
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
            name=name, model=str(path), source=origin, precision=precision,
            parameters=parameters, size_mb=round(report.model.size_mb, 2),
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

