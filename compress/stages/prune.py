"""The prune stage: structured pruning of the distilled student, with a short recovery distillation.

It runs when the options or the profile ask for a fraction of heads or FFN neurons, and only for
families that prune; otherwise the distilled student goes to export as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.chain_state import PruneOptions
from compress.stages.outputs import Pruned
from export.base.records import read_record, stage_status

if TYPE_CHECKING:
    from compress.chain_state import ChainContext
    from compress.stages.family import TaskFamily


def run_prune(ctx: ChainContext, family: TaskFamily) -> Pruned:
    """Prune into ``RUN_DIR/prune`` when asked; the folder export should read either way."""
    from compress.prune.stage import PruneConfig, prune_model

    student = family.student_dir(ctx)
    if not family.prunable:
        return Pruned(student, None)
    prune = ctx.options.prune or PruneOptions(**ctx.profile.distill.prune.model_dump())
    if not prune.wanted:
        return Pruned(student, "not needed")
    out = ctx.run_dir / "prune"
    before = read_record(out)
    prune_model(student, out,
                PruneConfig(heads=prune.heads, ffn=prune.ffn, data=ctx.config.data,
                            teacher=str(family.teacher_dir(ctx.distilled)), recover_steps=prune.recover_steps,
                            compare=False),
                profile=ctx.profile, resume=True, log=lambda text: ctx.reporter.message(f"prune: {text}"))
    status = stage_status(before, read_record(out))
    if status == "skipped":
        ctx.reporter.message(f"prune: up to date in {out}; skipped")
    return Pruned(out, status)
