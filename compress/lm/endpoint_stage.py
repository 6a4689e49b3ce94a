"""The ``distill`` stage for a teacher you can only query: ``RUN_DIR/distill/`` and its ``stage.json``.

1. the prompts (``--data`` or built-in ones) get a seeded held-out split;
2. the endpoint answers all of them (cached in ``teacher_answers.jsonl``, resumable; see
   :mod:`compress.lm.endpoint_answers`), with its tokens' top alternatives when it gives them;
3. the student is cut from the local ``--student-from`` model; when the endpoint's tokens are the
   student's (:mod:`compress.lm.endpoint_tokens`) it learns the teacher's top-k as well as the
   answers, else the answers alone (sequence-level, cross-entropy);
4. before and after training, the student is scored against the teacher's held-out answers
   (token agreement, exact match, perplexity; :mod:`compress.lm.answer_quality`).

The API key is only ever read from the environment; the record holds the endpoint's URL, the
model name and the answers' sha256.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.training.progress import Reporter
from compress.lm.config import DEFAULT_LM_BATCH_SIZE, EndpointDistillConfig
from compress.lm.stage import (ANSWERS_FILE, HELD_OUT_FILE, HELD_OUT_MAX, HISTORY_FILE, STAGE, STUDENT_DIR,
                               check_student_spec, held_out_row, planned_record, prepare_device, training_budget,
                               write_jsonl)
from export.base.errors import CompressError
from export.base.files import atomic_write_json, make_folder
from compress.stages.distill import run_distill_plan
from export.base.stages import StageOutput, StagePlan, StageRun

# Prompts are fewer than training texts usually are: a tenth is held out, for a quality number worth reading.
HELD_OUT_SHARE = 0.1

if TYPE_CHECKING:
    from compress.lm.endpoint import ChatEndpoint
    from compress.lm.data import LMExample
    from compress.lm.student import LMStudentPlan
    from export.runtime.profiles import Profile


def endpoint_of(config: EndpointDistillConfig) -> ChatEndpoint:
    """The endpoint client for ``config`` (checks the URL; makes no request)."""
    from compress.lm.endpoint import ChatEndpoint

    return ChatEndpoint(config.teacher_url, config.teacher_model, api_key_env=config.api_key_env,
                        rate_limit=config.rate_limit)


def endpoint_distill_plan(config: EndpointDistillConfig, profile: Profile | None = None,
                          reporter: Reporter | None = None) -> StagePlan:
    """The distill stage against ``config.teacher_url``: its fingerprint and its work, in one process."""
    from compress.lm.teacher import resolve_lm_teacher

    from compress.parallel import world

    started = time.perf_counter()
    reporter = reporter or Reporter()
    config.validate()
    if world().distributed:
        raise CompressError("--teacher-url: distillation from an endpoint runs in one process (the endpoint is "
                            "the slow part); drop torchrun / --nproc")
    endpoint = endpoint_of(config)
    student_from = resolve_lm_teacher(config.student_from)
    if config.student != "auto":
        check_student_spec(config.student, student_from)

    def work(folder: Path) -> StageOutput:
        metrics = _distill(config, profile, endpoint, student_from, folder, reporter, started)
        return StageOutput({"student": STUDENT_DIR, "held_out": HELD_OUT_FILE, "loss_history": HISTORY_FILE,
                            "answers": ANSWERS_FILE}, metrics)

    return StagePlan(planned_record(config, profile, student_from, model_input="student_from"), work)


def run_endpoint_distill_stage(run_dir: Path, config: EndpointDistillConfig, profile: Profile | None = None,
                               reporter: Reporter | None = None) -> StageRun:
    """Run (or skip) the distill stage against ``config.teacher_url`` into ``run_dir/distill``."""
    reporter = reporter or Reporter()
    run = run_distill_plan(run_dir, endpoint_distill_plan(config, profile, reporter), reporter)
    assert run is not None  # one process: it is rank 0
    return run


def prompts_of(config: EndpointDistillConfig) -> tuple[list[LMExample], str]:
    """The prompts the endpoint answers, and where they came from."""
    from compress.lm.data import default_prompts, load_prompts

    count = config.prompt_count
    if config.data is None:
        return default_prompts(count or 0, seed=config.seed), f"{count} built-in prompts (default corpus)"
    prompts, description = load_prompts(config.data)
    return (prompts[:count] if count else prompts), description


@contextmanager
def _progress(reporter: Reporter, label: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """``progress(done, total)`` for a counting bar."""
    shown = [0]
    with reporter.counting(label, total) as advance:
        def progress(done: int, _total: int) -> None:
            advance(done - shown[0])
            shown[0] = done

        yield progress


def _distill(config: EndpointDistillConfig, profile: Profile | None, endpoint: ChatEndpoint, student_from: Path,
             stage_dir: Path, reporter: Reporter, started: float) -> dict[str, Any]:
    from compress.lm.answer_quality import answer_quality
    from compress.lm.data import EncodedLM, encode_examples, split_lm_examples
    from compress.lm.endpoint import AnswerSettings
    from compress.lm.endpoint_answers import AnsweredPrompt, ask_endpoint
    from compress.lm.endpoint_tokens import match_tokens
    from compress.lm.student import build_lm_student, save_lm_student
    from compress.lm.targets import AnswerTopKTargets
    from compress.lm.teacher import load_causal_lm
    from compress.lm.trainer import LMLoopSettings, train_lm

    make_folder(stage_dir)
    device = prepare_device(config, reporter)

    prompts, description = prompts_of(config)
    train_prompts, held_prompts = split_lm_examples(prompts, HELD_OUT_SHARE, seed=config.seed,
                                                    max_held_out=HELD_OUT_MAX)
    reporter.message(f"teacher: {config.teacher_model} at {endpoint.base_url} (answers only: no weights here)")
    reporter.message(f"prompts: {description}; {len(train_prompts)} to learn from, {len(held_prompts)} held out")
    endpoint.check()
    settings = AnswerSettings(max_tokens=config.answer_tokens, temperature=config.answer_temperature if config.sample
                              else 0.0, top_p=config.top_p, top_logprobs=config.endpoint_topk, seed=config.seed)
    asked = train_prompts + held_prompts
    with _progress(reporter, f"teacher answers: {config.teacher_model}", len(asked)) as progress:
        answers = ask_endpoint(endpoint, asked, settings, stage_dir / ANSWERS_FILE, concurrency=config.concurrency,
                               progress=progress)
    reporter.message(f"teacher answers: {answers.summary()}; cached in {stage_dir / ANSWERS_FILE}")
    held_set = set(held_prompts)
    held = [a for a in answers.answered if _prompt_of(a.example) in held_set]
    train = [a for a in answers.answered if _prompt_of(a.example) not in held_set]
    if not train or not held:
        raise CompressError(f"the endpoint answered {len(train)} training and {len(held)} held-out prompts; "
                            "need at least one of each")
    write_jsonl(stage_dir / HELD_OUT_FILE, [held_out_row(a.example) for a in held])

    base, tokenizer = load_causal_lm(student_from, device=device)
    base_params = sum(p.numel() for p in base.parameters())
    layers = int(base.config.num_hidden_layers)
    spec = f"layers={layers}" if config.student == "auto" else config.student
    plan = _student_plan(base, tokenizer, spec, [a.example for a in train], config.max_length, device)
    student = build_lm_student(base, plan).to(device)
    student_params = sum(p.numel() for p in student.parameters())
    reporter.message(f"student: {config.student_from} ({layers} layers, {base_params / 1e6:.1f}M parameters) -> "
                     f"{len(plan.layers)} layers, {student_params / 1e6:.1f}M parameters")

    match = match_tokens([(a.example, a.row) for a in train + held], tokenizer, config.endpoint_topk,
                         config.max_length)
    reporter.message(f"token level: {match.reason}")
    # Aligned answers are the teacher's own tokens; the others the student's reading of the text.
    own = match.examples if match.used else {}

    def encode(answers: list[AnsweredPrompt]) -> list[EncodedLM]:
        encoded: list[EncodedLM] = []
        for answer in answers:
            key = answer.row["key"]
            encoded += [own[key]] if key in own else encode_examples([answer.example], tokenizer, config.max_length)
        return encoded

    encoded, held_encoded = encode(train), encode(held)
    reporter.message(f"quality before: the starting model and the student against {len(held_encoded)} held-out "
                     "teacher answers")
    before = answer_quality(student, tokenizer, held_encoded, device=device)
    # The model the student was cut from is the baseline of the final table; scored once if it differs.
    base_quality = before if len(plan.layers) == layers else answer_quality(base, tokenizer, held_encoded,
                                                                             device=device)
    del base
    targets = AnswerTopKTargets(match.targets, config.endpoint_topk, answers.sha256) if match.used else None

    batch_size = config.batch_size or DEFAULT_LM_BATCH_SIZE[device]
    loop = LMLoopSettings(
        max_steps=config.max_steps, epochs=config.epochs,
        time_budget_s=training_budget(config, profile, time.perf_counter() - started), batch_size=batch_size,
        lr=config.lr, loss_kind=config.loss, temperature=config.temperature, beta=config.beta,
        topk=config.endpoint_topk if match.used else 0, ce_weight=config.ce_weight if match.used else 1.0,
        seed=config.seed, device=device, freeze_embeddings=config.embeddings_frozen(device))
    report = train_lm(student, None, tokenizer, encoded, loop, stage_dir, reporter=reporter, resume=config.resume,
                      targets=targets)
    atomic_write_json(stage_dir / HISTORY_FILE, {"history": report.loss_history})
    after = answer_quality(student, tokenizer, held_encoded, device=device)
    reporter.message(f"quality: token agreement with the teacher's answers {before.token_agreement:.4f} -> "
                     f"{after.token_agreement:.4f}; exact match {before.exact_match:.3f} -> {after.exact_match:.3f}")
    save_lm_student(student.to("cpu"), tokenizer, stage_dir / STUDENT_DIR)
    return {
        "teacher": config.teacher_model, "teacher_url": endpoint.base_url, "teacher_kind": "endpoint",
        "teacher_path": str(student_from), "student_from": config.student_from, "base_parameters": base_params,
        "base_layers": layers, "hidden": int(student.config.hidden_size),
        "student": spec, "student_layers": plan.layers, "student_parameters": student_params,
        "data": description, "train_examples": len(encoded), "held_out_examples": len(held_encoded),
        "teacher_answers": len(answers.answered), "answers": {
            "sha256": answers.sha256, "asked": answers.asked, "reused": answers.reused,
            "skipped": answers.skipped, "retried": answers.retried, "settings": dataclasses.asdict(settings)},
        "token_match": match.to_json(), "batch_size": batch_size, "device": device,
        "training": report.to_json(),
        "quality": {"base": base_quality.to_json(), "before": before.to_json(), "after": after.to_json(),
                    "next_token_agreement": after.token_agreement},
    }


def _student_plan(base: Any, tokenizer: Any, spec: str, train: list[LMExample], max_length: int,
                  device: str) -> LMStudentPlan:
    """The student's layers; for keep=N, the blocks that change their input most on the teacher's answers."""
    from compress.lm.block_importance import IMPORTANCE_EXAMPLES, block_importance
    from compress.lm.data import encode_examples
    from compress.lm.quality import pad_id_of
    from compress.lm.student import plan_lm_student

    return plan_lm_student(base.config, spec, importance=lambda: block_importance(
        base, encode_examples(train[:IMPORTANCE_EXAMPLES], tokenizer, max_length), pad_id=pad_id_of(tokenizer),
        device=device))


def _prompt_of(example: LMExample) -> LMExample:
    from compress.lm.data import LMExample

    return LMExample(example.prompt, "", example.messages)
