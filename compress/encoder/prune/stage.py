"""The prune step: importance on real text, surgery, optional recovery, save, measure.

``prune_model`` removes whole layers (greedy ablation), then attention heads (ablation with a head
mask) and FFN neurons (mask gradients), see :mod:`compress.encoder.prune.importance`, in one shot, saves the smaller model
with ``save_pretrained`` (safetensors) plus the tokenizer and sentence-transformers files, checks
that ``from_pretrained`` rebuilds it exactly (pruned heads included), optionally runs a short
recovery distillation against the teacher with the distillation engine, and reports parameters,
quality against the teacher on held-out text, and ONNX latency of the original and the pruned
model exported and benchmarked in the same run.

``magnitude`` (unstructured zeros, :mod:`compress.encoder.prune.magnitude`) is applied last and only
helps the compressed size on disk: onnxruntime on a CPU gets no speed from it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.base.files import make_folder
from export.base.errors import CompressError
from compress.encoder.prune.importance import (Batch, TaskModel, head_importance, layer_removal_order, make_batches,
                                       neuron_importance)
from compress.encoder.prune.magnitude import MagnitudeReport, compressed_size, zero_smallest
from compress.encoder.prune.structured import (count_parameters, encoder_layers, ffn_size, head_counts, keep_layers,
                                       prune_ffn, prune_heads)
from export.base.records import FileRef, StageRecord, read_stage_result
from export.base.stages import StageOutput, StagePlan, run_stage
from export.base.tasks import Task, detect_task, read_config, read_pooling
from export.base.report_json import JsonRecord

if TYPE_CHECKING:
    from export.runtime.profiles import Profile

SCHEMA_VERSION = 1
OBJECTIVES = {
    "feature-extraction": "layers and heads: ablation, 1 - cosine to the teacher's embeddings; FFN neurons: "
                          "|activation x gradient| of an in-batch contrastive loss against the teacher's embeddings",
    "text-classification": "layers and heads: ablation, KL divergence from the teacher; FFN neurons: "
                           "|activation x gradient| of cross-entropy against the teacher's predicted classes",
    "token-classification": "layers and heads: ablation, KL divergence from the teacher per token; FFN neurons: "
                            "|activation x gradient| of cross-entropy against the teacher's predicted tags",
}
# sentence-transformers files and folders copied from the source folder (hidden size is unchanged).
_ST_ITEMS = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling",
             "2_Dense", "2_Normalize", "3_Normalize")
RELOAD_TOLERANCE = 1e-4
# Head ablation runs one forward pass per head: on this many of the importance texts.
HEAD_ABLATION_TEXTS = 32


@dataclass
class PruneConfig:
    """What to remove and how to measure it."""

    heads: float = 0.0  # fraction of all attention heads to remove (each layer keeps at least one)
    ffn: float = 0.0  # fraction of FFN neurons to remove from every layer
    layers: int | None = None  # number of encoder layers to keep
    data: Path | None = None  # texts to measure importance on (default: the default corpus's training split)
    teacher: str | None = None  # folder or known name; default: the unpruned model itself
    recover_steps: int = 0  # recovery distillation steps against the teacher (0: none)
    magnitude: float = 0.0  # unstructured zeros per encoder matrix, for compressed size only
    importance_texts: int = 128
    eval_texts: int = 64
    batch_size: int = 16
    max_length: int = 128
    compare: bool = True  # export original and pruned to ONNX and time them in one run
    compare_runs: int = 50

    def check(self) -> None:
        for name in ("heads", "ffn", "magnitude"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise CompressError(f"--{name} {value} must be a fraction in [0, 1)")
        if self.layers is not None and self.layers < 1:
            raise CompressError("--layers must keep at least one layer")
        if self.recover_steps < 0:
            raise CompressError("--recover-steps cannot be negative")
        if not (self.heads or self.ffn or self.layers or self.magnitude):
            raise CompressError("nothing to prune: pass --heads, --ffn, --layers or --magnitude")


@dataclass
class QualityPoint:
    """Quality against the teacher on held-out text at one point of the step."""

    stage: str  # original | pruned | recovered | magnitude
    metric: str  # mean_cosine | argmax_agreement
    value: float
    neighbour_agreement: float | None = None  # embeddings: top-10 neighbour overlap with the teacher


@dataclass
class LatencyComparison:
    """Original and pruned model exported to ONNX and benchmarked in one process, runs interleaved."""

    original_p50_ms: float
    pruned_p50_ms: float
    speedup: float  # original p50 / pruned p50
    original_bytes: int
    pruned_bytes: int
    runs: int
    profile: str
    providers_used: list[str]
    host: str


@dataclass
class RecoveryReport:
    """The recovery distillation as the engine ran it."""

    steps: int
    train_time_s: float
    device: str
    teacher: str
    engine_teacher_agreement: float  # the engine's own held-out measurement after training


@dataclass
class PruneResult(JsonRecord):
    """What ``prune_model`` removed, wrote and measured."""

    out_dir: Path
    task: Task
    teacher: str
    objective: str
    params_before: int
    params_after: int
    layers_before: int
    layers_after: int
    kept_layers: list[int]  # original indices
    heads_before: int
    heads_after: int
    heads_per_layer: list[int]
    ffn_before: int
    ffn_after: int
    quality: list[QualityPoint]
    importance_texts: int
    importance_source: str
    eval_texts: int
    recover_steps: int = 0
    recovery: RecoveryReport | None = None
    latency: LatencyComparison | None = None
    magnitude: MagnitudeReport | None = None
    notes: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    @property
    def final_quality(self) -> QualityPoint:
        return self.quality[-1]


# ---------------------------------------------------------------------------------------------


def load_task_model(folder: Path, task: Task) -> TaskModel:
    from export.torch_model import read_dense
    from export.torch_model import load_model, load_tokenizer

    model = load_model(folder, task)
    pooling = read_pooling(folder) if task == "feature-extraction" else None
    projection = read_dense(folder) if task == "feature-extraction" else None
    return TaskModel(model, load_tokenizer(folder), task, pooling, projection, folder)


def measure_quality(model: TaskModel, batches: list[Batch], stage: str) -> QualityPoint:
    """The task's quality view of ``model`` against the teacher outputs stored in ``batches``."""
    import numpy as np
    import torch

    from export.runtime.agreement import argmax_agreement, mean_cosine, neighbour_agreement

    outputs, targets = [], []
    with torch.no_grad():
        for batch in batches:
            out, target = model.output(batch.inputs).float(), batch.teacher
            if out.ndim == 3:
                keep = batch.mask.bool()
                out, target = out[keep], target[keep]
            outputs.append(out.numpy())
            targets.append(target.numpy())
    candidate, reference = np.concatenate(outputs), np.concatenate(targets)
    if model.task == "feature-extraction":
        return QualityPoint(stage, "mean_cosine", mean_cosine(reference, candidate),
                            neighbour_agreement(reference, candidate))
    return QualityPoint(stage, "argmax_agreement", argmax_agreement(reference, candidate))


