"""The static-embedding student: the teacher's vocabulary as vectors, trained further on text.

model2vec (MIT, maintained) turns a sentence encoder into one vector per vocabulary token by
embedding each token alone through the teacher: no training text, about a minute on a CPU. Those
vectors know words, not how the teacher weighs them in a sentence, and model2vec's plain
distillation keeps few of the teacher's neighbours. As the best static models do, the vectors and
one weight per token are then trained on the training split to regress the teacher's sentence
embeddings (cosine, plus a light weight of the students' relational loss), and written as
a small ONNX graph (:mod:`export.static_onnx`) beside model2vec's tokenizer. The result encodes a
text with a lookup and a sum: the far, fast end of the candidates.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.base.files import atomic_write_text

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from compress.training.progress import Reporter

MODEL_FILE = "model.onnx"
# The classifier head reads a unit-length embedding; logits need a larger range (learned head x this).
CLASSIFIER_SCALE = 10.0


@dataclass(frozen=True)
class StaticSettings:
    """How the static student is trained. Measured on the default teacher (2-core AMD EPYC,
    2026-12-02, 10,000 texts, 1,000 held out): 600 steps of 256 texts take about two minutes; a
    rate of 1e-3 reaches cosine 0.71 where 5e-3 reaches 0.77; the students' relational loss
    gave top-10 / Spearman / cosine 0.378 / 0.537 / 0.786 at weight 0, 0.385 / 0.538 / 0.793 at
    0.3 and 0.381 / 0.501 / 0.762 at 1: a light touch helps a little, a full weight hurts."""

    texts: int = 10_000  # training texts whose teacher embeddings it regresses
    steps: int = 600
    batch_size: int = 256
    learning_rate: float = 5e-3
    relation_weight: float = 0.3
    max_length: int = 256
    seed: int = 0


def build_static_student(teacher_dir: Path, teacher_onnx: Path, texts: list[str], out: Path,
                         settings: StaticSettings, reporter: Reporter) -> Path:
    """Distil ``teacher_dir``'s vocabulary with model2vec, train it on ``texts``, write ``out/model.onnx``.

    A sentence encoder's static student regresses its embeddings; a text classifier's carries a
    linear head trained on its class probabilities (the graph then outputs ``logits``).
    """
    from compress.evaluate import model_outputs
    from export.static_onnx import write_static_onnx

    out.mkdir(parents=True, exist_ok=True)
    reporter.message("release: static student: model2vec embeds every vocabulary token through the teacher")
    vectors, tokenizer_json = _model2vec_vectors(teacher_dir)
    picked = _sample(texts, settings.texts, settings.seed)
    reporter.message(f"release: static student: the teacher's embeddings of {len(picked)} training texts, then "
                     f"{settings.steps} steps of training")
    teacher = model_outputs(teacher_onnx, picked, source="distill/train.jsonl")
    tokenizer = _tokenizer(tokenizer_json, settings.max_length)
    ids = [e.ids for e in tokenizer.encode_batch(picked)]
    if teacher.view.output == "logits":  # a classifier: the vectors and a head learn its class probabilities
        trained, weight, bias = train_static_classifier(vectors, ids, teacher.rows, settings)
        write_static_onnx(trained, out / MODEL_FILE, head=(weight, bias))
    else:
        write_static_onnx(train_static(vectors, ids, teacher.rows, settings), out / MODEL_FILE)
    tokenizer.save(str(out / "tokenizer.json"))
    atomic_write_text(out / "tokenizer_config.json", json.dumps({
        "model_max_length": settings.max_length, "pad_token": "[PAD]", "tokenizer_class": "PreTrainedTokenizerFast"}))
    atomic_write_text(out / "sentence_bert_config.json", json.dumps({"max_seq_length": settings.max_length}))
    return out / MODEL_FILE


def _model2vec_vectors(teacher_dir: Path) -> tuple[np.ndarray, str]:
    """model2vec's token vectors for the teacher (its own dimensions: comparable with the teacher's
    embeddings), and its tokenizer (the vocabulary it kept) as JSON text."""
    from model2vec.distill import distill_from_model
    from transformers import AutoModel, AutoTokenizer

    from export.base.quiet import quiet_libraries

    # Its progress bars (stderr) would break the chain's one-line messages.
    with quiet_libraries("model2vec", "skeletoken", "transformers"), contextlib.redirect_stderr(io.StringIO()):
        model = AutoModel.from_pretrained(teacher_dir, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(teacher_dir, local_files_only=True, use_fast=True)
        static = distill_from_model(model, tokenizer, pca_dims=None, quantize_to="float32", device="cpu")
    return np.asarray(static.embedding, dtype=np.float32), static.tokenizer.to_str()


def _tokenizer(tokenizer_json: str, max_length: int):  # -> tokenizers.Tokenizer
    """model2vec's tokenizer as the release uses it: no special tokens added, truncated, no fixed padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


