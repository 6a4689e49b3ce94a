"""Which examples form each batch: length-bucketed, deterministic, the same for every family.

Each epoch's batches are a pure function of ``(seed, epoch)``: a seeded shuffle, then sorting by
length inside windows of 50 batches so that a batch holds texts of similar length and padding
wastes little compute, then a shuffle of the batch order. A resumed run rebuilds the same epoch
and skips the batches it already did.
"""

from __future__ import annotations

import math

import numpy as np

BUCKET_WINDOW_BATCHES = 50


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Epoch ``epoch``'s batches of example indices: shuffled, bucketed by length, deterministic."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * BUCKET_WINDOW_BATCHES
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def batches_per_epoch(n: int, batch_size: int) -> int:
    window = batch_size * BUCKET_WINDOW_BATCHES
    full, rest = divmod(n, window)
    return full * BUCKET_WINDOW_BATCHES + math.ceil(rest / batch_size)
