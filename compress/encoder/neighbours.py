"""Batches that carry hard cases: each text beside its nearest neighbour by the teacher's embedding.

Random batches of 32 texts from a broad corpus are mostly unrelated pairs, so a relational loss
sees few of the close calls that decide a text's top-10 neighbours. Once the teacher's embedding
of every training text is known (the teacher-output cache is full, after the first epoch), each
batch keeps half of its seeded, length-bucketed texts and fills the other half with each one's
nearest neighbour. The neighbours are a function of the cached embeddings and the batches of the
seed and epoch, so a resumed run rebuilds the same batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CHUNK_ROWS = 2048


def nearest_neighbours(embeddings: np.ndarray) -> np.ndarray:
    """Each row's nearest other row by cosine (chunked: the full similarity matrix is never held)."""
    unit = embeddings.astype(np.float32)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    nearest = np.empty(len(unit), dtype=np.int64)
    for start in range(0, len(unit), CHUNK_ROWS):
        sims = unit[start:start + CHUNK_ROWS] @ unit.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf
        nearest[start:start + CHUNK_ROWS] = np.argmax(sims, axis=1)
    return nearest


def with_neighbours(batches: list[np.ndarray], nearest: np.ndarray) -> list[np.ndarray]:
    """Each batch's first half, each text followed by its nearest neighbour (same size, no repeats)."""
    mixed = []
    for batch in batches:
        size = len(batch)
        seeds = batch[: (size + 1) // 2]
        rows: dict[int, None] = {}
        for seed in seeds:
            rows.setdefault(int(seed))
            rows.setdefault(int(nearest[seed]))
        for rest in batch[(size + 1) // 2:]:  # a neighbour already in the batch leaves room for the others
            if len(rows) >= size:
                break
            rows.setdefault(int(rest))
        mixed.append(np.fromiter(list(rows)[:size], dtype=np.int64))
    return mixed


def cached_embeddings(cache: Any) -> np.ndarray | None:
    """The teacher-output cache as a numpy matrix, or None until every example is in it."""
    if cache.values is None or cache.disabled_reason is not None or not bool(cache.filled.all()):
        return None
    return cache.values.float().cpu().numpy()
