"""``distill()``: from a config to a saved, scored student.

Order of work, chosen so that peak memory is one teacher plus the student:

1. resolve the device, the teacher, the task, the data, and the held-out split;
2. load the full-precision teacher: build (or load) the student from it and compute the
   reference outputs on the held-out split;
3. with ``teacher_quant``, swap in the bitsandbytes teacher and score it against the reference;
4. train (:class:`~compress.encoder.trainer.Trainer`), then score the student on the held-out split
   against the full-precision teacher and save the student, the loss history and the curve.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.encoder.batching import EncodedSet, encode, label_ids
from compress.encoder.config import DEFAULT_BATCH_SIZE, DEFAULT_TIME_BUDGET_S, DistillConfig
from compress.training.device import cpu_threads, precision_label, resolve_device, resolve_train_precision
from export.base.corpus import Corpus, Example, Split, load_corpus, split_corpus
from compress.encoder.curve import plot_loss_curve
from compress.encoder.losses import LossSettings
from compress.training.progress import Reporter
from compress.training.projection import Projection, project_to_floor
from compress.encoder.quality import HeldOutOutputs, QualityReport, compare, held_out_outputs
from compress.encoder.result import DistillResult, TeacherSummary
from compress.training.schedule import Schedule
from compress.encoder.student import (Student, StudentPlan, build_student, check_sentence_transformer_teacher,
                                      load_student, parse_student_spec, plan_student, save_student)
from compress.encoder.teacher import load_teacher, resolve_task, resolve_teacher
from export.torch_model import TEACHER_QUANTS, load_model
from compress.encoder.trainer import LoopSettings, Trainer, TrainingReport
from export.base.errors import CompressError
from compress.parallel import world
from export.base.files import atomic_write_json, atomic_write_text
from export.base.tasks import Task

if TYPE_CHECKING:
    from export.runtime.profiles import Profile

STUDENT_DIR = "student"
CHECKPOINT_DIR = "checkpoints/last"
# Training texts a narrower student's heads and FFN neurons are chosen on (compress.encoder.width).
CALIBRATION_TEXTS = 64
HISTORY_FILE = "loss_history.json"
CURVE_FILE = "loss_curve.png"
HELD_OUT_FILE = "held_out.jsonl"
# The training split, for candidates trained after distillation (the static-embedding student).
TRAIN_FILE = "train.jsonl"
CROSS_DOMAIN_FILE = "cross_domain.jsonl"
# Time kept back from the budget for the final evaluation and saving the student.
_FINISH_RESERVE_S = 30.0


def config_fingerprint(config: DistillConfig, teacher_dir: Path, corpus: Corpus, init_student: Path | None) -> str:
    """What a checkpoint must match to be resumed: the settings, the teacher folder, the data."""
    from export.base.files import sha256_tree

    key = {
        "params": config.params(),
        "teacher": str(teacher_dir),
        "teacher_config": (teacher_dir / "config.json").read_text() if (teacher_dir / "config.json").is_file() else "",
        "data": corpus.sha256,
        "init_student": sha256_tree(init_student) if init_student else None,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _examples_for_task(examples: list[Example], task: Task, reporter: Reporter, warnings: list[str]) -> list[Example]:
    """Sentence encoders embed each text of a pair on its own and take no labels."""
    if task != "feature-extraction":
        return examples
    if any(e.label is not None for e in examples):
        note = "labels are ignored for feature-extraction (embeddings are distilled from the teacher alone)"
        reporter.warning(note)
        warnings.append(note)
    out: list[Example] = []
    for example in examples:
        out.append(Example(example.text, genre=example.genre))
        if example.text_pair:
            out.append(Example(example.text_pair, genre=example.genre))
    return out


def resolve_student_text(config: DistillConfig, profile: Profile) -> tuple[str, str | None]:
    """(student spec, why) with ``auto`` replaced by the profile's choice."""
    if config.student != "auto":
        return config.student, None
    if profile is None:
        from export.runtime import DEFAULT_PROFILE
        from export.runtime.profiles import load_profile

        profile = load_profile(DEFAULT_PROFILE)
    return profile.distill.student, f"{profile.name}: {profile.distill.why}"


