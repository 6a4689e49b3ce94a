"""The distill stage: the family's plan (what it reads and is set by, and its training) run on every rank.

The family says what distillation is for its teachers (:meth:`TaskFamily.distill_plan`: a
:class:`~export.base.stages.StagePlan` whose work is the family's trainer setup); this module runs
it into ``RUN_DIR/distill`` in place (checkpoints must survive an interruption), skipped when its
fingerprint is unchanged. Under torchrun every rank trains and rank 0 alone writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.parallel import run_stage_on_ranks

if TYPE_CHECKING:
    from compress.chain_state import ChainContext
    from compress.stages.family import TaskFamily
    from compress.training.progress import Reporter
    from export.base.stages import StagePlan, StageRun

STAGE = "distill"


def run_distill(ctx: ChainContext, family: TaskFamily) -> StageRun | None:
    """Distill for the chain (None on ranks other than 0)."""
    return run_distill_plan(ctx.run_dir, family.distill_plan(ctx), ctx.reporter)


def run_distill_plan(run_dir: str | Path, plan: StagePlan, reporter: Reporter) -> StageRun | None:
    """Run (or skip) ``plan`` into ``run_dir/distill``; None on ranks other than 0 under torchrun."""
    stage_dir = Path(run_dir) / STAGE
    run = run_stage_on_ranks(stage_dir, plan.record, plan.work, atomic=False)
    if run is not None and run.status == "skipped":
        reporter.message(f"distill: up to date in {stage_dir} (inputs and settings unchanged); skipped")
    return run
