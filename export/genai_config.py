"""``genai_config.json``: the file that makes a language-model release folder an ONNX Runtime GenAI model.

ONNX Runtime GenAI (``onnxruntime-genai``; ``og.Model(folder)``) drives a decoder graph with its
own C++ generation loop, given a JSON description of the graph: its input and output names (our
export's are Optimum's: ``past_key_values.%d.key`` in, ``present.%d.key`` out), the model's shape
(layers, heads, head size), its special tokens and the search defaults. The fused graph's
GroupQueryAttention writes the cache in place, so GenAI binds one buffer as past and present
(``past_present_share_buffer``); a traced graph returns a present cache one token longer than the
past it was given, so its buffers are not shared. The tokenizer GenAI reads is ``tokenizer.json``
beside the graph, already in every release folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export.base.errors import CompressError
from export.base.files import atomic_write_text, read_json_dict

GENAI_CONFIG = "genai_config.json"
# model_type in config.json -> GenAI's model type; these decoders share the Llama graph contract.
_GENAI_TYPES = {"llama": "llama", "qwen2": "qwen2", "mistral": "mistral", "gpt2": "gpt2", "phi3": "phi3"}


def genai_type(config: dict[str, Any]) -> str | None:
    """GenAI's name for the model's architecture, or None when GenAI does not know it."""
    return _GENAI_TYPES.get(str(config.get("model_type", "")))


def write_genai_config(folder: Path, *, file_name: str = "model.onnx", context_length: int | None = None) -> Path:
    """Write ``folder/genai_config.json`` for the decoder graph ``folder/file_name`` (config.json beside it)."""
    text = genai_config_text(folder, file_name=file_name, context_length=context_length)
    return atomic_write_text(folder / GENAI_CONFIG, text)


def genai_config_text(folder: Path, *, file_name: str, context_length: int | None) -> str:
    """The text of ``genai_config.json`` for the decoder in ``folder`` (its config.json and generation_config.json)."""
    from export.runtime.generation import shares_cache_buffers
    from export.runtime.onnx_file import read_graph_io

    config = read_json_dict(folder / "config.json")
    graph = read_graph_io(folder / file_name)  # the protobuf's fields only: no weights loaded
    position_ids = "position_ids" in graph.inputs
    kind = genai_type(config)
    if kind is None:
        raise CompressError(f"{folder}: ONNX Runtime GenAI has no model type for {config.get('model_type')!r}")
    heads = int(config.get("num_attention_heads") or config["n_head"])
    hidden = int(config.get("hidden_size") or config["n_embd"])
    layers = int(config.get("num_hidden_layers") or config["n_layer"])
    generation = read_json_dict(folder / "generation_config.json") if (folder / "generation_config.json").is_file() \
        else {}
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    context = int(context_length or config.get("max_position_embeddings") or config.get("n_positions") or 2048)
    payload = {
        "model": {
            "bos_token_id": config.get("bos_token_id"),
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": file_name,
                "head_size": int(config.get("head_dim") or hidden // heads),
                "hidden_size": hidden,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           **({"position_ids": "position_ids"} if position_ids else {}),
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": heads,
                "num_hidden_layers": layers,
                "num_key_value_heads": int(config.get("num_key_value_heads") or heads),
            },
            "eos_token_id": eos,
            "pad_token_id": config.get("pad_token_id") if config.get("pad_token_id") is not None
            else (eos[0] if isinstance(eos, list) else eos),
            "type": kind,
            "vocab_size": int(config["vocab_size"]),
        },
        "search": {"do_sample": False, "max_length": context, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1,
                   "past_present_share_buffer": shares_cache_buffers(graph), "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }
    return json.dumps(payload, indent=2) + "\n"