def searched_student(config: DistillConfig, profile: Profile | None, teacher: Any, work_dir: Path,
                     reporter: Reporter) -> tuple[str, str] | None:
    """(spec, why) from the latency search for ``profile``, or None when ``--student auto`` does not search.

    Rank 0 searches (the timings must not compete with other ranks) and keeps the search in
    ``work_dir``; ``--resume`` reuses it, so a resumed run trains the student it chose first.
    """
    from compress.encoder.student_search import (SEARCH_FILE, StudentSearch, search_student, searchable_teacher,
                                                 searches_student)

    if config.student != "auto" or not searches_student(profile) or not searchable_teacher(teacher.model.config):
        return None
    assert profile is not None
    path = Path(work_dir) / SEARCH_FILE
    ranks = world()
    search: StudentSearch | None = None
    if ranks.is_main:
        if config.resume and path.is_file():
            search = StudentSearch.from_json(path)
            if (search.profile, search.teacher) != (profile.name, teacher.name):
                search = None
        if search is None:
            path.unlink(missing_ok=True)  # never let another rank read an earlier run's choice
            reporter.message(f"student: searching shapes for {profile.name}'s p95 budget "
                             f"({profile.budgets.latency_ms.p95:g} ms): timing candidate graphs on this host")
            search = search_student(teacher.model.config, teacher.name, profile,
                                    log=lambda text: reporter.message(f"student search: {text}"))
            if search is not None:
                search.to_json(path)
    ranks.barrier()
    if not ranks.is_main and path.is_file():
        search = StudentSearch.from_json(path)
    if search is None:
        return None
    reporter.message(f"student search ({search.basis}; {search.seconds:.0f} s):")
    for line in search.table():
        reporter.message(line)
    return search.chosen, f"{profile.name}: {search.why}"


