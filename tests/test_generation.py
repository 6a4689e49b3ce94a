"""Torch-free generation with ONNX causal LMs: tokens vs transformers, the generation bench, gate, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from export.base.errors import CompressError
from export.runtime.gate import QualityEvidence, gate, read_gate_input
from export.runtime.generation import OnnxGenerator, is_generation_model
from export.runtime.generation_bench import (GenerationBenchReport, GenerationComparison, compare_generation_bench,
                                             run_generation_bench)
from export.runtime.release_kind import read_any_report
from export.runtime.profiles import list_profiles, load_profile
from tests.cli_helpers import run_cli
from tests.conftest import build_tiny_onnx

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Return the value of the object, or raise an error."]
GEN_BUDGETS = ["generation.ttft_ms.p95", "generation.tpot_ms.p95", "generation.tokens_per_s"]


def _sharpen_and_export(source: Path, folder: Path) -> Path:
    """Copy a tiny LM with larger random weights (std 0.15: greedy output varies instead of repeating one
    token, and logits are far apart, so ties cannot flip argmax between ORT and torch), then export it
    with optimum's text-generation-with-past. Returns the ONNX file."""
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import AutoModelForCausalLM

    from export.base.quiet import quiet_onnxruntime

    model = AutoModelForCausalLM.from_pretrained(source).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.15)
    hf_dir = folder / "hf"
    model.save_pretrained(hf_dir, safe_serialization=True)
    for item in source.iterdir():
        if item.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            shutil.copy(item, hf_dir / item.name)
    with quiet_onnxruntime():
        main_export(str(hf_dir), output=str(folder / "onnx"), task="text-generation-with-past")
    return folder / "onnx" / "model.onnx"


def _fused(traced: Path) -> Path:
    """The same weights as the fused graph (GroupQueryAttention), beside the traced export."""
    from export.lm_fused_graph import write_fused_graph

    folder = traced.parent.parent / "fused"
    folder.mkdir()
    for item in traced.parent.iterdir():
        if item.suffix in (".json", ".jinja"):
            shutil.copy(item, folder / item.name)
    write_fused_graph(traced.parent.parent / "hf", folder / "model.onnx")
    return folder / "model.onnx"