def _heads_to_prune(scores: list[Any], fraction: float) -> dict[int, list[int]]:
    """The lowest-scoring ``fraction`` of all heads, every layer keeping at least one."""
    ranked = sorted((float(score), layer, head) for layer, layer_scores in enumerate(scores)
                    for head, score in enumerate(layer_scores))
    target = round(fraction * len(ranked))
    remaining = [len(s) for s in scores]
    chosen: dict[int, list[int]] = {}
    for _, layer, head in ranked:
        if target == 0:
            break
        if remaining[layer] > 1:
            chosen.setdefault(layer, []).append(head)
            remaining[layer] -= 1
            target -= 1
    return chosen


def _neurons_to_keep(scores: list[Any], fraction: float) -> list[Any]:
    import torch

    size = len(scores[0])
    keep = max(1, round((1.0 - fraction) * size))
    return [torch.topk(layer_scores, keep).indices for layer_scores in scores]


def save_model_folder(model: TaskModel, folder: Path, source: Path) -> None:
    """``save_pretrained`` (safetensors) + tokenizer + the source's sentence-transformers files."""
    model.model.save_pretrained(folder, safe_serialization=True)
    model.tokenizer.save_pretrained(folder)
    for name in _ST_ITEMS:
        item = source / name
        if item.is_dir():
            shutil.copytree(item, folder / name, dirs_exist_ok=True)
        elif item.is_file():
            shutil.copyfile(item, folder / name)


def check_reload(model: TaskModel, folder: Path, batches: list[Batch]) -> float:
    """Reload ``folder`` with plain ``from_pretrained`` and confirm it computes what the pruned model does."""
    import torch

    reloaded = load_task_model(folder, model.task)
    worst = 0.0
    with torch.no_grad():
        for batch in batches[:2]:
            worst = max(worst, float((reloaded.output(batch.inputs) - model.output(batch.inputs)).abs().max()))
    if worst > RELOAD_TOLERANCE:
        raise CompressError(f"the pruned model saved in {folder} reloads differently (max abs diff {worst:.2e})")
    return worst


