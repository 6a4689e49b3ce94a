"""Tokenised examples, length-bucketed batches and the teacher-output cache.

Texts are tokenised once. Each epoch's batches are a pure function of ``(seed, epoch)``: a
seeded shuffle, then sorting by length inside windows of 50 batches so that a batch holds texts
of similar length and padding wastes little compute, then a shuffle of the batch order. A
resumed run rebuilds the same epoch and skips the batches it already did.

The teacher's outputs (sentence embeddings or logits, small) are computed the first time an
example is seen and kept in fp16, so later epochs pay for the student only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.base.corpus import Example
from compress.distill.losses import IGNORE_LABEL
from export.base.tasks import Task

BUCKET_WINDOW_BATCHES = 50


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


class TeacherCache:
    """The teacher's final outputs per training example, in fp16, filled as examples are first seen.

    Rows are fixed-size: ``(dim,)`` embeddings, ``(classes,)`` logits, or ``(max_length, classes)``
    token logits. Values are always read back through fp16, whether just computed or cached, so a
    run gives the same result whichever epoch it resumed in.
    """

    def __init__(self, size: int, max_bytes: int) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.values: Any = None  # torch tensor (size, *row_shape), fp16
        self.filled: Any = None  # torch bool (size,)
        self.disabled_reason: str | None = None

    def lookup(self, indices: Any, length: int | None = None) -> Any:
        """Cached outputs for a batch, or None when any of its examples is missing."""
        if self.values is None:
            return None
        if not bool(self.filled[indices].all()):
            return None
        rows = self.values[indices]
        return (rows[:, :length] if length is not None else rows).float()

    def store(self, indices: Any, outputs: Any, full_length: int | None = None) -> Any:
        """Keep a batch's outputs (padded to ``full_length`` along dim 1 for tokens); returns them as cached."""
        import torch

        half = outputs.detach().to(torch.float16)
        if self.disabled_reason is not None:
            return half.float()
        if self.values is None:
            row_shape = tuple(half.shape[1:])
            if full_length is not None:
                row_shape = (full_length, *row_shape[1:])
            needed = self.size * math.prod(row_shape) * 2
            if needed > self.max_bytes:
                self.disabled_reason = f"the cache would need {needed / 2**30:.1f} GiB"
                return half.float()
            self.values = torch.zeros((self.size, *row_shape), dtype=torch.float16, device=half.device)
            self.filled = torch.zeros(self.size, dtype=torch.bool, device=half.device)
        if full_length is not None:
            self.values[indices, : half.shape[1]] = half
        else:
            self.values[indices] = half
        self.filled[indices] = True
        return half.float()

    def state(self) -> dict[str, Any]:
        if self.values is None:
            return {}
        return {"values": self.values.cpu(), "filled": self.filled.cpu()}

    def load_state(self, state: dict[str, Any], device: str) -> None:
        if "values" in state:
            self.values = state["values"].to(device)
            self.filled = state["filled"].to(device)