def _sample(texts: list[str], count: int, seed: int) -> list[str]:
    if len(texts) <= count:
        return list(texts)
    picked = np.random.default_rng(seed).permutation(len(texts))[:count]
    return [texts[i] for i in sorted(picked.tolist())]


def static_embed(vectors: torch.Tensor, weights: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:
    """The static encoder in PyTorch: the weighted sum of a text's token vectors, L2-normalised.

    ``exp(weights)`` keeps each token's weight positive; the exported graph has it folded into the
    vectors (:func:`folded`).
    """
    import torch
    import torch.nn.functional as F

    length = max(1, max((len(x) for x in ids), default=1))
    batch = torch.zeros(len(ids), length, dtype=torch.long)
    mask = torch.zeros(len(ids), length)
    for row, tokens in enumerate(ids):
        batch[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, :len(tokens)] = 1.0
    summed = (vectors[batch] * (torch.exp(weights[batch]) * mask).unsqueeze(-1)).sum(dim=1)
    return F.normalize(summed, dim=-1, eps=1e-12)


def folded(vectors: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """Per-token weights multiplied into the vectors: what the ONNX graph holds."""
    import torch

    return (vectors * torch.exp(weights).unsqueeze(-1)).detach().float().numpy()


def train_static(vectors: np.ndarray, ids: list[list[int]], targets: np.ndarray, settings: StaticSettings
                 ) -> np.ndarray:
    """Train token vectors and per-token weights so the texts' static embeddings follow ``targets``."""
    import torch
    import torch.nn.functional as F

    from compress.encoder.losses import relation_loss

    teacher = F.normalize(torch.from_numpy(np.asarray(targets, dtype=np.float32)), dim=-1)

    def loss(student: torch.Tensor, rows: list[int]) -> torch.Tensor:
        value = (1.0 - (student * teacher[rows]).sum(dim=-1)).mean()
        if settings.relation_weight:
            value = value + settings.relation_weight * relation_loss(student, teacher[rows])
        return value

    table, weights = _train(vectors, ids, settings, loss, [])
    return folded(table, weights)


def train_static_classifier(vectors: np.ndarray, ids: list[list[int]], logits: np.ndarray,
                            settings: StaticSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token vectors, per-token weights and a linear head on the normalised embedding, trained on the
    teacher's class probabilities (KL); returns the folded vectors and the head's weight and bias."""
    import torch
    import torch.nn.functional as F

    teacher = F.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=-1)
    head = torch.nn.Linear(vectors.shape[1], teacher.shape[1])
    torch.nn.init.zeros_(head.bias)

    def loss(student: torch.Tensor, rows: list[int]) -> torch.Tensor:
        # The embedding is unit length: a scale lets the head's logits be as sharp as the teacher's.
        return F.kl_div(F.log_softmax(head(student) * CLASSIFIER_SCALE, dim=-1), teacher[rows], reduction="batchmean")

    table, weights = _train(vectors, ids, settings, loss, list(head.parameters()))
    return (folded(table, weights), (head.weight * CLASSIFIER_SCALE).detach().numpy(),
            (head.bias * CLASSIFIER_SCALE).detach().numpy())


def _train(vectors: np.ndarray, ids: list[list[int]], settings: StaticSettings,
           loss: Callable[[torch.Tensor, list[int]], torch.Tensor], extra: list[torch.Tensor]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop both kinds share: seeded batches of texts, Adam on the table, the weights and ``extra``."""
    import torch

    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    table = torch.nn.Parameter(torch.from_numpy(vectors.copy()))
    weights = torch.nn.Parameter(torch.zeros(vectors.shape[0]))
    optimizer = torch.optim.Adam([table, weights, *extra], lr=settings.learning_rate)
    batch = min(settings.batch_size, len(ids))
    order = torch.randperm(len(ids), generator=generator)
    cursor = 0
    for _ in range(settings.steps):
        if cursor + batch > len(order):
            order, cursor = torch.randperm(len(ids), generator=generator), 0
        rows = order[cursor:cursor + batch].tolist()
        cursor += batch
        value = loss(static_embed(table, weights, [ids[i] for i in rows]), rows)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    return table, weights
