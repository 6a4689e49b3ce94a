"""The quantize stage: the release precision the profile asks for, measured against the fp32 export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.stages.outputs import Quantized

if TYPE_CHECKING:
    from compress.chain_state import ChainContext
    from compress.stages.family import TaskFamily


def run_quantize(ctx: ChainContext, family: TaskFamily, fp32: Path) -> Quantized:
    """Quantize ``fp32`` into ``RUN_DIR/quantize`` (not needed when the release precision is fp32)."""
    method = family.release_precision(ctx)
    if method == "fp32":
        return Quantized("not needed")
    return family.quantize(ctx, fp32, method)