def distill(config: DistillConfig, work_dir: Path, profile: Profile | None = None, reporter: Reporter | None = None,
            on_step: Any = None) -> DistillResult | None:
    """Distil a teacher into a student under ``work_dir`` (student/, checkpoints/, history, curve).

    Under ``torchrun`` every rank trains its shard of each batch and rank 0 alone writes; the
    other ranks return None. ``profile`` (an ``export.runtime.profiles.Profile``) fills ``student="auto"`` and the default time
    budget; None means the ``host`` profile. ``on_step`` is called with a
    :class:`~compress.training.progress.StepReport` after every optimizer step.
    """
    started = time.perf_counter()
    reporter = reporter or Reporter()
    work_dir = Path(work_dir)
    warnings: list[str] = []
    config.validate()
    if config.teacher_quant is not None and config.teacher_quant not in TEACHER_QUANTS:
        raise CompressError(f"--teacher-quant must be one of {', '.join(TEACHER_QUANTS)}")
    device, threads = _device(config, reporter, warnings)
    teacher_name, teacher_dir = resolve_teacher(config.teacher)
    task = resolve_task(teacher_dir, config.task)
    if task == "feature-extraction":
        check_sentence_transformer_teacher(teacher_dir)
    config = resolved_config(config, task, profile)
    corpus, split = _read_data(config, task, reporter, warnings)

    # Full-precision teacher: the student's initial weights and the reference outputs.
    attention = "eager" if config.attention_weight > 0 else None
    teacher = load_teacher(teacher_dir, task, device=device, trust_remote_code=config.trust_remote_code,
                           attn_implementation=attention)
    teacher.name = teacher_name
    student, plan, student_text = _build_student(config, profile, teacher, task, split, device, work_dir, reporter)
    train_set, held_set = _encode_splits(config, split, task, teacher, reporter, warnings)
    reference = held_out_outputs(teacher.model, held_set, task, pooling=teacher.pooling, device=device,
                                 autocast_dtype=_autocast_dtype(device))
    summary = TeacherSummary(name=teacher_name, path=str(teacher_dir), task=task, parameters=teacher.parameters,
                             layers=teacher.num_layers, hidden=teacher.hidden_size,
                             memory_footprint_bytes=teacher.memory_footprint_bytes)
    training_teacher = _training_teacher(config, teacher, teacher_dir, task, summary, reference, held_set, device,
                                         reporter)

    batch_size = config.batch_size or DEFAULT_BATCH_SIZE[device]
    schedule, stop_label = _schedule(config, profile, len(train_set), batch_size, time.perf_counter() - started)
    checkpoint_dir = work_dir / CHECKPOINT_DIR
    if config.resume and not (checkpoint_dir / "state.json").is_file():
        raise CompressError(f"--resume: no checkpoint in {checkpoint_dir}")
    loop = _loop_settings(config, task, device, batch_size, schedule, stop_label,
                          config_fingerprint(config, teacher_dir, corpus, config.init_student), checkpoint_dir)
    trainer = Trainer(loop, teacher_model=training_teacher, pooling=teacher.pooling,
                      teacher_autocast=config.teacher_quant is None, student=student, train=train_set,
                      held_out=held_set, reference=reference, reporter=reporter)
    where = f"cuda, {precision_label(config.train_precision)}" if device == "cuda" else \
        f"cpu, {precision_label(config.train_precision)}, {threads} threads"
    reporter.message(f"training on {where}, batch {batch_size}, lr {config.lr:g}, {_plan_text(schedule)}")
    training = trainer.run(on_step=on_step)
    world().barrier()
    if not world().is_main:
        return None  # data parallel: rank 0 scores, saves and reports

    quality, initial = _final_quality(trainer, training, task, len(held_set))
    projection = _projection(training, quality, profile, reporter)
    for module in student.modules():
        module.eval()
    student_dir = save_student(student, teacher.tokenizer, work_dir / STUDENT_DIR, task=task,
                               teacher_dir=teacher_dir, pooling=teacher.pooling)
    history_path = atomic_write_json(work_dir / HISTORY_FILE, training.history)
    curve_path = plot_loss_curve(training.history, work_dir / CURVE_FILE, metric=quality.metric,
                                 title=f"{teacher_name} -> {student_text} ({task})")
    return DistillResult(
        student_dir=student_dir, task=task, student_spec=student_text, student_description=_describe(student, plan),
        student_parameters=student.parameters, student_layers=int(student.model.config.num_hidden_layers),
        student_hidden=int(student.model.config.hidden_size), teacher=summary, quality=quality,
        initial_quality=initial, training=training, device=device,
        precision=precision_label(config.train_precision), threads=threads, batch_size=batch_size,
        corpus=corpus.description, train_examples=len(train_set), held_out_examples=len(held_set),
        history_path=history_path, curve_path=curve_path,
        held_out_path=_write_examples(work_dir / HELD_OUT_FILE, split.held_out),
        train_path=_write_examples(work_dir / TRAIN_FILE, split.train),
        checkpoint_dir=checkpoint_dir, warnings=warnings,
        cross_domain_path=_write_examples(work_dir / CROSS_DOMAIN_FILE, split.cross_domain) if split.cross_domain
        else None,
        cross_domain_genre=split.cross_domain_genre, projection=projection,
    )


def _warn(reporter: Reporter, warnings: list[str], text: str) -> None:
    reporter.warning(text)
    warnings.append(text)


def _device(config: DistillConfig, reporter: Reporter, warnings: list[str]) -> tuple[str, int | None]:
    """The device to train on and, on the CPU, torch's threads (set here)."""
    import torch

    device, device_warning = resolve_device(config.device)
    if device_warning:
        _warn(reporter, warnings, device_warning)
    if device != "cpu":
        return device, None
    threads = config.threads or cpu_threads()
    torch.set_num_threads(threads)
    return device, threads


