"""The default job's released student against its teacher: latency ratio and quality retained.

Runs ``compress distill --profile PROFILE --out RUN_DIR`` (the whole chain, in a child process so
that torch never loads into the measuring process), unless ``--no-chain`` reuses RUN_DIR as it
is. Then, on this host, in one process with runs interleaved (``compare_bench``):

* each release candidate (the student in fp32 and in the profile's precision,
  RUN_DIR/release/candidates.json; the released one marked) vs the teacher's fp32 ONNX export
  (RUN_DIR/teacher/model.onnx),

at batch 1, 128 tokens, CPU provider, ``--threads`` intra-op threads. Quality: mean cosine and
top-10 neighbour agreement with the teacher's embeddings on the distillation's held-out split and
on the cross-domain genre (a whole genre never trained on), each model fed through its own
tokenizer. When ``--student auto`` searched the shape, the search (candidates, the chosen one, the
latency model's basis) and each candidate's estimated p95 on this host against the measured one
are recorded: the latency model's error.

    python benchmarks/default_job.py --profile x86-avx512-vnni       # ~11 minutes here
    python benchmarks/default_job.py --profile jetson --no-chain --run runs/jetson-orin-nano
    python benchmarks/default_job.py --teacher mpnet --time-budget 20m   # all-mpnet-base-v2 (installed pieces)

Prints a table and writes benchmarks/results/default_job-PROFILE.json (default_job-PROFILE-TEACHER.json
with --teacher).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from record import RESULTS_DIR, ROOT, ResultRecord, run_distill  # first: puts the checkout on sys.path

from compress.evaluate import agreement_with_teacher
from export.runtime.bench import compare_bench
from export.runtime.host import detect_host
from export.runtime.profiles import load_profile
from export.run_summary import read_run_summary
from export.runtime.samples import read_texts


def measure(model: Path, teacher: Path, threads: int, runs: int) -> dict:
    base = load_profile("host")
    profile = base.model_copy(update={"runtime": base.runtime.model_copy(
        update={"providers": ["CPUExecutionProvider"], "intra_op_threads": threads})})
    report = compare_bench(model, teacher, profile, batch_size=1, sequence_length=128, runs=runs, warmup=20,
                           progress=False)
    return {"model": str(model), "size_mb": round(report.model.model.size_mb, 2),
            "p50_ms": round(report.model.latency.p50_ms, 3), "p95_ms": round(report.model.latency.p95_ms, 3),
            "teacher_p50_ms": round(report.other.latency.p50_ms, 3),
            "teacher_p95_ms": round(report.other.latency.p95_ms, 3),
            "teacher_size_mb": round(report.other.model.size_mb, 2),
            "speedup_p50": round(report.p50_ratio, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="x86-avx512-vnni")
    parser.add_argument("--run", type=Path, default=None, help="run directory (default: runs/PROFILE)")
    parser.add_argument("--no-chain", action="store_true", help="measure RUN_DIR as it is")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=300, help="timed runs per model (interleaved)")
    parser.add_argument("--teacher", default=None, help="a registered teacher name (default: the default teacher)")
    parser.add_argument("--time-budget", default=None, help="the chain's budget, e.g. 20m (default: the profile's)")
    args = parser.parse_args()

    record = ResultRecord.start("default_job")
    profile = load_profile(args.profile)
    suffix = f"-{args.teacher}" if args.teacher else ""
    run_dir = args.run or ROOT / "runs" / f"{profile.name}{suffix}"
    chain_args = ["--profile", args.profile, "--out", str(run_dir)]
    chain_args += ["--teacher", args.teacher] if args.teacher else []
    chain_args += ["--time-budget", args.time_budget] if args.time_budget else []
    chain_s = None if args.no_chain else run_distill(*chain_args)
    summary = read_run_summary(run_dir)
    teacher = run_dir / "teacher" / "model.onnx"
    held_out = run_dir / "distill" / "held_out.jsonl"
    texts = read_texts(held_out)
    stage = json.loads((run_dir / "distill" / "stage.json").read_text())["metrics"]

    cross_file = run_dir / "distill" / "cross_domain.jsonl"
    cross = read_texts(cross_file) if cross_file.is_file() else []
    choice = json.loads((run_dir / "release" / "candidates.json").read_text())
    rows = {}
    for candidate in choice["candidates"]:
        model = run_dir / candidate["model"]
        label = candidate["name"] + (" (released)" if candidate["name"] == choice["released"] else "")
        print(f"measuring {label} against the teacher ...", file=sys.stderr)
        row = measure(model, teacher, args.threads, args.runs)
        quality = agreement_with_teacher(model, teacher, texts, source="distill/held_out.jsonl")
        row.update(cosine=round(quality.teacher_agreement, 4), neighbours=round(quality.neighbour_agreement or 0, 4))
        if cross:
            crossed = agreement_with_teacher(model, teacher, cross, source="distill/cross_domain.jsonl")
            row.update(cross_cosine=round(crossed.teacher_agreement, 4),
                       cross_neighbours=round(crossed.neighbour_agreement or 0, 4))
        estimate = candidate["speed"].get("estimated_p95_ms")
        if estimate is not None:
            row.update(estimated_p95_ms=estimate, estimate_error=round(estimate / row["p95_ms"] - 1.0, 4))
        rows[label] = row
    search_file = run_dir / "distill" / "student_search.json"
    search = json.loads(search_file.read_text()) if search_file.is_file() else None

    host = detect_host()
    out = RESULTS_DIR / f"default_job-{profile.name}{suffix}.json"
    payload = record.finish(
        out, host,
        profile=profile.name, teacher=summary.teacher.name, time_budget=args.time_budget,
        precision=summary.precision, verdict=summary.verdict,
        chain_wall_s=round(chain_s, 1) if chain_s is not None else None,
        student={"spec": stage.get("student"), "parameters": summary.student.params,
                 "teacher_parameters": summary.teacher.params, "steps": stage["steps"],
                 "train_time_s": stage["train_time_s"], "device": stage["device"]},
        workload={"batch_size": 1, "sequence_length": 128, "threads": args.threads, "runs": args.runs},
        held_out_texts=len(texts), cross_domain_texts=len(cross),
        cross_domain_genre=stage.get("cross_domain_genre"),
        search=None if search is None else {
            "chosen": search["chosen"], "why": search["why"], "basis": search["basis"],
            "budget_p95_ms": search["budget_p95_ms"], "seconds": search["seconds"],
            "calibration_error": search["latency_model"]["calibration_error"],
            "candidates": [{"spec": c["spec"], "block_parameters": c["block_parameters"], "p95_ms": c["p95_ms"],
                            "fits": c["fits"]} for c in search["candidates"]]},
        released=choice["released"], release_why=choice["why"],
        results=rows,
    )

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"default job, {profile.name} · {host.describe()} · batch 1 × 128 tokens, "
                        f"{args.threads} threads", title_justify="left")
    for column in ("model", "size MB", "p50 ms", "p95 ms", "est. p95", "vs teacher p50", "cosine", "top-10",
                   "cross cosine", "cross top-10"):
        table.add_column(column, justify="left" if column == "model" else "right")
    first = next(iter(rows.values()))
    table.add_row("teacher (fp32)", f"{first['teacher_size_mb']:.1f}", f"{first['teacher_p50_ms']:.2f}",
                  f"{first['teacher_p95_ms']:.2f}", "", "1.00x", "1.0000", "1.0000", "1.0000", "1.0000")
    for label, r in rows.items():
        table.add_row(label, f"{r['size_mb']:.1f}", f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}",
                      f"{r['estimated_p95_ms']:.2f}" if "estimated_p95_ms" in r else "-",
                      f"{r['speedup_p50']:.2f}x", f"{r['cosine']:.4f}", f"{r['neighbours']:.4f}",
                      f"{r.get('cross_cosine', float('nan')):.4f}", f"{r.get('cross_neighbours', float('nan')):.4f}")
    Console(width=160).print(table)
    if search is not None:
        print(f"student: {search['chosen']} ({search['why']}; {search['basis']})")
    print(f"released: {choice['released']}: {choice['why']}")
    print(f"chain wall time {payload['chain_wall_s']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
