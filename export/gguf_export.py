"""A Llama-family language model as a GGUF file, for llama.cpp.

llama.cpp (``llama-cli``, ``llama-server``, llama-cpp-python and the apps built on them) is what
many people run small language models with on CPUs and phones; it reads GGUF. The ``gguf`` package
(llama.cpp's own Python writer) writes the file: the model's shape as metadata, the GPT-2-style
BPE vocabulary with its merges, special tokens and chat template, and the tensors under llama.cpp's
names. Two things llama.cpp expects that a Hugging Face folder does not hold as-is: the query and
key projections' rows reordered for its rotary layout (pairs of halves interleaved), and the
quantized blocks (``q8_0``, ``q4_0``) that its kernels read, made by ``gguf.quants``. Norms stay in
fp32; a matrix whose rows do not divide into blocks stays in f16.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from export.base.errors import CompressError
from export.base.files import read_json_dict
from export.hf_weights import load_hf_weights

if TYPE_CHECKING:
    import numpy as np

GGUF_TYPES = ("f16", "q8_0", "q4_0")
_SUPPORTED = ("llama",)
# The GGUF type closest to each ONNX release precision (llama.cpp's own block formats, not our bytes).
_TYPE_FOR_PRECISION = {"int8-weight": "q8_0", "int8-dynamic": "q8_0", "int4-weight": "q4_0"}


@dataclass
class GgufResult:
    """What ``export_gguf`` wrote."""

    path: Path
    gguf_type: str
    tensors: int
    size_bytes: int
    vocab_size: int


def byte_level_vocab(model_dir: Path) -> tuple[list[str], list[int], str]:
    """Every token of ``model_dir/tokenizer.json`` in id order, its llama.cpp type, and the name of
    llama.cpp's pre-tokenizer that splits text as the folder's does.

    Byte-level BPE only (GPT-2, Llama 3, SmolLM2 vocabularies): the pre-tokenizer or the decoder is
    ``ByteLevel``. A ``byte_fallback`` flag is ignored there: a byte-level vocabulary holds no
    ``<0xNN>`` tokens to fall back to (tokenizers converted from GGUF set it).
    """
    import json

    from gguf import TokenType

    path = Path(model_dir) / "tokenizer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        vocab: dict[str, int] = model["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CompressError(f"{model_dir}: GGUF export needs a byte-level BPE tokenizer.json") from None
    pieces = json.dumps([data.get("pre_tokenizer"), data.get("decoder")])
    if model.get("type") != "BPE" or '"ByteLevel"' not in pieces or not isinstance(vocab, dict):
        raise CompressError(f"{model_dir}: GGUF export needs a byte-level BPE tokenizer.json (GPT-2 style), not "
                            f"{model.get('type')}")
    by_id = {int(i): (text, TokenType.NORMAL) for text, i in vocab.items()}
    for added in data.get("added_tokens") or []:
        kind = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    size = max(by_id) + 1
    tokens = [by_id.get(i, (f"[PAD{i}]", TokenType.USER_DEFINED)) for i in range(size)]
    # SmolLM2's own tokenizer splits digits one by one before the byte-level regex: llama.cpp's "smollm".
    digits = '"individual_digits": true' in json.dumps(data.get("pre_tokenizer"))
    return [t for t, _ in tokens], [int(k) for _, k in tokens], "smollm" if digits else "default"


def gguf_type_for(precision: str) -> str:
    """The GGUF type that matches an ONNX release ``precision`` (f16 for fp32 and fp16 releases)."""
    return _TYPE_FOR_PRECISION.get(precision, "f16")


def can_write_gguf(model_dir: Path) -> bool:
    """Whether ``export_gguf`` supports the model in ``model_dir`` and the gguf package is installed."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        return False
    return read_json_dict(Path(model_dir) / "config.json").get("model_type") in _SUPPORTED


def rotary_to_gguf_order(weights: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotary layout (halves) into llama.cpp's (interleaved pairs), per head."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def export_gguf(model_dir: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                gguf_type: str = "f16") -> GgufResult:
    """Write the Llama-family model in ``model_dir`` to ``out_path`` (atomically) as GGUF in ``gguf_type``."""
    try:
        import gguf
    except ImportError:
        raise CompressError('GGUF export needs the gguf package: pip install "edge-compress[lm]"') from None

    model_dir, out_path = Path(model_dir), Path(out_path)
    if gguf_type not in GGUF_TYPES:
        raise CompressError(f"GGUF type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}")
    config = read_json_dict(model_dir / "config.json")
    if config.get("model_type") not in _SUPPORTED:
        raise CompressError(f"{model_dir}: GGUF export supports {', '.join(_SUPPORTED)} models, not "
                            f"{config.get('model_type')!r}")
    tokens, types, pre = byte_level_vocab(model_dir)
    heads, layers = int(config["num_attention_heads"]), int(config["num_hidden_layers"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    quant = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
             "q4_0": gguf.GGMLQuantizationType.Q4_0}[gguf_type]
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[gguf_type]

    tmp = out_path.with_name(f".{out_path.name}.partial")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_name(model_dir.name)
        writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
        writer.add_embedding_length(hidden)
        writer.add_block_count(layers)
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_rope_dimension_count(head_dim)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
        writer.add_file_type(file_type)
        writer.add_vocab_size(len(tokens))
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
        count = 0
        for hf_name, data in load_hf_weights(model_dir, "to write as GGUF").items():
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise CompressError(f"{model_dir}: no GGUF name for tensor {hf_name}")
            if hf_name.endswith("q_proj.weight"):
                data = rotary_to_gguf_order(data, heads)
            elif hf_name.endswith("k_proj.weight"):
                data = rotary_to_gguf_order(data, kv_heads)
            stored, how = _encode(data, quant, gguf)
            writer.add_tensor(name, stored, **how)
            count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return GgufResult(path=out_path, gguf_type=gguf_type, tensors=count, size_bytes=out_path.stat().st_size,
                      vocab_size=len(tokens))


def _encode(data: np.ndarray, quant: object, gguf: object) -> tuple[np.ndarray, dict[str, object]]:
    """A tensor as the file stores it: 1-D in fp32; matrices in the chosen type where their rows
    divide into its blocks, f16 otherwise."""
    types = gguf.GGMLQuantizationType  # type: ignore[attr-defined]
    import numpy as np

    if data.ndim == 1:
        return data.astype(np.float32), {}
    if quant == types.F16:
        return data.astype(np.float16), {}
    block, _ = gguf.GGML_QUANT_SIZES[quant]  # type: ignore[attr-defined]
    if data.shape[-1] % block:
        return data.astype(np.float16), {}
    return gguf.quants.quantize(data.astype(np.float32), quant), {"raw_dtype": quant}  # type: ignore[attr-defined]
