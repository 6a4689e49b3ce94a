"""The static-embedding encoder as an ONNX graph: a table lookup, a masked sum, a normalisation.

A static encoder has one vector per token and no layers: a text's embedding is the weighted mean
of its tokens' vectors, L2-normalised (the per-token weights are folded into the vectors, and the
mean's division disappears in the normalisation). The graph takes the same inputs as a
transformer encoder's (``input_ids``, ``attention_mask``) and gives the same output
(``sentence_embedding``; a classifier's static student adds a linear head and outputs ``logits``),
so bench, gate, package and verify treat it like any other release.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.onnx_export import SENTENCE_EMBEDDING

OPSET = 18
_EPSILON = 1e-12  # an empty text's sum is zero: it stays zero instead of dividing by zero


def write_static_onnx(vectors: np.ndarray, path: Path, head: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Write the graph for ``vectors`` (vocabulary x dimensions, weights folded in) to ``path``.

    ``head``: a classifier's ``(weight, bias)`` (classes x dimensions, classes) applied to the
    normalised embedding; the graph then outputs ``logits`` instead of ``sentence_embedding``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if vectors.ndim != 2:
        raise ValueError(f"token vectors must be 2-D (vocabulary x dimensions), got shape {vectors.shape}")
    dims = int(vectors.shape[1])
    nodes = [
        helper.make_node("Gather", ["token_vectors", "input_ids"], ["tokens"]),  # batch x length x dims
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "last_axis"], ["mask_3d"]),
        helper.make_node("Mul", ["tokens", "mask_3d"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "length_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceL2", ["summed", "last_axis"], ["norm"], keepdims=1),
        helper.make_node("Max", ["norm", "epsilon"], ["safe_norm"]),
        helper.make_node("Div", ["summed", "safe_norm"], [SENTENCE_EMBEDDING]),
    ]
    output = helper.make_tensor_value_info(SENTENCE_EMBEDDING, TensorProto.FLOAT, ["batch_size", dims])
    initializers = [
        numpy_helper.from_array(np.ascontiguousarray(vectors, dtype=np.float32), "token_vectors"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "length_axis"),
        numpy_helper.from_array(np.array(_EPSILON, dtype=np.float32), "epsilon"),
    ]
    if head is not None:
        weight, bias = head
        nodes += [helper.make_node("MatMul", [SENTENCE_EMBEDDING, "head_weight"], ["scores"]),
                  helper.make_node("Add", ["scores", "head_bias"], ["logits"])]
        initializers += [numpy_helper.from_array(np.ascontiguousarray(weight.T, dtype=np.float32), "head_weight"),
                         numpy_helper.from_array(np.asarray(bias, dtype=np.float32), "head_bias")]
        output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", int(weight.shape[0])])
    graph = helper.make_graph(
        nodes, "static_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "sequence_length"])],
        [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="compress")
    model.ir_version = 9  # onnxruntime 1.16 and newer read it
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
