"""The encoder trainer: one step on a batch of texts against the teacher's (cached) outputs.

The loop around it (limits, checkpoints, resume, Ctrl-C, ranks, progress) is
:func:`compress.training.loop.run_loop`'s. A step: the teacher's outputs, computed once per
example and kept in fp16 (:class:`~compress.training.teacher_cache.TeacherCache`) unless a loss
needs its internals; the student's under bf16 autocast on CUDA; the loss; a clipped AdamW step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.distill.batching import EncodedSet, collate
from compress.distill.losses import LossSettings, distillation_loss
from compress.distill.quality import HeldOutOutputs, QualityReport, compare, held_out_outputs
from compress.distill.student import Student
from compress.parallel import allreduce_share, data_parallel, world
from compress.training.batching import batches_per_epoch
from compress.training.device import autocast_context
from compress.training.loop import GRAD_CLIP_NORM, LoopPlan, Saved, run_loop
from compress.training.progress import Reporter, StepReport
from compress.training.schedule import Schedule
from compress.training.teacher_cache import TeacherCache
from export.base.errors import CompressError
from export.base.tasks import Pooling, Task
from export.torch_model import TaskOutputs, task_outputs

@dataclass
class TrainingReport:
    """What the loop did."""

    steps: int
    epochs: float
    samples_seen: int
    train_time_s: float
    samples_per_s: float  # over this session's training time
    stopped_by: str  # max_steps | epochs | time_budget
    resumed_from_step: int | None
    teacher_cache: str  # how teacher outputs were obtained
    history: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1  # processes training data-parallel
    backend: str | None = None  # gloo | nccl
    rank_samples_per_s: list[float] = field(default_factory=list)  # each rank's own rows, this session
    allreduce_share: float | None = None  # of forward + backward time, by DDP's timers (None: one process)


@dataclass
class LoopSettings:
    """How the loop runs (everything else comes in as objects)."""

    task: Task
    losses: LossSettings
    batch_size: int
    seed: int
    device: str
    schedule: Schedule
    weight_decay: float
    fingerprint: str
    checkpoint_dir: Path
    resume: bool
    eval_points: int
    checkpoint_every_s: float
    checkpoint_every_steps: int | None
    log_every: int
    teacher_cache_bytes: int
    max_length: int
    stop_label: str = "max_steps"  # what reaching total_steps is called (max_steps or epochs)
    neighbour_batches: bool = False  # after the first epoch, each text beside its teacher-nearest neighbour


def make_optimizer(student: Student, lr: float, weight_decay: float, device: str) -> Any:
    """AdamW, fused kernels; no weight decay on biases and normalisation weights."""
    import torch

    decay, no_decay = [], []
    for module in student.modules():
        for parameter in module.parameters():
            if parameter.requires_grad:
                (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # a torch without fused AdamW for this device
        return torch.optim.AdamW(groups, lr=lr, foreach=device.startswith("cuda"))


def _trainable(student: Student, task: Task, pooling: Pooling | None) -> Any:
    """The student's trained modules as one ``nn.Module`` whose forward is ``task_outputs`` (what DDP wraps)."""
    import torch

    class Trainable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = student.model
            self.projection = student.projection

        def forward(self, batch: dict[str, Any], hidden_states: bool, attentions: bool) -> Any:
            projection = self.projection if task == "feature-extraction" else None
            out = task_outputs(self.model, batch, task, pooling, projection, hidden_states=hidden_states,
                               attentions=attentions)
            return out.final, out.hidden_states, out.attentions  # tensors DDP can follow

    return Trainable()


