"""What measuring over SSH costs: `compress bench --on` against a local `bench` of the same model.

The "board" is this machine, reached through the system's OpenSSH client and an SSH server on
127.0.0.1 (tests/ssh_server.py, a throw-away key), so the two measure the same hardware and any
difference is the remote path's own (the runtime zipapp instead of the installed package, a fresh
process on the board). Rounds alternate local and remote; each round is one bench of RUNS runs.

    python benchmarks/remote_overhead.py --model runs/x86-avx512-vnni/export/model.onnx

Prints a table and writes benchmarks/results/remote_overhead.json. Goal: remote p50 within 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from record import RESULTS_DIR, ROOT, ResultRecord  # first: puts the checkout on sys.path

from export.remote import parse_target, remote_bench
from export.runtime.bench import run_bench
from export.runtime.host import detect_host
from export.runtime.profiles import load_profile
from tests import ssh_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "x86-avx512-vnni" / "export" / "model.onnx")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"{args.model} not found: run the default job first, or pass --model")

    record = ResultRecord.start("remote_overhead")
    profile = load_profile("host")
    rows = []
    with tempfile.TemporaryDirectory(prefix="remote-overhead-") as scratch:
        folder = Path(scratch)
        keys = ssh_server.make_keys(folder)
        server, port = ssh_server.start(keys, folder / "board", sys.executable)
        try:
            os.environ["COMPRESS_SSH_CONFIG"] = str(ssh_server.ssh_config(keys, folder, {"board": port}))
            target = parse_target("ssh://board")
            for round_number in range(1, args.rounds + 1):
                local = run_bench(args.model, profile, runs=args.runs, warmup=20, threads=args.threads)
                remote = remote_bench(target, args.model, Path(profile.source), runs=args.runs, warmup=20,
                                      threads=args.threads)
                rows.append({"round": round_number, "local_p50_ms": round(local.latency.p50_ms, 3),
                             "remote_p50_ms": round(remote["latency"]["p50_ms"], 3),
                             "local_p95_ms": round(local.latency.p95_ms, 3),
                             "remote_p95_ms": round(remote["latency"]["p95_ms"], 3)})
                print(f"round {round_number}: local {rows[-1]['local_p50_ms']} ms, remote "
                      f"{rows[-1]['remote_p50_ms']} ms", file=sys.stderr)
        finally:
            server.kill()
            server.wait()

    ratios = [r["remote_p50_ms"] / r["local_p50_ms"] for r in rows]
    summary = {"median_remote_over_local_p50": round(statistics.median(ratios), 4),
               "min_ratio": round(min(ratios), 4), "max_ratio": round(max(ratios), 4),
               "within_5_percent": abs(statistics.median(ratios) - 1) <= 0.05}
    record.finish(RESULTS_DIR / "remote_overhead.json", detect_host(), model=str(args.model),
                  workload={"batch_size": 1, "sequence_length": 128, "threads": args.threads, "runs": args.runs,
                            "rounds": args.rounds}, results=rows, summary=summary)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"remote (SSH to 127.0.0.1) vs local bench · {detect_host().describe()}", title_justify="left")
    for column in ("round", "local p50 ms", "remote p50 ms", "remote / local"):
        table.add_column(column, justify="right")
    for row, ratio in zip(rows, ratios):
        table.add_row(str(row["round"]), f"{row['local_p50_ms']:.2f}", f"{row['remote_p50_ms']:.2f}", f"{ratio:.3f}")
    Console().print(table)
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
