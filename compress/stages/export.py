"""The export and teacher stages: a model folder to ONNX, parity-checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compress.chain_state import ChainContext
    from compress.stages.family import TaskFamily
    from compress.stages.outputs import Exported


def run_export(ctx: ChainContext, family: TaskFamily, model_dir: Path, name: str) -> Exported:
    """Export ``model_dir`` into ``RUN_DIR/<name>`` (``export`` for the student, ``teacher`` for the teacher)."""
    what = "the teacher" if name == "teacher" else "the student"
    ctx.reporter.message(f"{name}: exporting {what} to ONNX and checking parity with PyTorch")
    exported = family.export(ctx, model_dir, ctx.run_dir / name)
    ctx.reporter.message(f"{name}: {exported.model} ({exported.parity}, {exported.status})")
    return exported
