"""`compress package` and `compress verify` for a causal language model (task text-generation).

One tiny Llama run (distill -> export -> int4 -> generation bench -> gate on the host profile) is
built per session and packaged once; tests copy or rewrite the archive before changing anything.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import run_cli
from tests.conftest import real_sentences
from tests.test_verify import BLOCKED, rewrite, run_on_device

TOP = "tiny-lm-1.0-host"
STANDALONE_IMPORTS = {"__future__", "argparse", "json", "re", "sys", "pathlib", "numpy", "onnxruntime", "tokenizers"}


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """A finished text-generation run directory (host profile, so the gate gives a verdict here)."""
    from compress.training.progress import Reporter
    from compress.chain import run_chain
    from compress.lm.family import CausalLMFamily
    from compress.lm.config import LMDistillConfig
    from export.runtime.profiles import load_profile

    base = tmp_path_factory.mktemp("lm-run")
    data = base / "texts.txt"
    data.write_text("\n".join(real_sentences(120)) + "\n")
    config = LMDistillConfig(teacher=str(tiny_llama), data=data, max_steps=2, batch_size=4, student="layers=2",
                             max_length=48, threads=1)
    result = run_chain(base / "run", CausalLMFamily(), config, load_profile("host"),
                       reporter=Reporter(show_progress=False))
    assert result.verdict in ("pass", "fail")
    return base / "run"


@pytest.fixture(scope="session")
def lm_archive(tmp_path_factory: pytest.TempPathFactory, lm_run: Path) -> Path:
    from export.package import package_run

    return package_run(lm_run, tmp_path_factory.mktemp("lm-release"), name="tiny-lm", version="1.0",
                       allow_failed=True).path


def read_member(archive: Path, relative: str) -> bytes:
    with tarfile.open(archive, "r:gz") as tar:
        return tar.extractfile(f"{TOP}/{relative}").read()


def manifest_of(archive: Path) -> dict:
    return json.loads(read_member(archive, "manifest.json"))


def test_the_archive_holds_the_model_folder_reports_and_the_generation_example(lm_archive: Path) -> None:
    with tarfile.open(lm_archive, "r:gz") as tar:
        names = {m.name[len(TOP) + 1:] for m in tar.getmembers() if m.isfile()}
    assert names == {
        "manifest.json", "MODEL_CARD.md", "profile.yaml", "model/model.onnx", "model/tokenizer.json",
        "model/tokenizer_config.json", "model/special_tokens_map.json", "model/config.json",
        "model/chat_template.jinja", "model/generation_config.json", "model/genai_config.json", "model/model.gguf",
        "reports/bench.json", "reports/gate.json", "reports/junit.xml", "reports/ttft.png",
        "reports/training_curve.png", "example/generate.py", "example/README.md",
    }
    manifest = manifest_of(lm_archive)
    # The release stage released the fastest of the tiny candidates that met the host's budgets.
    assert manifest["task"] == "text-generation" and manifest["precision"] in ("int4-weight", "int8-weight")
    inputs = [spec["name"] for spec in manifest["model"]["signature"]["inputs"]]
    # The fused graph: positions come from the attention mask inside GroupQueryAttention.
    assert inputs[:3] == ["input_ids", "attention_mask", "past_key_values.0.key"] and "past_key_values.1.value" in inputs
    assert manifest["output"]["primary"] == "logits" and manifest["output"]["eos_token_ids"] == [2]
    assert manifest["prompt"] == {"prefix": "<|im_start|>user\n", "suffix": "<|im_end|>\n<|im_start|>assistant\n",
                                  "add_special_tokens": False, "chat_template": "model/chat_template.jinja",
                                  "max_positions": 256}
    assert manifest["bench"]["tokens_per_s"] > 0 and manifest["bench"]["ttft_ms"]["p50"] > 0
    assert manifest["quality"]["metric"] == "next_token_agreement" and manifest["quality"]["released_perplexity"] > 1
    card = read_member(lm_archive, "MODEL_CARD.md").decode()
    for needle in ("text generator", "tokens/s (end to end)", "time to first token p50 / p95", "time per output token",
                   "next token is the teacher's", "released model perplexity"):
        assert needle in card, needle
    readme = read_member(lm_archive, "example/README.md").decode()
    assert "past_key_values.0.key" in readme and "present.0.key" in readme and "$" not in readme


def test_the_reference_tokens_are_the_torch_free_generators(lm_run: Path, lm_archive: Path) -> None:
    # The example's loop and export.runtime.generation's OnnxGenerator give the same greedy tokens.
    from tokenizers import Tokenizer

    from export.runtime.generation import OnnxGenerator

    manifest = manifest_of(lm_archive)
    reference, prompt = manifest["reference"], manifest["prompt"]
    assert len(reference["tokens"]) == 16 and reference["min_matching_tokens"] == 8
    model_dir = lm_run / "quantize"
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = tokenizer.encode(prompt["prefix"] + reference["sentence"] + prompt["suffix"], add_special_tokens=False).ids
    generated = OnnxGenerator(model_dir / "model.onnx", intra_op_threads=1).generate(np.array([ids]), 16)
    assert generated.tokens == reference["tokens"]


def test_packaging_twice_gives_identical_bytes(lm_run: Path, lm_archive: Path, tmp_path: Path) -> None:
    result = run_cli(["package", str(lm_run), "--out", str(tmp_path), "--name", "tiny-lm", "--version", "1.0",
                      "--allow-failed"])
    assert result.exit_code == 0, result.stderr
    again = tmp_path / lm_archive.name
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(lm_archive.read_bytes()).hexdigest()
    assert f"sha256 {hashlib.sha256(again.read_bytes()).hexdigest()}" in result.stdout


def test_verify_regenerates_the_reference_answer(lm_archive: Path) -> None:
    result = run_cli(["verify", str(lm_archive)])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    precision = manifest_of(lm_archive)["precision"]
    assert lines[0] == f"tiny-lm 1.0 (text-generation, {precision}, profile host)"
    assert lines[2] == "manifest: unsigned"
    assert lines[3].startswith("files: 18 match manifest.json")
    assert "inputs and outputs match the manifest" in lines[4]
    assert lines[5] == "reference output: greedy answer 16/16 tokens identical to the build host's (first 8 required)"
    assert lines[6].startswith("example: 'Explain in one sentence") and " -> " in lines[6]
    report = json.loads(run_cli(["verify", str(lm_archive), "--json"]).stdout)
    assert report["example"]["tokens"] == manifest_of(lm_archive)["reference"]["tokens"]
    assert report["example"]["text"] == manifest_of(lm_archive)["reference"]["text"]


def test_verify_gate_on_the_host_gives_a_verdict(lm_archive: Path) -> None:
    result = run_cli(["verify", str(lm_archive), "--gate", "--runs", "3", "--warmup", "1", "--json"])
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] in ("pass", "fail") and report["bench"]["kind"] == "generation_bench"
    assert report["bench"]["model"]["path"] == f"{lm_archive.name}:model/model.onnx"
    assert any(check["name"] == "generation.tokens_per_s" for check in report["gate"]["checks"])


def _edit(name: str, change):
    def apply(items):
        return [(info, change(data) if info.name == f"{TOP}/{name}" else data) for info, data in items]
    return apply


def test_a_tampered_model_byte_is_refused(lm_archive: Path, tmp_path: Path) -> None:
    archive = rewrite(lm_archive, tmp_path / "tampered.tar.gz",
                      _edit("model/model.onnx", lambda data: data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]))
    result = run_cli(["verify", str(archive)])
    assert result.exit_code == 2
    assert "model/model.onnx: sha256" in result.stderr and "changed after packaging" in result.stderr


def test_a_different_answer_is_refused(lm_archive: Path, tmp_path: Path) -> None:
    def other_tokens(data: bytes) -> bytes:
        manifest = json.loads(data)
        manifest["reference"]["tokens"][3] += 1
        return json.dumps(manifest).encode()

    archive = rewrite(lm_archive, tmp_path / "answer.tar.gz", _edit("manifest.json", other_tokens))
    result = run_cli(["verify", str(archive)])
    assert result.exit_code == 2
    assert "differs from the build host's at token 4 (3 identical, 8 required)" in result.stderr


def test_verify_and_gate_run_without_torch(lm_archive: Path, tmp_path: Path) -> None:
    code, loaded, stdout = run_on_device(["verify", str(lm_archive), "--gate", "--runs", "2", "--warmup", "0"],
                                         tmp_path)
    assert code in (0, 1), stdout
    assert "16/16 tokens identical" in stdout and "gate host:" in stdout
    assert not set(loaded) & set(BLOCKED), loaded


def test_the_example_program_runs_on_its_own(lm_archive: Path, tmp_path: Path) -> None:
    with tarfile.open(lm_archive, "r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    program = tmp_path / TOP / "example" / "generate.py"
    tree = ast.parse(program.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= STANDALONE_IMPORTS, imported
    # Run it with this project and torch unimportable, from another folder.
    blocker = "; ".join(f"sys.modules[{name!r}] = None" for name in (*BLOCKED, "compress", "export"))
    script = f"import runpy, sys; {blocker}; sys.argv = [{str(program)!r}, '--max-new-tokens', '16']; " \
             f"runpy.run_path({str(program)!r}, run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    reference = manifest_of(lm_archive)["reference"]
    assert done.stdout.startswith(f"tiny-lm 1.0 (text-generation, {manifest_of(lm_archive)['precision']}) on ")
    assert f"prompt: {reference['sentence']}\n" in done.stdout
    assert f"answer: {reference['text']}\n" in done.stdout


def test_a_run_without_a_generation_bench_is_refused(lm_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(lm_run, run, ignore=shutil.ignore_patterns("checkpoint", "teacher_topk"))
    shutil.copy(run / "bench" / "compare.json", run / "bench" / "bench.json")
    result = run_cli(["package", str(run), "--out", str(tmp_path / "out"), "--allow-failed"])
    assert result.exit_code == 2
    assert "needs a generation bench report, found kind 'generation_comparison'" in result.stderr


def test_the_release_folder_is_an_onnx_runtime_genai_model(lm_archive: Path, tmp_path: Path) -> None:
    """genai_config.json travels in the manifest; GenAI's own loop gives our greedy answer and our logits."""
    import numpy as np
    import onnxruntime_genai as og

    from export.runtime.generation import OnnxGenerator

    with tarfile.open(lm_archive, "r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    root = next(tmp_path.iterdir())
    manifest = json.loads((root / "manifest.json").read_text())
    assert "model/genai_config.json" in {f["path"] for f in manifest["files"]}
    assert [load["library"] for load in manifest["loads_with"]] == ["onnxruntime-genai", "llama-cpp-python"]
    assert "og.Model(\"model\")" in (root / "MODEL_CARD.md").read_text()

    model = og.Model(str(root / "model"))
    prompt = [int(t) for t in og.Tokenizer(model).encode("Edge devices are small computers")]
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 6, min_length=len(prompt) + 6, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    genai_logits = np.array(generator.get_output("logits"))[0, -1]
    while not generator.is_done():
        generator.generate_next_token()
    ours = OnnxGenerator(root / "model" / "model.onnx").generate(np.array([prompt], np.int64), 6)
    assert [int(t) for t in generator.get_sequence(0)[len(prompt):]] == ours.tokens

    import onnxruntime as ort
    session = ort.InferenceSession(str(root / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([prompt], np.int64), "attention_mask": np.ones((1, len(prompt)), np.int64),
             "position_ids": np.arange(len(prompt), dtype=np.int64)[None]}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values"):
            feeds[spec.name] = np.zeros((1, spec.shape[1], 0, spec.shape[3]), np.float32)
    our_logits = session.run(["logits"], {k: v for k, v in feeds.items()
                                          if k in {i.name for i in session.get_inputs()}})[0][0, -1]
    assert np.allclose(genai_logits, our_logits, atol=1e-4)


def test_verify_runs_the_genai_and_llama_cpp_lines_of_the_card(lm_archive: Path) -> None:
    result = run_cli(["verify", str(lm_archive), "--libraries", "--json"])
    assert result.exit_code == 0, result.stderr
    genai, llama = json.loads(result.stdout)["libraries"]
    assert genai["library"] == "onnxruntime-genai" and genai["status"] == "matches", genai
    # llama-cpp-python is no dependency (it builds from source): where it is missing, verify says so.
    assert llama["library"] == "llama-cpp-python", llama
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        assert llama["status"] == "not installed", llama
    else:
        assert llama["status"] == "runs" and "tokens identical" in llama["detail"], llama


def test_the_archive_carries_the_released_weights_as_gguf(lm_archive: Path, lm_run: Path, tmp_path: Path) -> None:
    """model/model.gguf holds the released model's weights under llama.cpp's names, in the type that
    matches the release's precision; it is in the manifest and the card says how llama.cpp runs it."""
    import gguf

    manifest = manifest_of(lm_archive)
    assert manifest["model"]["gguf"] == "model/model.gguf"
    assert "model/model.gguf" in {f["path"] for f in manifest["files"]}
    card = read_member(lm_archive, "MODEL_CARD.md").decode()
    assert "llama-cli -m model/model.gguf" in card and "from llama_cpp import Llama" in card
    path = tmp_path / "model.gguf"
    path.write_bytes(read_member(lm_archive, "model/model.gguf"))
    reader = gguf.GGUFReader(path)
    released = json.loads((lm_run / "release" / "stage.json").read_text())
    source = released["metrics"]["released_source"]
    config = json.loads((lm_run / "distill" / "student" / "config.json").read_text()) if source == "student" else None
    layers = int(reader.fields["llama.block_count"].parts[-1][0])
    if config is not None:
        assert layers == config["num_hidden_layers"]
    assert released["metrics"]["gguf_type"] == {"int8-weight": "q8_0", "int4-weight": "q4_0"}[manifest["precision"]]
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight"}
