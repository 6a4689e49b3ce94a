"""`compress distill` through the console entry point (exit codes and output included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli
from tests.conftest import real_sentences


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-data") / "texts.txt"
    path.write_text("\n".join(real_sentences(80)) + "\n")
    return path


def _args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--max-steps", "3",
            "--threads", "1", "--batch-size", "16", *extra]


def test_distill_json_prints_the_chain_with_the_stage_record(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    result = run_cli(_args(tiny_encoder, text_file, tmp_path / "run", "--json", "--stop-after", "distill"))
    assert result.exit_code == 0, result.stderr
    chain = json.loads(result.stdout)
    assert chain["stages"] == {"distill": "ran"} and chain["final_model"] is None
    record = chain["distill"]
    assert record["stage"] == "distill" and record["schema_version"] == 1
    assert record["metrics"]["steps"] == 3 and record["metrics"]["teacher_agreement_metric"] == "mean_cosine"
    assert record["params"]["profile"] == "host" and record["params"]["student_resolved"] == "layers=3"
    assert (tmp_path / "run" / "distill" / "stage.json").is_file()
    assert (tmp_path / "run" / "distill" / "student" / "model.safetensors").is_file()
    assert "half the teacher's layers" in result.stderr  # the profile's reason for `auto`


def test_distill_table_and_rerun_skips(tiny_classifier: Path, text_file: Path, tmp_path: Path) -> None:
    args = _args(tiny_classifier, text_file, tmp_path / "run", "--student", "layers=2", "--profile", "jetson",
                 "--stop-after", "distill")
    first = run_cli(args)
    assert first.exit_code == 0, first.stderr
    assert "argmax_agreement" in first.stdout and "parameters" in first.stdout
    second = run_cli(args)
    assert second.exit_code == 0 and "up to date" in second.stderr


@pytest.mark.parametrize("extra, message", [
    (["--student", "layers=99"], "layers must be between"),
    (["--teacher-quant", "2bit"], "Invalid value"),
    (["--time-budget", "soon"], "not a duration"),
    (["--profile", "no-such-profile"], "unknown profile"),
])
def test_bad_options_exit_2_with_one_line(tiny_encoder: Path, text_file: Path, tmp_path: Path, extra: list[str],
                                          message: str) -> None:
    result = run_cli(_args(tiny_encoder, text_file, tmp_path / "run", *extra))
    assert result.exit_code == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_data_exits_2_and_names_the_lines(tiny_encoder: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": 1}\n\nnot json\n')
    result = run_cli(_args(tiny_encoder, data, tmp_path / "run"))
    assert result.exit_code == 2
    assert "no usable examples" in result.stderr and "line 1" in result.stderr and "line 3" in result.stderr
    missing = run_cli(_args(tiny_encoder, tmp_path / "missing.txt", tmp_path / "run"))
    assert missing.exit_code == 2 and "data file not found" in missing.stderr


def test_cuda_without_a_gpu_exits_2(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli(_args(tiny_encoder, text_file, tmp_path / "run", "--device", "cuda"))
    assert result.exit_code == 2 and "no CUDA device" in result.stderr


def test_help_describes_the_default_corpus() -> None:
    result = run_cli(["distill", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "english-v1" in text and "quotations" in text and "own domain" in text and "--resume" in text


@pytest.mark.parametrize("teacher, options, named", [
    ("tiny_encoder", ["--topk", "8", "--lm-loss", "jsd"], "--lm-loss, --topk"),
    ("tiny_encoder", ["--block-size", "64"], "--block-size"),
    ("tiny_llama", ["--prune-heads", "0.25"], "--prune-heads"),
    ("tiny_llama", ["--loss", "mse"], "--loss"),
])
def test_an_option_the_teachers_family_cannot_use_is_an_error(
        request: pytest.FixtureRequest, text_file: Path, tmp_path: Path, teacher: str, options: list[str],
        named: str) -> None:
    run = tmp_path / "run"
    result = run_cli(_args(request.getfixturevalue(teacher), text_file, run, *options))
    assert result.exit_code == 2
    assert named in result.stderr and "not used when the teacher is" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not run.exists()
