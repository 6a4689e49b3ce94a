"""The release stage: every model that could ship, measured side by side, and the one released.

The family names the candidates and measures them (the student in each precision; for language
models the teacher quantized too); the choice is the fastest that meets every budget no host
changes (:func:`export.runtime.release_choice.choose_release`). ``RUN_DIR/release/candidates.json``
holds the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.stages.outputs import Released
from export.base.stages import run_stage

if TYPE_CHECKING:
    from compress.chain_state import ChainContext
    from compress.stages.family import TaskFamily

STAGE = "release"


def run_release(ctx: ChainContext, family: TaskFamily, student_fp32: Path, teacher: Path) -> Released | None:
    """Measure the candidates and choose (None: the family has no candidate beside the release)."""
    from export.runtime.release_choice import ReleaseChoice

    plan = family.release_plan(ctx, student_fp32, teacher)
    if plan is None:
        return None
    run = run_stage(ctx.run_dir / STAGE, plan.record, plan.work)
    choice = ReleaseChoice.from_json(run.path("candidates"))
    chosen = choice.chosen
    if chosen is None:
        ctx.reporter.warning(f"release: {choice.why}; the quantize stage's choice stays the release")
        return Released(run.status, choice)
    ctx.reporter.message(f"release: {chosen.name}: {choice.why}")
    return Released(run.status, choice, ctx.run_dir / chosen.model, chosen.precision)
