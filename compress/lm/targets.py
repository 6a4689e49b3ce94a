"""Where a training batch's teacher distribution comes from.

The LM loop asks a :class:`TeacherTargets` for each batch and trains the student on what it gets:

* :class:`LocalTeacherTargets`: a teacher model in this process; its top-k log-probabilities are
  kept on disk (:class:`~compress.lm.topk_cache.TopKCache`), or full logits when ``topk = 0``;
* :class:`AnswerTopKTargets`: top-k log-probabilities an endpoint reported with its answers
  (:mod:`compress.lm.endpoint_tokens`), at the answer positions only;
* no targets at all (``None``): sequence-level distillation, cross-entropy on the teacher's answers.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compress.training.device import autocast_context
from compress.lm.data import EncodedLM, collate_lm
from compress.lm.losses import TopK
from compress.lm.topk_cache import TopKCache, teacher_topk
from compress.parallel import world

if TYPE_CHECKING:
    import torch

    from compress.lm.endpoint_tokens import AnswerTopK


@dataclass
class BatchTargets:
    """The teacher's side of one batch, aligned with its (right-padded) input ids."""

    teacher: TopK | torch.Tensor  # top-k, or full logits (batch, seq, vocab)
    mask: torch.Tensor | None = None  # (batch, seq): 1 where the teacher said something; None: everywhere


class TeacherTargets(ABC):
    """A source of teacher distributions for training batches."""

    fingerprint: str  # changes when the targets would (it keys checkpoints)
    batches_computed = 0  # batches that needed a teacher forward pass
    batches_cached = 0  # batches served from a cache alone

    @abstractmethod
    def for_batch(self, examples: Sequence[EncodedLM], width: int, device: str) -> BatchTargets:
        """Targets for ``examples`` padded to ``width`` positions, on ``device``."""


class LocalTeacherTargets(TeacherTargets):
    """A teacher model in this process: top-k through a disk cache (read back through fp16), or full logits."""

    def __init__(self, teacher: Any, fingerprint: str, topk: int, cache_dir: Path, pad_id: int) -> None:
        self.teacher = teacher
        self.fingerprint = fingerprint
        self.topk = topk
        self.pad_id = pad_id
        self.cache = TopKCache(cache_dir, topk, fingerprint) if topk > 0 else None
        self.batches_computed = self.batches_cached = 0

    def for_batch(self, examples: Sequence[EncodedLM], width: int, device: str) -> BatchTargets:
        import torch

        teacher_device = next(self.teacher.parameters()).device
        if self.cache is None:
            batch = collate_lm(examples, self.pad_id)
            with torch.no_grad(), autocast_context(str(teacher_device)):
                logits = self.teacher(input_ids=batch["input_ids"].to(teacher_device),
                                      attention_mask=batch["attention_mask"].to(teacher_device)).logits
            self.batches_computed += 1
            return BatchTargets(logits.float().to(device))
        found = [self.cache.get(e.input_ids) for e in examples]
        missing = [j for j, entry in enumerate(found) if entry is None]
        computed: list[tuple[list[int], np.ndarray, np.ndarray]] = []
        if missing:
            # Only the examples not cached yet go through the teacher.
            sub = collate_lm([examples[j] for j in missing], self.pad_id)
            with autocast_context(str(teacher_device)):
                top = teacher_topk(self.teacher, sub, self.topk)
            for r, j in enumerate(missing):
                ids = examples[j].input_ids
                values = top.values[r, :len(ids)].to("cpu", torch.float16).numpy()
                indices = top.indices[r, :len(ids)].to("cpu", torch.int32).numpy()
                computed.append((list(ids), values, indices))
                found[j] = (values, indices)
            self.batches_computed += 1
        else:
            self.batches_cached += 1
        self._keep(computed)
        values = np.zeros((len(examples), width, self.topk), dtype=np.float32)
        indices = np.zeros((len(examples), width, self.topk), dtype=np.int64)
        for r, (v, ix) in enumerate(found):  # type: ignore[misc]
            values[r, :len(v)] = v
            indices[r, :len(ix)] = ix
        return BatchTargets(TopK(torch.from_numpy(values).to(device), torch.from_numpy(indices).to(device)))


    def _keep(self, computed: list[tuple[list[int], np.ndarray, np.ndarray]]) -> None:
        """Put new entries in the cache: here, or, across ranks, all of them by rank 0 (the one that writes)."""
        ranks = world()
        if not ranks.distributed:
            for ids, values, indices in computed:
                self.cache.put(ids, values, indices)  # type: ignore[union-attr]
            return
        if not ranks.any(bool(computed)):
            return
        import torch

        width = max([len(ids) for ids, _, _ in computed], default=0)
        ids_rows = torch.full((len(computed), width), -1, dtype=torch.int64)
        value_rows = torch.zeros((len(computed), width, self.topk), dtype=torch.float32)
        index_rows = torch.zeros((len(computed), width, self.topk), dtype=torch.int64)
        for r, (ids, values, indices) in enumerate(computed):
            ids_rows[r, :len(ids)] = torch.tensor(ids)
            value_rows[r, :len(ids)] = torch.from_numpy(values.astype(np.float32))
            index_rows[r, :len(ids)] = torch.from_numpy(indices.astype(np.int64))
        gathered = zip(ranks.gather_rows(ids_rows), ranks.gather_rows(value_rows), ranks.gather_rows(index_rows))
        if not ranks.is_main:
            return
        for all_ids, all_values, all_indices in gathered:
            for ids, values, indices in zip(all_ids, all_values, all_indices):
                n = int((ids >= 0).sum())
                self.cache.put(ids[:n].tolist(), values[:n].numpy(), indices[:n].numpy())  # type: ignore[union-attr]


class AnswerTopKTargets(TeacherTargets):
    """Top-k an endpoint reported with its answers; examples without them have an all-zero mask."""

    def __init__(self, targets: Mapping[tuple[int, ...], AnswerTopK], k: int, answers_sha256: str) -> None:
        self.targets = targets
        self.k = k
        self.fingerprint = hashlib.sha256(f"endpoint-topk\0{k}\0{answers_sha256}".encode()).hexdigest()
        self.batches_computed = self.batches_cached = 0

    def for_batch(self, examples: Sequence[EncodedLM], width: int, device: str) -> BatchTargets:
        import torch

        values = np.zeros((len(examples), width, self.k), dtype=np.float32)
        indices = np.zeros((len(examples), width, self.k), dtype=np.int64)
        mask = np.zeros((len(examples), width), dtype=np.int64)
        for r, example in enumerate(examples):
            found = self.targets.get(tuple(example.input_ids))
            if found is not None:
                n = len(found.mask)
                values[r, :n], indices[r, :n], mask[r, :n] = found.values, found.indices, found.mask
        self.batches_cached += 1
        return BatchTargets(TopK(torch.from_numpy(values).to(device), torch.from_numpy(indices).to(device)),
                            torch.from_numpy(mask).to(device))
