"""The causal LM's release candidates: every model that could ship, measured; the best released.

A short distillation on a CPU cannot always teach a small student back to the teacher's quality;
the teacher itself, quantized, may then be the model that keeps its quality at a useful speed.
The stage puts them side by side:

- the distilled student, in the release precision and (CPU profiles) in 8-bit weights;
- the teacher, quantized the same ways (int4 weight-only through the same settings ladder and
  quantization budget as the student, and 8-bit weights, on CPUs; fp16 on GPUs).

Each is scored on the same held-out texts against the fp32 teacher (ONNX perplexity ratio and
next-token agreement) and timed generating, runs interleaved with the teacher in one process. The
release is the fastest that meets every quality budget of the profile and its size budget (the
budgets no host changes; :func:`export.runtime.release_choice.choose_release`); when none does,
the student's release stays the release and the gate fails on the budgets it misses.
``RUN_DIR/release/candidates.json`` holds every figure.

The released model's weights are also written for llama.cpp (``RUN_DIR/release/model.gguf``, in the
GGUF type closest to the release's precision) where the architecture allows: the same model for
users whose stack is llama.cpp, packaged beside the ONNX graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from export.base.records import FileRef, StageRecord, read_record
from export.base.stages import StageOutput, StagePlan
from export.runtime.bench import BudgetFigure
from export.runtime.release_choice import CANDIDATES_FILE, ReleaseCandidate, ReleaseChoice, choose_release

if TYPE_CHECKING:
    from compress.chain_state import ChainContext

STAGE = "release"
GGUF_FILE = "model.gguf"
CANDIDATE_TEXTS = 64
RELEASE_BENCH_RUNS = 3


@dataclass
class Contender:
    """A model to measure: its name, file, what it was made from and how."""

    name: str
    model: Path
    source: str
    precision: str
    parameters: int
    quantization_ratio: float | None  # perplexity over its own fp32 export's (None: fp32)


def candidate_precisions(release_precision: str) -> list[str]:
    """The precisions every model is measured in: the release's, plus 8-bit weights beside 4-bit ones
    (on SmolLM2 int4 cost 1.23x perplexity and a third of the next-token choices, 8-bit weights
    1.002x and 5%: benchmarks/lm_teacher_quantization.py). fp32 releases have no other candidate."""
    if release_precision == "fp32":
        return []
    if release_precision == "int4-weight":
        return ["int4-weight", "int8-weight"]
    return [release_precision]


def lm_release_plan(ctx: ChainContext, student_fp32: Path, teacher_fp32: Path, texts: list[str],
                    student_quantization_ratio: float | None) -> StagePlan:
    """The release stage: the candidates measured and the release chosen (skipped when nothing it reads changed)."""
    from compress.chain_state import profile_input
    from export.lm_quantize import int4_ladder
    from export.runtime.generation_bench import generation_size_budget

    released, precision = ctx.result.final_model, ctx.result.precision or "fp32"
    assert released is not None
    budgets = ctx.profile.budgets.quality
    methods = candidate_precisions(precision)
    texts = texts[:CANDIDATE_TEXTS]
    runs = ctx.options.bench_runs or RELEASE_BENCH_RUNS
    inputs = {"release": FileRef.of(released.parent), "student_fp32": FileRef.of(student_fp32.parent),
              "teacher": FileRef.of(teacher_fp32.parent), **profile_input(ctx.profile)}
    planned = StageRecord(stage=STAGE, inputs=inputs, params={
        "profile": ctx.profile.name, "precision": precision, "candidate_precisions": methods,
        "texts": len(texts), "runs": runs, "block_size": ctx.options.block_size,
        "ladder": [s.describe() for s in int4_ladder(ctx.options.block_size)],
        "max_perplexity_ratio": budgets.max_perplexity_ratio,
        "min_teacher_agreement": budgets.min_teacher_agreement,
        "max_quantization_perplexity_ratio": budgets.max_quantization_perplexity_ratio,
        "model_size_mb": generation_size_budget(ctx.profile)[0], "gguf": GGUF_FILE})
    student_params = int(ctx.distilled.metrics["student_parameters"])
    teacher_params = int(ctx.distilled.metrics["teacher_parameters"])

    def work(tmp: Path) -> StageOutput:
        contenders = [Contender(f"student {_label(precision)}", released, "student", precision, student_params,
                                student_quantization_ratio)]
        for method in methods[1:]:
            contenders.append(_quantized(ctx, "student", student_fp32, tmp, method, texts, student_params))
        for method in methods:
            contenders.append(_quantized(ctx, "teacher", teacher_fp32, tmp, method, texts, teacher_params))
        choice = _measure_and_choose(ctx, contenders, teacher_fp32, texts, runs)
        for candidate in choice.candidates:  # paths as they will be once the stage folder is in place
            candidate.model = _relative(Path(candidate.model), tmp, ctx.run_dir)
        choice.to_json(tmp / CANDIDATES_FILE)
        chosen = choice.chosen
        outputs = {"candidates": CANDIDATES_FILE}
        gguf_type = None
        if chosen is not None:
            source = _weights_folder(student_fp32 if chosen.source == "student" else teacher_fp32)
            gguf_type = _write_gguf(ctx, source, chosen.precision, tmp / GGUF_FILE)
            if gguf_type is not None:
                outputs["gguf"] = GGUF_FILE
        return StageOutput(outputs, {
            "released": choice.released, "why": choice.why,
            "released_source": chosen.source if chosen else None,
            "released_quality": chosen.quality if chosen else None, "gguf_type": gguf_type})

    return StagePlan(planned, work)


def _weights_folder(fp32_onnx: Path) -> Path | None:
    """The Hugging Face folder an fp32 export was made from (its export stage's recorded input)."""
    record = read_record(fp32_onnx.parent)
    model = record.inputs.get("model") if record is not None else None
    return Path(model.path) if model is not None and Path(model.path).is_dir() else None


def _write_gguf(ctx: ChainContext, source: Path | None, precision: str, out: Path) -> str | None:
    """The released model's weights as GGUF at ``out``; its type, or None where it cannot be written."""
    from export.gguf_export import can_write_gguf, export_gguf, gguf_type_for

    if source is None or not can_write_gguf(source):
        return None
    gguf_type = gguf_type_for(precision)
    ctx.reporter.message(f"release: the released weights as GGUF ({gguf_type}) for llama.cpp")
    export_gguf(source, out, gguf_type=gguf_type)
    return gguf_type


def _label(precision: str) -> str:
    return {"int4-weight": "int4", "int8-weight": "int8", "int8-dynamic": "int8-dynamic"}.get(precision, precision)


def _quantized(ctx: ChainContext, source: str, fp32: Path, tmp: Path, method: str, texts: list[str],
               parameters: int) -> Contender:
    """``source``'s fp32 export quantized with ``method`` (int4 through the settings ladder, as the quantize stage)."""
    from export.lm_quantize import quantize_causal_lm

    budget = ctx.profile.budgets.quality.max_quantization_perplexity_ratio
    ctx.reporter.message(f"release: the {source} in {method}, to stand beside the release")
    quantized = quantize_causal_lm(fp32.parent, tmp / f"{source}-{_label(method)}", method,
                                   block_size=ctx.options.block_size, eval_texts=texts, max_ratio=budget)
    setting = f" ({quantized.setting})" if method == "int4-weight" and quantized.setting else \
        " (embedding int8)" if method == "int8-weight" else ""
    return Contender(f"{source} {_label(method)}{setting}", Path(quantized.out_path), source, method, parameters,
                     quantized.perplexity_ratio)


def _measure_and_choose(ctx: ChainContext, contenders: list[Contender], teacher_fp32: Path, texts: list[str],
                        runs: int) -> ReleaseChoice:
    from export.lm_scores import onnx_token_scores
    from export.runtime.generation_bench import bench_side_by_side, generation_size_budget

    ctx.reporter.message(f"release: scoring {len(contenders)} candidates against the fp32 teacher on "
                         f"{len(texts)} held-out texts")
    reference = onnx_token_scores(teacher_fp32.parent, texts)
    scores = [onnx_token_scores(c.model.parent, texts) for c in contenders]
    ctx.reporter.message(f"release: timing them generating, runs interleaved with the teacher ({runs} runs each)")
    # threads=None: the runtime's one thread policy, as the bench stage uses it.
    reports = bench_side_by_side([teacher_fp32, *(c.model for c in contenders)], ctx.profile, runs=runs, warmup=1)
    teacher_speed, measured = reports[0], reports[1:]
    budgets = ctx.profile.budgets.quality
    candidates = []
    for contender, score, report in zip(contenders, scores, measured):
        ratio = score.perplexity / reference.perplexity
        agreement = score.agreement(reference)
        quantization = contender.quantization_ratio if contender.quantization_ratio is not None else 1.0
        candidates.append(ReleaseCandidate(
            name=contender.name, model=str(contender.model), source=contender.source, precision=contender.precision,
            parameters=contender.parameters, size_mb=round(report.model.size_mb, 2),
            speedup=round(report.tokens_per_s / teacher_speed.tokens_per_s, 3),
            speed={"tokens_per_s": round(report.tokens_per_s, 2), "ttft_ms": round(report.ttft_ms.p50, 2),
                   "tpot_ms": round(report.tpot_ms.p50, 2)},
            quality={"perplexity": round(score.perplexity, 3), "perplexity_ratio": round(ratio, 4),
                     "next_token_agreement": round(agreement, 4),
                     "quantization_perplexity_ratio": round(quantization, 4), "texts": len(texts)},
            checks=[BudgetFigure("quality.max_perplexity_ratio", budgets.max_perplexity_ratio, round(ratio, 4),
                                 "x the teacher's perplexity", "<="),
                    BudgetFigure("quality.min_teacher_agreement", budgets.min_teacher_agreement, round(agreement, 4),
                                 "next-token agreement", ">="),
                    BudgetFigure("quality.max_quantization_perplexity_ratio",
                                 budgets.max_quantization_perplexity_ratio, round(quantization, 4),
                                 "x fp32 perplexity", "<="),
                    # The size is the one hardware-independent budget beside quality: a release over it fails anywhere.
                    BudgetFigure("model_size_mb", generation_size_budget(ctx.profile)[0],
                                 round(report.model.size_mb, 2), "MiB", "<=")]))
    choice = choose_release(candidates)
    choice.measured_on = (f"{teacher_speed.host.describe()}: {teacher_speed.prompt_length}-token prompt, "
                          f"{teacher_speed.new_tokens} new tokens, {runs} runs interleaved with the fp32 teacher "
                          f"({teacher_speed.tokens_per_s:.1f} tokens/s, perplexity {reference.perplexity:.2f}); "
                          f"quality on {len(texts)} held-out texts")
    return choice


def _relative(path: Path, tmp: Path, run_dir: Path) -> str:
    """``path`` relative to the run directory, with the stage's temporary folder read as its final place."""
    try:
        return str(Path(STAGE) / path.relative_to(tmp))
    except ValueError:
        return str(path.resolve().relative_to(run_dir.resolve()))
