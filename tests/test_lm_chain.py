"""The causal-LM chain (distill → export → quantize → bench → gate) on a tiny Llama, through the CLI too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.training.progress import Reporter
from compress.chain import ChainOptions, run_chain
from compress.lm.family import CausalLMFamily
from compress.lm.family import release_precision
from compress.lm.config import LMDistillConfig, resolve_lm_student
from export.base.errors import CompressError
from export.runtime.profiles import load_profile
from tests.cli_helpers import run_cli
from tests.conftest import real_sentences

QUIET = Reporter(show_progress=False)


@pytest.fixture(scope="module")
def lm_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lm-data") / "texts.txt"
    path.write_text("\n".join(real_sentences(120)) + "\n")
    return path


def _stage_times(run: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["finished_at"] for p in run.glob("*/stage.json")}


def test_the_lm_chain_through_the_cli(tiny_llama: Path, lm_text: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["distill", "--teacher", str(tiny_llama), "--data", str(lm_text), "--out", str(run), "--max-steps", "4",
            "--threads", "1", "--batch-size", "4", "--student", "layers=2", "--max-length", "48"]
    result = run_cli(args)
    assert result.exit_code in (0, 1), result.stdout + result.stderr  # host profile on the host: a verdict, not unverified
    for stage in ("distill", "export", "teacher", "quantize", "bench", "gate"):
        assert (run / stage / "stage.json").is_file(), stage
    out = " ".join(result.stdout.split())
    assert "release candidates vs the fp32 teacher, host" in out and "released: " in out
    assert "teacher (fp32 ONNX) vs released student (" in out
    for row in ("parameters", "file size", "tokens/s", "time to first token p50", "perplexity"):
        assert row in out, row
    distill = json.loads((run / "distill" / "stage.json").read_text())["metrics"]
    assert distill["student_layers"] == [0, 3] and distill["training"]["steps"] == 4
    assert distill["quality"]["teacher_perplexity"] > 1 and distill["quality"]["student_perplexity"] > 1
    gate = json.loads((run / "gate" / "gate.json").read_text())
    assert gate["verdict"] in ("pass", "fail")
    assert any(check["name"].startswith("generation.") for check in gate["checks"])

    # The same command again: every stage is up to date and skipped.
    before = _stage_times(run)
    again = run_cli(args)
    assert again.exit_code == result.exit_code
    stages = ("stages: distill skipped, export skipped, teacher skipped, quantize skipped, release skipped, bench skipped, "
              "gate skipped")
    assert stages in " ".join(again.stdout.split())
    assert _stage_times(run) == before


def test_stop_after_export_and_fp32_release(tiny_gpt2: Path, lm_text: Path, tmp_path: Path) -> None:
    config = LMDistillConfig(teacher=str(tiny_gpt2), data=lm_text, max_steps=2, batch_size=4, student="layers=2",
                             max_length=48, threads=1)
    result = run_chain(tmp_path / "run", CausalLMFamily(), config, load_profile("host"),
                       ChainOptions(stop_after="export"), reporter=QUIET)
    assert set(result.stages) == {"distill", "export", "teacher"}
    assert result.final_model is not None and result.final_model.is_file() and result.precision == "fp32"
    assert not (tmp_path / "run" / "quantize").exists()


def test_release_precision_follows_the_device() -> None:
    assert release_precision(load_profile("raspberry-pi-5"), None) == "int4-weight"
    assert release_precision(load_profile("jetson"), None) == "fp16"
    assert release_precision(load_profile("jetson"), "int8-dynamic") == "int8-dynamic"


def test_student_spec_defaults_to_the_most_important_four_fifths_of_the_blocks() -> None:
    assert resolve_lm_student("auto", 30) == "keep=24"
    assert resolve_lm_student("auto", 4) == "keep=3"
    assert resolve_lm_student("auto", 2) == "keep=2"
    assert resolve_lm_student("layers=3", 30) == "layers=3"


@pytest.mark.parametrize("change, message", [
    ({"loss": "kl"}, "--lm-loss"), ({"topk": -1}, "--topk"), ({"beta": 1.0}, "--jsd-beta"),
    ({"max_length": 4}, "--max-length"), ({"data": Path("/nonexistent.txt")}, "data file not found"),
])
def test_bad_settings_are_refused(change: dict, message: str) -> None:
    config = LMDistillConfig(**change)
    with pytest.raises(CompressError, match=message):
        config.validate()


def test_bad_lm_options_through_the_cli(tiny_llama: Path, tmp_path: Path) -> None:
    result = run_cli(["distill", "--teacher", str(tiny_llama), "--out", str(tmp_path / "r"), "--max-steps", "1",
                      "--precision", "int8-static"])
    assert result.exit_code == 2
    assert "not available for language models" in result.stderr
    assert not (tmp_path / "r" / "distill" / "stage.json").exists()


def test_keep_n_chooses_the_blocks_that_change_their_input_most(tiny_llama: Path, lm_text: Path,
                                                                 tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(["distill", "--teacher", str(tiny_llama), "--data", str(lm_text), "--out", str(run),
                      "--max-steps", "1", "--threads", "1", "--batch-size", "4", "--student", "keep=3",
                      "--max-length", "48", "--stop-after", "distill"])
    assert result.exit_code == 0, result.stdout + result.stderr
    metrics = json.loads((run / "distill" / "stage.json").read_text())["metrics"]
    assert metrics["student"] == "keep=3" and len(metrics["student_layers"]) == 3
    assert "student: keep=3 -> 3 layers (from teacher layers" in " ".join(result.stderr.split())
    bad = run_cli(["distill", "--teacher", str(tiny_llama), "--data", str(lm_text), "--out", str(tmp_path / "bad"),
                   "--student", "keep=9", "--max-steps", "1"])
    assert bad.exit_code == 2, bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == "error: a student needs between 1 and 4 layers; got 9"
    assert "teacher:" not in bad.stderr and "data:" not in bad.stderr  # refused from config.json, before loading
    assert not (tmp_path / "bad").exists()  # the run that bad input stopped left nothing behind
