"""Causal-LM export with the KV cache, parity with PyTorch, weight quantization and perplexity.

Real models end to end: tiny Llama and GPT-2 folders (real BPE tokenizer) exported (Llama: the fused
layout by default, and traced by optimum; GPT-2: traced), run by onnxruntime through
``ORTModelForCausalLM``, compared with transformers.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from export.base.errors import CompressError
from export.lm_export import LMExportResult, check_lm_parity, export_causal_lm, load_ort_causal_lm, read_lm_export
from export.lm_quantize import LMQuantizeResult, expose_constant_weights, quantize_causal_lm
from export.lm_scores import onnx_perplexity


def _ops(path: Path) -> Counter:
    import onnx

    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def texts(sentences: list[str]) -> list[str]:
    return sentences[100:112]


@pytest.fixture(scope="module")
def llama_onnx(tiny_llama: Path, texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> LMExportResult:
    return export_causal_lm(tiny_llama, tmp_path_factory.mktemp("lm") / "llama-onnx", parity_texts=texts,
                            greedy_tokens=8)


@pytest.fixture(scope="module")
def llama_traced(tiny_llama: Path, texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> LMExportResult:
    return export_causal_lm(tiny_llama, tmp_path_factory.mktemp("lm") / "llama-traced", parity_texts=texts,
                            greedy_tokens=8, layout="traced")


@pytest.fixture(scope="module")
def gpt2_onnx(tiny_gpt2: Path, texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> LMExportResult:
    return export_causal_lm(tiny_gpt2, tmp_path_factory.mktemp("lm") / "gpt2-onnx", parity_texts=texts,
                            greedy_tokens=8)


# ---------------------------------------------------------------------------------------------
# Export and parity


@pytest.mark.parametrize("which", ["llama_onnx", "llama_traced", "gpt2_onnx"])
def test_export_writes_a_standalone_kv_cache_model_that_matches_pytorch(which: str, texts: list[str],
                                                                         request: pytest.FixtureRequest) -> None:
    import onnxruntime as ort

    result: LMExportResult = request.getfixturevalue(which)
    folder = result.out_path.parent
    assert result.out_path.name == "model.onnx" and result.out_path.is_file()
    for name in ("tokenizer.json", "config.json", "generation_config.json", "stage.json"):
        assert (folder / name).is_file(), name
    session = ort.InferenceSession(str(result.out_path), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    assert {"input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.3.value"} <= inputs
    assert {"logits", "present.0.key", "present.3.value"} <= outputs
    assert result.task == "text-generation-with-past" and result.opset >= 14
    assert result.size_mb == pytest.approx(result.out_path.stat().st_size / 1024**2, rel=1e-2)
    parity = result.parity
    assert parity.texts == len(texts)
    assert parity.max_abs_logit_diff < 1e-4
    assert parity.top1_agreement == 1.0
    assert parity.greedy_match and parity.greedy_tokens == 8
    assert result.layout == ("fused" if which == "llama_onnx" else "traced")


def test_the_fused_layout_is_onnx_runtime_s_decoder_ops(llama_onnx: LMExportResult, llama_traced: LMExportResult,
                                                       tiny_llama: Path) -> None:
    """One GroupQueryAttention per layer (rotary inside, positions from the mask: no position_ids input),
    RMSNorms with the residual folded in, and a packed QKV projection: a fraction of the traced graph's nodes."""
    import onnxruntime as ort

    ops = _ops(llama_onnx.out_path)
    config = json.loads((tiny_llama / "config.json").read_text())
    layers = config["num_hidden_layers"]
    assert ops["GroupQueryAttention"] == layers and ops["SkipSimplifiedLayerNormalization"] == 2 * layers
    assert ops["SimplifiedLayerNormalization"] == 1 and ops["MatMul"] == 5 * layers + 1
    assert sum(ops.values()) * 3 < sum(_ops(llama_traced.out_path).values())
    session = ort.InferenceSession(str(llama_onnx.out_path), providers=["CPUExecutionProvider"])
    assert "position_ids" not in {i.name for i in session.get_inputs()}


