"""The distillation loop: bucketed batches, cached teacher outputs, checkpoints, resume, Ctrl-C.

GPU first: bf16 autocast and fused AdamW on CUDA, pinned host memory and non-blocking copies.
On the CPU it runs in fp32 with as many torch threads as the process has cores.

Ctrl-C finishes the current step, saves a checkpoint and stops with :class:`DistillInterrupted`
(a ``KeyboardInterrupt``); a second Ctrl-C stops at once. ``--resume`` continues from the last
checkpoint; for a step-determined run the result equals that of an unbroken run.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.distill.batching import EncodedSet, TeacherCache, batches_per_epoch, collate, epoch_batches
from compress.distill.checkpoint import TrainingState, load_checkpoint, read_state, save_checkpoint
from compress.parallel import allreduce_share, data_parallel, world
from export.base.errors import CompressError
from export.torch_model import TaskOutputs, task_outputs
from compress.distill.losses import LossSettings, distillation_loss
from compress.distill.progress import Reporter, StepReport
from compress.distill.quality import HeldOutOutputs, QualityReport, compare, held_out_outputs
from compress.distill.schedule import Schedule
from compress.distill.student import Student
from export.base.tasks import Pooling, Task

GRAD_CLIP_NORM = 1.0


class DistillInterrupted(KeyboardInterrupt):
    """The run was stopped by Ctrl-C after saving a checkpoint; ``--resume`` continues it."""


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


def autocast_context(device: str) -> Any:
    import torch

    if device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _graceful_interrupt(reporter: Reporter) -> Iterator[list[bool]]:
    """First Ctrl-C sets a flag the loop checks after each step; the second one interrupts at once."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag[0] = True
        reporter.message("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to stop now)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


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

    def _eval_due(self, steps_done: int, progress: float, evals_done: int) -> bool:
        if evals_done >= self.s.eval_points:
            return False
        next_fraction = (evals_done + 1) / (self.s.eval_points + 1)
        total = self.s.schedule.total_steps
        if total is not None and self.s.schedule.budget_s is None:
            return steps_done >= round(total * next_fraction)
        return progress >= next_fraction

    def run(self, on_step: Any = None) -> TrainingReport:
        """Train until the schedule says stop; checkpoints on the way and on Ctrl-C."""
        import torch

        s = self.s
        state = TrainingState(fingerprint=s.fingerprint)
        resumed_from: int | None = None
        if s.resume:
            state = load_checkpoint(s.checkpoint_dir, s.fingerprint, self.student, self.optimizer, self.cache, s.device)
            resumed_from = state.step
            self.reporter.message(f"resuming from step {state.step} (epoch {state.epoch}, "
                                  f"{state.elapsed_s:.0f} s spent)")
        elif read_state(s.checkpoint_dir) is not None:
            self.reporter.message(f"starting over; a checkpoint in {s.checkpoint_dir} is replaced "
                                  "(pass --resume to continue it instead)")
        for module in self.student.modules():
            module.train()
        ranks = self.world
        if not state.history and ranks.is_main:  # rank 0 alone scores and reports
            initial = self.evaluate()
            state.history.append({"step": 0, "loss": None, "lr": 0.0, "samples_per_s": None, "elapsed_s": 0.0,
                                  "epoch": 0.0, **_quality_fields(initial)})
        evals_done = sum(1 for e in state.history if e.get("teacher_agreement") is not None and e["step"] > 0)
        lengths = self.train.lengths
        epoch_cache: tuple[int, list[Any]] | None = None
        session_start = time.perf_counter()
        base_elapsed = state.elapsed_s
        session_samples = rank_samples = 0
        window_loss = torch.zeros((), device=s.device)
        window_steps = window_samples = 0
        window_start = time.perf_counter()
        last_checkpoint = time.perf_counter()
        stopped_by = ""
        self.reporter.start("distill")
        try:
            with _graceful_interrupt(self.reporter) as interrupted:
                while True:
                    elapsed = base_elapsed + time.perf_counter() - session_start
                    # Every rank stops together: on rank 0's clock, or when any rank was interrupted.
                    reason = ranks.agree(s.schedule.finished(state.step, elapsed))
                    if reason:
                        stopped_by = s.stop_label if reason == "max_steps" else reason
                        break
                    if ranks.any(interrupted[0]):
                        interrupted[0] = True
                        break
                    if epoch_cache is None or epoch_cache[0] != state.epoch:
                        epoch_cache = (state.epoch, epoch_batches(lengths, s.batch_size, s.seed, state.epoch))
                    batches = epoch_cache[1]
                    if state.position >= len(batches):
                        state.epoch, state.position = state.epoch + 1, 0
                        continue
                    indices = batches[state.position]
                    progress = s.schedule.progress(state.step, elapsed)
                    lr = s.schedule.lr(progress)
                    window_loss += self.train_step(indices, lr)
                    state.step += 1
                    state.position += 1
                    state.samples_seen += len(indices)
                    session_samples += len(indices)
                    rank_samples += len(ranks.shard(indices))
                    window_steps += 1
                    window_samples += len(indices)
                    elapsed = base_elapsed + time.perf_counter() - session_start
                    state.elapsed_s = elapsed
                    epoch_float = state.epoch + state.position / self.batches_per_epoch
                    eval_now = ranks.is_main and self._eval_due(state.step, progress, evals_done)
                    loss_value = None
                    if state.step % s.log_every == 0 or eval_now or s.schedule.finished(state.step, elapsed):
                        now = time.perf_counter()
                        loss_value = float(window_loss.item()) / window_steps
                        entry = {"step": state.step, "loss": round(loss_value, 6), "lr": lr,
                                 "samples_per_s": round(window_samples / max(now - window_start, 1e-9), 2),
                                 "elapsed_s": round(elapsed, 2), "epoch": round(epoch_float, 4)}
                        if eval_now:
                            entry.update(_quality_fields(self.evaluate()))
                            evals_done += 1
                        state.history.append(entry)
                        window_loss.zero_()
                        window_steps = window_samples = 0
                        window_start = time.perf_counter()
                    due_by_steps = s.checkpoint_every_steps and state.step % s.checkpoint_every_steps == 0
                    due_by_time = time.perf_counter() - last_checkpoint >= s.checkpoint_every_s
                    if (eval_now or due_by_steps or due_by_time) and ranks.is_main:
                        save_checkpoint(s.checkpoint_dir, state, self.student, self.optimizer, self.cache)
                        last_checkpoint = time.perf_counter()
                    if loss_value is None:  # between log lines: the last logged loss, else this window's so far
                        loss_value = _last_loss(state.history)
                        if math.isnan(loss_value) and window_steps:
                            loss_value = float(window_loss.item()) / window_steps
                    report = StepReport(step=state.step, epoch=epoch_float, loss=loss_value,
                                        lr=lr, samples_per_s=_last_speed(state.history), elapsed_s=elapsed,
                                        progress=s.schedule.progress(state.step - 1, elapsed))
                    self.reporter.step(report)
                    if on_step is not None:
                        on_step(report)
                if interrupted[0] and not stopped_by:
                    if ranks.is_main:
                        save_checkpoint(s.checkpoint_dir, state, self.student, self.optimizer, self.cache)
                    ranks.barrier()  # no rank leaves (and gets the others stopped) before the checkpoint is saved
                    message = (f"stopped at step {state.step}; checkpoint saved in {s.checkpoint_dir}; "
                               "run the same command with --resume to continue")
                    self.reporter.stop()
                    self.reporter.message(message)
                    raise DistillInterrupted(message)
        finally:
            self.reporter.stop()
        session_time = time.perf_counter() - session_start
        if ranks.is_main:
            save_checkpoint(s.checkpoint_dir, state, self.student, self.optimizer, self.cache)
        per_rank = ranks.gather_rows(torch.tensor([rank_samples / max(session_time, 1e-9)]))
        return TrainingReport(
            steps=state.step,
            epochs=round(state.epoch + state.position / self.batches_per_epoch, 4),
            samples_seen=state.samples_seen,
            train_time_s=round(state.elapsed_s, 2),
            samples_per_s=round(session_samples / max(session_time, 1e-9), 2),
            stopped_by=stopped_by,
            resumed_from_step=resumed_from,
            teacher_cache=("cached in fp16 after first use" if self.cache.disabled_reason is None
                           else f"recomputed every step ({self.cache.disabled_reason})"),
            history=state.history,
            world_size=ranks.size,
            backend=ranks.backend,
            rank_samples_per_s=[round(float(r), 2) for r in per_rank],
            allreduce_share=allreduce_share([self.forward]),
        )


def _quality_fields(report: QualityReport) -> dict[str, Any]:
    fields: dict[str, Any] = {"teacher_agreement": report.teacher_agreement}
    if report.neighbour_agreement is not None:
        fields["neighbour_agreement"] = report.neighbour_agreement
    if report.accuracy is not None:
        fields["accuracy"] = report.accuracy
    return fields


def _last_loss(history: list[dict[str, Any]]) -> float:
    return next((e["loss"] for e in reversed(history) if e.get("loss") is not None), math.nan)


def _last_speed(history: list[dict[str, Any]]) -> float:
    return next((e["samples_per_s"] for e in reversed(history) if e.get("samples_per_s") is not None), 0.0)
