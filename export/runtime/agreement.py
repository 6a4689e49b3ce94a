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


SPEARMAN_PAIRS = 20_000


def similarity_spearman(reference: np.ndarray, candidate: np.ndarray, pairs: int = SPEARMAN_PAIRS,
                        seed: int = 0) -> float:
    """Spearman correlation between the two models' cosines over the same pairs of rows.

    Up to ``pairs`` distinct pairs, drawn with a fixed seed (every pair when there are fewer): 1.0
    means the candidate orders every pair of texts by similarity exactly as the reference does,
    which is what deduplication thresholds and semantic-similarity scores read.
    """
    n = len(reference)
    if n < 3:
        raise ValueError("a similarity ranking needs at least three rows")
    total = n * (n - 1) // 2
    if total <= pairs:
        first, second = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        first, second = rng.integers(0, n, size=(2, pairs * 2))
        keep = first != second
        first, second = first[keep][:pairs], second[keep][:pairs]
    ref, cand = _unit(reference), _unit(candidate)
    a = np.sum(ref[first] * ref[second], axis=-1)
    b = np.sum(cand[first] * cand[second], axis=-1)
    rank_a, rank_b = _ranks(a), _ranks(b)
    if rank_a.std() == 0 or rank_b.std() == 0:
        return 0.0
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties given their mean rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(unique) < len(values):  # average the ranks of tied values
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


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
