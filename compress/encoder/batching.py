"""Encoder examples tokenised once, and a batch of them padded into tensors.

Which examples form a batch is :mod:`compress.training.batching`'s (length-bucketed, a pure
function of ``(seed, epoch)``); the teacher's outputs are kept by
:class:`compress.training.teacher_cache.TeacherCache`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.base.corpus import Example
from compress.encoder.losses import IGNORE_LABEL
from export.base.tasks import Task



@dataclass
class EncodedSet:
    """Token ids of a list of examples (unpadded), with per-example labels in the task's form."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[Any]  # int | list[int] (per token) | None per example
    special_tokens: list[list[int]]  # 1 where the token is [CLS]/[SEP]/... (not scored in evaluation)
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    @property
    def has_labels(self) -> bool:
        return any(label is not None for label in self.labels)


def label_ids(examples: list[Example], task: Task, model_config: Any) -> tuple[list[Any], list[str]]:
    """Examples' labels as the teacher's class ids, and a warning per label that does not fit.

    A label that the teacher does not know is dropped (the text still trains on the teacher's
    outputs), and reported by line number when the example has one.
    """
    if task == "feature-extraction":
        return [None] * len(examples), []
    num_labels = int(model_config.num_labels)
    by_name = {str(name): int(i) for name, i in (model_config.label2id or {}).items()}
    by_name_lower = {name.lower(): i for name, i in by_name.items()}
    out: list[Any] = []
    problems: list[str] = []

    def one(tag: str | int) -> int | None:
        if isinstance(tag, int):
            return tag if 0 <= tag < num_labels else None
        if tag in by_name:
            return by_name[tag]
        if tag.lower() in by_name_lower:
            return by_name_lower[tag.lower()]
        return int(tag) if tag.isdigit() and int(tag) < num_labels else None

    for number, example in enumerate(examples, start=1):
        label = example.label
        if label is None:
            out.append(None)
            continue
        where = f"example {number}"
        if task == "text-classification":
            if isinstance(label, list):
                problems.append(f"{where}: a list label, but the teacher classifies whole texts")
                out.append(None)
                continue
            value = one(label)
            if value is None:
                problems.append(f"{where}: label {label!r} is not one of the teacher's {num_labels} classes")
            out.append(value)
        else:
            tags = label if isinstance(label, list) else str(label).split()
            words = example.text.split()
            values = [one(tag) for tag in tags]
            if len(tags) != len(words):
                problems.append(f"{where}: {len(tags)} tags for {len(words)} words")
                out.append(None)
            elif any(v is None for v in values):
                problems.append(f"{where}: a tag is not one of the teacher's {num_labels} classes")
                out.append(None)
            else:
                out.append(values)
    return out, problems


def encode(examples: list[Example], labels: list[Any], tokenizer: Any, task: Task, max_length: int) -> EncodedSet:
    """Tokenise once, truncating to ``max_length``; token labels go on each word's first sub-token."""
    if task == "token-classification":
        # Words are whitespace-separated, so per-word tags line up with the tokenizer's word ids.
        words = [example.text.split() for example in examples]
        encoding = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                             return_special_tokens_mask=True)
        token_labels: list[Any] = []
        for row, tags in enumerate(labels):
            if tags is None:
                token_labels.append(None)
                continue
            word_ids = encoding.word_ids(row)
            aligned, previous = [], None
            for word in word_ids:
                aligned.append(IGNORE_LABEL if word is None or word == previous else tags[word])
                previous = word
            token_labels.append(aligned)
        labels = token_labels
    else:
        texts = [example.text for example in examples]
        pairs = [example.text_pair for example in examples]
        if any(pair is not None for pair in pairs):
            encoding = tokenizer(texts, [pair or "" for pair in pairs], truncation=True, max_length=max_length,
                                 return_special_tokens_mask=True)
        else:
            encoding = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    token_types = encoding.get("token_type_ids")
    return EncodedSet(
        input_ids=list(encoding["input_ids"]),
        token_type_ids=list(token_types) if token_types is not None else None,
        labels=list(labels),
        special_tokens=list(encoding["special_tokens_mask"]),
        pad_id=int(tokenizer.pad_token_id or 0),
    )


def collate(data: EncodedSet, indices: np.ndarray, device: str, pad_to_multiple: int = 1) -> dict[str, Any]:
    """Pad a batch to its own longest example; pinned memory and non-blocking copies on CUDA."""
    import torch

    rows = [int(i) for i in indices]
    longest = max(len(data.input_ids[i]) for i in rows)
    length = int(math.ceil(longest / pad_to_multiple) * pad_to_multiple)
    ids = np.full((len(rows), length), data.pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    types = np.zeros((len(rows), length), dtype=np.int64) if data.token_type_ids is not None else None
    special = np.ones((len(rows), length), dtype=np.int64)
    labelled = [data.labels[i] for i in rows]
    labels: np.ndarray | None = None
    if any(label is not None for label in labelled):
        token_level = any(isinstance(label, list) for label in labelled)
        labels = np.full((len(rows), length) if token_level else (len(rows),), IGNORE_LABEL, dtype=np.int64)
    for r, i in enumerate(rows):
        n = len(data.input_ids[i])
        ids[r, :n] = data.input_ids[i]
        mask[r, :n] = 1
        special[r, :n] = data.special_tokens[i]
        if types is not None:
            types[r, :n] = data.token_type_ids[i]  # type: ignore[index]
        if labels is not None and labelled[r] is not None:
            if labels.ndim == 2:
                labels[r, :n] = labelled[r]
            else:
                labels[r] = labelled[r]
    arrays = {"input_ids": ids, "attention_mask": mask, "special_tokens_mask": special}
    if types is not None:
        arrays["token_type_ids"] = types
    if labels is not None:
        arrays["labels"] = labels
    on_cuda = device.startswith("cuda")
    batch: dict[str, Any] = {}
    for name, array in arrays.items():
        tensor = torch.from_numpy(array)
        if on_cuda:
            tensor = tensor.pin_memory().to(device, non_blocking=True)
        batch[name] = tensor
    return batch
