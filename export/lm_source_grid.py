"""Weights that are already quantized stay exactly as they were when written in int4 again.

Many small language models reach the edge as GGUF files, and a model loaded from one (the packaged
SmolLM2 teacher is ``Q4_1``) holds weights that lie on a 4-bit grid already: in each block of 32
along the input axis, ``w = d * q + m`` with ``q`` in 0..15 and a per-block offset ``m``. ONNX
Runtime's ``MatMulNBits`` stores ``scale * (q - zero_point)`` with an *integer* zero point, a grid
through zero; an offset grid does not fit it, and quantizing again rounds every block by up to half
a step (on SmolLM2-135M: 1.39x perplexity and 52% next-token agreement with the fp32 model, the same
damage as quantizing fp32 weights). A float zero point would fit, but ONNX Runtime 1.31 runs it
14-35x slower on the CPU (a dequantizing fallback).

So each such MatMul is written as the grid through zero plus what it misses, which is constant per
block and column: ``w = d * (q - z) + r`` with ``z = round(-m / d)``. The product becomes

    x @ W  =  x @ (d * (q - z))  +  blocksums(x) @ R

and both terms go into the same ``MatMulNBits``: the input gains one column per block (its block
sums, one small MatMul shared by every weight that reads the same input) and the weight gains the
rows ``R``. The first part is stored exactly; only ``R`` (a fraction of one step) is rounded again.
On SmolLM2-135M this keeps 0.93 of the next-token choices at 1.05x perplexity, for 3% more bytes
(benchmarks/lm_source_grid.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnx import ModelProto

LEVELS = 15  # 4 bits: codes 0..15
# A weight is on a grid when this share of its values sits within TOLERANCE of a grid point (steps).
ON_GRID_SHARE = 0.99
TOLERANCE = 0.02


@dataclass(frozen=True)
class SourceGrid:
    """A weight matrix [K, N] split into its grid through zero and the per-block remainder."""

    exact: np.ndarray  # [K, N]: d * (q - z), representable exactly by MatMulNBits
    remainder: np.ndarray  # [K / block, N]: r, the block offset the zero-point grid misses


def find_source_grid(weight: np.ndarray, block_size: int) -> SourceGrid | None:
    """``weight`` [K, N] split as an offset 4-bit grid of ``block_size`` along K, or None when it is not one."""
    rows, cols = weight.shape
    if rows % block_size or rows < block_size:
        return None
    blocks = weight.astype(np.float64).reshape(rows // block_size, block_size, cols)
    low, high = blocks.min(1), blocks.max(1)
    step = np.where(high > low, (high - low) / LEVELS, 1.0)
    codes = (blocks - low[:, None]) / step[:, None]
    rounded = np.round(codes)
    if float((np.abs(codes - rounded) < TOLERANCE).mean()) < ON_GRID_SHARE:
        return None
    zero = np.clip(np.round(-low / step), 0, LEVELS)
    exact = (step[:, None] * (rounded - zero[:, None])).reshape(rows, cols)
    return SourceGrid(exact.astype(np.float32), (low + step * zero).astype(np.float32))


def keep_source_grids(model: ModelProto, block_size: int, exclude: set[str]) -> tuple[int, set[str]]:
    """Rewrite ``model`` in place so every MatMul whose constant weight lies on an offset 4-bit grid of
    ``block_size`` reads the augmented input and weight described above (``exclude``: node names to
    leave alone, e.g. the LM head). Returns how many were rewritten and the names of the block-sum
    MatMuls added, which no weight quantizer may touch."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    augmented: dict[str, str] = {}  # input name -> its augmented version
    summers: dict[int, str] = {}  # K -> the [K, K / block] 0/1 matrix that sums blocks
    added: set[str] = set()
    nodes, rewritten = [], 0
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        grid = None
        if weight is not None and node.name not in exclude and len(weight.dims) == 2:
            grid = find_source_grid(numpy_helper.to_array(weight), block_size)
        if grid is None:
            nodes.append(node)
            continue
        rows = grid.exact.shape[0]
        source = node.input[0]
        if source not in augmented:
            if rows not in summers:
                summers[rows] = f"block_sums_{rows}x{block_size}"
                ones = np.repeat(np.eye(rows // block_size, dtype=np.float32), block_size, axis=0)
                graph.initializer.append(numpy_helper.from_array(ones, summers[rows]))
            sums, joined = f"{source}/block_sums", f"{source}/with_block_sums"
            nodes.append(helper.make_node("MatMul", [source, summers[rows]], [sums], name=sums))
            nodes.append(helper.make_node("Concat", [source, sums], [joined], axis=-1, name=joined))
            added.add(sums)
            augmented[source] = joined
        name = f"{weight.name}/source_grid"
        graph.initializer.append(numpy_helper.from_array(np.concatenate([grid.exact, grid.remainder]), name))
        node.input[0], node.input[1] = augmented[source], name
        nodes.append(node)
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        used = {name for node in graph.node for name in node.input}
        kept = [init for init in graph.initializer if init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return rewritten, added


def on_8bit_grid(weight: np.ndarray, block_size: int) -> bool:
    """Whether ``weight`` [rows, K] holds symmetric 8-bit blocks of ``block_size`` along its last axis
    (``d * q``, q in -127..127, as GGUF's Q8_0 stores an embedding): such a table loses its own
    precision in 4 bits, so the int4 path keeps it in 8."""
    rows, width = weight.shape
    if width % block_size:
        return False
    blocks = weight.astype(np.float64).reshape(rows, width // block_size, block_size)
    amax = np.abs(blocks).max(-1, keepdims=True)
    codes = blocks / np.where(amax > 0, amax / 127, 1.0)
    return float((np.abs(codes - np.round(codes)) < TOLERANCE).mean()) >= ON_GRID_SHARE
