"""Unstructured magnitude pruning: a smaller download, not a faster model.

The smallest-magnitude fraction of each encoder Linear weight matrix is set to zero. The
matrices keep their shapes, so ONNX Runtime on a CPU runs exactly the same dense kernels in
exactly the same time; the only gain is that zeros compress, so the model's archive (and a
compressed download) gets smaller. Embedding tables and LayerNorms are left alone.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.encoder.prune.structured import encoder_layers

SPEED_NOTE = ("unstructured zeros give onnxruntime on CPU no speed-up (dense kernels, same shapes); "
              "they only make the compressed file smaller")


@dataclass
class MagnitudeReport:
    """What magnitude pruning zeroed and what it saved after compression."""

    fraction: float
    zeroed_parameters: int
    matrices: int
    compressed_bytes_before: int  # zlib level 6 of the weights file, before zeroing
    compressed_bytes_after: int
    note: str = SPEED_NOTE


def zero_smallest(model: Any, fraction: float) -> tuple[int, int]:
    """Zero the ``fraction`` smallest |w| of every Linear weight in the encoder; (zeroed, matrices)."""
    import torch

    zeroed = matrices = 0
    with torch.no_grad():
        for layer in encoder_layers(model):
            for module in layer.modules():
                if isinstance(module, torch.nn.Linear):
                    weight = module.weight
                    count = int(fraction * weight.numel())
                    if count == 0:
                        continue
                    threshold = weight.abs().flatten().kthvalue(count).values
                    mask = weight.abs() <= threshold
                    weight[mask] = 0.0
                    zeroed += int(mask.sum())
                    matrices += 1
    return zeroed, matrices


def compressed_size(path: Path) -> int:
    """Bytes of ``path`` after zlib (level 6): what an archive of the file roughly costs."""
    compressor = zlib.compressobj(6)
    total = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            total += len(compressor.compress(chunk))
    return total + len(compressor.flush())
