"""One thread policy: `bench`, `verify --gate` and the chain's bench record the same thread count."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from export.runtime.host import detect_host
from export.runtime.profiles import load_profile
from tests.cli_helpers import run_cli
from tests.conftest import real_sentences


def test_bench_verify_and_the_chain_run_the_same_threads(tiny_encoder: Path, tmp_path: Path) -> None:
    # A target that runs more threads than any machine running this test has cores.
    raw = yaml.safe_load(load_profile("host").source.read_text())
    raw.update(name="many-threads", aliases=[])
    raw["runtime"]["intra_op_threads"] = 256
    profile = tmp_path / "many-threads.yaml"
    profile.write_text(yaml.safe_dump(raw))
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(real_sentences(80)) + "\n")
    run = tmp_path / "run"
    chain = run_cli(["distill", "--teacher", str(tiny_encoder), "--data", str(data), "--out", str(run),
                     "--max-steps", "2", "--threads", "1", "--batch-size", "16", "--profile", str(profile)])
    assert chain.exit_code in (0, 1), chain.stderr
    cores = detect_host().usable_cores
    expected_note = f"benchmarked with {cores} threads, this host's usable cores (many-threads runs 256)"

    chain_bench = json.loads((run / "bench" / "bench.json").read_text())
    assert chain_bench["session"]["intra_op_threads"] == cores and expected_note in chain_bench["notes"]
    assert expected_note in " ".join(chain.stdout.split())

    model = run / json.loads((run / "run.json").read_text())["final_model"]
    alone = run_cli(["bench", str(model), "--profile", str(profile), "--runs", "5", "--warmup", "1", "--json"])
    assert alone.exit_code == 0, alone.stderr
    alone_report = json.loads(alone.stdout)
    assert alone_report["session"]["intra_op_threads"] == cores and expected_note in alone_report["notes"]

    packed = run_cli(["package", str(run), "--out", str(tmp_path / "dist"), "--allow-failed", "--json"])
    assert packed.exit_code == 0, packed.stderr
    archive = json.loads(packed.stdout)["path"]
    verified = run_cli(["verify", archive, "--gate", "--runs", "5", "--warmup", "1", "--json"])
    assert verified.exit_code in (0, 1), verified.stderr
    verify_bench = json.loads(verified.stdout)["bench"]
    assert verify_bench["session"]["intra_op_threads"] == cores and expected_note in verify_bench["notes"]


def test_an_explicit_thread_count_is_used_as_given(tiny_onnx: Path) -> None:
    result = run_cli(["bench", str(tiny_onnx), "--profile", "jetson", "--threads", "1", "--runs", "3", "--warmup", "0",
                      "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["session"]["intra_op_threads"] == 1
    assert not any("usable cores" in note for note in report["notes"])
