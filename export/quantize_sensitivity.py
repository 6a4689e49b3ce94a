"""Which nodes of a graph lose the most when quantized: measured on real activations, not guessed.

Each quantizable node is quantized alone in numpy with the method's scheme (the same rounding and
ranges onnxruntime applies), on the fp32 model's own activations for a few real texts; the
relative error it adds to its output ranks it. The accuracy-aware loop of :mod:`export.quantize`
leaves the most sensitive nodes in fp32 until the quality drop fits the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.compare_outputs import open_session
from export.runtime.samples import Feed

SENSITIVITY_SAMPLES = 16
INT4_BLOCK_SIZE = 32



@dataclass(frozen=True)
class Scheme:
    """How one method quantizes a node's operands (for the sensitivity estimate)."""

    activations: str  # dynamic-u8 | static-u8 | static-s8 | fp16 | none
    weights: str  # s8 | u8 | int4-block | fp16
    per_channel: bool = True


def _fake_quant_activation(x: np.ndarray, scheme: Scheme, value_range: tuple[float, float] | None) -> np.ndarray:
    if scheme.activations == "none":
        return x
    if scheme.activations == "fp16":
        return x.astype(np.float16).astype(np.float32)
    low, high = value_range if value_range is not None else (float(x.min()), float(x.max()))
    low, high = min(low, 0.0), max(high, 0.0)
    if scheme.activations == "static-s8":
        scale = max(abs(low), abs(high)) / 127.0 or 1.0
        return np.clip(np.round(x / scale), -127, 127) * scale
    scale = (high - low) / 255.0 or 1.0
    zero = np.clip(np.round(-low / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_weight(w: np.ndarray, scheme: Scheme, per_channel: bool) -> np.ndarray:
    if scheme.weights == "fp16":
        return w.astype(np.float16).astype(np.float32)
    if scheme.weights == "int4-block" and w.ndim == 2:
        k = w.shape[0]
        pad = (-k) % INT4_BLOCK_SIZE
        blocks = np.pad(w, ((0, pad), (0, 0))).reshape(-1, INT4_BLOCK_SIZE, w.shape[1])
        scale = np.abs(blocks).max(axis=1, keepdims=True) / 7.0
        scale[scale == 0] = 1.0
        return (np.clip(np.round(blocks / scale), -8, 7) * scale).reshape(-1, w.shape[1])[:k]
    levels = 127.0 if scheme.weights == "s8" else 127.5
    if per_channel and w.ndim == 2:
        scale = np.abs(w).max(axis=0, keepdims=True) / levels
    else:
        scale = np.array(np.abs(w).max() / levels)
    scale = np.where(scale == 0, 1.0, scale)
    return np.clip(np.round(w / scale), -levels, levels) * scale


@dataclass
class Candidate:
    """A node the method would quantize, and its operands."""

    name: str
    op_type: str
    activation_inputs: list[str]  # tensors produced at run time (captured from the fp32 model)
    weights: dict[str, np.ndarray]  # initializer operands by input name
    node: Any


def candidate_nodes(model: Any, method: str) -> list[Candidate]:
    """The nodes ``method`` quantizes and whose exclusion can buy back quality."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    ops = {"int8-dynamic": ("MatMul", "Gather"), "int8-static": ("MatMul", "Gemm", "Gather"),
           "int4-weight": ("MatMul",), "fp16": ("MatMul", "Gemm")}[method]
    found = []
    for node in model.graph.node:
        if node.op_type not in ops or not node.name:
            continue
        weights = {name: numpy_helper.to_array(initializers[name]).astype(np.float32)
                   for name in node.input[:2] if name in initializers and
                   initializers[name].data_type == 1}  # float32 initializers only
        activations = [name for name in node.input[:2] if name and name not in initializers]
        if node.op_type == "Gather":
            if node.input[0] not in weights:
                continue  # a Gather over shapes or ids, not an embedding table
        elif method == "int4-weight" and not (len(node.input) > 1 and node.input[1] in weights
                                               and weights[node.input[1]].ndim == 2):
            continue
        found.append(Candidate(node.name, node.op_type, activations, weights, node))
    return found


def _capture(model: Any, tensor_names: list[str], feeds: Sequence[Feed]) -> list[dict[str, np.ndarray]]:
    """The fp32 model's intermediate tensors ``tensor_names`` for each feed."""
    import onnx
    from onnx import helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in tensor_names:
        if name not in existing:
            copy.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = open_session(copy.SerializeToString())
    names = list(tensor_names)
    return [dict(zip(names, session.run(names, feed))) for feed in feeds]


def rank_sensitivity(model: Any, candidates: list[Candidate], feeds: Sequence[Feed], scheme: Scheme,
                     ranges: dict[str, tuple[float, float]] | None = None) -> list[tuple[Candidate, float]]:
    """Candidates with the relative squared error quantizing each alone adds to its output, worst first."""
    needed = sorted({name for c in candidates for name in c.activation_inputs})
    captures = _capture(model, needed, feeds) if needed else [{} for _ in feeds]
    scored = []
    for candidate in candidates:
        errors = []
        for tensors in captures:
            operands = [tensors.get(name) if name in tensors else candidate.weights.get(name)
                        for name in candidate.node.input[:2]]
            if any(op is None for op in operands):
                continue
            errors.append(_node_error(candidate, operands, scheme, ranges))
        scored.append((candidate, float(np.mean(errors)) if errors else 0.0))
    return sorted(scored, key=lambda item: item[1], reverse=True)


def _node_error(candidate: Candidate, operands: list[np.ndarray], scheme: Scheme,
                ranges: dict[str, tuple[float, float]] | None) -> float:
    names = list(candidate.node.input[:2])

    def quantized(index: int) -> np.ndarray:
        name, value = names[index], operands[index].astype(np.float32)
        if name in candidate.weights:
            return _fake_quant_weight(value, scheme, scheme.per_channel and candidate.op_type != "Gather")
        return _fake_quant_activation(value, scheme, (ranges or {}).get(name))

    if candidate.op_type == "Gather":
        table, ids = operands[0].astype(np.float32), operands[1].astype(np.int64)
        exact, approx = table[ids], quantized(0)[ids]
    else:
        a, b = operands[0].astype(np.float32), operands[1].astype(np.float32)
        qa, qb = quantized(0), quantized(1)
        if candidate.op_type == "Gemm":
            attrs = {attr.name: attr.i for attr in candidate.node.attribute}
            if attrs.get("transA"):
                a, qa = a.T, qa.T
            if attrs.get("transB"):
                b, qb = b.T, qb.T
        exact, approx = a @ b, qa @ qb
        if scheme.activations.startswith("static") and candidate.node.output[0] in (ranges or {}):
            # Static QOperator/QDQ graphs also requantize the node's output with its calibrated range.
            approx = _fake_quant_activation(approx, scheme, ranges[candidate.node.output[0]])
    power = float(np.sum(exact.astype(np.float64) ** 2))
    return float(np.sum((approx.astype(np.float64) - exact) ** 2) / max(power, 1e-30))


def scheme_for(method: str, preset: str | None) -> Scheme:
    if method == "int8-dynamic":
        return Scheme("dynamic-u8", "u8" if preset == "avx2" else "s8")
    if method == "int8-static":
        return Scheme("static-s8" if preset == "tensorrt" else "static-u8", "s8")
    if method == "int4-weight":
        return Scheme("none", "int4-block", per_channel=False)
    return Scheme("fp16", "fp16")
