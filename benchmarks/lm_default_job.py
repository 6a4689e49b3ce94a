"""The language-model default job: SmolLM2-135M-Instruct distilled for a Raspberry Pi 5, student vs teacher.

Runs ``compress distill --teacher smollm2 --profile PROFILE --out RUN_DIR`` (the whole chain, in a
child process), unless ``--no-chain`` reuses RUN_DIR as it is. Then, on this host, in one process
with runs interleaved (``compare_generation_bench``): greedy generation of ``--new-tokens`` after a
128-token prompt with the KV cache, for

* the released student (RUN_DIR/run.json's final model, int4 weight-only for CPU profiles) vs the
  teacher's fp32 ONNX export (RUN_DIR/teacher/model.onnx);
* the student's own fp32 export (RUN_DIR/export/model.onnx) vs the same teacher.

Quality comes from the run itself: perplexity, next-token and greedy agreement on the held-out
split (PyTorch, distill/stage.json) and the perplexity cost of quantization (quantize/stage.json).

    python benchmarks/lm_default_job.py                        # ~12 minutes here
    python benchmarks/lm_default_job.py --no-chain --run runs/raspberry-pi-5

Prints a table and writes benchmarks/results/lm_default_job-PROFILE.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from record import RESULTS_DIR, ROOT, ResultRecord, run_distill  # first: puts the checkout on sys.path

from export.runtime.generation_bench import compare_generation_bench
from export.runtime.host import detect_host
from export.runtime.profiles import load_profile
from export.run_summary import read_run_summary


def measure(model: Path, teacher: Path, profile, threads: int, runs: int, new_tokens: int) -> dict:
    report = compare_generation_bench(model, teacher, profile, runs=runs, warmup=1, threads=threads,
                                      new_tokens=new_tokens)
    side = {}
    for label, r in (("model", report.model), ("teacher", report.other)):
        side[label] = {"path": str(r.model.path), "size_mb": round(r.model.size_mb, 2),
                       "ttft_p50_ms": round(r.ttft_ms.p50, 2), "tpot_p50_ms": round(r.tpot_ms.p50, 2),
                       "tpot_p95_ms": round(r.tpot_ms.p95, 2), "tokens_per_s": round(r.tokens_per_s, 2)}
    side["tokens_per_s_ratio"] = round(report.model.tokens_per_s / report.other.tokens_per_s, 3)
    return side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="raspberry-pi-5")
    parser.add_argument("--run", type=Path, default=None, help="run directory (default: runs/PROFILE)")
    parser.add_argument("--no-chain", action="store_true", help="measure RUN_DIR as it is")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="timed generations per model (interleaved)")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    record = ResultRecord.start("lm_default_job")
    profile = load_profile(args.profile)
    run_dir = args.run or ROOT / "runs" / profile.name
    chain_s = None if args.no_chain else run_distill("--teacher", "smollm2", "--profile", args.profile, "--out", str(run_dir))
    summary = read_run_summary(run_dir)
    distill = json.loads((run_dir / "distill" / "stage.json").read_text())
    quantize = json.loads((run_dir / "quantize" / "stage.json").read_text())["metrics"]["result"]
    teacher = run_dir / "teacher" / "model.onnx"
    rows = {}
    for label, model in (("released", run_dir / summary.final_model), ("fp32 student", run_dir / "export" / "model.onnx")):
        print(f"generating with {label} ({model.parent.name}/{model.name}) and the teacher ...", file=sys.stderr)
        rows[label] = measure(model, teacher, profile, args.threads, args.runs, args.new_tokens)

    host = detect_host()
    out = RESULTS_DIR / f"lm_default_job-{profile.name}.json"
    m = distill["metrics"]
    payload = record.finish(
        out, host,
        profile=profile.name, precision=summary.precision, verdict=summary.verdict,
        chain_wall_s=round(chain_s, 1) if chain_s is not None else None,
        stage_durations_s={name: json.loads((run_dir / name / "stage.json").read_text())["duration_s"]
                           for name in ("distill", "export", "teacher", "quantize", "bench", "gate")
                           if (run_dir / name / "stage.json").is_file()},
        student={"spec": m["student"], "layers": m["student_layers"], "parameters": m["student_parameters"],
                 "teacher_parameters": m["teacher_parameters"], "training": {
                     k: v for k, v in m["training"].items() if k != "loss_history"}},
        quality=m["quality"],
        quantization={k: quantize[k] for k in ("method", "size_mb", "fp32_size_mb", "perplexity_fp32", "perplexity",
                                               "perplexity_ratio", "block_size")},
        workload={"prompt_length": 128, "new_tokens": args.new_tokens, "threads": args.threads, "runs": args.runs},
        results=rows,
    )

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"language-model default job, {profile.name} · {host.describe()} · 128-token prompt, "
                        f"{args.new_tokens} new tokens, {args.threads} threads", title_justify="left")
    for column in ("model", "size MB", "TTFT p50 ms", "TPOT p50 ms", "tokens/s", "vs teacher"):
        table.add_column(column, justify="left" if column == "model" else "right")
    teacher_row = rows["released"]["teacher"]
    table.add_row("teacher (fp32)", f"{teacher_row['size_mb']:.1f}", f"{teacher_row['ttft_p50_ms']:.1f}",
                  f"{teacher_row['tpot_p50_ms']:.1f}", f"{teacher_row['tokens_per_s']:.1f}", "1.00x")
    for label, r in rows.items():
        name = f"{label} ({summary.precision})" if label == "released" else label
        table.add_row(name, f"{r['model']['size_mb']:.1f}", f"{r['model']['ttft_p50_ms']:.1f}",
                      f"{r['model']['tpot_p50_ms']:.1f}", f"{r['model']['tokens_per_s']:.1f}",
                      f"{r['tokens_per_s_ratio']:.2f}x")
    Console().print(table)
    q = m["quality"]
    print(f"held-out: perplexity teacher {q['teacher_perplexity']:.2f}, student {q['student_perplexity']:.2f}; "
          f"next-token agreement {q['next_token_agreement']:.4f}; chain wall time {payload['chain_wall_s']} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
