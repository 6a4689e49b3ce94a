"""Learning from a teacher you can only query: SmolLM2 served over the OpenAI protocol, a 15-block student.

Serves SmolLM2-135M-Instruct with the test suite's chat/completions server (logprobs with bytes)
on 127.0.0.1, then runs, as a user would:

    compress distill --teacher-url http://127.0.0.1:PORT/v1 --teacher-model SmolLM2-135M-Instruct \\
        --student-from smollm2 --student keep=15 --teacher-answers 160 --answer-tokens 48 --time-budget 20m

and records what the run measured: the student's agreement with the teacher's held-out answers
before and after distillation, the answers' provenance, and the generation bench (release against
the starting model, interleaved).

    python benchmarks/endpoint_teacher.py                 # serve, run (about 35 minutes on 2 cores)
    python benchmarks/endpoint_teacher.py --from-run DIR  # record a run made with the command above

Writes benchmarks/results/endpoint_teacher.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from record import RESULTS_DIR, ROOT, ResultRecord  # first: puts the checkout on sys.path

SERVED = "SmolLM2-135M-Instruct"
ARGS = ["--student-from", "smollm2", "--student", "keep=15", "--teacher-answers", "160", "--answer-tokens", "48",
        "--time-budget", "20m"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_and_run(run: Path) -> None:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.chat_server", "smollm2", "--port", str(port), "--name",
                               SERVED], cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                time.sleep(1)
        command = [sys.executable, "-m", "compress", "distill", "--teacher-url", url, "--teacher-model", SERVED,
                   *ARGS, "--out", str(run)]
        code = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
        if code not in (0, 1, 3):
            raise SystemExit(f"the chain failed with exit code {code}")
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-run", type=Path, default=None, help="record this run instead of making one")
    args = parser.parse_args()
    record = ResultRecord.start("endpoint_teacher")
    with tempfile.TemporaryDirectory(prefix="compress-endpoint-") as scratch:
        run = args.from_run or Path(scratch) / "run"
        if args.from_run is None:
            serve_and_run(run)
        distill = json.loads((run / "distill" / "stage.json").read_text())["metrics"]
        compare = json.loads((run / "bench" / "compare.json").read_text())
        gate = json.loads((run / "gate" / "gate.json").read_text())
    model, other = compare["model"], compare["other"]
    summary = {
        "student": distill["student"], "student_layers": distill["student_layers"],
        "parameters": {"starting_model": distill["base_parameters"], "student": distill["student_parameters"]},
        "answers": {k: distill["answers"][k] for k in ("asked", "reused", "skipped", "retried", "sha256")},
        "token_match": distill["token_match"],
        "training": {k: distill["training"][k] for k in ("steps", "epochs", "train_time_s", "stopped_by",
                                                          "tokens_per_s")},
        "quality": distill["quality"],
        "tokens_per_s": {"starting_model_fp32": other["tokens_per_s"], "release": model["tokens_per_s"],
                         "ratio": round(model["tokens_per_s"] / other["tokens_per_s"], 3)},
        "gate": {"verdict": gate["verdict"], "profile": gate.get("profile")},
    }
    record.finish(RESULTS_DIR / "endpoint_teacher.json", command_run=["compress", "distill", "--teacher-url", "URL",
                                                                      "--teacher-model", SERVED, *ARGS],
                  results=summary)
    before, after = distill["quality"]["before"], distill["quality"]["after"]
    print(f"agreement with the teacher's held-out answers {before['token_agreement']:.4f} -> "
          f"{after['token_agreement']:.4f}; exact match {before['exact_match']:.3f} -> {after['exact_match']:.3f}; "
          f"perplexity of the answers {before['perplexity']:.2f} -> {after['perplexity']:.2f}; "
          f"tokens/s {summary['tokens_per_s']['ratio']:.2f}x the starting model")


if __name__ == "__main__":
    main()
