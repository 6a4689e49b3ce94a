"""How much of the machine a distillation step uses: useful tokens/s, FLOP/s against the host's measured peak,
and where each step's time goes; the code at a baseline commit beside the code checked out, runs alternated.

Students measured (each on the default corpus's training split, same seed, so every run of a student
trains on exactly the same batches):

* ``jetson``: the jetson default, a 3-layer cut of all-MiniLM-L6-v2 with layer transfer (hidden_weight 1);
* ``x86``: the x86-avx512-vnni profile's searched student (2 layers, 288 wide), no layer transfer;
* ``lm``: the SmolLM2 student of the LM default job (``--student auto``), top-k logits of the teacher.

Each run is ``compress.encoder.distill`` (or the LM stage) in a child process with ``PYTHONPATH`` at the
checkout being measured: ``--baseline REF`` makes a git worktree of REF (default: the last commit before the
throughput work) and runs the same students there. Useful tokens are the batches' non-padding tokens (the
same for every run of a student: same seed, same batches). Model FLOPs: 6 x matmul parameters x useful tokens
for the student (forward and backward), 2 x the teacher's x the tokens it ran on (cached rows cost none);
embedding tables and attention scores left out. The peak is torch's own matmul on this host at the training's
threads and shapes (batch tokens x hidden x 4 hidden), fp32 and, where the CPU has it natively, bf16.

    python benchmarks/train_throughput.py                   # all three students, ~25 minutes on 2 cores
    python benchmarks/train_throughput.py --students jetson --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import RESULTS_DIR, ROOT, ResultRecord  # first: puts the checkout on sys.path

# The last commit before the step was made cheaper (bf16 on the CPU, teacher-state cache, math-SDPA backward,
# attention dropout honoured, frozen word embeddings).
DEFAULT_BASELINE = "97008b5"

STUDENTS = {
    "jetson": {"family": "encoder", "student": "layers=3", "hidden_weight": 1.0, "epochs": 2.0},
    "x86": {"family": "encoder", "student": "layers=2,hidden=288,heads=9,ffn=1152", "hidden_weight": 0.0,
            "epochs": 1.0},
    "lm": {"family": "lm", "student": "auto", "max_steps": 12},
}

# Runs in the child: one distillation, its figures as one JSON line on stdout.
WORKER = r'''
import json, sys, tempfile, time
from pathlib import Path
spec = json.loads(sys.argv[1])
import torch
torch.set_num_threads(spec["threads"])
from compress.training.progress import QuietReporter
def matmul_parameters(model):
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)
with tempfile.TemporaryDirectory() as work:
    if spec["family"] == "encoder":
        try:
            from compress.encoder import DistillConfig, distill
            from compress.encoder.teacher import load_teacher
        except ImportError:  # a baseline from before the families had their own packages
            from compress.distill import DistillConfig, distill
            from compress.distill.teacher import load_teacher
        fields = {k: spec[k] for k in ("student", "hidden_weight", "epochs") if k in spec}
        fields.update(spec.get("settings", {}))
        config = DistillConfig(eval_points=0, threads=spec["threads"], **fields)
        started = time.perf_counter()
        result = distill(config, Path(work), reporter=QuietReporter())
        wall = time.perf_counter() - started
        t = result.training
        from transformers import AutoModel
        student = AutoModel.from_pretrained(result.student_dir)
        teacher = load_teacher(None).model
        q = result.quality
        out = {"steps": t.steps, "epochs": t.epochs, "train_s": t.train_time_s, "samples": t.samples_seen,
               "tokens": getattr(t, "tokens", None), "teacher_tokens": getattr(t, "teacher_tokens", None),
               "phases": getattr(t, "phase_seconds", {}), "precision": result.precision, "wall_s": wall,
               "teacher_cache": t.teacher_cache,
               "student_matmul_params": matmul_parameters(student), "teacher_matmul_params": matmul_parameters(teacher),
               "cosine": q.teacher_agreement, "top10": q.neighbour_agreement, "spearman": q.similarity_spearman}
    else:
        from compress.lm.config import LMDistillConfig
        from compress.lm.stage import run_lm_distill_stage
        config = LMDistillConfig(teacher="smollm2", student=spec["student"], max_steps=spec["max_steps"],
                                 threads=spec["threads"])
        started = time.perf_counter()
        run = run_lm_distill_stage(Path(work), config, None, QuietReporter())
        wall = time.perf_counter() - started
        m = run.record.metrics
        t = m["training"]
        out = {"steps": t["steps"], "train_s": t["train_time_s"], "tokens_per_s": t["tokens_per_s"],
               "phases": t.get("phase_seconds", {}), "precision": t["precision"], "wall_s": wall,
               "student_matmul_params": m.get("student_parameters"), "teacher_matmul_params": m.get("teacher_parameters")}
print("RESULT " + json.dumps(out))
'''


def measured_peaks(threads: int, rows: int, width: int) -> dict[str, float]:
    """GFLOP/s of torch.mm at the training's shapes (``rows`` tokens x ``width`` x 4 ``width``), best of 10."""
    import torch

    from compress.training.device import cpu_bf16_flag

    torch.set_num_threads(threads)
    peaks = {}
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if cpu_bf16_flag() else {})}
    for name, dtype in dtypes.items():
        a, b = torch.randn(rows, width, dtype=dtype), torch.randn(width, 4 * width, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b)
        best = float("inf")
        for _ in range(10):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        peaks[name] = round(2 * rows * width * 4 * width / best / 1e9, 1)
    return peaks


