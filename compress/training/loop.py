"""The training loop, once for every family: steps, limits, checkpoints, resume, Ctrl-C, ranks, progress.

A family's trainer supplies what differs as a :class:`StepSource` (one optimizer step on a batch,
the learning rate, the quality it measures and when); :func:`run_loop` does the rest:

- batches are length-bucketed and a pure function of ``(seed, epoch)``
  (:mod:`compress.training.batching`), so a resumed run continues the same epoch;
- it stops at the schedule's step limit or time budget (:class:`~compress.training.schedule.Schedule`),
  every rank on rank 0's clock, or after the step in progress when Ctrl-C is pressed (a checkpoint
  saved, then :class:`~compress.training.interrupt.DistillInterrupted`);
- it checkpoints every ``checkpoint_every_s`` seconds (and steps, when set) and at the end;
  ``resume`` continues the checkpoint, and a step-determined run then ends as an unbroken one would;
- the loss history gets an entry every ``log_every`` steps, at each evaluation and at the end.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from compress.parallel import world
from compress.training.batching import batches_per_epoch, epoch_batches
from compress.training.checkpoint import Student, TrainingState, load_checkpoint, read_state, save_checkpoint
from compress.training.interrupt import DistillInterrupted, graceful_interrupt
from compress.training.progress import Reporter, StepReport

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from compress.training.schedule import Schedule
    from compress.training.step_clock import StepClock
    from compress.training.teacher_cache import TeacherCache

GRAD_CLIP_NORM = 1.0


def clipped_step(optimizer: Any, params: list[Any]) -> None:
    """Every family's optimizer step: gradients clipped to GRAD_CLIP_NORM, the step, gradients released."""
    import torch

    torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class StepSource(Protocol):
    """What a family's trainer supplies to the loop."""

    def step(self, rows: Any, lr: float) -> tuple[Any, int]:
        """One optimizer step on the global batch ``rows``: (its loss, detached; non-padding tokens here)."""

    def learning_rate(self, step: int, elapsed_s: float) -> float:
        """The learning rate of step ``step`` (0-based), started after ``elapsed_s`` seconds of training."""

    def history_quality(self) -> dict[str, Any]:
        """Quality figures for the loss history now (empty: nothing to measure)."""

    def eval_due(self, step: int, progress: float, evals_done: int, finishing: bool) -> bool:
        """Whether to evaluate after step ``step`` (rank 0 alone asks)."""


@dataclass
class LoopPlan:
    """How one run of the loop goes: its limits, batches, checkpoints and log."""

    schedule: Schedule
    lengths: np.ndarray  # tokens per training example (the batches are bucketed by them)
    batch_size: int
    seed: int
    device: str
    fingerprint: str  # of the settings and data a checkpoint belongs to
    checkpoint_dir: Path
    resume: bool
    log_every: int
    checkpoint_every_s: float
    checkpoint_every_steps: int | None = None
    checkpoint_on_eval: bool = False
    stop_label: str = "max_steps"  # what reaching the schedule's total steps is called (max_steps or epochs)
    count_tokens: bool = False  # the history records tokens/s too
    # The epoch's batches when the family builds its own from the bucketed ones (a pure function of
    # the epoch and of what the checkpoint holds, so that a resumed run rebuilds them).
    regroup: Callable[[int, list[Any]], list[Any]] | None = None
    clock: StepClock | None = None  # the trainer's: the loop bills evaluation, logging and checkpoints to it
    # Rank 0's early-stop check on the history (e.g. compress.training.projection.ForecastRule): a reason
    # to stop (the loop's stopped_by), or None to go on.
    stop_early: Callable[[list[dict[str, Any]]], str | None] | None = None


@dataclass
class Saved:
    """The live objects a checkpoint holds."""

    student: Student
    optimizer: Any
    cache: TeacherCache


@dataclass
class LoopOutcome:
    """What the loop did: its final state and this session's figures."""

    state: TrainingState
    stopped_by: str  # max_steps | epochs | time_budget | forecast (the plan's stop_early)
    resumed_from_step: int | None
    batches_per_epoch: int
    session_time_s: float
    session_samples: int
    session_tokens: int
    rank_samples_per_s: list[float]  # each rank's own rows, this session

    @property
    def epochs(self) -> float:
        return round(self.state.epoch + self.state.position / self.batches_per_epoch, 4)


