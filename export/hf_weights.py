"""A Hugging Face model folder's weights as numpy arrays, for writers that lay them out themselves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from export.base.errors import CompressError

if TYPE_CHECKING:
    import numpy as np


def load_hf_weights(model_dir: Path, purpose: str) -> dict[str, np.ndarray]:
    """Every tensor of ``model_dir``'s ``*.safetensors`` files in fp32, by its Hugging Face name.

    ``purpose`` finishes the error for a folder without safetensors ("to write as GGUF").
    """
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise CompressError(f"{model_dir}: no .safetensors weights {purpose}")
    weights: dict[str, np.ndarray] = {}
    for path in files:
        weights.update({name: tensor.float().numpy() for name, tensor in load_file(str(path)).items()})
    return weights
