"""The teacher's top-k log-probabilities, computed once per token sequence and kept on disk.

A teacher forward pass is the dearest part of a distillation step when the teacher is much larger
than the student. Epochs after the first see the same sequences again, so the teacher's top-k
log-probabilities for each sequence are stored (fp16 values, int32 token ids: ``seq * k * 6`` bytes, about
100 KB for 256 tokens at k = 64) and read back instead of running the teacher. Entries are keyed by
the sha256 of (teacher fingerprint, k, token ids), so a different teacher or k never reads stale
entries, and they are written atomically, so a killed run leaves only whole entries that the next
run (after a restart) reuses.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.base.errors import CompressError
from export.base.files import atomic_write_bytes
from compress.lm.losses import TopK


class TopKCache:
    """Per-sequence teacher top-k log-probabilities on disk under ``folder``."""

    def __init__(self, folder: Path, k: int, teacher_fingerprint: str) -> None:
        if k < 1:
            raise CompressError(f"top-k must be at least 1, got {k}")
        if not teacher_fingerprint:
            raise CompressError("the top-k cache needs a teacher fingerprint (it keeps teachers' entries apart)")
        self.folder = Path(folder)
        self.k = int(k)
        self.teacher_fingerprint = teacher_fingerprint
        self.hits = 0  # counters let callers (and tests) see that the teacher was skipped
        self.misses = 0

    def key(self, input_ids: Sequence[int]) -> str:
        """The entry's sha256 key."""
        digest = hashlib.sha256(f"{self.teacher_fingerprint}\0{self.k}\0".encode())
        digest.update(_as_ids(input_ids).tobytes())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        # Two-character shards keep folders small when a corpus has hundreds of thousands of sequences.
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, input_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(values fp16 (seq, k), indices int32 (seq, k))`` for ``input_ids``, or None when not cached.

        An unreadable or inconsistent entry (a disk fault, a foreign file) counts as a miss.
        """
        path = self._path(self.key(input_ids))
        seq = len(_as_ids(input_ids))
        try:
            with np.load(path, allow_pickle=False) as stored:
                values, indices = stored["values"], stored["indices"]
        except (OSError, ValueError, KeyError, EOFError):
            self.misses += 1
            return None
        if values.shape != (seq, self.k) or indices.shape != (seq, self.k):
            self.misses += 1
            return None
        self.hits += 1
        return values.astype(np.float16, copy=False), indices.astype(np.int32, copy=False)

    def put(self, input_ids: Sequence[int], values: Any, indices: Any) -> Path:
        """Store the teacher's top-k for ``input_ids``: arrays or tensors of shape (len(input_ids), k)."""
        seq = len(_as_ids(input_ids))
        values = _to_numpy(values).astype(np.float16)
        indices = _to_numpy(indices).astype(np.int32)
        if values.shape != (seq, self.k) or indices.shape != (seq, self.k):
            raise CompressError(f"top-k cache entry must be ({seq}, {self.k}) for {seq} tokens at k={self.k}; "
                                f"got values {values.shape} and indices {indices.shape}")
        buffer = io.BytesIO()
        np.savez(buffer, values=values, indices=indices)
        return atomic_write_bytes(self._path(self.key(input_ids)), buffer.getvalue())


def _as_ids(input_ids: Sequence[int]) -> np.ndarray:
    ids = _to_numpy(input_ids) if isinstance(input_ids, torch.Tensor) else np.asarray(input_ids)
    if ids.ndim != 1:
        raise CompressError(f"top-k cache keys are one sequence of token ids, got shape {ids.shape}")
    return ids.astype(np.int64, copy=False)


def _to_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float32 if array.is_floating_point() else torch.int64).numpy()
    return np.asarray(array)


def teacher_topk(teacher: Any, batch: dict[str, torch.Tensor], k: int) -> TopK:
    """The teacher's top-k logits for every position of a (right-padded) batch.

    ``batch`` holds ``input_ids`` and ``attention_mask`` (batch, seq); the result is on the teacher's
    device, values as float32 log-probabilities (full-vocabulary log-softmax) and indices as int64, both (batch, seq, k). Padded positions hold
    meaningless values: the losses' masks leave them out.
    """
    if k < 1:
        raise CompressError(f"top-k must be at least 1, got {k}")
    device = next(teacher.parameters()).device
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch.get("attention_mask")
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    # no_grad, not inference_mode: the values become loss targets next to tensors that need grad,
    # and inference tensors may not be saved for backward.
    with torch.no_grad():
        logits = teacher(input_ids=input_ids, attention_mask=attention_mask).logits
    if k > logits.shape[-1]:
        raise CompressError(f"top-k of {k} is larger than the teacher's vocabulary ({logits.shape[-1]})")
    # Log-probabilities, not logits: they also tell how much mass lies outside the k tokens.
    values, indices = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return TopK(values, indices.long())


def model_fingerprint(model: Any, *, sample: int = 4096) -> str:
    """A cheap sha256 identity of a model's weights: names, shapes, dtypes and a strided sample of values.

    Hashing every weight of a 135M-parameter teacher would cost seconds on each start; a strided
    sample of each tensor tells apart any two real checkpoints (and a folder moved elsewhere keeps
    its fingerprint, unlike its path).
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            flat = tensor.detach().reshape(-1)
            stride = max(1, flat.numel() // sample)
            picked = flat[::stride][:sample]
            picked = picked.to("cpu", torch.float32) if picked.is_floating_point() else picked.to("cpu", torch.int64)
            digest.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0".encode())
            digest.update(picked.numpy().tobytes())
    return digest.hexdigest()
