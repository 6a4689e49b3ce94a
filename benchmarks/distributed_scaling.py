"""Data-parallel distillation: samples/s of the default job's distill stage in 1 process against N.

The default job (all-MiniLM-L6-v2 -> the jetson profile's student, on the default corpus) runs its
distill stage for a fixed number of steps, as a user would start it: ``compress distill --nproc N``.
The cores are shared fairly: one process gets all of them as torch threads, N processes get
cores/N threads each. Runs are interleaved (1, N, 1, N, ...) so drift on a shared machine hits
both alike. samples/s is the distillation loop's own (global batch rows per second of training,
the held-out evaluations rank 0 makes on the way included); the all-reduce share is DDP's own
timers' share of forward + backward time spent in gradient all-reduce.

    python benchmarks/distributed_scaling.py [--steps 40] [--nproc 2] [--repeats 2]

Prints a table and writes benchmarks/results/distributed_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from record import RESULTS_DIR, ROOT, ResultRecord  # first: puts the checkout on sys.path

from export.runtime.host import detect_host


def run_once(nproc: int, threads: int, steps: int, out: Path) -> dict[str, object]:
    command = [sys.executable, "-m", "compress", "distill", "--profile", "jetson", "--stop-after", "distill",
               "--max-steps", str(steps), "--threads", str(threads), "--nproc", str(nproc), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    metrics = json.loads((out / "distill" / "stage.json").read_text())["metrics"]
    return {"processes": nproc, "threads_each": threads, "samples_per_s": metrics["samples_per_s"],
            "rank_samples_per_s": metrics["rank_samples_per_s"], "allreduce_share": metrics["allreduce_share"],
            "train_time_s": metrics["train_time_s"], "steps": metrics["steps"], "batch_size": metrics["batch_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    record = ResultRecord.start("distributed_scaling")
    host = detect_host()
    cores = host.usable_cores or os.cpu_count() or 1
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="compress-scaling-") as scratch:
        for repeat in range(args.repeats):
            for nproc in (1, args.nproc):
                threads = max(1, cores // nproc)
                runs.append(run_once(nproc, threads, args.steps, Path(scratch) / f"{nproc}-{repeat}"))
                print(runs[-1], file=sys.stderr)

    def median(nproc: int, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs if r["processes"] == nproc)  # type: ignore[arg-type]

    one, many = median(1, "samples_per_s"), median(args.nproc, "samples_per_s")
    shares = [float(r["allreduce_share"]) for r in runs if r["processes"] == args.nproc and r["allreduce_share"]]
    summary = {"samples_per_s_1": one, f"samples_per_s_{args.nproc}": many, "speedup": round(many / one, 3),
               "allreduce_share_median": round(statistics.median(shares), 3) if shares else None}
    record.finish(RESULTS_DIR / "distributed_scaling.json", host, job="default job (jetson), distill stage only",
                  steps=args.steps, usable_cores=cores, runs=runs, summary=summary)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"distill stage, {args.steps} steps, {host.cpu_model}, {cores} cores; median of "
                        f"{args.repeats} interleaved runs", title_justify="left")
    for column in ("processes", "threads each", "samples/s", "vs 1 process", "all-reduce share"):
        table.add_column(column, justify="right")
    table.add_row("1", str(max(1, cores)), f"{one:.1f}", "1.00x", "-")
    table.add_row(str(args.nproc), str(max(1, cores // args.nproc)), f"{many:.1f}", f"{many / one:.2f}x",
                  f"{summary['allreduce_share_median']:.0%}" if shares else "-")
    Console().print(table)


if __name__ == "__main__":
    main()
