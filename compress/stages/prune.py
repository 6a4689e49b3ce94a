"""The prune stage: a pruned copy of the student in ``RUN_DIR/prune`` when the family prunes and the
options or the profile ask for it (encoders: structured pruning with a recovery distillation).

The family plans it (:meth:`TaskFamily.prune_plan`); this module runs it, resumable, and says
which folder the export reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.stages.outputs import Pruned
from export.base.stages import run_stage

if TYPE_CHECKING:
    from compress.chain_state import ChainContext
    from compress.stages.family import TaskFamily

STAGE = "prune"


def run_prune(ctx: ChainContext, family: TaskFamily) -> Pruned:
    """Prune into ``RUN_DIR/prune`` (or not: the student folder is what export reads then)."""
    if not family.prunes:
        return Pruned(family.student_dir(ctx), None)
    plan = family.prune_plan(ctx)
    if plan is None:
        return Pruned(family.student_dir(ctx), "not needed")
    out = ctx.run_dir / STAGE
    run = run_stage(out, plan.record, plan.work, resume=True)
    if run.status == "skipped":
        ctx.reporter.message(f"prune: up to date in {out}; skipped")
    return Pruned(out, run.status)
