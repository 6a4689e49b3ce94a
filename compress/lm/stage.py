"""The ``distill`` stage for a causal-LM teacher: ``RUN_DIR/distill/`` and its ``stage.json``.

Order of work, so that peak memory is one teacher plus the student:

1. resolve the teacher (a local folder, or a registered name converted once from GGUF to a
   cached safetensors folder), the data and a seeded held-out split;
2. load the teacher, build the student from a subset of its layers;
3. with ``teacher_answers``, let the teacher answer prompts (cached as JSONL) and add its answers
   to the training set: sequence-level distillation, mixed with the token-level loss;
4. train (:func:`compress.lm.trainer.train_lm`: token-level KL / JSD against the teacher's cached
   top-k logits), then measure both on the held-out split (perplexity, next-token agreement,
   agreement of greedy completions) and save the student.

Skipped when its inputs (teacher and data, by sha256) and settings are unchanged and its outputs
exist, as every stage is.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.training.device import cpu_threads, resolve_device
from compress.training.progress import Reporter
from export.base.errors import CompressError
from export.base.files import atomic_write_json, atomic_write_text, make_folder
from compress.lm.config import DEFAULT_LM_BATCH_SIZE, LMDistillConfig, resolve_lm_student
from export.base.corpus import pin_training_data
from export.base.records import FileRef, StageRecord
from compress.parallel import world
from compress.stages.distill import run_distill_plan
from compress.training.projection import ForecastRule
from export.base.stages import StageOutput, StagePlan, StageRun

if TYPE_CHECKING:
    from export.runtime.profiles import Profile

STAGE = "distill"
STUDENT_DIR = "student"
HELD_OUT_FILE = "held_out.jsonl"
HISTORY_FILE = "loss_history.json"
ANSWERS_FILE = "teacher_answers.jsonl"
HELD_OUT_FRACTION = 0.05
# Scoring 8,100 held-out texts took over half a 10-minute budget on a 2-core CPU; 512 take about 20 s.
HELD_OUT_MAX = 512
# Kept back from the distillation budget for scoring teacher and student and saving the student.
FINISH_RESERVE_S = 60.0


def planned_record(config: LMDistillConfig, profile: Profile | None, teacher_dir: Path, *,
                   model_input: str = "teacher") -> StageRecord:
    """The record this stage would write, minus outputs and metrics (enough to decide skipping).

    ``teacher_dir`` is the local model the stage reads, recorded as ``model_input``.
    """
    inputs = {model_input: FileRef.of(teacher_dir)}
    params = config.params()
    pin_training_data(config.data, inputs, params)
    params["profile"] = profile.name if profile is not None else None
    budget = config.budget_s(profile)
    if config.time_budget_s is None and budget is not None:  # the profile's
        params["time_budget_s"] = budget
    if forecast_floor(config, profile) is not None and not config.train_anyway:
        params["forecast_probe_share"] = ForecastRule.PROBE_SHARE  # the probe may stop training
    return StageRecord(stage=STAGE, inputs=inputs, params=params)


def lm_distill_plan(config: LMDistillConfig, profile: Profile | None = None, reporter: Reporter | None = None
                    ) -> StagePlan:
    """The causal-LM distill stage: its fingerprint and its work (the trainer's setup), run in place
    for its checkpoints. Resolving the teacher (a first run's GGUF conversion) counts against the budget."""
    from compress.lm.teacher import resolve_lm_teacher

    started = time.perf_counter()
    reporter = reporter or Reporter()
    config.validate()
    teacher_dir = resolve_lm_teacher(config.teacher)
    check_student_spec(config.student, teacher_dir)

    def work(folder: Path) -> StageOutput:
        metrics = _distill(config, profile, teacher_dir, folder, reporter, started)
        return StageOutput({"student": STUDENT_DIR, "held_out": HELD_OUT_FILE, "loss_history": HISTORY_FILE},
                           metrics)

    return StagePlan(planned_record(config, profile, teacher_dir), work)


def run_lm_distill_stage(run_dir: Path, config: LMDistillConfig, profile: Profile | None = None,
                         reporter: Reporter | None = None) -> StageRun | None:
    """Run (or skip) the causal-LM distill stage into ``run_dir/distill``.

    Data parallel (``torchrun``): every rank trains; rank 0 writes and returns the run, the others None.
    """
    reporter = reporter or Reporter()
    return run_distill_plan(run_dir, lm_distill_plan(config, profile, reporter), reporter)


def _distill(config: LMDistillConfig, profile: Profile, teacher_dir: Path, stage_dir: Path, reporter: Reporter,
             started: float) -> dict[str, Any]:
    from compress.lm.block_importance import IMPORTANCE_EXAMPLES, block_importance
    from compress.lm.data import encode_examples, load_lm_examples, split_lm_examples
    from compress.lm.quality import lm_quality, pad_id_of
    from compress.lm.student import build_lm_student, plan_lm_student, save_lm_student
    from compress.lm.teacher import load_causal_lm
    from compress.lm.trainer import LMLoopSettings, train_lm

    ranks = world()
    if ranks.is_main:
        make_folder(stage_dir)
    device = prepare_device(config, reporter)

    examples, description = load_lm_examples(config.data)
    train, held_out = split_lm_examples(examples, HELD_OUT_FRACTION, seed=config.seed, max_held_out=HELD_OUT_MAX)
    if not train or not held_out:
        raise CompressError(f"{description}: too little text to hold some out (need at least 20 examples, "
                            f"found {len(examples)})")
    reporter.message(f"data: {description}; {len(train)} for training, {len(held_out)} held out (never trained on)")
    if ranks.is_main:
        write_jsonl(stage_dir / HELD_OUT_FILE, [held_out_row(e) for e in held_out])

    teacher, tokenizer = load_causal_lm(teacher_dir, device=device)
    teacher_params = sum(p.numel() for p in teacher.parameters())
    teacher_layers = int(teacher.config.num_hidden_layers)
    spec = resolve_lm_student(config.student, teacher_layers)
    plan = plan_lm_student(teacher.config, spec, importance=lambda: block_importance(
        teacher, encode_examples(train[:IMPORTANCE_EXAMPLES], tokenizer, config.max_length),
        pad_id=pad_id_of(tokenizer), device=device))
    student = build_lm_student(teacher, plan).to(device)
    student_params = sum(p.numel() for p in student.parameters())
    reporter.message(f"teacher: {config.teacher} ({teacher_layers} layers, hidden {teacher.config.hidden_size}, "
                     f"{teacher_params / 1e6:.1f}M parameters)")
    reporter.message(f"student: {spec} -> {len(plan.layers)} layers (from teacher layers "
                     f"{','.join(map(str, plan.layers))}), {student_params / 1e6:.1f}M parameters")

    answers = 0
    if config.teacher_answers:
        train, answers = _with_teacher_answers(config, teacher, tokenizer, train, stage_dir, device, reporter)
    if config.teacher_quant:
        # The full-precision teacher has given the student its weights; train against the quantized one.
        del teacher
        gc.collect()
        teacher, _ = load_causal_lm(teacher_dir, device=device, quant=config.teacher_quant)

    encoded = encode_examples(train, tokenizer, config.max_length)
    batch_size = config.batch_size or DEFAULT_LM_BATCH_SIZE[device]
    budget = training_budget(config, profile, time.perf_counter() - started)
    settings = LMLoopSettings(
        max_steps=config.max_steps, epochs=config.epochs, time_budget_s=budget, batch_size=batch_size, lr=config.lr,
        loss_kind=config.loss, temperature=config.temperature, beta=config.beta, topk=config.topk,
        ce_weight=config.ce_weight if answers else 0.0, seed=config.seed, device=device,
        freeze_embeddings=config.embeddings_frozen(device),
    )
    floor = forecast_floor(config, profile)
    rule = None if floor is None or budget is None else ForecastRule(
        floor=floor, budget_s=budget, metric="next-token agreement", key="next_token_agreement",
        forced=config.train_anyway)
    report = train_lm(student, teacher, tokenizer, encoded, settings, stage_dir, reporter=reporter,
                      resume=config.resume, held_out=held_out, forecast=rule)
    if rule is not None and rule.decided is not None:
        reporter.message(rule.decided.line)
    ranks.barrier()
    if not ranks.is_main:
        return {}  # rank 0 scores, saves and reports
    atomic_write_json(stage_dir / HISTORY_FILE, {"history": report.loss_history})

    if config.teacher_quant:  # quality is always measured against the full-precision teacher
        del teacher
        gc.collect()
        teacher, _ = load_causal_lm(teacher_dir, device=device)
    reporter.message(f"quality: perplexity, next-token and greedy agreement on {len(held_out)} held-out texts")
    quality = lm_quality(teacher, student, tokenizer, held_out, device=device, max_length=config.max_length,
                         reporter=reporter)
    save_lm_student(student.to("cpu"), tokenizer, stage_dir / STUDENT_DIR)
    return {
        "teacher": config.teacher, "teacher_path": str(teacher_dir), "teacher_parameters": teacher_params,
        "teacher_layers": teacher_layers, "hidden": int(teacher.config.hidden_size),
        "student": spec, "student_layers": plan.layers, "student_parameters": student_params,
        "data": description, "train_examples": len(train), "held_out_examples": len(held_out),
        "teacher_answers": answers, "batch_size": batch_size, "device": device,
        "training": report.to_json(), "quality": quality.to_json(),
        **({"forecast": rule.decided.to_json()} if rule is not None and rule.decided is not None else {}),
    }


def forecast_floor(config: LMDistillConfig, profile: Profile | None) -> float | None:
    """The agreement floor the probe forecasts against: the profile's, for a run bounded by time (None:
    no floor, or a step count decides the run)."""
    if profile is None or config.step_determined or config.budget_s(profile) is None:
        return None
    return profile.budgets.quality.min_teacher_agreement


def check_student_spec(spec: str, model_dir: Path) -> None:
    """Refuse a student ``spec`` the model in ``model_dir`` cannot give (say, more layers than it has),
    from its config alone: before the data, the weights or the block importance are loaded."""
    from transformers import AutoConfig

    from compress.lm.student import plan_lm_student

    try:
        model_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CompressError(f"{model_dir}: cannot read its config.json ({exc})") from None
    layers = int(getattr(model_config, "num_hidden_layers", 0) or getattr(model_config, "n_layer", 0))
    # Importance only orders the blocks; any values check a keep=N count.
    plan_lm_student(model_config, resolve_lm_student(spec, layers), importance=lambda: [0.0] * layers)


def prepare_device(config: LMDistillConfig, reporter: Reporter) -> str:
    """The device to train on (a warning when it is the CPU by default); torch's threads and seed set."""
    import torch

    device, warning = resolve_device(config.device)
    if warning:
        reporter.warning(warning)
    if device == "cpu":
        torch.set_num_threads(config.threads or cpu_threads())
    torch.manual_seed(config.seed)
    return device


def _with_teacher_answers(config: LMDistillConfig, teacher: Any, tokenizer: Any, train: list[Any], stage_dir: Path,
                          device: str, reporter: Reporter) -> tuple[list[Any], int]:
    from compress.lm.data import default_prompts
    from compress.lm.sequence import GenerationSettings, teacher_answers

    prompts = default_prompts(config.teacher_answers, seed=config.seed)
    settings = GenerationSettings(max_new_tokens=config.answer_tokens, do_sample=config.sample,
                                  temperature=config.answer_temperature, top_p=config.top_p, seed=config.seed)
    reporter.message(f"teacher answers: {len(prompts)} prompts, up to {config.answer_tokens} tokens each "
                     f"({'sampled' if config.sample else 'greedy'}), cached in {stage_dir / ANSWERS_FILE}")
    # Rank 0 writes the answers; the others then read every one of them from its cache.
    ranks = world()
    if ranks.is_main:
        answered = teacher_answers(teacher, tokenizer, prompts, settings, stage_dir / ANSWERS_FILE, device=device)
    ranks.barrier()
    if not ranks.is_main:
        answered = teacher_answers(teacher, tokenizer, prompts, settings, stage_dir / ANSWERS_FILE, device=device)
    answered = [a for a in answered if a.completion.strip()]
    return train + answered, len(answered)


def training_budget(config: LMDistillConfig, profile: Profile, spent_s: float) -> float | None:
    """Seconds the training loop may take: the stage's budget less what setting up took and scoring needs."""
    total = config.budget_s(profile)
    if total is None:
        return None
    return max(total - spent_s - FINISH_RESERVE_S, 0.25 * total)


def held_out_row(example: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt": example.prompt, "completion": example.completion}
    if example.messages:
        row["messages"] = [{"role": role, "content": content} for role, content in example.messages]
    return row


def read_held_out_texts(path: Path) -> list[str]:
    """The texts of a held-out file this stage wrote (prompt and completion together), in order."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row.get("prompt", "") + row.get("completion", "")).strip() for row in rows]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
