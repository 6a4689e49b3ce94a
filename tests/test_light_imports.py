"""The device-side commands (bench, gate, profiles) must run without torch or transformers (or onnx)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import build_tiny_onnx

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import export.runtime.bench, export.runtime.gate, export.runtime.host, export.runtime.inputs, export.runtime.profiles, compress.cli
from tests.cli_helpers import run_cli
results = {}
for args in (["bench", "--help"], ["gate", "--help"], ["profiles", "list"]):
    results[" ".join(args)] = run_cli(args).exit_code
results["bench"] = run_cli(["bench", sys.argv[1] + "/tiny.onnx", "--runs", "3", "--warmup", "0", "--output", sys.argv[1] + "/b.json"]).exit_code
results["gate"] = run_cli(["gate", sys.argv[1] + "/b.json", "--profile", "host"]).exit_code
heavy = sorted(m for m in ("torch", "transformers", "optimum", "onnx") if m in sys.modules)
print(json.dumps({"exit_codes": results, "heavy": heavy}))
"""


def test_bench_gate_and_profiles_import_neither_torch_nor_transformers(tmp_path: Path) -> None:
    build_tiny_onnx(tmp_path / "tiny.onnx")  # here: the probe must not import onnx itself
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["heavy"] == []
    # gate: 3, unverified, since the host profile budgets quality and no evidence was given.
    assert outcome["exit_codes"] == {"bench --help": 0, "gate --help": 0, "profiles list": 0, "bench": 0, "gate": 3}