def _latency(original: Path, pruned: Path, profile: Profile, runs: int, scratch: Path,
             say: Callable[[str], None]) -> LatencyComparison:
    from export.runtime.bench import compare_bench
    from export.onnx_export import export_model

    say("exporting the original and the pruned model to ONNX")
    before = export_model(original, scratch / "original")
    after = export_model(pruned, scratch / "pruned")
    say("timing both on this host (interleaved)")
    report = compare_bench(after.onnx_path, before.onnx_path, profile, runs=runs, warmup=5, progress=False)
    return LatencyComparison(
        original_p50_ms=report.other.latency.p50_ms, pruned_p50_ms=report.model.latency.p50_ms,
        speedup=report.p50_ratio, original_bytes=before.size_bytes, pruned_bytes=after.size_bytes, runs=runs,
        profile=profile.name, providers_used=list(report.model.session.providers_used),
        host=report.model.host.describe(),
    )


def _recover(pruned_dir: Path, teacher: str, steps: int, task: Task, data: Path | None, scratch: Path,
             say: Callable[[str], None]) -> tuple[Path, RecoveryReport]:
    """Short distillation of the pruned folder against the teacher, with the distillation engine."""
    from compress.encoder import DistillConfig, Reporter, distill

    say(f"recovery: {steps} distillation steps against {teacher}")
    config = DistillConfig(teacher=teacher, task=task, init_student=pruned_dir, data=data, max_steps=steps,
                           eval_points=0, hidden_weight=0.0)
    result = distill(config, scratch / "recover", reporter=Reporter(show_progress=False))
    return Path(result.student_dir), RecoveryReport(
        steps=result.training.steps, train_time_s=result.training.train_time_s, device=result.device,
        teacher=teacher, engine_teacher_agreement=result.quality.teacher_agreement,
    )


def prune_model(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                config: PruneConfig = PruneConfig(), *, profile: Profile | None = None, resume: bool = False,
                log: Callable[[str], None] | None = None) -> PruneResult:
    """Prune the Hugging Face folder ``model_dir`` into ``out_dir`` (+ ``stage.json``) as ``config`` says:
    ``compress prune``, the stage on its own (the chain runs the same plan, :mod:`compress.stages.prune`).

    ``profile`` (default: ``host``) sets how the ONNX latency comparison runs. ``resume=True``
    returns the previous result when ``out_dir`` holds a complete run with the same inputs and
    parameters. The output folder appears only when complete.
    """
    plan = prune_plan(model_dir, out_dir, config, profile=profile, log=log)
    return PruneResult.from_json(run_stage(out_dir, plan.record, plan.work, resume=resume).result)


