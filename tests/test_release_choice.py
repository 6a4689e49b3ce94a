"""Choosing the release among the candidates: the fastest that meets every budget, or none.

The chooser on its own (constructed candidates), then the causal-LM chain through the CLI on a tiny
Llama, where a user's profile decides between the distilled student and the teacher quantized.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.runtime.bench import BudgetFigure
from export.runtime.release_choice import ReleaseCandidate, ReleaseChoice, choose_release
from tests.cli_helpers import run_cli, user_profile
from tests.conftest import real_sentences


def _candidate(name: str, speedup: float, ratio: float, agreement: float, *, source: str = "student",
               size_mb: float = 10.0) -> ReleaseCandidate:
    return ReleaseCandidate(
        name=name, model=f"{name}/model.onnx", source=source, precision="int4-weight", parameters=1000,
        size_mb=size_mb, speedup=speedup, speed={"tokens_per_s": speedup * 10}, quality={},
        checks=[BudgetFigure("quality.max_perplexity_ratio", 1.3, ratio, "x", "<="),
                BudgetFigure("quality.min_teacher_agreement", 0.85, agreement, "", ">=")])


def test_the_fastest_candidate_over_the_floor_is_released() -> None:
    choice = choose_release([_candidate("slow good", 1.5, 1.05, 0.95), _candidate("fast good", 2.5, 1.2, 0.9),
                             _candidate("fastest bad", 6.0, 2.7, 0.4)])
    assert choice.released == "fast good" and choice.chosen is not None and choice.chosen.speedup == 2.5
    assert "fastest of the 2 candidates" in choice.why
    assert "faster but over a budget: fastest bad (max_perplexity_ratio 2.7" in choice.why


def test_ties_in_speed_go_to_the_smaller_file() -> None:
    choice = choose_release([_candidate("big", 2.0, 1.0, 1.0, size_mb=50), _candidate("small", 2.0, 1.0, 1.0,
                                                                                        size_mb=20)])
    assert choice.released == "small"


def test_the_quantized_teacher_is_released_when_no_student_passes() -> None:
    choice = choose_release([_candidate("student int4", 5.8, 2.7, 0.41), _candidate("student fp32", 3.1, 2.5, 0.45),
                             _candidate("teacher int4", 2.2, 1.1, 0.88, source="teacher"),
                             _candidate("teacher int8", 1.4, 1.01, 0.97, source="teacher")])
    assert choice.chosen is not None and choice.chosen.name == "teacher int4" and choice.chosen.source == "teacher"


def test_nothing_is_released_when_no_candidate_passes_and_the_reason_names_each_budget() -> None:
    choice = choose_release([_candidate("a", 5.0, 2.7, 0.41), _candidate("b", 2.0, 1.2, 0.80)])
    assert choice.released is None and choice.chosen is None
    assert choice.why.startswith("no candidate meets every budget; closest: b, which misses min_teacher_agreement 0.8")
    # the perplexity budget was met by b, but nobody reached the agreement floor
    assert "quality.max_perplexity_ratio <= 1.3: best 1.2 (b, met)" in choice.why
    assert "quality.min_teacher_agreement >= 0.85: best 0.8 (b, missed)" in choice.why


def test_a_budget_without_a_measurement_is_not_met_and_no_budget_always_is() -> None:
    unmeasured = _candidate("a", 2.0, 1.0, 1.0)
    unmeasured.checks.append(BudgetFigure("quality.max_quantization_perplexity_ratio", 1.1, None, "x", "<="))
    unbudgeted = _candidate("b", 1.0, 1.0, 1.0)
    unbudgeted.checks.append(BudgetFigure("quality.max_quantization_perplexity_ratio", None, 9.0, "x", "<="))
    assert not unmeasured.passes and unbudgeted.passes
    assert choose_release([unmeasured, unbudgeted]).released == "b"


def test_the_choice_round_trips_through_json(tmp_path: Path) -> None:
    choice = choose_release([_candidate("a", 2.0, 1.0, 0.9), _candidate("b", 3.0, 2.0, 0.5)])
    choice.to_json(tmp_path / "candidates.json")
    again = ReleaseChoice.from_json(tmp_path / "candidates.json")
    assert again == choice and again.chosen is not None and again.chosen.checks == choice.candidates[0].checks


# -- through the chain ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lm-data") / "texts.txt"
    path.write_text("\n".join(real_sentences(120)) + "\n")
    return path


def _profile(where: Path, **quality: float) -> Path:
    return user_profile(where, "strict-host", **quality)


def _distill(tiny_llama: Path, lm_text: Path, run: Path, profile: Path) -> object:
    # A learning rate this high wrecks the student in four steps: only the teacher, quantized, keeps its quality.
    return run_cli(["distill", "--teacher", str(tiny_llama), "--data", str(lm_text), "--out", str(run),
                    "--profile", str(profile), "--max-steps", "4", "--lr", "0.5", "--threads", "1", "--batch-size", "4",
                    "--student", "layers=2", "--max-length", "48", "--precision", "int4-weight"])


def test_the_teacher_quantized_is_released_and_packaged_as_such(tiny_llama: Path, lm_text: Path,
                                                                 tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = _distill(tiny_llama, lm_text, run, _profile(tmp_path, min_teacher_agreement=0.9, max_perplexity_ratio=1.1))
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "release candidates vs the fp32 teacher, strict-host" in out
    choice = json.loads((run / "release" / "candidates.json").read_text())
    names = [c["name"] for c in choice["candidates"]]
    assert names[:2] == ["student int4", "student int8 (embedding int8)"] and names[2].startswith("teacher int4") \
        and names[3] == "teacher int8 (embedding int8)"
    assert [c["precision"] for c in choice["candidates"]] == ["int4-weight", "int8-weight"] * 2
    released = next(c for c in choice["candidates"] if c["name"] == choice["released"])
    assert released["source"] == "teacher"
    assert all(c["quality"]["next_token_agreement"] < 0.9 for c in choice["candidates"] if c["source"] == "student")
    assert f"released: {released['name']}" in out and "released teacher, quantized" in out

    summary = json.loads((run / "run.json").read_text())
    assert summary["final_model"] == released["model"] and (run / released["model"]).is_file()
    assert summary["student"]["released_from"] == "teacher" and summary["stages"]["release"] == "release/stage.json"
    assert summary["quality"]["teacher_agreement"] == released["quality"]["next_token_agreement"]
    bench = json.loads((run / "bench" / "bench.json").read_text())
    assert Path(bench["model"]["path"]).resolve() == (run / released["model"]).resolve()
    gate = json.loads((run / "gate" / "gate.json").read_text())
    agreement = next(c for c in gate["checks"] if c["name"] == "quality.min_teacher_agreement")
    assert agreement["measured"] == released["quality"]["next_token_agreement"] and agreement["status"] == "pass"

    packaged = run_cli(["package", str(run), "--out", str(tmp_path / "dist"), "--allow-failed"])
    assert packaged.exit_code == 0, packaged.stdout + packaged.stderr
    archive = next((tmp_path / "dist").glob("*.tar.gz"))
    import tarfile

    with tarfile.open(archive) as tar:
        card = next(tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith("MODEL_CARD.md"))
    assert "itself" in card and "no student did" in card


def test_when_no_candidate_passes_the_student_stays_and_the_gate_fails(tiny_llama: Path, lm_text: Path,
                                                                       tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = _distill(tiny_llama, lm_text, run, _profile(tmp_path, min_teacher_agreement=1.0, max_perplexity_ratio=0.5))
    assert result.exit_code == 1, result.stdout + result.stderr
    out = " ".join((result.stdout + result.stderr).split())
    assert "no candidate meets every budget" in out and "the quantize stage's choice stays the release" in out
    choice = json.loads((run / "release" / "candidates.json").read_text())
    assert choice["released"] is None
    summary = json.loads((run / "run.json").read_text())
    assert summary["final_model"] == "quantize/model.onnx" and summary["student"]["released_from"] == "student"
    gate = json.loads((run / "gate" / "gate.json").read_text())
    failed = {c["name"] for c in gate["checks"] if c["status"] == "fail"}
    assert {"quality.min_teacher_agreement", "quality.max_perplexity_ratio"} <= failed
