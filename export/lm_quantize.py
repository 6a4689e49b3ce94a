"""Quantize an exported causal language model, and measure what it costs in perplexity.

``quantize_causal_lm`` writes a folder with ``model.onnx`` plus the tokenizer, config and
generation config, so the result loads like the fp32 export: ``int4-weight`` (onnxruntime's
``MatMulNBitsQuantizer``, block-wise asymmetric 4-bit weights, embedding included),
``int8-weight`` (the same, 8-bit MatMul weights, the embedding in 8-bit blocks of 32), ``int8-dynamic``
(onnxruntime's ``quantize_dynamic`` on MatMul weights) or ``fp16`` (half-precision
weights, fp32 inputs and outputs, KV cache included). Its cost is measured as perplexity on the
same texts before and after.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.base.errors import CompressError
from export.base.files import atomic_directory
from export.lm_export import MODEL_FILE, clean_texts, quiet_export, size_mb
from export.lm_scores import onnx_perplexity
from export.lm_source_grid import keep_source_grids, on_8bit_grid
from export.onnx_graph import PROTOBUF_LIMIT
from export.base.report_json import JsonRecord

LM_QUANTIZE_METHODS = ("int4-weight", "int8-weight", "int8-dynamic", "fp16")
# Files the ONNX folder needs to be used without the source folder (tokenizer, chat template, configs).
_SIDECAR_SUFFIXES = (".json", ".jinja", ".txt", ".model")
_SKIP_SIDECARS = ("stage.json",)


@dataclass
class LMQuantizeResult(JsonRecord):
    """What ``quantize_causal_lm`` wrote and what it cost in perplexity."""

    method: str
    out_path: Path  # the quantized .onnx file (tokenizer and configs beside it)
    size_mb: float
    fp32_size_mb: float
    perplexity_fp32: float
    perplexity: float
    perplexity_ratio: float  # quantized / fp32: 1.02 = 2% worse
    block_size: int | None  # int4-weight only
    setting: str = ""  # the int4 setting released (see Int4Setting.describe)
    max_ratio: float | None = None  # the budget the settings were tried against
    tries: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # every setting tried, in order
    source_grid_matmuls: int = 0  # MatMuls written on the 4-bit grid their weights came on (export.lm_source_grid)

    @property
    def within_budget(self) -> bool | None:
        return None if self.max_ratio is None else self.perplexity_ratio <= self.max_ratio


def _copy_sidecars(source_dir: Path, target_dir: Path) -> list[str]:
    """Copy tokenizer, chat template and config files so the folder stands alone."""
    copied = []
    for path in sorted(source_dir.iterdir()):
        if path.is_file() and path.suffix in _SIDECAR_SUFFIXES and path.name not in _SKIP_SIDECARS:
            shutil.copyfile(path, target_dir / path.name)
            copied.append(path.name)
    return copied



def _check_generation_onnx(onnx_dir: Path) -> Any:
    """The fp32 graph in ``onnx_dir``; CompressError when it is missing, quantized or has no KV cache."""
    from export.onnx_graph import check_fp32_model

    path = onnx_dir / MODEL_FILE
    if not onnx_dir.is_dir() or not path.is_file():
        raise CompressError(f"{onnx_dir} has no {MODEL_FILE}: pass the folder export_causal_lm wrote")
    model = check_fp32_model(path)
    if not any(i.name.startswith("past_key_values") for i in model.graph.input):
        raise CompressError(f"{path} takes no past_key_values: not a language model exported with its KV cache")
    return model


HEAD_PRECISIONS = ("int4", "int8", "fp32")


@dataclass(frozen=True)
class Int4Setting:
    """One way to write int4 weights: the block size, and the LM head's precision (int4, int8 or fp32)."""

    block_size: int
    head: str = "int4"

    def describe(self) -> str:
        return f"block {self.block_size}" + (f", LM head {self.head}" if self.head != "int4" else "")


def int4_ladder(block_size: int) -> list[Int4Setting]:
    """int4 settings from smallest and fastest to most faithful: the asked block size; the LM head (the
    widest MatMul, and the one every token's choice goes through) in int8; then block 16 as well; then
    the head in fp32. On a 6-block SmolLM2 student the head is most of int4's cost (1.29x -> 1.12x
    perplexity with it in int8, 1.08x with blocks of 16 too) and blocks of 16 are slower than 32
    (benchmarks/lm_int4_ladder.py)."""
    ladder = [Int4Setting(block_size), Int4Setting(block_size, head="int8")]
    if block_size > 16:
        ladder.append(Int4Setting(16, head="int8"))
    ladder.append(Int4Setting(16, head="fp32"))
    return ladder


