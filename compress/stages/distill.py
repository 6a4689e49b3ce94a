"""The distill stage: the family trains its student (the stage itself is the family's distillation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compress.chain_state import ChainContext
    from compress.stages.family import TaskFamily
    from export.base.stages import StageRun


def run_distill(ctx: ChainContext, family: TaskFamily) -> StageRun:
    """Distill (or skip, when up to date) into ``RUN_DIR/distill``."""
    return family.distill(ctx)