class Trainer:
    """Distils ``teacher_model`` into ``student`` on ``train``, scoring on ``held_out`` against ``reference``."""

    def __init__(self, settings: LoopSettings, *, teacher_model: Any, pooling: Pooling | None, teacher_autocast: bool,
                 student: Student, train: EncodedSet, held_out: EncodedSet, reference: HeldOutOutputs,
                 reporter: Reporter) -> None:
        self.s = settings
        self.teacher = teacher_model
        self.pooling = pooling
        self.teacher_autocast = teacher_autocast
        self.student = student
        self.train = train
        self.held_out = held_out
        self.reference = reference
        self.reporter = reporter
        self.optimizer = make_optimizer(student, settings.schedule.base_lr, settings.weight_decay, settings.device)
        cache_bytes = 0 if settings.losses.needs_teacher_internals else settings.teacher_cache_bytes
        self.cache = TeacherCache(len(train), cache_bytes)
        if settings.losses.needs_teacher_internals:
            self.cache.disabled_reason = "hidden-state and attention losses need the teacher's internals every step"
        self._params = [p for m in student.modules() for p in m.parameters() if p.requires_grad]
        self.batches_per_epoch = batches_per_epoch(len(train), settings.batch_size)
        self._pad_multiple = 8 if settings.device.startswith("cuda") else 1  # tensor-core friendly shapes
        self.world = world()
        if settings.batch_size < self.world.size:
            raise CompressError(f"--batch-size {settings.batch_size} is smaller than the {self.world.size} "
                                "processes: each needs a row of every batch")
        # Heads the task does not read (a pooler, say) get no gradient: DDP must be told to look for them.
        self.forward = data_parallel(_trainable(student, settings.task, pooling), find_unused=True)
        self._nearest: Any = None  # each training example's nearest by the teacher (neighbour batches)

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self) -> QualityReport:
        """The student's agreement with the teacher on the held-out split, now."""
        import torch

        outputs = held_out_outputs(
            self.student.model, self.held_out, self.s.task, pooling=self.pooling,
            projection=self.student.projection if self.s.task == "feature-extraction" else None,
            device=self.s.device, batch_size=max(self.s.batch_size, 64),
            autocast_dtype=torch.bfloat16 if self.s.device.startswith("cuda") else None,
        )
        return compare(self.s.task, self.reference, outputs, len(self.held_out))

    # -- one step ---------------------------------------------------------------------------

    def _teacher_targets(self, batch: dict[str, Any], indices: Any) -> tuple[Any, Any]:
        import torch

        token_task = self.s.task == "token-classification"
        length = batch["input_ids"].shape[1]
        cached = self.cache.lookup(indices, length if token_task else None)
        losses = self.s.losses
        # Across ranks every rank computes its own rows and keeps everyone's: one teacher pass per row.
        gathering = self.world.distributed and not losses.needs_teacher_internals
        if gathering:
            if not self.world.any(cached is None):
                return cached, None
        elif cached is not None:
            return cached, None
        context = autocast_context(self.s.device) if self.teacher_autocast else contextlib.nullcontext()
        with torch.no_grad(), context:
            out = task_outputs(self.teacher, batch, self.s.task, self.pooling,
                               hidden_states=losses.hidden_weight > 0, attentions=losses.attention_weight > 0)
        # Token rows are kept at the longest a batch can be (max_length, padded up to the multiple of 8 on CUDA).
        row_length = math.ceil(self.s.max_length / self._pad_multiple) * self._pad_multiple if token_task else None
        if not gathering:
            final = self.cache.store(indices, out.final, row_length)
            return final, (out if losses.needs_teacher_internals else None)
        kept = [self.cache.store(rows, outputs, row_length)
                for rows, outputs in zip(self.world.gather_rows(indices), self.world.gather_rows(out.final))]
        return kept[self.world.rank], None

    def train_step(self, indices: Any, lr: float) -> Any:
        """One optimizer step on the examples ``indices``; returns the loss (a detached tensor)."""
        import torch

        device = self.s.device
        shard = self.world.shard(indices)  # all of them in a world of one
        batch = collate(self.train, shard, device, pad_to_multiple=self._pad_multiple)
        index_tensor = torch.as_tensor(shard, device=device)
        teacher_final, teacher_internals = self._teacher_targets(batch, index_tensor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses = self.s.losses
        with autocast_context(device):
            final, hidden, attentions = self.forward(batch, losses.hidden_weight > 0, losses.attention_weight > 0)
            out = TaskOutputs(final=final, hidden_states=hidden, attentions=attentions)
            loss = distillation_loss(losses, out, teacher_final, teacher_internals, batch,
                                     self.student.teacher_layers, self.student.projection)
            # Weighted by this shard's share of the batch: DDP's averaged gradient is the whole batch's.
            loss = loss * self.world.share(len(shard), len(indices))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self._params, GRAD_CLIP_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.world.sum(loss.detach()) / self.world.size

    # -- the loop ---------------------------------------------------------------------------

    def _with_neighbours(self, epoch: int, batches: list[Any]) -> list[Any]:
        """From the epoch after the teacher's cache is full: half of each batch, each beside its nearest text."""
        from compress.distill.neighbours import cached_embeddings, nearest_neighbours, with_neighbours

        if self._nearest is None:
            embeddings = cached_embeddings(self.cache)
            if embeddings is None:
                return batches
            self._nearest = nearest_neighbours(embeddings)
        return with_neighbours(batches, self._nearest)

    # -- what the loop asks (compress.training.loop.StepSource) -----------------------------------

    def step(self, rows: Any, lr: float) -> tuple[Any, int]:
        return self.train_step(rows, lr), 0

    def history_quality(self) -> dict[str, Any]:
        return _quality_fields(self.evaluate())

    def learning_rate(self, step: int, elapsed_s: float) -> float:
        return self.s.schedule.lr(self.s.schedule.progress(step, elapsed_s))

    def eval_due(self, step: int, progress: float, evals_done: int, finishing: bool) -> bool:
        """At ``eval_points`` evenly spaced points of the run (by steps, or by progress under a budget)."""
        if evals_done >= self.s.eval_points:
            return False
        next_fraction = (evals_done + 1) / (self.s.eval_points + 1)
        total = self.s.schedule.total_steps
        if total is not None and self.s.schedule.budget_s is None:
            return step >= round(total * next_fraction)
        return progress >= next_fraction

    def run(self, on_step: Callable[[StepReport], None] | None = None) -> TrainingReport:
        """Train until the schedule says stop; checkpoints on the way and on Ctrl-C."""
        s = self.s
        for module in self.student.modules():
            module.train()
        plan = LoopPlan(schedule=s.schedule, lengths=self.train.lengths, batch_size=s.batch_size, seed=s.seed,
                        device=s.device, fingerprint=s.fingerprint, checkpoint_dir=s.checkpoint_dir, resume=s.resume,
                        log_every=s.log_every, checkpoint_every_s=s.checkpoint_every_s,
                        checkpoint_every_steps=s.checkpoint_every_steps, checkpoint_on_eval=True,
                        stop_label=s.stop_label, regroup=self._with_neighbours if s.neighbour_batches else None)
        done = run_loop(plan, self, Saved(self.student, self.optimizer, self.cache), self.reporter, on_step)
        state = done.state
        return TrainingReport(
            steps=state.step, epochs=done.epochs, samples_seen=state.samples_seen,
            train_time_s=round(state.elapsed_s, 2),
            samples_per_s=round(done.session_samples / done.session_time_s, 2),
            stopped_by=done.stopped_by, resumed_from_step=done.resumed_from_step,
            teacher_cache=("cached in fp16 after first use" if self.cache.disabled_reason is None
                           else f"recomputed every step ({self.cache.disabled_reason})"),
            history=state.history, world_size=self.world.size, backend=self.world.backend,
            rank_samples_per_s=done.rank_samples_per_s, allreduce_share=allreduce_share([self.forward]),
        )


def _quality_fields(report: QualityReport) -> dict[str, Any]:
    fields: dict[str, Any] = {"teacher_agreement": report.teacher_agreement}
    if report.neighbour_agreement is not None:
        fields["neighbour_agreement"] = report.neighbour_agreement
    if report.similarity_spearman is not None:
        fields["similarity_spearman"] = report.similarity_spearman
    if report.accuracy is not None:
        fields["accuracy"] = report.accuracy
    return fields