@pytest.fixture(scope="module")
def lms(tiny_llama: Path, tiny_gpt2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> exported decoder (model.onnx with its tokenizer and config beside it); ``llama-fused``
    holds the Llama's weights in the fused layout."""
    exported = {family: _sharpen_and_export(src, tmp_path_factory.mktemp(f"gen-{family}"))
                for family, src in (("llama", tiny_llama), ("gpt2", tiny_gpt2))}
    return {**exported, "llama-fused": _fused(exported["llama"])}


@pytest.fixture(scope="module")
def bench_report(lms: dict[str, Path]) -> GenerationBenchReport:
    """A real generation bench of the Llama export on this machine with the host profile."""
    return run_generation_bench(lms["llama"], load_profile("host"), prompt_length=32, new_tokens=12, runs=4, warmup=1)


def user_profile(tmp_path: Path, edit, base: str = "host") -> Path:
    data = yaml.safe_load(load_profile(base).source.read_text())
    data.update(name=f"mine-{base}", aliases=[])  # shipped names are reserved
    edit(data)
    path = tmp_path / f"mine-{base}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _generation_workload(data: dict, prompt: int = 32, new: int = 12) -> None:
    data["workload"]["generation"] = {"prompt_length": prompt, "new_tokens": new}


# ---------------------------------------------------------------------------------------------
# The generator


def test_is_generation_model(lms: dict[str, Path], tmp_path: Path) -> None:
    assert is_generation_model(lms["llama"]) and is_generation_model(lms["gpt2"])
    assert not is_generation_model(build_tiny_onnx(tmp_path / "encoder.onnx"))
    assert not is_generation_model(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff\xff not protobuf")
    assert not is_generation_model(tmp_path / "junk.onnx")


@pytest.mark.parametrize("family", ["llama", "llama-fused", "gpt2"])
def test_tokens_equal_transformers_greedy(lms: dict[str, Path], family: str) -> None:
    """The same tokens as transformers; the fused graph's cache stays in one bound buffer (in place),
    a traced graph's is fed back."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = lms[family].parent.parent / "hf"
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    generator = OnnxGenerator(lms[family], intra_op_threads=1)
    assert generator.in_place_cache == (family == "llama-fused")
    for text in TEXTS:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            expected = model.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=None,
                                      pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        assert len(set(expected)) > 2, "the test model should not just repeat a token"
        out = generator.generate(ids.numpy(), 20)
        assert out.tokens == expected
        assert out.ttft_s > 0 and len(out.step_s) == 19 and all(s > 0 for s in out.step_s)
        # Stopping at an eos token keeps it, as transformers does.
        stop = expected[4]
        cut = generator.generate(ids.numpy(), 20, eos_token_id=stop)
        assert cut.tokens == expected[:expected.index(stop) + 1]


def test_generator_refuses_bad_input(lms: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="not a generation model"):
        OnnxGenerator(build_tiny_onnx(tmp_path / "encoder.onnx"))
    with pytest.raises(CompressError, match="model not found"):
        OnnxGenerator(tmp_path / "nothing.onnx")
    generator = OnnxGenerator(lms["gpt2"])
    with pytest.raises(CompressError, match="shape \\(1, n\\)"):
        generator.generate(np.zeros((2, 3), dtype=np.int64), 4)
    with pytest.raises(CompressError, match="max_new_tokens"):
        generator.generate(np.array([[1, 2]]), 0)


# ---------------------------------------------------------------------------------------------
# The bench


def test_bench_report_fields(bench_report: GenerationBenchReport, lms: dict[str, Path]) -> None:
    r = bench_report
    assert (r.kind, r.profile, r.prompt_length, r.new_tokens, r.runs, r.warmup) == (
        "generation_bench", "host", 32, 12, 4, 1)
    assert r.model.size_mb == pytest.approx(lms["llama"].stat().st_size / 2**20)
    assert "tokenizer.json" in r.prompt_source
    assert len(r.ttft_ms.samples) == 4 and len(r.tpot_ms.samples) == 4
    assert 0 < r.ttft_ms.min <= r.ttft_ms.p50 <= r.ttft_ms.p95 <= r.ttft_ms.max
    assert 0 < r.tpot_ms.min <= r.tpot_ms.p50 <= r.tpot_ms.p95 <= r.tpot_ms.max
    # tokens/s is whole generations: 12 tokens over TTFT + 11 decode steps, per run.
    wall_s = sum(t + 11 * p for t, p in zip(r.ttft_ms.samples, r.tpot_ms.samples)) / 1000
    assert r.tokens_per_s == pytest.approx(4 * 12 / wall_s, rel=1e-3)
    assert r.decode_tokens_per_s == pytest.approx(1000 * 4 * 11 / (11 * sum(r.tpot_ms.samples)), rel=1e-3)
    assert r.session.providers_used == ["CPUExecutionProvider"] == r.providers_used
    assert r.memory.session_peak_mb > 0 and r.memory.peak_rss_mb >= r.memory.after_load_rss_mb
    assert r.host.usable_cores >= 1
    assert any("end-of-sequence ignored" in n for n in r.notes)
    # The prompt the bench used gives the same greedy tokens outside it.
    from export.runtime.generation_bench import build_prompt

    prompt, _ = build_prompt(lms["llama"], 32, None)
    assert OnnxGenerator(lms["llama"]).generate(prompt, 12).tokens == r.sample_tokens
    again = GenerationBenchReport.from_json(r.to_json())
    assert again == r
    assert read_any_report(r.to_json()) == r


def test_compare_generation_interleaved(lms: dict[str, Path], tmp_path: Path) -> None:
    comparison = compare_generation_bench(lms["llama"], lms["gpt2"], load_profile("host"), prompt_length=16,
                                          new_tokens=6, runs=3, warmup=0)
    a, b = comparison.model, comparison.other
    assert (a.model.path, b.model.path) == (str(lms["llama"]), str(lms["gpt2"]))
    assert comparison.tokens_per_s_ratio == pytest.approx(a.tokens_per_s / b.tokens_per_s)
    assert comparison.ttft_ratio == pytest.approx(b.ttft_ms.p50 / a.ttft_ms.p50)
    assert a.memory.shared_process and b.memory.shared_process
    assert "generates" in comparison.summary
    comparison.to_json(tmp_path / "compare.json")
    assert GenerationComparison.from_json(tmp_path / "compare.json").other == b
    assert read_gate_input(tmp_path / "compare.json") == a


def test_bench_refuses_bad_settings(lms: dict[str, Path]) -> None:
    host = load_profile("host")
    with pytest.raises(CompressError, match="256 positions"):
        run_generation_bench(lms["gpt2"], host, prompt_length=250, new_tokens=10, runs=1, warmup=0)
    with pytest.raises(CompressError, match="--runs"):
        run_generation_bench(lms["gpt2"], host, runs=0)


# ---------------------------------------------------------------------------------------------
# Profiles and gate


def test_shipped_profiles_carry_generation_budgets(tmp_path: Path) -> None:
    named = {"raspberry-pi-5", "android-arm64", "x86-avx2", "x86-avx512-vnni", "jetson-orin-nano", "host"}
    for profile in list_profiles():
        if profile.name in named:
            g = profile.budgets.generation
            assert None not in (g.ttft_ms, g.tpot_ms, g.tokens_per_s, g.model_size_mb, g.peak_memory_mb), profile.name
            assert profile.workload.generation_or_default.prompt_length == 128
            # The floor on tokens/s is reachable by a model that just meets the TTFT and TPOT budgets.
            new = profile.workload.generation_or_default.new_tokens
            assert g.tokens_per_s <= new / ((g.ttft_ms + (new - 1) * g.tpot_ms) / 1000), profile.name
    bad = user_profile(tmp_path, lambda d: d["budgets"].update(generation={"tpot_ms": -3}))
    with pytest.raises(CompressError, match="budgets.generation.tpot_ms"):
        load_profile(bad)
    bad = user_profile(tmp_path, lambda d: d["workload"].update(generation={"prompt_tokens": 3}))
    with pytest.raises(CompressError, match="workload.generation.prompt_tokens: unknown key"):
        load_profile(bad)


def _loose_generation_budgets(d: dict, r: GenerationBenchReport, quality: dict) -> None:
    """A profile this host meets 20 times over, at the bench's workload, with ``quality`` budgets."""
    _generation_workload(d)
    d["budgets"]["generation"] = {"ttft_ms": r.ttft_ms.p95 * 20, "tpot_ms": r.tpot_ms.p95 * 20,
                                  "tokens_per_s": r.tokens_per_s / 20, "model_size_mb": 100, "peak_memory_mb": 8192}
    d["budgets"]["quality"] = quality


def test_gate_passes_and_fails_on_matching_hardware(bench_report: GenerationBenchReport, tmp_path: Path) -> None:
    r = bench_report

    def loose(d: dict) -> None:
        _loose_generation_budgets(d, r, {"min_teacher_agreement": 0.8})
        d["budgets"]["model_size_mb"] = 0.001  # the encoder budget: replaced by the generation one

    profile = load_profile(user_profile(tmp_path, loose))
    evidence = QualityEvidence(teacher_agreement=0.9, metric="next_token_agreement")
    verdict = gate(r, profile, evidence)
    assert verdict.verdict == "pass", verdict.reasons
    assert [c.name for c in verdict.checks][:3] == GEN_BUDGETS
    assert not any(c.name.startswith("latency_ms") for c in verdict.checks)
    assert verdict.check("generation.tokens_per_s").comparison == ">="
    assert verdict.check("model_size_mb").budget == 100
    assert "prompt 32 tokens" in verdict.bench.workload

    # Hardware-dependent misses fail on matching hardware; size and quality fail anywhere.
    slow = dataclasses.replace(r, tokens_per_s=r.tokens_per_s / 100,
                               tpot_ms=dataclasses.replace(r.tpot_ms, p95=r.tpot_ms.p95 * 100))
    verdict = gate(slow, profile, evidence)
    assert verdict.verdict == "fail" and verdict.exit_code == 1
    assert {c.name for c in verdict.checks if c.status == "fail"} == {"generation.tpot_ms.p95",
                                                                      "generation.tokens_per_s"}
    verdict = gate(r, profile, QualityEvidence(teacher_agreement=0.5, metric="next_token_agreement"))
    assert verdict.verdict == "fail" and verdict.check("quality.min_teacher_agreement").status == "fail"


def test_gate_checks_an_lm_s_perplexity_beside_its_agreement(bench_report: GenerationBenchReport,
                                                            tmp_path: Path) -> None:
    r = bench_report

    def budgets(d: dict) -> None:
        _loose_generation_budgets(d, r, {"min_teacher_agreement": 0.8, "max_perplexity_ratio": 1.3,
                                         "max_quantization_perplexity_ratio": 1.1})

    profile = load_profile(user_profile(tmp_path, budgets))

    def verdict_for(**evidence: float) -> object:
        return gate(r, profile, QualityEvidence(metric="next_token_agreement", **{"teacher_agreement": 0.9,
                                                                                   **evidence}))

    good = verdict_for(perplexity_ratio=1.2, quantization_perplexity_ratio=1.05)
    assert good.verdict == "pass", good.reasons
    assert good.check("quality.max_perplexity_ratio").status == "pass"
    assert good.check("quality.max_quantization_perplexity_ratio").status == "pass"
    assert not any(c.name == "quality.max_quantization_drop" for c in good.checks)  # an encoder's budget
    for evidence, failing in (({"perplexity_ratio": 1.5, "quantization_perplexity_ratio": 1.05},
                               {"quality.max_perplexity_ratio"}),
                              ({"perplexity_ratio": 1.2, "quantization_perplexity_ratio": 1.4},
                               {"quality.max_quantization_perplexity_ratio"}),
                              ({"teacher_agreement": 0.5, "perplexity_ratio": 1.5, "quantization_perplexity_ratio": 1.05},
                               {"quality.min_teacher_agreement", "quality.max_perplexity_ratio"})):
        verdict = verdict_for(**evidence)
        assert verdict.verdict == "fail" and {c.name for c in verdict.checks if c.status == "fail"} == failing
    missing = verdict_for()
    assert missing.check("quality.max_perplexity_ratio").status == "not_checked"
    assert "no perplexity_ratio in the evidence" in missing.check("quality.max_perplexity_ratio").note


def test_gate_off_target_and_other_workload_is_unverified(bench_report: GenerationBenchReport,
                                                          tmp_path: Path) -> None:
    r = bench_report
    # The same budgets, declared for a Raspberry Pi: an x86 measurement cannot speak to them.
    pi = load_profile(user_profile(tmp_path, _generation_workload, base="raspberry-pi-5"))
    verdict = gate(r, pi)
    assert verdict.verdict == "unverified" and verdict.exit_code == 3
    for name in GEN_BUDGETS:
        check = verdict.check(name)
        assert check.status == "not_checked" and check.off_target_status in ("pass", "fail")
    assert verdict.check("model_size_mb").status == "pass"  # 200 MiB: the generation budget, hardware-independent
    # On matching hardware (host) but another prompt length than the profile budgets: unverified too.
    verdict = gate(r, load_profile("host"))
    assert verdict.verdict == "unverified"
    assert any("32-token prompt" in reason for reason in verdict.reasons)


# ---------------------------------------------------------------------------------------------
# CLI and the device-side import budget


def test_cli_bench_generation_model(lms: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "gen.json"
    result = run_cli(["bench", str(lms["gpt2"]), "--profile", "host", "--prompt-length", "16", "--new-tokens", "5",
                      "--runs", "2", "--warmup", "0", "--json", "--output", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "generation_bench" and data["new_tokens"] == 5 and data["runs"] == 2
    assert GenerationBenchReport.from_json(out).prompt_length == 16
    assert read_gate_input(out).model.path == str(lms["gpt2"])
    table = run_cli(["bench", str(lms["gpt2"]), "--prompt-length", "8", "--new-tokens", "3", "--runs", "1",
                     "--compare", str(lms["llama"])])
    assert table.exit_code == 0, table.output
    assert "TPOT p50 ms" in table.stdout and "generates" in table.stdout


@pytest.mark.parametrize(("which", "flags", "message"), [
    ("llama", ["--batch-size", "2"], "is a generation model: --batch-size does not apply"),
    ("encoder", ["--new-tokens", "4"], "is not a generation model"),
    ("llama", ["--compare", "ENCODER"], "is not a generation model"),
])
def test_cli_bench_refuses_mismatched_flags(lms: dict[str, Path], tmp_path: Path, which: str, flags: list[str],
                                            message: str) -> None:
    encoder = build_tiny_onnx(tmp_path / "encoder.onnx")
    model = encoder if which == "encoder" else lms[which]
    flags = [str(encoder) if f == "ENCODER" else f for f in flags]
    result = run_cli(["bench", str(model), *flags])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


PROBE = """
import json, sys
import numpy as np
from export.runtime.generation import OnnxGenerator
from export.runtime.generation_bench import run_generation_bench
from export.runtime.gate import gate
from export.runtime.profiles import load_profile
tokens = OnnxGenerator(sys.argv[1]).generate(np.array([[5, 6, 7]]), 4).tokens
report = run_generation_bench(sys.argv[1], load_profile("host"), prompt_length=8, new_tokens=3, runs=1, warmup=0)
gate(report, load_profile("host"))
heavy = sorted(m for m in ("torch", "transformers", "optimum", "onnx") if m in sys.modules)
print(json.dumps({"tokens": len(tokens), "heavy": heavy}))
"""


def test_generation_runs_without_torch_transformers_or_onnx(lms: dict[str, Path]) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(lms["llama"])], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"tokens": 4, "heavy": []}
