"""A Llama-family language model written straight into ONNX Runtime's fused decoder ops.

The general exporter traces PyTorch: attention becomes dozens of small ops (rotary from
Slice/Neg/Concat, separate q/k/v projections, a softmax over an explicit mask) and the KV cache
grows by concatenation. ONNX Runtime has one kernel for each of those layers, the ones its own
generation library lays its graphs out with: ``GroupQueryAttention`` (rotary, cache append and
causal attention in one op, able to write the cache in place), ``SimplifiedLayerNormalization``
and ``SkipSimplifiedLayerNormalization`` (RMSNorm with the residual add folded in). This module
writes the graph from the weights with those ops, eleven nodes a layer:

    embed -> [RMSNorm -> packed QKV MatMul -> GroupQueryAttention -> o MatMul -> Skip+RMSNorm
              -> gate/up MatMuls -> SiLU * up -> down MatMul -> Skip+RMSNorm of the next layer] -> head

Its interface is the exporter's (``input_ids``, ``attention_mask``, ``past_key_values.{i}.key/value``
in, ``logits`` and ``present.{i}.key/value`` out) without ``position_ids``: positions come from the
attention mask inside ``GroupQueryAttention``, as ONNX Runtime GenAI expects. Every weight is an
initializer read by a MatMul or the embedding Gather, so the weight quantizers work on it unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.base.errors import CompressError
from export.base.files import read_json_dict
from export.hf_weights import load_hf_weights
from export.onnx_graph import PROTOBUF_LIMIT

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto

OPSET = 17
MS_DOMAIN = "com.microsoft"
_SUPPORTED = ("llama",)


@dataclass(frozen=True)
class DecoderShape:
    """What the graph builder reads from ``config.json``."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rms_eps: float
    rope_theta: float
    max_positions: int
    tied: bool

    @classmethod
    def of(cls, config: dict[str, Any], where: Path) -> DecoderShape:
        """The shape of a config this builder supports; CompressError naming what it does not."""
        why = unsupported_reason(config)
        if why:
            raise CompressError(f"{where}: {why}")
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(layers=int(config["num_hidden_layers"]), hidden=hidden, heads=heads,
                   kv_heads=int(config.get("num_key_value_heads") or heads),
                   head_dim=int(config.get("head_dim") or hidden // heads), vocab=int(config["vocab_size"]),
                   rms_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=float(config.get("rope_theta", 1e4)),
                   max_positions=int(config.get("max_position_embeddings") or 2048),
                   tied=bool(config.get("tie_word_embeddings", False)))


def unsupported_reason(config: dict[str, Any]) -> str | None:
    """Why the fused builder cannot write this model (None: it can): the general exporter takes it then."""
    model_type = config.get("model_type")
    if model_type not in _SUPPORTED:
        return f"the fused graph supports {', '.join(_SUPPORTED)} models, not {model_type!r}"
    if config.get("rope_scaling"):
        return "the fused graph does not scale rotary positions (rope_scaling is set)"
    if config.get("attention_bias") or config.get("mlp_bias"):
        return "the fused graph has no attention or MLP biases"
    if str(config.get("hidden_act", "silu")) != "silu":
        return f"the fused graph's MLP is SiLU-gated, not {config.get('hidden_act')}"
    return None


def write_fused_graph(model_dir: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> DecoderShape:
    """Write ``model_dir``'s weights (fp32) as the fused decoder graph at ``out_path``; its shape."""
    import onnx

    model_dir, out_path = Path(model_dir), Path(out_path)
    shape = DecoderShape.of(read_json_dict(model_dir / "config.json"), model_dir)
    model = build_fused_graph(shape, load_hf_weights(model_dir, "to build the fused ONNX graph"))
    large = sum(t.ByteSize() for t in model.graph.initializer) > PROTOBUF_LIMIT
    onnx.save(model, str(out_path), save_as_external_data=large,
              location=f"{out_path.name}.data" if large else None)
    return shape


def rotary_caches(shape: DecoderShape) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of every position times every rotary frequency: (max_positions, head_dim / 2)."""
    inv_freq = 1.0 / shape.rope_theta ** (np.arange(0, shape.head_dim, 2, dtype=np.float64) / shape.head_dim)
    angles = np.outer(np.arange(shape.max_positions, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class _Graph:
    """Nodes and initializers in the order they are made (which is topological)."""

    def __init__(self) -> None:
        self.nodes: list[NodeProto] = []
        self.initializers: list[Any] = []
        self.value_info: list[Any] = []

    def weight(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def int64(self, name: str, value: int | list[int]) -> str:
        from onnx import TensorProto, helper

        values = value if isinstance(value, list) else [value]
        dims = [len(values)] if isinstance(value, list) else []
        self.initializers.append(helper.make_tensor(name, TensorProto.INT64, dims, values))
        return name

    def node(self, op: str, inputs: list[str], name: str, outputs: int | list[str] = 1, domain: str = "",
             dtype: int = 1, **attrs: Any) -> list[str]:
        """A node; its outputs' element type (``dtype``, FLOAT by default) is declared, so that tools
        running ONNX shape inference (quantize_dynamic) get past the contrib ops it has no schema for."""
        from onnx import helper

        names = outputs if isinstance(outputs, list) else [f"{name}/output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, domain=domain or None, **attrs))
        self.value_info += [helper.make_tensor_value_info(n, dtype, None) for n in names
                            if n and n != "logits" and not n.startswith("present.")]
        return names

    def matmul(self, x: str, weight: np.ndarray, name: str) -> str:
        """``x @ weight.T`` (a Hugging Face Linear's weight is out x in; MatMul reads in x out)."""
        return self.node("MatMul", [x, self.weight(f"{name}.weight_t", weight.T)], name)[0]


def build_fused_graph(shape: DecoderShape, weights: dict[str, np.ndarray]) -> ModelProto:
    """The fused decoder graph over ``weights`` (Hugging Face Llama names)."""
    from onnx import TensorProto, helper

    def take(name: str) -> np.ndarray:
        try:
            return weights[name]
        except KeyError:
            raise CompressError(f"the weights have no {name}") from None

    g = _Graph()
    cos, sin = rotary_caches(shape)
    g.weight("cos_cache", cos)
    g.weight("sin_cache", sin)
    one, scalar_one = g.int64("one", [1]), g.int64("one_scalar", 1)

    # Attention bookkeeping from the mask, once: each row's last valid index and the total length.
    i64, i32 = TensorProto.INT64, TensorProto.INT32
    summed = g.node("ReduceSum", ["attention_mask", one], "mask/ReduceSum", dtype=i64, keepdims=0)[0]
    last = g.node("Sub", [summed, scalar_one], "mask/Sub", dtype=i64)[0]
    seqlens_k = g.node("Cast", [last], "mask/seqlens_k", dtype=i32, to=i32)[0]
    mask_shape = g.node("Shape", ["attention_mask"], "mask/Shape", dtype=i64)[0]
    total = g.node("Gather", [mask_shape, scalar_one], "mask/Gather", dtype=i64, axis=0)[0]
    total_len = g.node("Cast", [total], "mask/total_seq_len", dtype=i32, to=i32)[0]

    embedding = take("model.embed_tokens.weight")
    hidden = g.node("Gather", [g.weight("model.embed_tokens.weight", embedding), "input_ids"], "embed")[0]
    residual, pending = hidden, None  # pending: the last block's output, added to residual by the next norm
    for i in range(shape.layers):
        prefix = f"model.layers.{i}"
        residual, x = _norm(g, residual, pending, take(f"{prefix}.input_layernorm.weight"), shape.rms_eps,
                            f"layers.{i}/input_norm")
        qkv = np.concatenate([take(f"{prefix}.self_attn.{p}_proj.weight") for p in ("q", "k", "v")], axis=0)
        packed = g.matmul(x, qkv, f"layers.{i}/qkv")
        attention = g.node("GroupQueryAttention",
                           [packed, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k,
                            total_len, "cos_cache", "sin_cache"],
                           f"layers.{i}/attention",
                           outputs=[f"layers.{i}/attention/output_0", f"present.{i}.key", f"present.{i}.value"],
                           domain=MS_DOMAIN, num_heads=shape.heads, kv_num_heads=shape.kv_heads, do_rotary=1,
                           rotary_interleaved=0, scale=float(shape.head_dim ** -0.5))[0]
        attended = g.matmul(attention, take(f"{prefix}.self_attn.o_proj.weight"), f"layers.{i}/o_proj")
        residual, x = _norm(g, residual, attended, take(f"{prefix}.post_attention_layernorm.weight"), shape.rms_eps,
                            f"layers.{i}/post_attention_norm")
        gate = g.matmul(x, take(f"{prefix}.mlp.gate_proj.weight"), f"layers.{i}/gate_proj")
        up = g.matmul(x, take(f"{prefix}.mlp.up_proj.weight"), f"layers.{i}/up_proj")
        sigmoid = g.node("Sigmoid", [gate], f"layers.{i}/act/Sigmoid")[0]
        silu = g.node("Mul", [gate, sigmoid], f"layers.{i}/act/Mul")[0]
        product = g.node("Mul", [silu, up], f"layers.{i}/gated")[0]
        pending = g.matmul(product, take(f"{prefix}.mlp.down_proj.weight"), f"layers.{i}/down_proj")
    _, x = _norm(g, residual, pending, take("model.norm.weight"), shape.rms_eps, "final_norm")
    head = embedding if shape.tied or "lm_head.weight" not in weights else weights["lm_head.weight"]
    g.node("MatMul", [x, g.weight("lm_head.weight_t", head.T)], "lm_head", outputs=["logits"])

    past_dims, present_dims = ["batch_size", shape.kv_heads, "past_sequence_length", shape.head_dim], \
        ["batch_size", shape.kv_heads, "total_sequence_length", shape.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch_size", "sequence_length", shape.vocab])]
    for i in range(shape.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, past_dims))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present_dims))
    graph = helper.make_graph(g.nodes, "fused_decoder", inputs, outputs, g.initializers, value_info=g.value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
                              producer_name="compress")
    model.ir_version = 9
    return model


def _norm(g: _Graph, residual: str, added: str | None, weight: np.ndarray, eps: float, name: str) -> tuple[str, str]:
    """RMSNorm of ``residual + added`` (of ``residual`` alone before the first block): the new residual
    stream and the normalised input of the next block."""
    gamma = g.weight(f"{name}.weight", weight)
    if added is None:
        return residual, g.node("SimplifiedLayerNormalization", [residual, gamma], name, axis=-1, epsilon=eps,
                                stash_type=1)[0]
    out, _, _, summed = g.node("SkipSimplifiedLayerNormalization", [added, residual, gamma], name,
                               outputs=[f"{name}/output_0", "", "", f"{name}/output_3"], domain=MS_DOMAIN,
                               epsilon=eps)
    return summed, out