def _autocast_dtype(device: str) -> Any:
    import torch

    return torch.bfloat16 if device == "cuda" else None


def _read_data(config: DistillConfig, task: str, reporter: Reporter,
               warnings: list[str]) -> tuple[Corpus, Split]:
    """The corpus and its seeded split: training, held out, and a genre never trained on."""
    corpus = load_corpus(config.data)
    bad_rows = corpus.bad_rows_message()
    if bad_rows:
        _warn(reporter, warnings, bad_rows)
    split = split_corpus(_examples_for_task(corpus.examples, task, reporter, warnings), config.split_seed,
                         cross_domain=corpus.cross_domain)
    crossed = f", {len(split.cross_domain)} {split.cross_domain_genre} (cross-domain)" if split.cross_domain else ""
    reporter.message(f"data: {corpus.description}; {len(split.train)} for training, "
                     f"{len(split.held_out)} held out{crossed} (never trained on)")
    return corpus, split


def _build_student(config: DistillConfig, profile: Profile | None, teacher: Any, task: str, split: Split,
                   device: str, work_dir: Path, reporter: Reporter) -> tuple[Student, Any, str]:
    """The student cut from the teacher (its shape searched or the profile's), on ``device``."""
    import torch

    student_text, why = searched_student(config, profile, teacher, work_dir, reporter) or \
        resolve_student_text(config, profile)
    calibration = [example.text for example in split.train[:CALIBRATION_TEXTS]]
    student, plan = _make_student(config, student_text, teacher, task, calibration)
    if config.attention_weight > 0:
        student.model.set_attn_implementation("eager")
    if not config.dropout:
        for module in student.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "dropout_prob", None), float):
                # BERT's SDPA attention reads its dropout from this float, not from a Dropout module: left at
                # the config's 0.1 it kept dropping attention weights (and cost a random mask per layer a step).
                module.dropout_prob = 0.0
    if config.embeddings == "frozen":
        # The teacher's word embeddings as they are: two thirds of a small student's parameters, whose
        # dense gradient and AdamW update a step cost more than they buy in a short budget.
        student.model.get_input_embeddings().weight.requires_grad_(False)
    for module in student.modules():
        module.to(device)
    reporter.message(f"teacher: {teacher.name} ({teacher.num_layers} layers, hidden {teacher.hidden_size}, "
                     f"{teacher.parameters / 1e6:.1f}M parameters), task {task}")
    reporter.message(f"student: {student_text} -> {_describe(student, plan)}, "
                     f"{student.parameters / 1e6:.1f}M parameters" + (f"  [{why}]" if why else ""))
    return student, plan, student_text


def _encode_splits(config: DistillConfig, split: Split, task: str, teacher: Any, reporter: Reporter,
                   warnings: list[str]) -> tuple[EncodedSet, EncodedSet]:
    """Training and held-out examples tokenised once, with labels the teacher knows."""
    train_labels, problems = label_ids(split.train, task, teacher.model.config)
    held_labels, held_problems = label_ids(split.held_out, task, teacher.model.config)
    if problems or held_problems:
        everything = problems + held_problems
        _warn(reporter, warnings, f"{len(everything)} label(s) did not fit the teacher and were dropped (texts "
                                  "kept): " + "; ".join(everything[:5]) + ("; ..." if len(everything) > 5 else ""))
    return (encode(split.train, train_labels, teacher.tokenizer, task, config.max_length),
            encode(split.held_out, held_labels, teacher.tokenizer, task, config.max_length))


