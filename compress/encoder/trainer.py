"""The encoder trainer: one step on a batch of texts against the teacher's (cached) outputs.

The loop around it (limits, checkpoints, resume, Ctrl-C, ranks, progress) is
:func:`compress.training.loop.run_loop`'s. A step: the teacher's outputs, computed once per
example and kept in fp16 (:class:`~compress.training.teacher_cache.TeacherCache`), its hidden
states for layer transfer with them (:class:`~compress.training.teacher_states.TeacherStatesCache`;
only attention transfer still runs the teacher every step); the student's under bf16 autocast
where the device computes bf16 natively; the loss; a clipped AdamW step. A
:class:`~compress.training.step_clock.StepClock` times each phase.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.encoder.batching import EncodedSet, collate
from compress.encoder.losses import LossSettings, distillation_loss
from compress.encoder.quality import HeldOutOutputs, QualityReport, compare, held_out_outputs
from compress.encoder.student import Student
from compress.parallel import allreduce_share, data_parallel, world
from compress.training.batching import batches_per_epoch
from compress.training.device import autocast_context, precision_label, training_attention
from compress.training.loop import LoopPlan, Saved, clipped_step, run_loop
from compress.training.progress import Reporter, StepReport
from compress.training.schedule import Schedule
from compress.training.step_clock import StepClock
from compress.training.teacher_cache import TeacherCache
from compress.training.teacher_states import STATES_FILE, TeacherStatesCache
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
    precision: str = "fp32"  # fp32 | bf16-autocast
    tokens: int = 0  # real (non-padding) tokens the student trained on, this session
    teacher_tokens: int = 0  # real tokens the teacher ran on, this session (cached rows cost none)
    phase_seconds: dict[str, float] = field(default_factory=dict)  # this session's time by phase (StepClock)


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
    precision: str = "fp32"  # fp32 | bf16 (autocast; master weights fp32)
    teacher_state_cache: bool = True  # keep the teacher's mapped hidden states (layer transfer) after first use
    exact_clock: bool = False  # synchronise CUDA at every phase boundary (the throughput benchmark)


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
        self.cache = TeacherCache(len(train), settings.teacher_cache_bytes)
        self.cache.states = self._states_cache(student)
        if self._teacher_every_step:
            self.cache.disabled_reason = self._every_step_reason()
        self.clock = StepClock(settings.device, sync=settings.exact_clock)
        self.teacher_tokens = 0
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

    def _states_cache(self, student: Student) -> TeacherStatesCache | None:
        """The cache of the teacher's mapped hidden states, when layer transfer is the only internal a loss reads."""
        s = self.s
        if not (s.losses.hidden_weight > 0 and s.losses.attention_weight == 0 and s.teacher_state_cache):
            return None
        if world().distributed:
            return None  # every rank would need every row: recomputed, as before the cache
        width = int(self.teacher.config.hidden_size)
        states = TeacherStatesCache(self.train.lengths, len(student.teacher_layers) + 1, width,
                                    s.checkpoint_dir.parent / STATES_FILE, s.teacher_cache_bytes)
        if not states.enabled:
            self.reporter.warning(f"teacher states not cached: {states.disabled_reason}; the teacher runs every step")
        return states

    @property
    def _teacher_every_step(self) -> bool:
        losses = self.s.losses
        states = self.cache.states
        return losses.attention_weight > 0 or (losses.hidden_weight > 0 and (states is None or not states.enabled))

    def _every_step_reason(self) -> str:
        if self.s.losses.attention_weight > 0:
            return "the attention loss needs the teacher's attention maps every step"
        states = self.cache.states
        if states is not None and states.disabled_reason:
            return states.disabled_reason
        return "layer transfer needs the teacher's hidden states every step (their cache is off)"

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

    def _teacher_targets(self, batch: dict[str, Any], indices: Any) -> tuple[Any, TaskOutputs | None]:
        """The teacher's final outputs for the batch and, when a loss reads them, its internals: hidden
        states of the mapped layers only (the embedding output, then one per student layer), attentions."""
        import torch

        token_task = self.s.task == "token-classification"
        length = batch["input_ids"].shape[1]
        losses = self.s.losses
        states = self.cache.states
        cached = self.cache.lookup(indices, length if token_task else None)
        row_ids = indices.cpu().numpy()
        cached_states = None
        if states is not None and cached is not None:
            found = states.lookup(row_ids, length)
            cached_states = tuple(s.to(self.s.device, non_blocking=True) for s in found) if found else None
        # Across ranks every rank computes its own rows and keeps everyone's: one teacher pass per row.
        gathering = self.world.distributed and not losses.needs_teacher_internals
        if gathering:
            if not self.world.any(cached is None):
                return cached, None
        elif cached is not None and (losses.hidden_weight == 0 or cached_states is not None):
            return cached, (TaskOutputs(final=cached, hidden_states=cached_states) if cached_states else None)
        context = autocast_context(self.s.device, self.s.precision) if self.teacher_autocast else contextlib.nullcontext()
        with torch.no_grad(), context:
            out = task_outputs(self.teacher, batch, self.s.task, self.pooling,
                               hidden_states=losses.hidden_weight > 0, attentions=losses.attention_weight > 0)
        self.teacher_tokens += int(batch["attention_mask"].sum())
        mapped = None
        if out.hidden_states is not None:
            mapped = tuple(out.hidden_states[i] for i in (0, *(t + 1 for t in self.student.teacher_layers)))
            if states is not None and states.enabled:
                mapped = tuple(m.to(self.s.device) for m in states.store(row_ids, mapped))
        internals = (TaskOutputs(final=out.final, hidden_states=mapped, attentions=out.attentions)
                     if losses.needs_teacher_internals else None)
        # Token rows are kept at the longest a batch can be (max_length, padded up to the multiple of 8 on CUDA).
        row_length = math.ceil(self.s.max_length / self._pad_multiple) * self._pad_multiple if token_task else None
        if not gathering:
            final = self.cache.store(indices, out.final, row_length)
            return final, internals
        kept = [self.cache.store(rows, outputs, row_length)
                for rows, outputs in zip(self.world.gather_rows(indices), self.world.gather_rows(out.final))]
        return kept[self.world.rank], None

    def train_step(self, indices: Any, lr: float) -> tuple[Any, int]:
        """One optimizer step on the examples ``indices``: (the loss, a detached tensor; real tokens trained on)."""
        import torch

        device, clock = self.s.device, self.clock
        with clock.phase("data"):
            shard = self.world.shard(indices)  # all of them in a world of one
            batch = collate(self.train, shard, device, pad_to_multiple=self._pad_multiple)
            index_tensor = torch.as_tensor(shard, device=device)
            tokens = int(batch["attention_mask"].sum())
        with clock.phase("teacher"):
            teacher_final, teacher_internals = self._teacher_targets(batch, index_tensor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses = self.s.losses
        # The teacher's states come mapped already: student layer i against entry i.
        mapped_layers = tuple(range(len(self.student.teacher_layers)))
        with clock.phase("forward"), autocast_context(device, self.s.precision), training_attention(device):
            final, hidden, attentions = self.forward(batch, losses.hidden_weight > 0, losses.attention_weight > 0)
            out = TaskOutputs(final=final, hidden_states=hidden, attentions=attentions)
            loss = distillation_loss(losses, out, teacher_final, teacher_internals, batch, mapped_layers,
                                     self.student.projection)
            # Weighted by this shard's share of the batch: DDP's averaged gradient is the whole batch's.
            loss = loss * self.world.share(len(shard), len(indices))
        with clock.phase("backward"):
            loss.backward()
        with clock.phase("optimizer"):
            clipped_step(self.optimizer, self._params)
        return self.world.sum(loss.detach()) / self.world.size, tokens

    # -- the loop ---------------------------------------------------------------------------

    def _with_neighbours(self, epoch: int, batches: list[Any]) -> list[Any]:
        """From the epoch after the teacher's cache is full: half of each batch, each beside its nearest text."""
        from compress.encoder.neighbours import cached_embeddings, nearest_neighbours, with_neighbours

        if self._nearest is None:
            embeddings = cached_embeddings(self.cache)
            if embeddings is None:
                return batches
            self._nearest = nearest_neighbours(embeddings)
        return with_neighbours(batches, self._nearest)

    # -- what the loop asks (compress.training.loop.StepSource) -----------------------------------

    def step(self, rows: Any, lr: float) -> tuple[Any, int]:
        return self.train_step(rows, lr)

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
                        stop_label=s.stop_label, regroup=self._with_neighbours if s.neighbour_batches else None,
                        count_tokens=True, clock=self.clock)
        done = run_loop(plan, self, Saved(self.student, self.optimizer, self.cache), self.reporter, on_step)
        if self.cache.states is not None:
            self.cache.states.remove()  # gigabytes a finished run has no use for
        state = done.state
        return TrainingReport(
            steps=state.step, epochs=done.epochs, samples_seen=state.samples_seen,
            train_time_s=round(state.elapsed_s, 2),
            samples_per_s=round(done.session_samples / done.session_time_s, 2),
            stopped_by=done.stopped_by, resumed_from_step=done.resumed_from_step,
            teacher_cache=self._cache_description(),
            history=state.history, world_size=self.world.size, backend=self.world.backend,
            rank_samples_per_s=done.rank_samples_per_s, allreduce_share=allreduce_share([self.forward]),
            precision=precision_label(s.precision), tokens=done.session_tokens, teacher_tokens=self.teacher_tokens,
            phase_seconds=self.clock.rounded(),
        )

    def _cache_description(self) -> str:
        if self.cache.disabled_reason is not None:
            return f"recomputed every step ({self.cache.disabled_reason})"
        if self.cache.states is not None:
            return "cached in fp16 after first use, with the hidden states of the mapped layers"
        return "cached in fp16 after first use"


def _quality_fields(report: QualityReport) -> dict[str, Any]:
    fields: dict[str, Any] = {"teacher_agreement": report.teacher_agreement}
    if report.neighbour_agreement is not None:
        fields["neighbour_agreement"] = report.neighbour_agreement
    if report.similarity_spearman is not None:
        fields["similarity_spearman"] = report.similarity_spearman
    if report.accuracy is not None:
        fields["accuracy"] = report.accuracy
    return fields
