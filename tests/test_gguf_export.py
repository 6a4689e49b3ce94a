"""`compress export --format gguf`: a Llama-family model as a GGUF file llama.cpp runs.

Read back with the gguf package's own reader (names, shapes, metadata, tokenizer, the weights
themselves); when llama-cpp-python is installed, llama.cpp computes the model's logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import run_cli


@pytest.fixture(scope="module")
def gguf_files(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from export.gguf_export import export_gguf

    out = tmp_path_factory.mktemp("gguf")
    return {kind: export_gguf(tiny_llama, out / f"model-{kind}.gguf", gguf_type=kind).path
            for kind in ("f16", "q8_0", "q4_0")}


def _field(reader: object, key: str) -> object:
    field = reader.fields[key]  # type: ignore[attr-defined]
    value = field.parts[field.data[0]]
    return value.tobytes().decode() if value.dtype == np.uint8 else value[0]


def test_the_file_holds_the_models_shape_tokenizer_and_every_tensor(gguf_files: dict[str, Path],
                                                                   tiny_llama: Path) -> None:
    import gguf

    config = json.loads((tiny_llama / "config.json").read_text())
    reader = gguf.GGUFReader(gguf_files["q8_0"])
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == config["num_hidden_layers"]
    assert _field(reader, "llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == config["vocab_size"]
    assert len(reader.fields["tokenizer.ggml.merges"].data) > 100
    assert "tokenizer.chat_template" in reader.fields
    tensors = {t.name: t for t in reader.tensors}
    layers = config["num_hidden_layers"]
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{part}.weight" for i in range(layers) for part in (
            "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == expected  # tied embeddings: llama.cpp reuses token_embd as the output layer
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "Q8_0"
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert [int(d) for d in tensors["blk.0.attn_k.weight"].shape] == [config["hidden_size"],
                                                                    config["num_key_value_heads"] * 16]


def test_the_weights_read_back_with_llama_cpps_rotary_order(gguf_files: dict[str, Path], tiny_llama: Path) -> None:
    import gguf
    from safetensors.torch import load_file

    from export.gguf_export import rotary_to_gguf_order

    weights = {k: v.float().numpy() for k, v in load_file(str(tiny_llama / "model.safetensors")).items()}
    config = json.loads((tiny_llama / "config.json").read_text())
    for kind, tolerance in (("f16", 1e-3), ("q8_0", 2e-2), ("q4_0", 2e-1)):
        tensors = {t.name: t for t in gguf.GGUFReader(gguf_files[kind]).tensors}
        for name, hf, heads in (("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight",
                                 config["num_attention_heads"]),
                                ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight",
                                 config["num_key_value_heads"]),
                                ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight", None)):
            tensor = tensors[name]
            stored = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(weights[hf].shape)
            expected = rotary_to_gguf_order(weights[hf], heads) if heads else weights[hf]
            assert np.abs(stored - expected).max() <= tolerance * np.abs(expected).max(), (kind, name)
    sizes = {kind: path.stat().st_size for kind, path in gguf_files.items()}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]


def test_the_cli_writes_gguf_and_refuses_what_it_cannot(tiny_llama: Path, tiny_gpt2: Path, tmp_path: Path) -> None:
    result = run_cli(["export", str(tiny_llama), "--format", "gguf", "--gguf-type", "q4_0", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "model-q4_0.gguf").is_file() and "llama-cli -m" in result.stdout
    refused = run_cli(["export", str(tiny_gpt2), "--format", "gguf", "--out", str(tmp_path / "gpt2")])
    assert refused.exit_code == 2 and "supports llama models" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "gpt2").exists()


def test_llama_cpp_computes_the_models_logits(gguf_files: dict[str, Path], tiny_llama: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    ids = [1, 57, 203, 99, 311, 42, 7, 480]
    with torch.inference_mode():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(model_path=str(gguf_files["f16"]), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.array(llm.scores[:len(ids)])
    assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max() + 1e-3
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.85


def test_the_vocabulary_of_a_gguf_converted_tokenizer_and_its_pre_tokenizer(tiny_llama: Path, tmp_path: Path) -> None:
    """Tokenizers that transformers converts from a GGUF (the SmolLM2 teacher's) decode through a
    Sequence and set byte_fallback: still byte-level BPE, written token for token; a tokenizer that
    splits digits one by one gets llama.cpp's matching "smollm" pre-tokenizer."""
    import shutil

    from export.base.errors import CompressError
    from export.gguf_export import byte_level_vocab

    folder = tmp_path / "converted"
    shutil.copytree(tiny_llama, folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    plain, _, pre = byte_level_vocab(folder)
    assert pre == "default" and plain[data["added_tokens"][0]["id"]] == data["added_tokens"][0]["content"]
    data["model"]["byte_fallback"] = True
    data["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"},
                                                        {"type": "ByteLevel", "add_prefix_space": True,
                                                         "trim_offsets": True, "use_regex": True}]}
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, data["pre_tokenizer"]]}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    tokens, types, pre = byte_level_vocab(folder)
    assert tokens == plain and pre == "smollm"
    assert types[data["added_tokens"][0]["id"]] == 3 and types.count(1) == len(tokens) - len(data["added_tokens"])
    data["model"]["type"] = "Unigram"
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(CompressError, match="byte-level BPE tokenizer.json"):
        byte_level_vocab(folder)