def _training_teacher(config: DistillConfig, teacher: Any, teacher_dir: Path, task: str, summary: TeacherSummary,
                      reference: HeldOutOutputs, held_set: EncodedSet, device: str, reporter: Reporter) -> Any:
    """The teacher the student learns from: the full-precision one, or it loaded again through bitsandbytes."""
    if not config.teacher_quant:
        return teacher.model
    summary.fp_memory_footprint_bytes = teacher.memory_footprint_bytes
    teacher.model = None  # free the full-precision weights before loading the quantized ones
    gc.collect()
    quantized = load_model(teacher_dir, task, device=device, quant=config.teacher_quant,  # type: ignore[arg-type]
                           trust_remote_code=config.trust_remote_code,
                           attn_implementation="eager" if config.attention_weight > 0 else None)
    for parameter in quantized.parameters():
        parameter.requires_grad_(False)
    summary.quant = config.teacher_quant
    summary.memory_footprint_bytes = int(quantized.get_memory_footprint())
    summary.quant_quality = compare(task, reference, held_out_outputs(
        quantized, held_set, task, pooling=teacher.pooling, device=device), len(held_set))
    reporter.message(f"teacher {config.teacher_quant}: {summary.memory_footprint_bytes / 2**20:.1f} MiB "
                     f"(full precision {summary.fp_memory_footprint_bytes / 2**20:.1f} MiB); "
                     f"{summary.quant_quality.metric} to the full-precision teacher "
                     f"{summary.quant_quality.teacher_agreement:.4f} on held-out")
    return quantized


def hidden_weight(config: DistillConfig, task: str, profile: Profile | None) -> float:
    """The layer-transfer weight: as given, else the profile's for sentence embeddings, else 0."""
    if config.hidden_weight is not None:
        return config.hidden_weight
    return profile.distill.hidden_weight if profile is not None and task == "feature-extraction" else 0.0


def resolved_config(config: DistillConfig, task: str, profile: Profile | None) -> DistillConfig:
    """``config`` as it will train, for its fingerprint: the layer-transfer weight (the profile's when unset),
    the batch size and training precision on this machine, and the state cache only where a loss reads hidden
    states.

    A run at the defaults of before these settings existed (weight 0, fp32, nothing cached) keeps its fingerprint.
    """
    weight = hidden_weight(config, task, profile)
    device, _ = resolve_device(config.device)
    caches_states = config.teacher_state_cache and weight > 0 and config.attention_weight == 0
    return dataclasses.replace(config, hidden_weight=weight, batch_size=config.batch_size or DEFAULT_BATCH_SIZE[device],
                               train_precision=resolve_train_precision(config.train_precision, device),
                               teacher_state_cache=caches_states,
                               embeddings="frozen" if config.embeddings_frozen(device) else "trained")


def _loop_settings(config: DistillConfig, task: str, device: str, batch_size: int, schedule: Schedule,
                   stop_label: str, fingerprint: str, checkpoint_dir: Path) -> LoopSettings:
    return LoopSettings(
        task=task,
        losses=LossSettings(task=task, embedding_loss=config.embedding_loss,  # type: ignore[arg-type]
                            alpha=config.alpha, temperature=config.temperature,
                            hidden_weight=config.hidden_weight or 0.0, attention_weight=config.attention_weight,
                            relation_weight=config.relation_weight,
                            relation_loss=config.relation_loss),  # type: ignore[arg-type]
        batch_size=batch_size, seed=config.seed, device=device, schedule=schedule,
        weight_decay=config.weight_decay, fingerprint=fingerprint, checkpoint_dir=checkpoint_dir,
        resume=config.resume, eval_points=config.eval_points, checkpoint_every_s=config.checkpoint_every_s,
        checkpoint_every_steps=config.checkpoint_every_steps, log_every=config.log_every,
        teacher_cache_bytes=config.teacher_cache_bytes, max_length=config.max_length, stop_label=stop_label,
        neighbour_batches=config.neighbour_batches, precision=config.train_precision,
        teacher_state_cache=config.teacher_state_cache,
    )


def _plan_text(schedule: Schedule) -> str:
    steps = f"{schedule.total_steps} steps" if schedule.total_steps else ""
    budget = f"{schedule.budget_s:.0f} s of training" if schedule.budget_s else ""
    return " or ".join(part for part in (steps, budget) if part)


