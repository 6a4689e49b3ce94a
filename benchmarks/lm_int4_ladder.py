"""What each int4 setting of the quantization ladder costs and buys, on the LM default job's student.

Takes the fp32 student of a finished ``compress distill --teacher smollm2 --profile rpi5`` run
(RUN_DIR/export), writes it with every setting of ``export.lm_quantize.int4_ladder`` and block 16
alone, and measures each:
perplexity over the fp32 student's on the run's held-out texts (ONNX, the quantize stage's 32
texts), size, and greedy generation speed against the fp32 student in one process, runs
interleaved (128-token prompt, 64 new tokens, 2 threads).

    python benchmarks/lm_int4_ladder.py [--run runs/raspberry-pi-5]

Prints a table and writes benchmarks/results/lm_int4_ladder.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from record import RESULTS_DIR, ROOT, ResultRecord  # first: puts the checkout on sys.path

from compress.lm.stage import read_held_out_texts
from export.lm_quantize import Int4Setting, int4_ladder, write_int4
from export.lm_scores import onnx_perplexity
from export.runtime.generation_bench import compare_generation_bench
from export.runtime.host import detect_host
from export.runtime.profiles import load_profile

PERPLEXITY_TEXTS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "raspberry-pi-5")
    parser.add_argument("--runs", type=int, default=8, help="timed generations per model (interleaved)")
    args = parser.parse_args()
    record = ResultRecord.start("lm_int4_ladder")
    profile = load_profile("rpi5")
    fp32 = args.run / "export"
    texts = read_held_out_texts(args.run / "distill" / "held_out.jsonl")[:PERPLEXITY_TEXTS]
    base = onnx_perplexity(fp32, texts)
    results = []
    with tempfile.TemporaryDirectory(prefix="compress-ladder-") as scratch:
        for setting in [*int4_ladder(32), Int4Setting(16)]:
            folder = write_int4(fp32, Path(scratch) / setting.describe().replace(" ", "_").replace(",", ""),
                                setting).parent
            ratio = onnx_perplexity(folder, texts) / base
            speed = compare_generation_bench(folder / "model.onnx", fp32 / "model.onnx", profile, runs=args.runs,
                                             warmup=1, threads=2)
            results.append({"setting": setting.describe(), "perplexity_ratio": round(ratio, 4),
                            "size_mb": round(speed.model.model.size_mb, 1),
                            "tokens_per_s": round(speed.model.tokens_per_s, 1),
                            "fp32_tokens_per_s": round(speed.other.tokens_per_s, 1),
                            "vs_fp32": round(speed.model.tokens_per_s / speed.other.tokens_per_s, 3)})
            print(results[-1], file=sys.stderr)
    record.finish(RESULTS_DIR / "lm_int4_ladder.json", detect_host(), run=str(args.run), fp32_perplexity=round(base, 3),
                  perplexity_texts=len(texts), results=results)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"int4 settings on the LM default job's 6-layer student (fp32 perplexity {base:.2f})",
                  title_justify="left")
    for column in ("setting", "perplexity vs fp32", "size MB", "tokens/s", "vs fp32 student"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r["setting"], f"{r['perplexity_ratio']:.3f}x", f"{r['size_mb']:.1f}", f"{r['tokens_per_s']:.1f}",
                      f"{r['vs_fp32']:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