def prune_plan(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
               config: PruneConfig = PruneConfig(), *, profile: Profile | None = None,
               log: Callable[[str], None] | None = None) -> StagePlan:
    """The prune stage into ``out_dir``: what it reads and is set by, and its work (bad input refused now)."""
    import torch

    from compress.encoder.teacher import resolve_teacher
    from export.runtime import DEFAULT_PROFILE
    from export.runtime.profiles import load_profile
    from export.runtime.samples import held_out_texts, training_texts

    say = log or (lambda message: None)
    source, target = Path(model_dir), Path(out_dir)
    config.check()
    if not source.is_dir():
        raise CompressError(f"model folder not found: {source}")
    if target.resolve() == source.resolve() or source.resolve().is_relative_to(target.resolve()):
        raise CompressError(f"--out {target} would replace the model folder {source}; choose another folder")
    if (read_config(source).get("quantization_config") or {}).get("quant_method"):
        raise CompressError(f"{source} is quantized; prune the fp32 folder it came from")
    task = detect_task(source)
    profile = profile or load_profile(DEFAULT_PROFILE)

    inputs = {"model": FileRef.of(source)}
    if config.data:
        inputs["data"] = FileRef.of(config.data)
    teacher_name, teacher_dir = resolve_teacher(config.teacher) if config.teacher else (None, None)
    if teacher_dir is not None:
        inputs["teacher"] = FileRef.of(teacher_dir)
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}
    planned = StageRecord(stage="prune", inputs=inputs, params={**params, "profile": profile.name})
    make_folder(target.parent)

    def work(tmp: Path) -> StageOutput:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.work.") as scratch_name:
            return _prune_into(tmp, Path(scratch_name))

    def _prune_into(tmp: Path, scratch: Path) -> StageOutput:
        torch.manual_seed(0)
        student = load_task_model(source, task)
        encoder_layers(student.model)  # refuse non-BERT layouts before any work
        if teacher_dir is not None:
            if detect_task(teacher_dir) != task:
                raise CompressError(f"teacher {teacher_dir} is a {detect_task(teacher_dir)} model; {source} is {task}")
            teacher = load_task_model(teacher_dir, task)
        else:
            teacher = student  # its outputs are taken before any surgery

        importance_texts = training_texts(config.importance_texts, config.data)
        importance_source = str(config.data) if config.data else "default corpus, training split"
        say(f"teacher outputs on {len(importance_texts)} texts (importance) and the held-out texts (quality)")
        batches = make_batches(student, teacher, importance_texts, config.batch_size, config.max_length)
        eval_batches = make_batches(student, teacher, held_out_texts(config.eval_texts), config.batch_size,
                                    config.max_length)
        with torch.no_grad():
            own_width = student.output(batches[0].inputs).shape[-1]
        if batches[0].teacher.shape[-1] != own_width:
            raise CompressError(f"teacher outputs have {batches[0].teacher.shape[-1]} dimensions, the model "
                                f"{own_width}; they cannot be compared")
        del teacher

        quality = [measure_quality(student, eval_batches, "original")]
        params_before, heads_before = count_parameters(student.model), sum(head_counts(student.model))
        layers_before, ffn_before = len(encoder_layers(student.model)), ffn_size(student.model)
        kept = list(range(layers_before))
        notes: list[str] = []
        if config.layers is not None and config.layers < layers_before:
            say(f"ranking {layers_before} layers by ablation")
            kept, trace = layer_removal_order(student, batches, config.layers, progress=say)
            keep_layers(student.model, kept)
        elif config.layers is not None and config.layers > layers_before:
            raise CompressError(f"--layers {config.layers}: the model has only {layers_before} layers")
        if config.heads:
            ablation = batches[:max(1, HEAD_ABLATION_TEXTS // config.batch_size)]
            say(f"ranking {sum(head_counts(student.model))} heads by ablation on "
                f"{sum(len(b.inputs['input_ids']) for b in ablation)} texts")
            prune_heads(student.model, _heads_to_prune(head_importance(student, ablation), config.heads))
        if config.ffn:
            say("ranking FFN neurons by mask gradients")
            prune_ffn(student.model, _neurons_to_keep(neuron_importance(student, batches), config.ffn))
        quality.append(measure_quality(student, eval_batches, "pruned"))

        save_model_folder(student, tmp, source)
        check_reload(student, tmp, eval_batches)
        recovery: RecoveryReport | None = None
        if config.recover_steps:
            # The teacher to recover towards: the one named, else the model as it was before pruning.
            recovered, recovery = _recover(tmp, str(teacher_dir or source.resolve()), config.recover_steps, task,
                                           config.data, scratch, say)
            for item in list(tmp.iterdir()):
                shutil.rmtree(item) if item.is_dir() else item.unlink()
            shutil.copytree(recovered, tmp, dirs_exist_ok=True)
            student = load_task_model(tmp, task)
            quality.append(measure_quality(student, eval_batches, "recovered"))
        magnitude = None
        if config.magnitude:
            weights = tmp / "model.safetensors"
            before = compressed_size(weights)
            zeroed, matrices = zero_smallest(student.model, config.magnitude)
            student.model.save_pretrained(tmp, safe_serialization=True)
            magnitude = MagnitudeReport(config.magnitude, zeroed, matrices, before, compressed_size(weights))
            quality.append(measure_quality(student, eval_batches, "magnitude"))
            notes.append(magnitude.note)
        latency = _latency(source, tmp, profile, config.compare_runs, scratch, say) if config.compare else None

        result = PruneResult(
            out_dir=target, task=task, teacher=teacher_name or f"{source} (itself, before pruning)",
            objective=OBJECTIVES[task],
            params_before=params_before, params_after=count_parameters(student.model),
            layers_before=layers_before, layers_after=len(encoder_layers(student.model)), kept_layers=kept,
            heads_before=heads_before, heads_after=sum(head_counts(student.model)),
            heads_per_layer=head_counts(student.model), ffn_before=ffn_before, ffn_after=ffn_size(student.model),
            quality=quality, importance_texts=len(importance_texts), importance_source=importance_source,
            eval_texts=sum(len(b.inputs["input_ids"]) for b in eval_batches), recover_steps=config.recover_steps,
            latency=latency, magnitude=magnitude, recovery=recovery, notes=notes,
        )
        return StageOutput({"model": "model.safetensors", "config": "config.json"}, {"result": result.to_json()})

    return StagePlan(planned, work)


def read_prune(out_dir: str | os.PathLike[str]) -> PruneResult:
    """The result recorded in a prune folder's ``stage.json``."""
    return PruneResult.from_json(read_stage_result(out_dir, "prune"))
