"""The language-model default job: SmolLM2-135M-Instruct for a Raspberry Pi 5, every release candidate vs the teacher.

Runs ``compress distill --teacher smollm2 --profile PROFILE --out RUN_DIR`` (the whole chain, in a
child process), unless ``--no-chain`` reuses RUN_DIR as it is. The chain's release stage measured
every candidate (the distilled student int4 and fp32, the teacher int4 and int8) and released the
fastest that meets the profile's quality budgets. Here, on this host, in one process with runs
interleaved (``bench_side_by_side``), greedy generation of ``--new-tokens`` after a 128-token
prompt with the KV cache, for the teacher's fp32 ONNX export and every candidate, with more runs
than the chain's. Quality is the release stage's: ONNX perplexity over the fp32 teacher's and
next-token agreement with it on held-out texts (release/candidates.json).

The targets (issue: small language models good enough to ship): a released model >= 3x the fp32
teacher's tokens/s at <= 1.3x its perplexity and next-token agreement >= 0.85; beside it, the
fastest candidate that keeps perplexity <= 2x.

    python benchmarks/lm_default_job.py                        # ~14 minutes here
    python benchmarks/lm_default_job.py --no-chain --run runs/raspberry-pi-5

Prints a table and writes benchmarks/results/lm_default_job-PROFILE.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from record import RESULTS_DIR, ROOT, ResultRecord, run_distill  # first: puts the checkout on sys.path

from export.runtime.generation_bench import bench_side_by_side
from export.runtime.host import detect_host
from export.runtime.profiles import load_profile
from export.runtime.release_choice import ReleaseChoice
from export.run_summary import read_run_summary


def measure(models: dict[str, Path], teacher: Path, profile, threads: int, runs: int, new_tokens: int) -> dict:
    """tokens/s, TTFT and TPOT of the teacher and every model, generations interleaved in one process."""
    reports = bench_side_by_side([teacher, *models.values()], profile, runs=runs, warmup=1, threads=threads,
                                 new_tokens=new_tokens)
    rows = {}
    for label, r in zip(["teacher (fp32)", *models], reports):
        rows[label] = {"path": str(r.model.path), "size_mb": round(r.model.size_mb, 2),
                       "ttft_p50_ms": round(r.ttft_ms.p50, 2), "tpot_p50_ms": round(r.tpot_ms.p50, 2),
                       "tpot_p95_ms": round(r.tpot_ms.p95, 2), "tokens_per_s": round(r.tokens_per_s, 2),
                       "tokens_per_s_ratio": round(r.tokens_per_s / reports[0].tokens_per_s, 3)}
    return rows


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
    choice = ReleaseChoice.from_json(run_dir / "release" / "candidates.json")
    teacher = run_dir / "teacher" / "model.onnx"
    print(f"generating with the teacher and {len(choice.candidates)} candidates, interleaved ...", file=sys.stderr)
    rows = measure({c.name: run_dir / c.model for c in choice.candidates}, teacher, profile, args.threads, args.runs,
                   args.new_tokens)
    for c in choice.candidates:
        rows[c.name].update(perplexity_ratio=c.quality["perplexity_ratio"],
                            next_token_agreement=c.quality["next_token_agreement"], passes=c.passes,
                            released=c.name == choice.released, source=c.source, precision=c.precision)

    def meets_target(row: dict) -> bool:
        return row["tokens_per_s_ratio"] >= 3 and row["perplexity_ratio"] <= 1.3 and row["next_token_agreement"] >= 0.85

    within_2x = [name for name, r in rows.items() if "perplexity_ratio" in r and r["perplexity_ratio"] <= 2.0]
    fastest_2x = max(within_2x, key=lambda n: rows[n]["tokens_per_s"], default=None)
    released = choice.released
    host = detect_host()
    out = RESULTS_DIR / f"lm_default_job-{profile.name}.json"
    m = distill["metrics"]
    payload = record.finish(
        out, host,
        profile=profile.name, precision=summary.precision, verdict=summary.verdict,
        chain_wall_s=round(chain_s, 1) if chain_s is not None else None,
        stage_durations_s={name: json.loads((run_dir / name / "stage.json").read_text())["duration_s"]
                           for name in ("distill", "export", "teacher", "quantize", "release", "bench", "gate")
                           if (run_dir / name / "stage.json").is_file()},
        student={"spec": m["student"], "layers": m["student_layers"], "parameters": m["student_parameters"],
                 "teacher_parameters": m["teacher_parameters"], "training": {
                     k: v for k, v in m["training"].items() if k != "loss_history"}},
        distill_quality=m["quality"],
        released=released, why=choice.why, release_stage_measured_on=choice.measured_on,
        targets={"released_3x_at_1.3x_perplexity_and_0.85_agreement": bool(released and meets_target(rows[released])),
                 "any_candidate_meets_it": any(meets_target(r) for n, r in rows.items() if "perplexity_ratio" in r),
                 "fastest_within_2x_perplexity": fastest_2x},
        workload={"prompt_length": 128, "new_tokens": args.new_tokens, "threads": args.threads, "runs": args.runs},
        results=rows,
    )

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"language-model default job, {profile.name} · {host.describe()} · 128-token prompt, "
                        f"{args.new_tokens} new tokens, {args.threads} threads", title_justify="left")
    for column in ("model", "MB", "TTFT ms", "TPOT ms", "tokens/s", "vs teacher", "ppl ratio", "agreement", "ok"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, r in rows.items():
        mark = " (released)" if name == released else ""
        table.add_row(name + mark, f"{r['size_mb']:.1f}", f"{r['ttft_p50_ms']:.1f}", f"{r['tpot_p50_ms']:.1f}",
                      f"{r['tokens_per_s']:.1f}", f"{r['tokens_per_s_ratio']:.2f}x",
                      f"{r.get('perplexity_ratio', 1.0):.3f}", f"{r.get('next_token_agreement', 1.0):.3f}",
                      {True: "yes", False: "no"}.get(r.get("passes"), "-"))
    Console(width=160).print(table)  # whole in a pipe or a log, not cut to 80 columns
    print(f"released: {released}: {choice.why}", file=sys.stderr)
    print(f"targets: {json.dumps(payload['targets'])}; chain wall time {payload['chain_wall_s']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