def test_the_fused_layout_is_refused_where_the_architecture_has_no_fused_graph(tiny_gpt2: Path, texts: list[str],
                                                                               tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="fused graph supports llama models, not 'gpt2'"):
        export_causal_lm(tiny_gpt2, tmp_path / "out", parity_texts=texts, layout="fused")
    assert not (tmp_path / "out").exists()


def test_export_result_round_trips_through_stage_json(llama_onnx: LMExportResult) -> None:
    folder = llama_onnx.out_path.parent
    assert read_lm_export(folder) == llama_onnx
    assert LMExportResult.from_json(json.loads(json.dumps(llama_onnx.to_json()))) == llama_onnx


def test_export_is_skipped_when_up_to_date_and_redone_when_a_parameter_changes(
        tiny_llama: Path, llama_onnx: LMExportResult, texts: list[str], tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "moved"
    shutil.copytree(llama_onnx.out_path.parent, folder)
    before = (folder / "stage.json").read_text()
    again = export_causal_lm(tiny_llama, folder, parity_texts=texts, greedy_tokens=8)
    assert again.out_path == folder / "model.onnx" and again.parity == llama_onnx.parity
    assert (folder / "stage.json").read_text() == before
    changed = export_causal_lm(tiny_llama, folder, parity_texts=texts[:4], greedy_tokens=4)
    assert changed.parity.texts == 4 and changed.parity.greedy_tokens == 4
    assert (folder / "stage.json").read_text() != before


def test_parity_check_catches_a_graph_from_different_weights(tiny_llama: Path, llama_onnx: LMExportResult,
                                                             texts: list[str], tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    # The same model with its final norm negated: logits flip sign, so argmax becomes argmin.
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        model.model.norm.weight.neg_()
    other = tmp_path / "negated"
    model.save_pretrained(other, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (tiny_llama / name).is_file():
            (other / name).write_bytes((tiny_llama / name).read_bytes())
    parity = check_lm_parity(other, llama_onnx.out_path.parent, texts[:4], greedy_tokens=8)
    assert parity.max_abs_logit_diff > 1e-2
    assert parity.top1_agreement < 0.1
    assert not parity.greedy_match and parity.greedy_tokens == 8


def test_export_rejects_bad_folders(tmp_path: Path, tiny_llama: Path) -> None:
    with pytest.raises(CompressError, match="model folder not found"):
        export_causal_lm(tmp_path / "missing", tmp_path / "out")
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(CompressError, match="not a causal language model"):
        export_causal_lm(encoder, tmp_path / "out")
    with pytest.raises(CompressError, match="no config.json"):
        export_causal_lm(tmp_path, tmp_path / "out")
    with pytest.raises(CompressError, match="would replace the model folder"):
        export_causal_lm(tiny_llama, tiny_llama)
    with pytest.raises(CompressError, match="no non-empty texts"):
        export_causal_lm(tiny_llama, tmp_path / "out", parity_texts=["  "])
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Perplexity and quantization


def test_onnx_perplexity_equals_pytorch_perplexity(tiny_llama: Path, llama_onnx: LMExportResult,
                                                   texts: list[str]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    nll, count = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            loss = model(input_ids=ids, labels=ids).loss  # mean over every token after the first
            nll += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    expected = math.exp(nll / count)
    assert onnx_perplexity(llama_onnx.out_path.parent, texts) == pytest.approx(expected, rel=1e-4)


def test_int4_quantization_shrinks_the_model_keeps_perplexity_and_still_generates(
        llama_onnx: LMExportResult, texts: list[str], tmp_path: Path) -> None:
    import torch

    out = tmp_path / "int4"
    result = quantize_causal_lm(llama_onnx.out_path.parent, out, "int4-weight", block_size=16, eval_texts=texts)
    assert result.out_path == out / "model.onnx" and result.method == "int4-weight" and result.block_size == 16
    ops = _ops(result.out_path)
    # Every projection (QKV packed), the tied LM head and the embedding are 4-bit; attention's
    # activation x activation products are inside GroupQueryAttention.
    assert ops["MatMulNBits"] == 4 * 5 + 1 and ops["GatherBlockQuantized"] == 1
    assert ops["MatMul"] == 0
    assert result.fp32_size_mb == pytest.approx(llama_onnx.size_mb, rel=1e-2)
    assert result.size_mb < 0.45 * result.fp32_size_mb
    assert result.perplexity_fp32 == pytest.approx(onnx_perplexity(llama_onnx.out_path.parent, texts))
    assert result.perplexity_ratio == pytest.approx(result.perplexity / result.perplexity_fp32)
    assert 0.97 < result.perplexity_ratio < 1.05
    for name in ("tokenizer.json", "config.json", "generation_config.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert not (out / "stage.json").exists()
    model = load_ort_causal_lm(out)
    generated = model.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=5, min_new_tokens=5,
                               do_sample=False)
    assert generated.shape == (1, 8)
    assert LMQuantizeResult.from_json(json.loads(json.dumps(result.to_json()))) == result


def test_int8_dynamic_quantizes_gpt2_conv1d_layers_and_tied_head(gpt2_onnx: LMExportResult, texts: list[str],
                                                                 tmp_path: Path) -> None:
    result = quantize_causal_lm(gpt2_onnx.out_path.parent, tmp_path / "int8", "int8-dynamic", eval_texts=texts[:6])
    ops = _ops(result.out_path)
    assert ops["Gemm"] == 0
    assert ops["MatMulInteger"] + ops["DynamicQuantizeMatMul"] == 4 * 4 + 1  # 4 Conv1D per layer + LM head
    assert result.block_size is None and result.size_mb < 0.75 * result.fp32_size_mb
    assert 0.97 < result.perplexity_ratio < 1.03


def test_int8_weight_quantizes_every_matmul_in_8_bit_blocks_and_keeps_perplexity(
        llama_onnx: LMExportResult, texts: list[str], tmp_path: Path) -> None:
    import onnx

    result = quantize_causal_lm(llama_onnx.out_path.parent, tmp_path / "int8w", "int8-weight", eval_texts=texts[:6],
                                max_ratio=1.1)
    nodes = [n for n in onnx.load(str(result.out_path)).graph.node if n.op_type == "MatMulNBits"]
    assert nodes and {next(a.i for a in n.attribute if a.name == "bits") for n in nodes} == {8}
    assert _ops(result.out_path)["MatMul"] == 0  # attention's products are inside GroupQueryAttention
    assert result.size_mb < 0.8 * result.fp32_size_mb and result.setting == "int8-weight"
    assert 0.98 < result.perplexity_ratio < 1.02 and result.within_budget
    # The token embedding, quantized too: 8-bit blocks of 32 along the hidden axis, read by a
    # GatherBlockQuantized that replaces the embedding's Gather (the tied head stays an 8-bit MatMul).
    graph = onnx.load(str(result.out_path)).graph
    (gather,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in gather.attribute}
    assert attributes["block_size"] == 32 and attributes["bits"] == 8 and attributes["gather_axis"] == 0
    weights = {t.name: t for t in graph.initializer}
    config = json.loads((llama_onnx.out_path.parent / "config.json").read_text())
    quantized, scales = weights[gather.input[0]], weights[gather.input[2]]
    assert list(scales.dims) == [config["vocab_size"], config["hidden_size"] // 32]
    assert list(quantized.dims) == [config["vocab_size"], config["hidden_size"]]
    assert quantized.data_type == onnx.TensorProto.UINT8
    assert not any(n.op_type == "Gather" and n.input[0] in weights and len(weights[n.input[0]].dims) == 2
                   for n in graph.node)  # no fp32 embedding table left
    # The codes read back as the table within half a step of each block.
    from onnx import numpy_helper

    table = numpy_helper.to_array(next(t for t in onnx.load(str(llama_onnx.out_path)).graph.initializer
                                       if t.name == "model.embed_tokens.weight"))
    step = numpy_helper.to_array(scales)
    codes = numpy_helper.to_array(quantized).astype(np.float32)
    zero = numpy_helper.to_array(weights[gather.input[3]]).astype(np.float32)
    restored = (codes.reshape(len(table), -1, 32) - zero[..., None]) * step[..., None]
    assert np.all(np.abs(restored.reshape(table.shape) - table) <= np.repeat(step, 32, axis=1) / 2 + 1e-6)



def test_fp16_keeps_fp32_inputs_and_perplexity(gpt2_onnx: LMExportResult, texts: list[str], tmp_path: Path) -> None:
    import onnxruntime as ort

    result = quantize_causal_lm(gpt2_onnx.out_path.parent, tmp_path / "fp16", "fp16", eval_texts=texts[:6])
    session = ort.InferenceSession(str(result.out_path), providers=["CPUExecutionProvider"])
    assert {i.type for i in session.get_inputs() if i.name.startswith("past_key_values")} == {"tensor(float)"}
    assert result.size_mb < 0.75 * result.fp32_size_mb
    assert result.perplexity_ratio == pytest.approx(1.0, abs=1e-3)


def test_exposing_constant_weights_keeps_the_graph_s_outputs(gpt2_onnx: LMExportResult) -> None:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(gpt2_onnx.out_path))
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert expose_constant_weights(model) == 4 * 4 + 1
    rewritten = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert not any(n.op_type == "Gemm" for n in model.graph.node)
    rng = np.random.default_rng(0)
    feed: dict[str, np.ndarray] = {"input_ids": rng.integers(0, 500, (2, 5)), "attention_mask": np.ones((2, 8), np.int64),
                                   "position_ids": np.tile(np.arange(3, 8), (2, 1))}
    for arg in original.get_inputs():
        if arg.name.startswith("past_key_values"):
            feed[arg.name] = rng.standard_normal((2, arg.shape[1], 3, arg.shape[3])).astype(np.float32)
    feed = {k: v for k, v in feed.items() if k in {i.name for i in original.get_inputs()}}
    np.testing.assert_allclose(original.run(["logits"], feed)[0], rewritten.run(["logits"], feed)[0],
                               rtol=1e-5, atol=1e-5)


def test_quantize_rejects_bad_input(llama_onnx: LMExportResult, texts: list[str], tmp_path: Path) -> None:
    source = llama_onnx.out_path.parent
    with pytest.raises(CompressError, match="unknown quantization method 'int3'"):
        quantize_causal_lm(source, tmp_path / "q", "int3", eval_texts=texts)
    with pytest.raises(CompressError, match="block size must be a power of two"):
        quantize_causal_lm(source, tmp_path / "q", "int4-weight", block_size=24, eval_texts=texts)
    with pytest.raises(CompressError, match="has no model.onnx"):
        quantize_causal_lm(tmp_path, tmp_path / "q", "int4-weight", eval_texts=texts)
    with pytest.raises(CompressError, match="no non-empty texts"):
        quantize_causal_lm(source, tmp_path / "q", "int4-weight", eval_texts=[])
    with pytest.raises(CompressError, match="is the input folder"):
        quantize_causal_lm(source, source, "int8-dynamic", eval_texts=texts)
    quantize_causal_lm(source, tmp_path / "once", "int8-dynamic", eval_texts=texts[:2])
    with pytest.raises(CompressError, match="already quantized"):
        quantize_causal_lm(tmp_path / "once", tmp_path / "twice", "int4-weight", eval_texts=texts[:2])
    with pytest.raises(CompressError, match="has no model.onnx"):
        onnx_perplexity(tmp_path / "missing", texts)
    assert not (tmp_path / "q").exists() and not (tmp_path / "twice").exists()


def test_int4_settings_are_tried_until_the_quantization_budget_fits(llama_onnx: LMExportResult, texts: list[str],
                                                                    tmp_path: Path) -> None:
    source = llama_onnx.out_path.parent
    ladder = ["block 32", "block 32, LM head int8", "block 16, LM head int8", "block 16, LM head fp32"]
    # A budget nothing meets: every setting is tried and the most faithful one is released.
    strict = quantize_causal_lm(source, tmp_path / "strict", "int4-weight", eval_texts=texts, max_ratio=1e-6)
    assert [t["setting"] for t in strict.tries] == ladder
    assert strict.within_budget is False
    best = min(strict.tries, key=lambda t: t["perplexity_ratio"])
    assert strict.setting == best["setting"]
    assert strict.perplexity_ratio == pytest.approx(best["perplexity_ratio"], rel=1e-9)
    # The LM head kept in fp32: the logits come from a plain MatMul.
    head = quantize_causal_lm(source, tmp_path / "head", "int4-weight", block_size=16, eval_texts=texts,
                              max_ratio=1e-6)
    assert head.tries[-1]["setting"] == ladder[-1]
    # A budget exactly the best ratio: the loop stops at the first setting that reaches it.
    target = best["perplexity_ratio"]
    first = next(i for i, t in enumerate(strict.tries) if t["perplexity_ratio"] <= target)
    stopped = quantize_causal_lm(source, tmp_path / "stopped", "int4-weight", eval_texts=texts, max_ratio=target)
    assert len(stopped.tries) == first + 1 and stopped.within_budget is True
    # A generous budget: the first setting, as without one.
    generous = quantize_causal_lm(source, tmp_path / "generous", "int4-weight", eval_texts=texts, max_ratio=100.0)
    assert [t["setting"] for t in generous.tries] == ladder[:1] and generous.setting == "block 32"


def test_the_lm_head_can_stay_in_fp32(llama_onnx: LMExportResult, texts: list[str], tmp_path: Path) -> None:
    import onnx

    from export.lm_quantize import Int4Setting, lm_head_node, write_int4

    def head_op(head: str) -> tuple[str, int | None]:
        target = write_int4(llama_onnx.out_path.parent, tmp_path / head, Int4Setting(16, head=head))
        assert _ops(target)["MatMulNBits"] > 0  # the rest is int4 either way
        producers = {o: n for n in onnx.load(str(target)).graph.node for o in n.output}
        node = producers["logits"]
        while not node.op_type.startswith("MatMul"):
            node = producers[node.input[0]]
        bits = next((a.i for a in node.attribute if a.name == "bits"), None)
        return node.op_type, bits

    assert head_op("int4") == ("MatMulNBits", 4)
    assert head_op("int8") == ("MatMulNBits", 8)
    assert head_op("fp32") == ("MatMul", None)
    assert lm_head_node(onnx.load(str(llama_onnx.out_path)))  # found (and named) in the fp32 export


def test_compress_export_exports_a_language_model_from_the_command_line(tiny_llama: Path, texts: list[str],
                                                                       tmp_path: Path) -> None:
    """`compress export` finds the causal LM in the folder (or is told with --task text-generation)."""
    from tests.cli_helpers import run_cli

    samples = tmp_path / "texts.txt"
    samples.write_text("\n".join(texts) + "\n")
    result = run_cli(["export", str(tiny_llama), "--out", str(tmp_path / "lm"), "--samples", str(samples)])
    assert result.exit_code == 0, result.stderr
    assert "first 16 greedy tokens through the KV cache identical" in result.stdout
    assert {"model.onnx", "tokenizer.json", "generation_config.json", "stage.json"} <= \
        {p.name for p in (tmp_path / "lm").iterdir()}
    told = run_cli(["export", str(tiny_llama), "--out", str(tmp_path / "lm"), "--task", "text-generation", "--json"])
    assert told.exit_code == 0 and json.loads(told.stdout)["parity"]["greedy_match"] is True