def quantize_causal_lm(onnx_dir: Path, out_dir: Path, method: str, *, block_size: int = 32,
                       eval_texts: list[str], max_ratio: float | None = None) -> LMQuantizeResult:
    """Quantize the exported language model in ``onnx_dir`` into ``out_dir/model.onnx`` with ``method``.

    ``int4-weight``: 4-bit asymmetric block-wise MatMul and embedding weights (``block_size`` a
    power of two, >= 16); ``int8-weight``: 8-bit block-wise MatMul weights (fp32 activations, int8
    dot products inside) and an 8-bit embedding; ``int8-dynamic``: int8 MatMul weights, activations quantized at run time; ``fp16``.
    Tokenizer, chat template and config files are copied so ``out_dir`` loads like the export.
    Perplexity is measured on ``eval_texts`` before and after. With ``max_ratio`` (the profile's
    quantization budget), int4 settings are tried in :func:`int4_ladder` order and the first whose
    perplexity ratio fits is kept; when none fits, the most faithful one tried is, and the result
    says so. The folder appears complete or not at all.
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    if method not in LM_QUANTIZE_METHODS:
        raise CompressError(f"unknown quantization method {method!r} for a language model "
                            f"(choose from {', '.join(LM_QUANTIZE_METHODS)})")
    if method == "int4-weight" and (block_size < 16 or block_size & (block_size - 1)):
        raise CompressError(f"int4 block size must be a power of two >= 16, not {block_size}")
    if out_dir.resolve() == onnx_dir.resolve():
        raise CompressError(f"output folder {out_dir} is the input folder; choose another")
    if max_ratio is not None and not max_ratio > 0:
        raise CompressError(f"the quantization perplexity budget must be positive, not {max_ratio}")
    texts = clean_texts(eval_texts, "perplexity texts")
    _check_generation_onnx(onnx_dir)
    perplexity_fp32 = onnx_perplexity(onnx_dir, texts)
    ladder = int4_ladder(block_size) if method == "int4-weight" and max_ratio is not None else [
        Int4Setting(block_size)]

    tries: list[dict[str, Any]] = []
    with atomic_directory(out_dir) as tmp:
        _copy_sidecars(onnx_dir, tmp)
        for setting in ladder:
            kept = _write_quantized(onnx_dir, tmp, method, setting)
            ratio = onnx_perplexity(tmp, texts) / perplexity_fp32
            tries.append({"setting": setting.describe(), "perplexity_ratio": ratio,
                          "size_mb": round(size_mb(tmp / MODEL_FILE), 3), "source_grid_matmuls": kept})
            if max_ratio is None or ratio <= max_ratio:
                break
        else:  # nothing fits: keep the most faithful setting tried
            best = min(range(len(tries)), key=lambda i: tries[i]["perplexity_ratio"])
            if best != len(tries) - 1:
                _write_quantized(onnx_dir, tmp, method, ladder[best])
            setting, kept = ladder[best], tries[best]["source_grid_matmuls"]
        perplexity = onnx_perplexity(tmp, texts)
        quantized_mb = size_mb(tmp / MODEL_FILE)
    return LMQuantizeResult(
        method=method, out_path=out_dir / MODEL_FILE, size_mb=round(quantized_mb, 3),
        fp32_size_mb=round(size_mb(onnx_dir / MODEL_FILE), 3), perplexity_fp32=perplexity_fp32,
        perplexity=perplexity, perplexity_ratio=perplexity / perplexity_fp32,
        block_size=setting.block_size if method == "int4-weight" else None,
        setting=setting.describe() if method == "int4-weight" else method, max_ratio=max_ratio, tries=tries,
        source_grid_matmuls=kept,
    )


def write_int4(onnx_dir: Path, out_dir: Path, setting: Int4Setting) -> Path:
    """``onnx_dir``'s fp32 model in int4 with one ``setting``, as a folder that loads like the export
    (no perplexity measured: what ``quantize_causal_lm`` tries, for measuring settings side by side)."""
    return write_quantized(onnx_dir, out_dir, "int4-weight", setting)


# The token embedding's 8-bit block size along the hidden axis under 8-bit weights (int8-weight).
EMBEDDING_BLOCK = 32


def write_quantized(onnx_dir: Path, out_dir: Path, method: str, setting: Int4Setting | None = None) -> Path:
    """``onnx_dir``'s fp32 model quantized with ``method`` (``setting``: block size and LM head for the
    block-wise methods), as a folder that loads like the export; nothing measured."""
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    if method not in LM_QUANTIZE_METHODS:
        raise CompressError(f"unknown quantization method {method!r} for a language model")
    _check_generation_onnx(onnx_dir)
    with atomic_directory(out_dir) as tmp:
        _copy_sidecars(onnx_dir, tmp)
        _write_quantized(onnx_dir, tmp, method, setting or Int4Setting(32))
    return out_dir / MODEL_FILE


def _write_quantized(onnx_dir: Path, folder: Path, method: str, setting: Int4Setting) -> int:
    """Quantize the fp32 graph of ``onnx_dir`` into ``folder/model.onnx`` (replacing what is there); the
    number of MatMuls whose source grid was kept."""
    import onnx

    for stale in folder.glob(MODEL_FILE + "*"):
        stale.unlink()
    source = onnx.load(str(onnx_dir / MODEL_FILE))  # each try starts from the fp32 graph: quantizers edit it
    with quiet_export(root=True):
        return _quantize_graph(source, onnx_dir / MODEL_FILE, folder / MODEL_FILE, method, setting)


def _quantize_graph(model: Any, source: Path, target: Path, method: str, setting: Int4Setting) -> int:
    """Write ``source`` (already loaded as ``model``) quantized with ``method`` to ``target``; the number
    of MatMuls written on their source grid (int4 only)."""
    import onnx

    large = size_mb(source) * 1024**2 > PROTOBUF_LIMIT
    block_size = setting.block_size
    kept = 0
    if method in ("int4-weight", "int8-weight", "int8-dynamic"):
        expose_constant_weights(model)
    if method == "int4-weight":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # accuracy_level 4: int8 activations inside MatMulNBits, the fast CPU path for 4-bit weights
        # (on SmolLM2-135M it cost no perplexity against fp32 compute). Asymmetric (a zero point per
        # block): perplexity ratio 1.50 against 1.61 symmetric there, for 2% more bytes.
        # Gather too: the token embedding (vocab x hidden) is the largest tensor of a small LM and
        # becomes GatherBlockQuantized, blocks along the hidden axis (no measurable perplexity cost).
        head = [lm_head_node(model)] if setting.head != "int4" else []
        # Weights already on a 4-bit grid (a model loaded from GGUF) are written exactly (export.lm_source_grid),
        # and an embedding that came in 8 bits stays in 8 (SmolLM2-135M's Q8_0 table: 0.930 -> 0.956
        # next-token agreement, 1.034x -> 1.020x perplexity, 14 MB more).
        kept, block_sums = keep_source_grids(model, block_size, exclude=set(head))
        if _embedding_on_8bit_grid(model):
            quantize_embedding_8bit(model, block_size=EMBEDDING_BLOCK)
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=False, accuracy_level=4,
                                         op_types_to_quantize=("MatMul", "Gather"),
                                         quant_axes=(("MatMul", 0), ("Gather", 1)),
                                         nodes_to_exclude=head + sorted(block_sums))
        quantizer.process()
        if setting.head == "int8":  # a second pass over the head alone, 8-bit blocks
            quantizer = MatMulNBitsQuantizer(quantizer.model.model, bits=8, block_size=block_size, is_symmetric=False,
                                             accuracy_level=4, op_types_to_quantize=("MatMul",),
                                             quant_axes=(("MatMul", 0),), nodes_to_include=head)
            quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=large)
    elif method == "int8-weight":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # The token embedding first, in 8-bit blocks along the hidden axis (GatherBlockQuantized, bits 8;
        # onnxruntime's quantizer writes Gather in 4 bits only, so this module writes it). On SmolLM2-135M
        # it is 108 of the 258 MiB left by 8-bit MatMuls. Measured there against fp32 on 48 held-out
        # texts, same decode speed: 4-bit blocks of 16, 171.6 MiB, 1.027x perplexity, 0.929 next-token
        # agreement; 8-bit blocks of 32, 181.8 MiB, 0.993x, 0.972.
        quantize_embedding_8bit(model, block_size=EMBEDDING_BLOCK)
        # Then 8-bit weights, block-wise, in the same MatMulNBits op: on SmolLM2-135M it kept perplexity
        # (1.002x) and 95% of next-token choices where int8-dynamic's run-time activation
        # quantization cost 1.95x and more than half of them (benchmarks/lm_teacher_quantization.py).
        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=False,
                                         accuracy_level=4, op_types_to_quantize=("MatMul",),
                                         quant_axes=(("MatMul", 0),))
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=large)
    elif method == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Weights only: MatMuls whose B is a constant. Q@K and attn@V multiply two activations and
        # lose the most from run-time quantization.
        quantize_dynamic(model, target, op_types_to_quantize=["MatMul"], per_channel=False,
                         weight_type=QuantType.QInt8, use_external_data_format=large,
                         extra_options={"MatMulConstBOnly": True})
    else:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # keep_io_types: callers (ORTModelForCausalLM, export.runtime.generation) keep feeding fp32 and the
        # KV cache stays fp32 across steps.
        half = convert_float_to_float16(model, keep_io_types=True)
        onnx.save(half, str(target), save_as_external_data=large)
    return kept


def _embedding_on_8bit_grid(model: Any) -> bool:
    """Whether the token embedding (the Gather of a 2-D initializer) came as symmetric 8-bit blocks."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    tables = [initializers[node.input[0]] for node in model.graph.node
              if node.op_type == "Gather" and node.input[0] in initializers and len(initializers[node.input[0]].dims) == 2]
    return bool(tables) and all(on_8bit_grid(numpy_helper.to_array(t), EMBEDDING_BLOCK) for t in tables)


