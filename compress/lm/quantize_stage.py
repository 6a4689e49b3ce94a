"""The quantize stage for causal LMs: the fp32 export with its KV cache to int4 or 8-bit weights, or fp16.

Perplexity on held-out texts is measured before and after; int4 walks a ladder of settings until
one keeps the profile's quantization budget (:func:`export.lm_quantize.int4_ladder`). The ladder
is part of the stage's plan: a different one is a different stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.stages.outputs import Quantized
from export.base.records import FileRef, StageRecord
from export.base.stages import StageOutput, run_stage

if TYPE_CHECKING:
    from compress.chain_state import ChainContext

PERPLEXITY_TEXTS = 32


def run_lm_quantize_stage(ctx: ChainContext, fp32: Path, method: str, held_out: list[str]) -> Quantized:
    """Quantize the fp32 export to ``method`` into ``RUN_DIR/quantize`` (int4 through the settings ladder)."""
    from export.lm_quantize import LMQuantizeResult, int4_ladder, quantize_causal_lm

    texts = held_out[:PERPLEXITY_TEXTS]
    export_dir = fp32.parent
    budget = ctx.profile.budgets.quality.max_quantization_perplexity_ratio
    # The settings that may be tried are part of the plan: a different ladder is a different stage.
    ladder = [s.describe() for s in int4_ladder(ctx.options.block_size)] if method == "int4-weight" else []
    planned = StageRecord(stage="quantize", inputs={"model": FileRef.of(export_dir)},
                          params={"method": method, "block_size": ctx.options.block_size,
                                  "eval_texts": len(texts), "max_ratio": budget, "ladder": ladder})

    def work(tmp: Path) -> StageOutput:
        within = f" within {budget}x" if budget is not None else ""
        ctx.reporter.message(f"quantize: {method} for {ctx.profile.name}, perplexity against the fp32 student"
                             f"{within}")
        quantized = quantize_causal_lm(export_dir, tmp, method, block_size=ctx.options.block_size,
                                       eval_texts=texts, max_ratio=budget)
        quantized.out_path = ctx.run_dir / "quantize" / Path(quantized.out_path).name
        return StageOutput({"model": quantized.out_path.name}, {"result": quantized.to_json()})

    run = run_stage(ctx.run_dir / "quantize", planned, work)
    quantized = LMQuantizeResult.from_json(run.result)
    ctx.reporter.message(f"quantize: {quantized.size_mb:.1f} MiB (fp32 {quantized.fp32_size_mb:.1f}); perplexity "
                         f"on {len(texts)} held-out texts (ONNX) {quantized.perplexity_fp32:.2f} -> "
                         f"{quantized.perplexity:.2f} ({quantized.perplexity_ratio:.3f}x)")
    if len(quantized.tries) > 1 or quantized.within_budget is False:
        tried = "; ".join(f"{t['setting']} {t['perplexity_ratio']:.3f}x" for t in quantized.tries)
        verdict = "within" if quantized.within_budget else "none within"
        ctx.reporter.message(f"quantize: int4 settings tried ({verdict} {quantized.max_ratio}x): {tried}; "
                             f"released {quantized.setting}")
    return Quantized(run.status, run.path("model"), method)
