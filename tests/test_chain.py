"""The whole chain (distill → prune → export → quantize → bench → gate) on tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from compress.encoder import DistillConfig
from compress.training.progress import Reporter
from compress.chain import ChainOptions, PruneOptions, run_chain
from compress.encoder.family import EncoderFamily
from compress.encoder.family import quantized_or_fp32
from export.runtime.profiles import load_profile
from export.run_summary import read_run_summary
from tests.cli_helpers import run_cli
from tests.conftest import real_sentences

QUIET = Reporter(show_progress=False)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chain-data") / "texts.txt"
    path.write_text("\n".join(real_sentences(120)) + "\n")
    return path


def _args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--max-steps", "3",
            "--threads", "1", "--batch-size", "16", *extra]


def _stage_times(run: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["finished_at"] for p in run.glob("*/stage.json")}


def test_the_chain_through_the_cli_ends_with_the_table_and_a_packagable_run(
        tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(_args(tiny_encoder, text_file, run))
    assert result.exit_code == 0, result.stderr  # host profile on the host: the gate can pass
    for stage in ("distill", "export", "teacher", "quantize", "bench", "gate"):
        assert (run / stage / "stage.json").is_file(), stage
    assert "teacher (fp32 ONNX) vs released" in result.stdout
    assert "latency p50" in result.stdout and "cosine to teacher" in result.stdout
    assert "gate (host): pass" in result.stdout

    summary = read_run_summary(run)
    assert summary.verdict == "pass" and summary.profile == "host" and summary.task == "feature-extraction"
    assert (run / summary.final_model).is_file() and summary.final_model.endswith(".onnx")
    assert summary.precision in ("int8-dynamic", "fp32")  # fp32 when int8 is slower on this very host
    gate = json.loads((run / "gate" / "gate.json").read_text())
    quality = json.loads((run / "gate" / "quality.json").read_text())
    assert gate["verdict"] == summary.verdict
    assert quality["metric"] == "mean_cosine" and 0.5 < quality["teacher_agreement"] <= 1.0 + 1e-6
    assert summary.quality.teacher_agreement == quality["teacher_agreement"]
    assert quality["samples"] == summary.quality.heldout_samples == 24  # the distill stage's held-out split
    compare = json.loads((run / "bench" / "compare.json").read_text())
    assert compare["other"]["model"]["path"].endswith("teacher/model.onnx")
    assert (run / summary.final_model).parent.joinpath("sentence_bert_config.json").is_file()

    # The same command again: every stage is up to date, nothing is recomputed.
    times = _stage_times(run)
    again = run_cli(_args(tiny_encoder, text_file, run))
    assert again.exit_code == 0, again.stderr
    assert "distill skipped" in again.stdout and "gate skipped" in again.stdout
    assert _stage_times(run) == times

    packaged = run_cli(["package", str(run), "--out", str(tmp_path / "dist")])
    assert packaged.exit_code == 0, packaged.stderr
    archive = next((tmp_path / "dist").glob("*.tar.gz"))
    verified = run_cli(["verify", str(archive)])
    assert verified.exit_code == 0, verified.stderr


def test_an_interrupted_chain_resumes_at_the_stage_it_stopped_in(
        tiny_encoder: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import export.runtime.bench

    run = tmp_path / "run"

    measure = export.runtime.bench.compare_bench

    def interrupted(model: Path, other: Path, *args: object, **kwargs: object) -> object:
        if Path(other).parent.name == "teacher":  # the bench stage; quantization's own timing runs on
            raise KeyboardInterrupt
        return measure(model, other, *args, **kwargs)

    monkeypatch.setattr(export.runtime.bench, "compare_bench", interrupted)
    first = run_cli(_args(tiny_encoder, text_file, run))
    assert first.exit_code == 130 and "interrupted" in first.stderr
    assert not (run / "bench").exists() and not (run / "run.json").exists()  # nothing half-written
    done = _stage_times(run)
    assert set(done) == {"distill", "export", "teacher", "quantize", "release"}

    monkeypatch.undo()
    second = run_cli(_args(tiny_encoder, text_file, run))
    assert second.exit_code == 0, second.stderr
    assert "distill skipped" in second.stdout and "quantize skipped" in second.stdout
    assert "release skipped" in second.stdout and "bench ran" in second.stdout and "gate ran" in second.stdout
    after = _stage_times(run)
    assert {k: after[k] for k in done} == done
    assert read_run_summary(run).verdict == "pass"


def test_stop_after_export_writes_a_run_without_a_verdict(tiny_encoder: Path, text_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(_args(tiny_encoder, text_file, run, "--stop-after", "export", "--json"))
    assert result.exit_code == 0, result.stderr
    chain = json.loads(result.stdout)
    assert chain["stages"] == {"distill": "ran", "prune": "not needed", "export": "ran", "teacher": "ran"}
    summary = read_run_summary(run)
    assert summary.final_model == "export/model.onnx" and summary.verdict is None and summary.reports.gate is None
    assert not (run / "quantize").exists()


def test_a_user_profile_travels_with_the_run_and_pruning_runs_when_asked(
        tiny_classifier: Path, text_file: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load(load_profile("host").source.read_text())
    raw.update(name="my-box", aliases=[], precision="fp32")
    raw["distill"]["prune"] = {"heads": 0.25, "ffn": 0.25, "recover_steps": 2}
    profile_file = tmp_path / "my-box.yaml"
    profile_file.write_text(yaml.safe_dump(raw))
    profile = load_profile(profile_file)
    run = tmp_path / "run"
    config = DistillConfig(teacher=str(tiny_classifier), data=text_file, max_steps=2, batch_size=16, threads=1)
    result = run_chain(run, EncoderFamily(), config, profile, ChainOptions(), QUIET)

    assert result.stages["prune"] == "ran" and result.stages["quantize"] == "not needed"
    assert result.precision == "fp32" and result.quality["metric"] == "argmax_agreement"
    summary = read_run_summary(run)
    assert summary.profile_file == "profile.yaml" and (run / "profile.yaml").read_text() == profile_file.read_text()
    assert summary.final_model == "export/model.onnx" and summary.quality.quantization_drop == 0.0
    pruned = json.loads((run / "prune" / "stage.json").read_text())["metrics"]["result"]
    assert pruned["heads_after"] < pruned["heads_before"] and pruned["ffn_after"] < pruned["ffn_before"]
    assert summary.student.params == pruned["params_after"]
    export_inputs = json.loads((run / "export" / "stage.json").read_text())["inputs"]
    assert export_inputs["model"]["path"] == str(run / "prune")

    # A changed budget in the user's file re-runs bench and gate and nothing before them.
    raw["budgets"]["quality"]["min_teacher_agreement"] = 0.51
    profile_file.write_text(yaml.safe_dump(raw))
    changed = run_chain(run, EncoderFamily(), config, load_profile(profile_file), ChainOptions(), QUIET)
    assert changed.stages["bench"] == "ran" and changed.stages["gate"] == "ran"
    assert changed.stages["export"] == "skipped" and changed.stages["prune"] == "skipped"


def test_prune_options_override_the_profile() -> None:
    assert not PruneOptions().wanted
    assert PruneOptions(heads=0.25).wanted and PruneOptions(ffn=0.1).wanted


def _quantized(within_budget: bool, verdict: str, speedup: float) -> SimpleNamespace:
    return SimpleNamespace(method="int8-dynamic", within_budget=within_budget, quality_drop=0.03,
                           max_quantization_drop=0.01, speed=SimpleNamespace(verdict=verdict, speedup=speedup))


@pytest.mark.parametrize("within, verdict, on_target, fp32_mb, expected", [
    (True, "faster", True, 10, "quantized"),
    (False, "faster", True, 10, "fp32"),  # costs more quality than the profile allows
    (True, "slower", True, 10, "fp32"),  # slower on the very hardware it ships to
    (True, "slower", False, 10, "quantized"),  # slower here says nothing about the target
    (True, "slower", True, 999, "quantized"),  # fp32 does not fit the size budget
    (False, "faster", True, 999, "quantized"),  # neither fits: ship the smaller, the gate will say fail
])
def test_choose_release(within: bool, verdict: str, on_target: bool, fp32_mb: int, expected: str) -> None:
    profile = load_profile("x86-avx2")  # model_size_mb: 25
    keep, why = quantized_or_fp32(_quantized(within, verdict, 0.8), profile, on_target, fp32_mb * 2**20)
    assert keep == expected
    assert (why != "") == (expected == "fp32")