def quantize_embedding_8bit(model: Any, *, block_size: int) -> int:
    """Rewrite ``model`` in place: every Gather of a 2-D fp32 initializer (the token embedding)
    becomes a GatherBlockQuantized over 8-bit asymmetric blocks of ``block_size`` along the hidden
    axis (uint8 codes and zero points, fp32 scales). Returns the number of tables quantized."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    levels = 255
    rewritten = 0
    for index, node in enumerate(graph.node):
        table = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or len(table.dims) != 2 or table.data_type != TensorProto.FLOAT:
            continue
        if next((a.i for a in node.attribute if a.name == "axis"), 0) != 0 or table.dims[1] % block_size:
            continue
        weights = numpy_helper.to_array(table)
        rows, width = weights.shape
        blocks = weights.reshape(rows, width // block_size, block_size)
        low, high = np.minimum(blocks.min(-1), 0.0), np.maximum(blocks.max(-1), 0.0)
        scale = np.where(high > low, (high - low) / levels, 1.0).astype(np.float32)
        zero = np.clip(np.round(-low / scale), 0, levels).astype(np.uint8)
        codes = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], 0, levels).astype(np.uint8)
        name = table.name
        graph.initializer.extend([numpy_helper.from_array(codes.reshape(rows, width), f"{name}_q8"),
                                  numpy_helper.from_array(scale, f"{name}_scales"),
                                  numpy_helper.from_array(zero, f"{name}_zero_points")])
        graph.node[index].CopyFrom(helper.make_node(
            "GatherBlockQuantized", [f"{name}_q8", node.input[1], f"{name}_scales", f"{name}_zero_points"],
            list(node.output), name=node.name or f"{name}_GatherBlockQuantized", domain="com.microsoft",
            gather_axis=0, quantize_axis=1, block_size=block_size, bits=8))
        rewritten += 1
    if rewritten:
        used = {name for node in graph.node for name in node.input}
        kept = [init for init in graph.initializer if init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return rewritten


def lm_head_node(model: Any) -> str:
    """The name of the MatMul that writes the ``logits`` output (named here when the exporter left it unnamed)."""
    producers = {output: node for node in model.graph.node for output in node.output}
    node = producers.get("logits")
    while node is not None and node.op_type != "MatMul":  # e.g. an Add of a bias, a Cast
        node = producers.get(node.input[0])
    if node is None:
        raise CompressError("no MatMul writes the logits output: the LM head cannot be given its own precision")
    if not node.name:
        node.name = "lm_head_matmul"
    return str(node.name)


def expose_constant_weights(model: Any) -> int:
    """Rewrite ``model`` in place so every weight matrix is a constant right operand of a MatMul.

    Weight quantizers only touch ``MatMul`` nodes whose B is an initializer. The exporter leaves
    two shapes they skip: a tied LM head reads ``Transpose(embedding)`` (the Transpose becomes its
    own transposed initializer: the head is stored twice, once per use, each quantized for its op),
    and GPT-2's Conv1D layers are ``Gemm`` (rank-2, no transA: becomes ``MatMul`` + ``Add``).
    Returns the number of nodes rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    rewritten, nodes = 0, []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Transpose" and node.input[0] in initializers:
            array = numpy_helper.to_array(initializers[node.input[0]])
            perm = attrs.get("perm")
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(
                np.transpose(array, perm) if perm is not None else array.T), node.output[0]))
            rewritten += 1
            continue
        if node.op_type == "Gemm" and node.input[1] in initializers and not attrs.get("transA", 0) \
                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0:
            weight_name = node.input[1]
            if attrs.get("transB", 0):
                weight_name = f"{node.input[1]}_transposed"
                if weight_name not in initializers:
                    weight = numpy_helper.to_array(initializers[node.input[1]])
                    initializers[weight_name] = numpy_helper.from_array(np.ascontiguousarray(weight.T), weight_name)
                    graph.initializer.append(initializers[weight_name])
            has_bias = len(node.input) > 2 and node.input[2]
            product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
            nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product],
                                          name=f"{node.name}_MatMul" if node.name else ""))
            if has_bias:
                nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                              name=f"{node.name}_Add" if node.name else ""))
            rewritten += 1
            continue
        nodes.append(node)
    if rewritten:
        # Node order stays topological: each replacement sits where the node it replaces was.
        del graph.node[:]
        graph.node.extend(nodes)
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        kept = [init for init in graph.initializer if init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return rewritten
