"""The causal-LM distillation loop: token-level KL / JSD against the teacher's (cached) top-k log-probabilities.

Each step takes a batch of similar-length examples (the encoder path's length buckets, rebuilt
from ``(seed, epoch)``), gets the teacher's targets, and trains the student on the completion
tokens only. Teacher targets are the teacher's top-k log-probabilities per position, kept on disk by
:class:`compress.lm.topk_cache.TopKCache` under ``out_dir`` and always read back through fp16: the
first epoch runs the teacher, later epochs (and a restarted run) read the cache and pay for the
student only. ``topk=0`` uses the full vocabulary instead, recomputed every step (too big to keep).

AdamW (fused on CUDA), gradient clipping, bf16 autocast on CUDA and fp32 on the CPU. The learning
rate warms up linearly over ``warmup_steps`` steps and follows a cosine to zero over the run's
progress (steps done / planned steps, or time spent / time budget;
:class:`compress.training.schedule.Schedule`). The loop around the step (checkpoints, resume,
Ctrl-C, ranks, progress) is :func:`compress.training.loop.run_loop`'s: a resumed step-determined
run ends with the same weights as an unbroken one.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from compress.lm.data import EncodedLM, LMExample, collate_lm, encode_examples
from compress.lm.losses import LOSS_KINDS, LossKind, TopK, lm_distillation_loss, next_token_loss
from compress.lm.quality import Predictions, agreement, pad_id_of, predictions
from compress.lm.targets import LocalTeacherTargets, TeacherTargets
from compress.parallel import allreduce_share, data_parallel, world
from compress.training.batching import batches_per_epoch
from compress.training.device import autocast_context
from compress.training.interrupt import DistillInterrupted
from compress.training.loop import LoopOutcome, LoopPlan, Saved, clipped_step, run_loop
from compress.training.projection import ForecastRule
from compress.training.progress import QuietReporter, Reporter
from compress.training.schedule import Schedule
from compress.training.step_clock import StepClock
from compress.training.teacher_cache import TeacherCache
from export.base.errors import CompressError, require
from export.base.report_json import JsonRecord

__all__ = ["DistillInterrupted", "LMLoopSettings", "LMTrainingReport", "train_lm", "teacher_fingerprint"]

CHECKPOINT_DIR = "checkpoint"
TOPK_CACHE_DIR = "teacher_topk"
LOG_EVERY = 10  # steps between loss-history entries (evaluations add their own)
EVAL_EXAMPLES = 256  # held-out examples scored during training (the final quality uses all of them)
WEIGHT_DECAY = 0.01
# Settings that change how a run is carried out, not what it computes: a checkpoint stays valid.
_RUN_ONLY = {"device", "checkpoint_every_s"}


@dataclass
class LMLoopSettings:
    """How the distillation loop runs. With no limit at all it trains for one epoch."""

    max_steps: int | None = None
    epochs: float | None = None
    time_budget_s: float | None = None
    batch_size: int = 8
    lr: float = 5e-4
    warmup_steps: int = 20
    loss_kind: LossKind = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    topk: int = 64  # teacher logits kept per position; 0 = the full vocabulary (no cache)
    ce_weight: float = 0.0  # weight of plain next-token CE on the completion (sequence-level data)
    checkpoint_every_s: float = 120.0
    eval_every: int = 50  # steps between held-out agreement measurements (0: only at the start and end)
    seed: int = 0
    device: str = "cpu"
    # Keep the token embedding and LM head as the teacher left them: the largest matrix (28M of
    # SmolLM2-135M's parameters) gets no gradient and no optimizer step, so a short budget buys
    # more steps for the blocks a pruned student has to heal.
    freeze_embeddings: bool = False

    def validate(self) -> None:
        """Reject settings that cannot work, naming the setting."""
        checks = [
            (self.max_steps is None or self.max_steps > 0, "max_steps must be positive"),
            (self.epochs is None or self.epochs > 0, "epochs must be positive"),
            (self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s must be positive"),
            (self.batch_size > 0, "batch_size must be positive"),
            (self.lr > 0, "lr must be positive"),
            (self.warmup_steps >= 0, "warmup_steps must not be negative"),
            (self.loss_kind in LOSS_KINDS, f"loss_kind must be one of {', '.join(LOSS_KINDS)}"),
            (self.temperature > 0, "temperature must be positive"),
            (0.0 <= self.beta <= 1.0, "beta must be between 0 and 1"),
            (self.topk >= 0, "topk must not be negative"),
            (self.ce_weight >= 0, "ce_weight must not be negative"),
            (self.eval_every >= 0, "eval_every must not be negative"),
        ]
        require([(ok, f"LM distillation: {message}") for ok, message in checks])


@dataclass
class LMTrainingReport(JsonRecord):
    """What the loop did."""

    steps: int
    epochs: float
    train_time_s: float  # over all sessions of the run
    samples_per_s: float  # this session
    tokens_per_s: float  # this session, non-padding tokens through the student
    device: str
    precision: str  # "bf16 autocast" on CUDA, "fp32" on the CPU
    stopped_by: str  # max_steps | epochs | time_budget | forecast
    loss_history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int | None = None
    teacher_batches: int = 0  # batches (this session) that needed a teacher forward pass
    cached_batches: int = 0  # batches whose teacher targets all came from the top-k cache
    world_size: int = 1  # processes training data-parallel
    backend: str | None = None  # gloo | nccl
    rank_samples_per_s: list[float] = field(default_factory=list)  # each rank's own rows, this session
    allreduce_share: float | None = None  # of forward + backward time, by DDP's timers (None: one process)
    embeddings_frozen: bool = False  # token embedding and LM head kept as the teacher left them
    phase_seconds: dict[str, float] = field(default_factory=dict)  # this session's time by phase (StepClock)


# -- fingerprints -----------------------------------------------------------------------------

def teacher_fingerprint(teacher: Any) -> str:
    """A sha256 that changes when the teacher's config or weights do.

    It hashes the config (without paths and versions) and, per parameter, its name, shape, dtype and
    up to 4096 evenly strided values: cheap on a 135M-parameter model, and any training or
    quantization changes the sampled values.
    """
    import torch

    digest = hashlib.sha256()
    config = dict(teacher.config.to_dict())
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        config.pop(key, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, parameter in teacher.named_parameters():
            flat = parameter.detach().reshape(-1)
            stride = max(1, flat.numel() // 4096)
            sample = flat[::stride][:4096].to("cpu", torch.float64).numpy()
            digest.update(f"{name}\0{tuple(parameter.shape)}\0{parameter.dtype}\0".encode())
            digest.update(sample.tobytes())
    return digest.hexdigest()


def _run_fingerprint(settings: LMLoopSettings, teacher_fp: str, student: Any, train: list[EncodedLM]) -> str:
    digest = hashlib.sha256()
    params = {k: v for k, v in asdict(settings).items() if k not in _RUN_ONLY}
    digest.update(json.dumps({"settings": params, "teacher": teacher_fp,
                              "student": student.config.to_json_string(use_diff=False)}, sort_keys=True,
                             default=str).encode())
    for example in train:
        digest.update(np.asarray(example.input_ids, dtype=np.int64).tobytes())
        digest.update(np.asarray(example.completion_mask, dtype=np.int8).tobytes())
        digest.update(b"\n")
    return digest.hexdigest()


# -- pieces of the loop -----------------------------------------------------------------------

def freeze_embeddings(student: Any) -> list[Any]:
    """Stop the token embedding and the LM head (often one tied matrix) from training; returns them."""
    frozen = []
    for module in (student.get_input_embeddings(), student.get_output_embeddings()):
        if module is not None and module.weight.requires_grad:
            module.weight.requires_grad_(False)
            frozen.append(module.weight)
    return frozen


def make_lm_optimizer(student: Any, lr: float, device: str) -> Any:
    """AdamW (fused on CUDA); no weight decay on biases and normalisation weights."""
    import torch

    decay, no_decay = [], []
    for parameter in student.parameters():  # tied embeddings appear once
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    if device.startswith("cuda"):
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, TypeError):  # a torch without fused AdamW here
            return torch.optim.AdamW(groups, lr=lr, foreach=True)
    return torch.optim.AdamW(groups, lr=lr)


def _plan_steps(settings: LMLoopSettings, per_epoch: int) -> tuple[int | None, str]:
    """Planned steps (None: time budget only) and what reaching them is called."""
    limits: list[tuple[int, str]] = []
    if settings.max_steps is not None:
        limits.append((settings.max_steps, "max_steps"))
    if settings.epochs is not None:
        limits.append((max(1, math.ceil(settings.epochs * per_epoch)), "epochs"))
    if not limits and settings.time_budget_s is None:
        limits.append((per_epoch, "epochs"))  # no limit given: one epoch
    if not limits:
        return None, "max_steps"
    return min(limits)


def _learning_rate(settings: LMLoopSettings, schedule: Schedule, step: int, elapsed_s: float) -> float:
    """Linear warm-up over the first steps, times a cosine over the progress at the step's start."""
    warmup = settings.warmup_steps
    if schedule.total_steps is not None:
        warmup = min(warmup, schedule.total_steps // 4)  # a short run is not mostly warm-up
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    progress = schedule.progress(step - 1, elapsed_s) if step > 0 else 0.0
    return settings.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _LMLoop:
    """State shared by the steps of one ``train_lm`` call."""

    def __init__(self, student: Any, targets: TeacherTargets | None, train: list[EncodedLM],
                 settings: LMLoopSettings, pad_id: int, schedule: Schedule, forecast: ForecastRule | None) -> None:
        self.student = student
        self.schedule = schedule
        self.world = world()
        self.model = data_parallel(student)  # the student itself in a world of one
        self.targets = targets
        self.train = train
        self.s = settings
        self.pad_id = pad_id
        self.device = settings.device
        self.clock = StepClock(settings.device)
        self.optimizer = make_lm_optimizer(student, settings.lr, settings.device)
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.reference: Predictions | None = None  # the teacher's, on the held-out examples (rank 0)
        self.held_out: list[EncodedLM] = []
        self.forecast = forecast

    def reference_on(self, held_out: list[LMExample], teacher: Any, tokenizer: Any) -> None:
        """Score the student against ``teacher`` on up to 256 of ``held_out`` while it trains."""
        longest = max(2, max(len(e.input_ids) for e in self.train))
        self.held_out = encode_examples(held_out[:EVAL_EXAMPLES], tokenizer, longest)
        if self.held_out:
            self.reference = predictions(teacher, self.held_out, pad_id=self.pad_id, device=self.device,
                                         batch_size=self.s.batch_size)

    def history_quality(self) -> dict[str, Any]:
        if self.reference is None:
            return {}
        now = predictions(self.student, self.held_out, pad_id=self.pad_id, device=self.device,
                          batch_size=self.s.batch_size)
        return {"next_token_agreement": round(agreement(now, self.reference), 6),
                "held_out_perplexity": round(now.perplexity, 4)}

    def eval_due(self, step: int, progress: float, evals_done: int, finishing: bool) -> bool:
        every = self.s.eval_every
        probe = self.forecast is not None and self.forecast.eval_due(progress)
        return self.reference is not None and (finishing or probe or (every > 0 and step % every == 0))

    def learning_rate(self, step: int, elapsed_s: float) -> float:
        return _learning_rate(self.s, self.schedule, step, elapsed_s)

    def step(self, rows: list[int], lr: float) -> tuple[Any, int]:
        """One optimizer step on the global batch ``rows`` (this rank trains its shard of it).

        Returns the global batch's loss (detached; the same on every rank) and this rank's
        non-padding tokens. Each term is a mean over this shard's positions weighted by the shard's
        share of the batch's positions, so DDP's averaged gradient is that of the whole batch.
        """
        import torch

        clock = self.clock
        with clock.phase("data"):
            examples = [self.train[int(i)] for i in self.world.shard(rows)]
            batch = collate_lm(examples, self.pad_id)
            batch = {name: tensor.to(self.device) for name, tensor in batch.items()}
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Aligned: logits at t predict token t + 1, scored when t + 1 is a completion token.
        mask = batch["completion_mask"][:, 1:]
        kd_mask = mask
        target = None
        if self.targets is not None:
            with clock.phase("teacher"):
                target = self.targets.for_batch(examples, batch["input_ids"].shape[1], self.device)
            kd_mask = mask if target.mask is None else mask * target.mask[:, :-1]
        with clock.phase("forward"):
            with autocast_context(self.device):
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            student_logits = logits[:, :-1]
            counts = torch.tensor([float(kd_mask.sum()), float(mask.sum())])
            totals = self.world.sum(counts)
            loss = student_logits.sum() * 0.0
            if target is not None:
                teacher = target.teacher
                aligned = (TopK(teacher.values[:, :-1], teacher.indices[:, :-1]) if isinstance(teacher, TopK)
                           else teacher[:, :-1])
                loss = lm_distillation_loss(student_logits, aligned, kd_mask, kind=self.s.loss_kind,
                                            temperature=self.s.temperature, beta=self.s.beta) * \
                    self.world.share(float(counts[0]), float(totals[0]))
            if self.s.ce_weight > 0:
                loss = loss + self.s.ce_weight * next_token_loss(student_logits, batch["input_ids"][:, 1:], mask) * \
                    self.world.share(float(counts[1]), float(totals[1]))
        with clock.phase("backward"):
            loss.backward()
        with clock.phase("optimizer"):
            clipped_step(self.optimizer, self.params)
        return self.world.sum(loss.detach()) / self.world.size, int(batch["attention_mask"].sum())


# -- the loop ---------------------------------------------------------------------------------

def train_lm(student: Any, teacher: Any | None, tokenizer: Any, train: list[EncodedLM], settings: LMLoopSettings,
             out_dir: Path, *, reporter: Reporter | None = None, resume: bool = False,
             held_out: list[LMExample] | None = None, targets: TeacherTargets | None = None,
             forecast: ForecastRule | None = None) -> LMTrainingReport:
    """Distil ``teacher`` into ``student`` (both causal LMs with the same tokenizer) on ``train``.

    Checkpoints go to ``out_dir/checkpoint``, the teacher's top-k cache to ``out_dir/teacher_topk``.
    With ``held_out`` the loss history records the student's next-token agreement with the teacher
    (and its perplexity) on up to 256 held-out examples at the start, every ``eval_every`` steps and
    at the end. ``resume`` continues from the checkpoint (made with the same settings and data).

    Without a local ``teacher``, the student learns from ``targets`` (an endpoint's top-k, say) and
    the cross-entropy term, or from the cross-entropy term alone when ``targets`` is None too.
    With ``forecast`` (and ``held_out``) the first part of the budget is a probe: agreement is measured
    at the rule's points and training stops when the rule says the floor is out of reach.
    """
    import torch

    settings.validate()
    usable = _usable(train)
    pad_id = pad_id_of(tokenizer)
    _check_world(settings)
    if teacher is not None:
        targets = LocalTeacherTargets(teacher, teacher_fingerprint(teacher), _checked_topk(student, teacher, settings),
                                      Path(out_dir) / TOPK_CACHE_DIR, pad_id)
    elif targets is None and settings.ce_weight <= 0:
        raise CompressError("no teacher, no teacher targets and no cross-entropy weight: nothing to learn from")
    fingerprint = _run_fingerprint(settings, targets.fingerprint if targets else "answers only", student, usable)
    student.to(settings.device)
    frozen = freeze_embeddings(student) if settings.freeze_embeddings else []
    total_steps, stop_label = _plan_steps(settings, batches_per_epoch(len(usable), settings.batch_size))
    schedule = Schedule(base_lr=settings.lr, warmup_fraction=0.0, total_steps=total_steps,
                        budget_s=settings.time_budget_s)
    loop = _LMLoop(student, targets, usable, settings, pad_id, schedule, forecast)
    if not resume:
        torch.manual_seed(settings.seed)
    if held_out and teacher is not None and world().is_main:  # rank 0 alone scores and reports
        loop.reference_on(held_out, teacher, tokenizer)
    student.train()
    plan = LoopPlan(schedule=schedule, batch_size=settings.batch_size, seed=settings.seed,
                    lengths=np.fromiter((len(e.input_ids) for e in usable), dtype=np.int64, count=len(usable)),
                    device=settings.device, fingerprint=fingerprint, checkpoint_dir=Path(out_dir) / CHECKPOINT_DIR,
                    resume=resume, log_every=LOG_EVERY, checkpoint_every_s=settings.checkpoint_every_s,
                    stop_label=stop_label, count_tokens=True, clock=loop.clock,
                    stop_early=forecast if loop.reference is not None else None)
    # The checkpoint keeps ``model`` (and a projection, none here) and an in-memory teacher-output
    # cache; the LM loop's teacher targets are cached on disk instead.
    saved = Saved(SimpleNamespace(model=student, projection=None), loop.optimizer, TeacherCache(0, 0))
    done = run_loop(plan, loop, saved, reporter or QuietReporter())
    student.eval()
    for weight in frozen:
        weight.requires_grad_(True)
    return _report(done, loop, targets, bool(frozen))


def _usable(train: list[EncodedLM]) -> list[EncodedLM]:
    """The examples with something to learn: a completion token after the first position."""
    usable = [e for e in train if any(e.completion_mask[1:])]
    if not usable:
        raise CompressError(f"no training example has a completion token to predict (of {len(train)} given)")
    return usable


def _check_world(settings: LMLoopSettings) -> None:
    ranks = world()
    if settings.batch_size < ranks.size:
        raise CompressError(f"--batch-size {settings.batch_size} is smaller than the {ranks.size} processes: "
                            "each needs a row of every batch")


def _checked_topk(student: Any, teacher: Any, settings: LMLoopSettings) -> int:
    student_vocab = int(student.get_output_embeddings().weight.shape[0])
    teacher_vocab = int(teacher.get_output_embeddings().weight.shape[0])
    if student_vocab != teacher_vocab:
        raise CompressError(f"student and teacher vocabularies differ ({student_vocab} vs {teacher_vocab} "
                            "tokens); the student must use the teacher's tokenizer")
    if settings.topk > teacher_vocab:
        raise CompressError(f"topk {settings.topk} is larger than the vocabulary ({teacher_vocab} tokens)")
    return settings.topk


def _report(done: LoopOutcome, loop: _LMLoop, targets: TeacherTargets | None, frozen: bool) -> LMTrainingReport:
    device, ranks = loop.device, loop.world
    return LMTrainingReport(
        steps=done.state.step, epochs=done.epochs, train_time_s=round(done.state.elapsed_s, 2),
        samples_per_s=round(done.session_samples / done.session_time_s, 2),
        tokens_per_s=round(done.session_tokens / done.session_time_s, 1),
        device=device, precision="bf16 autocast" if device.startswith("cuda") else "fp32",
        stopped_by=done.stopped_by, loss_history=done.state.history, resumed_from_step=done.resumed_from_step,
        teacher_batches=targets.batches_computed if targets else 0,
        cached_batches=targets.batches_cached if targets else 0,
        world_size=ranks.size, backend=ranks.backend, rank_samples_per_s=done.rank_samples_per_s,
        allreduce_share=allreduce_share([loop.model]), embeddings_frozen=frozen,
        phase_seconds=loop.clock.rounded(),
    )