def _projection(training: TrainingReport, quality: QualityReport, profile: Profile | None,
                reporter: Reporter) -> Projection | None:
    """What more minutes would buy against the profile's floor, said in one line."""
    floor = profile.budgets.quality.min_teacher_agreement if profile is not None else None
    projection = project_to_floor(training.history, floor, quality.metric)
    if projection is not None:
        reporter.message(projection.line)
    return projection


def _final_quality(trainer: Trainer, training: TrainingReport, task: str,
                   examples: int) -> tuple[QualityReport, QualityReport | None]:
    """The student's quality now and at step 0 (None when resumed); the history's last entry gets it too."""
    quality = trainer.evaluate()
    initial = None
    if training.resumed_from_step is None and training.history and training.history[0].get("step") == 0:
        first = training.history[0]
        initial = QualityReport(task=task, metric=quality.metric, teacher_agreement=first["teacher_agreement"],
                                neighbour_agreement=first.get("neighbour_agreement"), accuracy=first.get("accuracy"),
                                teacher_accuracy=None, examples=examples)
    if training.history and training.history[-1]["step"] == training.steps:
        training.history[-1].update({"teacher_agreement": quality.teacher_agreement,
                                     **({"neighbour_agreement": quality.neighbour_agreement}
                                        if quality.neighbour_agreement is not None else {})})
    return quality, initial


def _write_examples(path: Path, examples: list[Example]) -> Path:
    return atomic_write_text(path, "".join(
        json.dumps({k: v for k, v in asdict(e).items() if v is not None}) + "\n" for e in examples))


def _make_student(config: DistillConfig, student_text: str, teacher: Any, task: Task,
                  calibration: list[str]) -> tuple[Student, StudentPlan | None]:
    """The student: an existing folder, or one built from the teacher (a narrower one choosing its heads
    and FFN neurons by their activations on ``calibration``, texts of the training split)."""
    teacher_model = teacher.model
    if config.init_student is not None:
        student = load_student(Path(config.init_student), task, int(teacher_model.config.hidden_size),
                               int(teacher_model.config.num_hidden_layers))
        vocab = int(student.model.config.vocab_size)
        if vocab != int(teacher_model.config.vocab_size):
            raise CompressError(f"{config.init_student}: vocabulary size {vocab} differs from the teacher's "
                                f"{teacher_model.config.vocab_size}; the student must keep the teacher's tokenizer")
        return student, None
    plan = plan_student(parse_student_spec(student_text), teacher_model.config)
    batch = None
    if plan.slimmer and calibration:
        device = next(teacher_model.parameters()).device
        encoded = teacher.tokenizer(calibration, padding=True, truncation=True, max_length=config.max_length,
                                    return_tensors="pt")
        batch = {name: tensor.to(device) for name, tensor in encoded.items()}
    return build_student(teacher_model, plan, batch), plan


def _describe(student: Student, plan: StudentPlan | None) -> str:
    if plan is not None:
        return plan.describe()
    config = student.model.config
    return f"{config.num_hidden_layers} layers, hidden {config.hidden_size} (from an existing student)"


def _schedule(config: DistillConfig, profile: Profile, train_size: int, batch_size: int,
              setup_s: float) -> tuple[Schedule, str]:
    """The step plan and time budget (see DistillConfig), and what hitting the step plan is called."""
    from compress.training.batching import batches_per_epoch

    total: int | None = None
    label = "max_steps"
    if config.epochs is not None:
        total = max(1, round(config.epochs * batches_per_epoch(train_size, batch_size)))
        label = "epochs"
    if config.max_steps is not None and (total is None or config.max_steps < total):
        total, label = config.max_steps, "max_steps"
    budget = config.budget_s(profile)
    if budget is None and total is None:  # no step count and no profile: the library's own default
        budget = DEFAULT_TIME_BUDGET_S
    if budget is not None:
        # The budget covers the whole stage: what setup used and what finishing needs come off it.
        budget = max(budget - setup_s - min(_FINISH_RESERVE_S, 0.05 * budget), 0.1 * budget)
    return Schedule(config.lr, config.warmup_fraction, total, budget), label
