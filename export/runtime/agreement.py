"""How closely one model's outputs follow another's: the quality numbers every stage reports.

numpy only, so the same definitions serve PyTorch students on the host and ONNX models on a
device. Embeddings are compared by cosine and by nearest-neighbour overlap; classifiers by
argmax agreement.
"""

from __future__ import annotations

import numpy as np


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def mean_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean cosine similarity between matching rows of two ``(n, dim)`` embedding matrices."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: {reference.shape} vs {candidate.shape}")
    return float(np.mean(np.sum(_unit(reference) * _unit(candidate), axis=-1)))


def neighbour_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> float:
    """Mean overlap of each row's top-``k`` nearest neighbours (by cosine, self excluded).

    1.0 means the candidate ranks every held-out text's neighbours exactly as the reference
    does: what a retrieval or clustering user of the embeddings actually sees.
    """
    n = len(reference)
    if n < 2:
        raise ValueError("neighbour agreement needs at least two rows")
    k = min(k, n - 1)

    def top_k(rows: np.ndarray) -> np.ndarray:
        unit = _unit(rows)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, k - 1, axis=1)[:, :k]

    ref, cand = top_k(reference), top_k(candidate)
    overlap = [len(set(a).intersection(b)) / k for a, b in zip(ref, cand)]
    return float(np.mean(overlap))


def argmax_agreement(reference_logits: np.ndarray, candidate_logits: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of positions where the two models pick the same class (``mask`` selects token positions)."""
    same = np.argmax(reference_logits, axis=-1) == np.argmax(candidate_logits, axis=-1)
    if mask is not None:
        same = same[np.asarray(mask, dtype=bool)]
    if same.size == 0:
        raise ValueError("no positions to compare")
    return float(np.mean(same))


def max_abs_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Largest absolute elementwise difference (the export parity number)."""
    return float(np.max(np.abs(np.asarray(reference, np.float64) - np.asarray(candidate, np.float64))))
