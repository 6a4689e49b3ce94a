"""Held-out quality: how closely a model follows the teacher, with the numbers every stage uses.

Outputs are collected in PyTorch, then compared with ``export.runtime.agreement`` (numpy) so the host
and the device report the same definitions: embeddings by mean cosine and top-10 nearest
neighbour agreement, classifiers by argmax agreement with the teacher (and accuracy when the
held-out examples have labels). Token classifiers are scored on real tokens, not [CLS]/[SEP]/pad.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress.encoder.batching import EncodedSet, collate
from export.torch_model import task_outputs
from compress.encoder.losses import IGNORE_LABEL
from export.base.tasks import Pooling, Task
from export.runtime.agreement import argmax_agreement, mean_cosine, neighbour_agreement, similarity_spearman
from export.base.report_json import JsonRecord

NEIGHBOURS = 10


@dataclass
class HeldOutOutputs:
    """A model's outputs on the held-out set, in the set's order (tokens flattened for token tasks)."""

    values: np.ndarray  # (n, dim) embeddings or (n, classes) logits; (tokens, classes) for token tasks
    labels: np.ndarray | None  # (n,) or (tokens,) class ids, IGNORE_LABEL where unlabelled


@dataclass
class QualityReport(JsonRecord):
    """A student's (or quantized teacher's) agreement with the teacher on the held-out split."""

    task: Task
    metric: str  # "mean_cosine" or "argmax_agreement"
    teacher_agreement: float
    neighbour_agreement: float | None  # embeddings: top-10 nearest-neighbour overlap
    accuracy: float | None  # classifiers with labelled held-out data
    teacher_accuracy: float | None
    examples: int
    similarity_spearman: float | None = None  # embeddings: rank correlation of pairwise cosines


def held_out_outputs(model: Any, data: EncodedSet, task: Task, *, pooling: Pooling | None, projection: Any = None,
                     device: str = "cpu", batch_size: int = 64, autocast_dtype: Any = None) -> HeldOutOutputs:
    """Run ``model`` over the held-out set in length-sorted batches (no gradients, eval mode)."""
    import torch

    order = np.argsort(data.lengths, kind="stable")
    was_training = model.training
    model.eval()
    if projection is not None:
        projection.eval()
    chunks: list[tuple[np.ndarray, Any, Any]] = []
    autocast = (torch.autocast(device_type="cuda", dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    try:
        with torch.no_grad(), autocast:
            for start in range(0, len(order), batch_size):
                indices = order[start:start + batch_size]
                batch = collate(data, indices, device)
                out = task_outputs(model, batch, task, pooling, projection).final.float().cpu()
                chunks.append((indices, out, batch))
    finally:
        model.train(was_training)
        if projection is not None:
            projection.train(was_training)
    if task == "token-classification":
        return _token_outputs(chunks, len(data))
    values = np.zeros((len(data), chunks[0][1].shape[-1]), dtype=np.float32)
    labels = np.full(len(data), IGNORE_LABEL, dtype=np.int64) if data.has_labels else None
    for indices, out, batch in chunks:
        values[indices] = out.numpy()
        if labels is not None and "labels" in batch:
            labels[indices] = batch["labels"].cpu().numpy()
    return HeldOutOutputs(values, labels)


def _token_outputs(chunks: list[tuple[np.ndarray, Any, Any]], size: int) -> HeldOutOutputs:
    per_example: list[tuple[np.ndarray, np.ndarray | None]] = [(np.zeros((0, 0)), None)] * size
    any_labels = False
    for indices, out, batch in chunks:
        keep = ((batch["attention_mask"] == 1) & (batch["special_tokens_mask"] == 0)).cpu().numpy()
        logits = out.numpy()
        labels = batch["labels"].cpu().numpy() if "labels" in batch else None
        any_labels |= labels is not None
        for row, index in enumerate(indices):
            per_example[index] = (logits[row][keep[row]], labels[row][keep[row]] if labels is not None else None)
    values = np.concatenate([v for v, _ in per_example if v.size], axis=0)
    labels_out = None
    if any_labels:
        labels_out = np.concatenate([
            lab if lab is not None else np.full(len(v), IGNORE_LABEL, dtype=np.int64)
            for v, lab in per_example if v.size
        ])
    return HeldOutOutputs(values, labels_out)


def compare(task: Task, teacher: HeldOutOutputs, candidate: HeldOutOutputs, examples: int) -> QualityReport:
    """Score ``candidate`` against the teacher's held-out outputs."""
    if task == "feature-extraction":
        return QualityReport(
            task=task,
            metric="mean_cosine",
            teacher_agreement=round(mean_cosine(teacher.values, candidate.values), 6),
            neighbour_agreement=round(neighbour_agreement(teacher.values, candidate.values, k=NEIGHBOURS), 6),
            accuracy=None,
            teacher_accuracy=None,
            examples=examples,
            similarity_spearman=round(similarity_spearman(teacher.values, candidate.values), 6)
            if len(teacher.values) >= 3 else None,
        )
    accuracy = teacher_accuracy = None
    labels = teacher.labels
    if labels is not None and bool((labels != IGNORE_LABEL).any()):
        labelled = labels != IGNORE_LABEL
        accuracy = round(float(np.mean(np.argmax(candidate.values[labelled], -1) == labels[labelled])), 6)
        teacher_accuracy = round(float(np.mean(np.argmax(teacher.values[labelled], -1) == labels[labelled])), 6)
    return QualityReport(
        task=task,
        metric="argmax_agreement",
        teacher_agreement=round(argmax_agreement(teacher.values, candidate.values), 6),
        neighbour_agreement=None,
        accuracy=accuracy,
        teacher_accuracy=teacher_accuracy,
        examples=examples,
    )