def run_once(checkout: Path, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], cwd=checkout, env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{spec} in {checkout} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def worktree(ref: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=ROOT, check=True,
                   capture_output=True)
    return where


def summarise(name: str, runs: list[dict], peaks: dict[str, float], tokens: int | None) -> dict:
    """Medians over the runs of one checkout and student, with FLOP/s and the share of the host's peak."""
    import statistics

    train_s = statistics.median(r["train_s"] for r in runs)
    first = runs[0]
    if tokens is None:  # the LM stage reports tokens/s itself
        tokens_per_s = statistics.median(r["tokens_per_s"] for r in runs)
        tokens = round(tokens_per_s * train_s)
    else:
        tokens_per_s = tokens / train_s
    teacher_tokens = first.get("teacher_tokens")
    if teacher_tokens is None:  # the baseline ran the teacher on every batch
        teacher_tokens = tokens
    student_flops = 6 * first["student_matmul_params"] * tokens / train_s
    teacher_flops = 2 * (first["teacher_matmul_params"] or 0) * teacher_tokens / train_s
    peak = peaks.get("bf16" if "bf16" in str(first["precision"]) else "fp32", peaks["fp32"])
    phases = {k: round(statistics.median(r["phases"].get(k, 0.0) for r in runs) / train_s, 4)
              for k in first.get("phases", {})}
    row = {"run": name, "precision": first["precision"], "steps": first["steps"], "train_s": round(train_s, 1),
           "useful_tokens": tokens, "useful_tokens_per_s": round(tokens_per_s, 1),
           "samples_per_s": round(first.get("samples", 0) / train_s, 1) if first.get("samples") else None,
           "student_gflops": round(student_flops / 1e9, 1), "teacher_gflops": round(teacher_flops / 1e9, 1),
           "utilisation": round((student_flops + teacher_flops) / (peak * 1e9), 4), "peak_gflops": peak,
           "phase_shares": phases, "runs": runs}
    for key in ("cosine", "top10", "spearman"):
        if first.get(key) is not None:
            row[key] = round(statistics.median(r[key] for r in runs), 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", default="jetson,x86,lm", help="comma-separated: jetson, x86, lm")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="the git ref to measure beside the checkout")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each checkout per encoder student, alternated")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every run's epochs and steps (a dry run: 0.05)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "train_throughput.json")
    args = parser.parse_args()
    record = ResultRecord.start("train_throughput")
    peaks = measured_peaks(args.threads, rows=544, width=384)  # a jetson batch: 32 texts x 17 tokens
    print(f"torch.mm peak at 544 x 384 x 1536, {args.threads} threads: {peaks} GFLOP/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base = worktree(args.baseline, Path(scratch) / "baseline")
        try:
            for student in args.students.split(","):
                spec = {**STUDENTS[student], "threads": args.threads}
                for key in ("epochs", "max_steps"):
                    if key in spec:
                        spec[key] = max(type(spec[key])(spec[key] * args.scale), 1)
                repeats = 1 if spec["family"] == "lm" else args.repeats
                measured: dict[str, list[dict]] = {"baseline": [], "now": []}
                for _ in range(repeats):
                    for name, checkout in (("baseline", base), ("now", ROOT)):
                        measured[name].append(run_once(checkout, spec))
                        print(f"{student} {name}: {json.dumps({k: v for k, v in measured[name][-1].items() if k != 'phases'})}",
                              flush=True)
                tokens = measured["now"][0].get("tokens")
                for name, runs in measured.items():
                    rows.append({"student": student, **summarise(name, runs, peaks, tokens)})
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    header = (f"{'student':8} {'run':9} {'prec':14} {'steps':>6} {'train s':>8} {'tokens/s':>9} {'student GF/s':>12} "
              f"{'teacher GF/s':>12} {'of peak':>8} {'cosine':>7} {'top-10':>7} {'spearman':>8}")
    print(header)
    for row in rows:
        print(f"{row['student']:8} {row['run']:9} {row['precision']:14} {row['steps']:>6} {row['train_s']:>8} "
              f"{row['useful_tokens_per_s']:>9} {row['student_gflops']:>12} {row['teacher_gflops']:>12} "
              f"{row['utilisation']:>8.1%} {row.get('cosine', ''):>7} {row.get('top10', ''):>7} {row.get('spearman', ''):>8}")
        if row["phase_shares"]:
            print("          phases: " + ", ".join(f"{k} {v:.0%}" for k, v in row["phase_shares"].items() if v))
    ratios = {}
    for student in {r["student"] for r in rows}:
        pair = {r["run"]: r for r in rows if r["student"] == student}
        if "baseline" in pair and "now" in pair:
            ratios[student] = round(pair["now"]["useful_tokens_per_s"] / pair["baseline"]["useful_tokens_per_s"], 3)
    print(f"useful tokens/s, now over baseline: {ratios}")
    record.finish(args.out, baseline=args.baseline, peaks_gflops=peaks, rows=rows, speedup=ratios)


if __name__ == "__main__":
    main()
