"""An ONNX graph read on the host with the onnx package: loaded, and checked to be plain fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.base.errors import CompressError

# Protobuf's hard limit, less a margin: larger graphs keep their weights in an external data file.
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2
# Ops whose presence means the graph is already quantized.
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                  "MatMulNBits", "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                  "QEmbedLayerNormalization", "DynamicQuantizeLSTM"}


def load_onnx(path: Path) -> Any:
    """The ONNX model at ``path``; CompressError when it is missing or not ONNX."""
    import onnx

    if not path.is_file():
        raise CompressError(f"ONNX model not found: {path}" if not path.is_dir() else
                            f"{path} is a folder; pass the .onnx file (bnb-int8/bnb-nf4 take a model folder)")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends: any failure means "not a model"
        raise CompressError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None


def quantized_reason(model: Any) -> str | None:
    """Why ``model`` is already quantized or half precision (None for an fp32 graph)."""
    from onnx import TensorProto

    ops = {node.op_type for node in model.graph.node}
    found = sorted(op for op in ops if op in _QUANTIZED_OPS or op.startswith("QLinear"))
    if found:
        return f"it already has quantized ops ({', '.join(found[:4])})"
    low_bit = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4}
    if any(init.data_type in low_bit for init in model.graph.initializer):
        return "it already has int8/uint8 weights"
    floats = [init for init in model.graph.initializer if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    if floats and sum(i.data_type == TensorProto.FLOAT16 for i in floats) > len(floats) / 2:
        return "its weights are already fp16"
    return None


def check_fp32_model(path: Path) -> Any:
    """Load ``path`` and refuse a graph that is already quantized (quantizing twice compounds error)."""
    model = load_onnx(path)
    reason = quantized_reason(model)
    if reason:
        raise CompressError(f"{path} is already quantized: {reason}; quantize the fp32 model it came from")
    return model