def run_loop(plan: LoopPlan, steps: StepSource, saved: Saved, reporter: Reporter,
             on_step: Callable[[StepReport], None] | None = None) -> LoopOutcome:
    """Train until the schedule says stop; checkpoints on the way, at the end and on Ctrl-C."""
    loop = _Loop(plan, steps, saved, reporter)
    reporter.start("distill")
    try:
        with graceful_interrupt(reporter) as interrupted:
            while loop.go_on(interrupted):
                report = loop.next_step()
                if report is None:
                    continue
                reporter.step(report)
                if on_step is not None:
                    on_step(report)
            if interrupted[0] and not loop.stopped_by:
                loop.stop_interrupted()
    finally:
        reporter.stop()
    return loop.outcome()


class _Loop:
    """The counters of one :func:`run_loop` call and the steps that move them."""

    def __init__(self, plan: LoopPlan, steps: StepSource, saved: Saved, reporter: Reporter) -> None:
        import torch

        self.plan, self.steps, self.saved, self.reporter = plan, steps, saved, reporter
        self.ranks = world()
        self.per_epoch = batches_per_epoch(len(plan.lengths), plan.batch_size)
        self.state, self.resumed_from = self._start()
        self.evals_done = sum(1 for e in self.state.history if e["step"] > 0 and len(e.keys() - _LOG_KEYS) > 0)
        self.epoch_cache: tuple[int, list[Any]] | None = None
        self.session_start = time.perf_counter()
        self.base_elapsed = self.state.elapsed_s
        self.session_samples = self.session_tokens = self.rank_samples = 0
        self.window_loss = torch.zeros((), device=plan.device)
        self.window_steps = self.window_samples = self.window_tokens = 0
        self.window_start = self.last_checkpoint = time.perf_counter()
        self.stopped_by = ""
        self.lr = 0.0
        if not self.state.history and self.ranks.is_main:  # rank 0 alone scores and reports
            quality = steps.history_quality()
            if quality:
                self.state.history.append(self._entry(0, None, 0.0, 0.0, 0.0, 0.0, **quality))

    def _start(self) -> tuple[TrainingState, int | None]:
        plan, saved = self.plan, self.saved
        if plan.resume:
            state = load_checkpoint(plan.checkpoint_dir, plan.fingerprint, saved.student, saved.optimizer,
                                    saved.cache, plan.device)
            self.reporter.message(f"resuming from step {state.step} (epoch {state.epoch}, "
                                  f"{state.elapsed_s:.0f} s spent)")
            return state, state.step
        if read_state(plan.checkpoint_dir) is not None:
            self.reporter.message(f"starting over; the checkpoint in {plan.checkpoint_dir} is replaced "
                                  "(pass --resume to continue it instead)")
        return TrainingState(fingerprint=plan.fingerprint), None

    def elapsed(self) -> float:
        return self.base_elapsed + time.perf_counter() - self.session_start

    def go_on(self, interrupted: list[bool]) -> bool:
        # Every rank stops together: on rank 0's clock, or when any rank was interrupted.
        reason = self.plan.schedule.finished(self.state.step, self.elapsed())
        if not reason and self.plan.stop_early is not None and self.ranks.is_main:
            reason = self.plan.stop_early(self.state.history)
        reason = self.ranks.agree(reason)
        if reason:
            self.stopped_by = self.plan.stop_label if reason == "max_steps" else reason
            return False
        if self.ranks.any(interrupted[0]):
            interrupted[0] = True
            return False
        return True

    def _batches(self) -> list[Any]:
        plan, state = self.plan, self.state
        if self.epoch_cache is None or self.epoch_cache[0] != state.epoch:
            batches = epoch_batches(plan.lengths, plan.batch_size, plan.seed, state.epoch)
            if plan.regroup is not None:
                batches = plan.regroup(state.epoch, batches)
            self.epoch_cache = (state.epoch, batches)
        return self.epoch_cache[1]

    def next_step(self) -> StepReport | None:
        """Train one batch and log it (None: the epoch ended, nothing trained)."""
        plan, state = self.plan, self.state
        batches = self._batches()
        if state.position >= len(batches):
            state.epoch, state.position = state.epoch + 1, 0
            return None
        rows = batches[state.position]
        progress = plan.schedule.progress(state.step, self.elapsed())
        lr = self.lr = self.steps.learning_rate(state.step, self.elapsed())
        loss, tokens = self.steps.step(rows, lr)
        self.window_loss += loss
        state.step += 1
        state.position += 1
        state.samples_seen += len(rows)
        self.session_samples += len(rows)
        self.rank_samples += len(self.ranks.shard(rows))
        self.session_tokens += tokens
        self.window_steps += 1
        self.window_samples += len(rows)
        self.window_tokens += tokens
        state.elapsed_s = self.elapsed()
        finishing = plan.schedule.finished(state.step, state.elapsed_s) is not None
        eval_now = self.ranks.is_main and self.steps.eval_due(state.step, progress, self.evals_done, finishing)
        if state.step % plan.log_every == 0 or eval_now or finishing:
            self._log(lr, eval_now)
            state.elapsed_s = self.elapsed()
        self._maybe_checkpoint(eval_now)
        return StepReport(step=state.step, epoch=self._epoch(), loss=self._shown_loss(), lr=lr,
                          samples_per_s=_last(self.state.history, "samples_per_s", 0.0), elapsed_s=state.elapsed_s,
                          progress=plan.schedule.progress(state.step - 1, state.elapsed_s))

    def _epoch(self) -> float:
        return self.state.epoch + self.state.position / self.per_epoch

    def _entry(self, step: int, loss: float | None, lr: float, samples_per_s: float | None,
               tokens_per_s: float | None, elapsed: float, **quality: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"step": step, "loss": loss, "lr": lr, "samples_per_s": samples_per_s}
        if self.plan.count_tokens:
            entry["tokens_per_s"] = tokens_per_s
        return {**entry, "elapsed_s": round(elapsed, 2), "epoch": round(self._epoch(), 4) if step else 0.0,
                **quality}

    def _phase(self, name: str) -> Any:
        return self.plan.clock.phase(name) if self.plan.clock is not None else contextlib.nullcontext()

    def _log(self, lr: float, with_eval: bool) -> None:
        seconds = max(time.perf_counter() - self.window_start, 1e-9)
        with self._phase("logging"):
            loss = float(self.window_loss.item()) / self.window_steps
        with self._phase("evaluation"):
            quality = self.steps.history_quality() if with_eval else {}
        self.evals_done += bool(with_eval)
        self.state.history.append(self._entry(self.state.step, round(loss, 6), lr,
                                              round(self.window_samples / seconds, 2),
                                              round(self.window_tokens / seconds, 1), self.elapsed(), **quality))
        self.window_loss.zero_()
        self.window_steps = self.window_samples = self.window_tokens = 0
        self.window_start = time.perf_counter()

    def _shown_loss(self) -> float:
        """The last logged loss, else this window's so far (the progress bar's)."""
        loss = _last(self.state.history, "loss", math.nan)
        if math.isnan(loss) and self.window_steps:
            loss = float(self.window_loss.item()) / self.window_steps
        return loss

    def _maybe_checkpoint(self, evaluated: bool) -> None:
        plan = self.plan
        by_steps = plan.checkpoint_every_steps and self.state.step % plan.checkpoint_every_steps == 0
        by_time = time.perf_counter() - self.last_checkpoint >= plan.checkpoint_every_s
        if (evaluated and plan.checkpoint_on_eval) or by_steps or by_time:
            self._save()
            self.last_checkpoint = time.perf_counter()

    def _save(self) -> None:
        if self.ranks.is_main:
            with self._phase("checkpoint"):
                save_checkpoint(self.plan.checkpoint_dir, self.state, self.saved.student, self.saved.optimizer,
                                self.saved.cache)

    def stop_interrupted(self) -> None:
        """Ctrl-C: log what is pending, checkpoint, tell the user how to continue, stop."""
        if self.window_steps:
            self._log(self.lr, False)
        self._save()
        self.ranks.barrier()  # no rank leaves (and gets the others stopped) before the checkpoint is saved
        message = (f"stopped at step {self.state.step}; checkpoint saved in {self.plan.checkpoint_dir}; "
                   "run the same command with --resume to continue")
        self.reporter.stop()
        self.reporter.message(message)
        raise DistillInterrupted(message)

    def outcome(self) -> LoopOutcome:
        import torch

        session_time = max(time.perf_counter() - self.session_start, 1e-9)
        self._save()
        per_rank = self.ranks.gather_rows(torch.tensor([self.rank_samples / session_time]))
        return LoopOutcome(state=self.state, stopped_by=self.stopped_by, resumed_from_step=self.resumed_from,
                           batches_per_epoch=self.per_epoch, session_time_s=session_time,
                           session_samples=self.session_samples, session_tokens=self.session_tokens,
                           rank_samples_per_s=[round(float(r), 2) for r in per_rank])


# The keys every history entry has; any other key is a quality figure (the entry was an evaluation).
_LOG_KEYS = {"step", "loss", "lr", "samples_per_s", "tokens_per_s", "elapsed_s", "epoch"}


def _last(history: list[dict[str, Any]], key: str, default: float) -> float:
    return next((e[key] for e in reversed(history) if e.get(key) is not None), default)
