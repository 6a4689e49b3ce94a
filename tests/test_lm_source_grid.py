"""A model whose weights came on a 4-bit grid (loaded from GGUF) keeps that grid through int4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.lm_export import export_causal_lm
from export.lm_quantize import quantize_causal_lm
from export.lm_scores import onnx_token_scores
from export.lm_source_grid import find_source_grid
from tests.lm_models import build_tiny_causal_lm

BLOCK = 32


def offset_grid(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """[rows, cols] weights as a Q4_1 file holds them: ``d * q + m`` per block of BLOCK rows, d and m in fp16."""
    rng = np.random.default_rng(seed)
    blocks = rows // BLOCK
    step = rng.uniform(0.002, 0.02, (blocks, 1, cols)).astype(np.float16).astype(np.float32)
    low = (-rng.uniform(0.0, 0.15, (blocks, 1, cols))).astype(np.float16).astype(np.float32)
    codes = rng.integers(0, 16, (blocks, BLOCK, cols))
    codes[:, 0], codes[:, 1] = 0, 15  # llama.cpp's blocks span their whole range
    return (step * codes + low).reshape(rows, cols)


def test_an_offset_grid_splits_into_a_zero_point_grid_and_block_remainders() -> None:
    weight = offset_grid(96, 40)
    grid = find_source_grid(weight, BLOCK)
    assert grid is not None and grid.remainder.shape == (3, 40)
    rebuilt = grid.exact + np.repeat(grid.remainder, BLOCK, axis=0)
    assert np.abs(rebuilt - weight).max() < 1e-6
    # The exact part is a grid through zero with an integer zero point: steps of d from 0.
    step = (weight.reshape(3, BLOCK, 40).max(1) - weight.reshape(3, BLOCK, 40).min(1)) / 15
    assert np.allclose(grid.exact.reshape(3, BLOCK, 40) / step[:, None], np.round(grid.exact.reshape(3, BLOCK, 40)
                                                                                   / step[:, None]), atol=1e-3)
    # Ordinary weights are not a grid, nor is a grid read in blocks it was not made with.
    assert find_source_grid(np.random.default_rng(1).normal(size=(96, 40)).astype(np.float32), BLOCK) is None
    assert find_source_grid(weight, 64) is None
    assert find_source_grid(weight[:40], BLOCK) is None


def _snap_to_grid(folder: Path) -> None:
    """Rewrite every projection of the saved model onto a Q4_1 grid along its input axis."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                weight = module.weight.numpy().T  # [in, out]: MatMul's layout, blocks along the input
                rows, cols = weight.shape
                blocks = weight.reshape(rows // BLOCK, BLOCK, cols)
                low, high = blocks.min(1, keepdims=True), blocks.max(1, keepdims=True)
                step = ((high - low) / 15).astype(np.float16).astype(np.float32)
                low = low.astype(np.float16).astype(np.float32)
                snapped = step * np.clip(np.round((blocks - low) / step), 0, 15) + low
                module.weight.copy_(torch.from_numpy(snapped.reshape(rows, cols).T.copy()))
    model.save_pretrained(folder, safe_serialization=True)


@pytest.fixture(scope="module")
def texts(sentences: list[str]) -> list[str]:
    return sentences[100:124]


@pytest.fixture(scope="module")
def grid_llama(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    folder = build_tiny_causal_lm(tmp_path_factory.mktemp("grid-llama"), hidden=64, ffn=128, seed=3)
    _snap_to_grid(folder)
    return export_causal_lm(folder, folder.parent / "onnx", parity_texts=texts[:4], greedy_tokens=4).out_path.parent


def test_int4_keeps_a_source_grid_and_loses_less_than_quantizing_it_again(
        grid_llama: Path, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import export.lm_quantize as lm_quantize

    kept = quantize_causal_lm(grid_llama, tmp_path / "kept", "int4-weight", block_size=BLOCK, eval_texts=texts)
    # Every projection (QKV packed, o, gate, up, down in 4 layers); the head and embedding are no grid.
    assert kept.source_grid_matmuls == 4 * 5
    monkeypatch.setattr(lm_quantize, "keep_source_grids", lambda model, block, exclude: (0, set()))
    again = quantize_causal_lm(grid_llama, tmp_path / "again", "int4-weight", block_size=BLOCK, eval_texts=texts)
    assert again.source_grid_matmuls == 0
    reference = onnx_token_scores(grid_llama, texts)
    kept_scores, again_scores = (onnx_token_scores(tmp_path / name, texts) for name in ("kept", "again"))
    assert abs(kept.perplexity_ratio - 1) < abs(again.perplexity_ratio - 1)
    assert kept_scores.agreement(reference) >= again_scores.agreement(reference)
    # The remainder rows pad to one block per weight: half again at K = 64 here, 3% on SmolLM2-135M.
    assert kept.size_mb < 1.5 * again.size_mb
