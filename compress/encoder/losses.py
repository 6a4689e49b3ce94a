"""Distillation losses.

* Sentence embeddings: ``1 - cos`` and/or MSE between student and teacher embeddings.
* Classifiers: KL divergence between temperature-softened distributions, scaled by ``T**2`` so
  its gradients keep their size as ``T`` changes (Hinton et al.), mixed with cross-entropy on
  labels when there are labels: ``alpha * KL + (1 - alpha) * CE``.
* Token classifiers: the same per token, averaged over the real (attention-masked) tokens.
* Optional, sentence embeddings: a relational term on the batch's similarity structure, the
  student's matrix of pairwise cosines against the teacher's (KL between the row-wise softmax
  distributions at a temperature, as in contrastive distillation, or MSE on the matrix): what the
  neighbour numbers measure, which the per-vector loss does not ask for.
* Optional, any task: MSE between mapped hidden states (student states projected into the
  teacher's width when narrower) and MiniLM's KL between last-layer attention distributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from export.torch_model import TaskOutputs
from export.base.errors import CompressError
from export.base.tasks import Task

EmbeddingLoss = Literal["cosine", "mse", "cosine+mse"]
EMBEDDING_LOSSES: tuple[str, ...] = ("cosine", "mse", "cosine+mse")
RelationLoss = Literal["kl", "mse"]
RELATION_LOSSES: tuple[str, ...] = ("kl", "mse")
# The softmax temperature of the relational KL: sharp enough that a row's mass sits on its nearest
# texts (cosines of unrelated sentences cluster around 0.1-0.3 for MiniLM), as contrastive losses use.
RELATION_TEMPERATURE = 0.05
IGNORE_LABEL = -100


@dataclass(frozen=True)
class LossSettings:
    """Which terms make up the loss, and their weights."""

    task: Task
    embedding_loss: EmbeddingLoss = "cosine"
    alpha: float = 0.5
    temperature: float = 2.0
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    relation_weight: float = 0.0
    relation_loss: RelationLoss = "kl"

    def __post_init__(self) -> None:
        if self.embedding_loss not in EMBEDDING_LOSSES:
            raise CompressError(f"unknown embedding loss {self.embedding_loss!r}; use one of {', '.join(EMBEDDING_LOSSES)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise CompressError(f"--alpha must be between 0 and 1, got {self.alpha}")
        if self.temperature <= 0:
            raise CompressError(f"--temperature must be positive, got {self.temperature}")
        if self.hidden_weight < 0 or self.attention_weight < 0 or self.relation_weight < 0:
            raise CompressError("loss weights must not be negative")
        if self.relation_loss not in RELATION_LOSSES:
            raise CompressError(f"unknown relation loss {self.relation_loss!r}; use one of {', '.join(RELATION_LOSSES)}")

    @property
    def needs_teacher_internals(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0


def embedding_loss(student: Any, teacher: Any, kind: EmbeddingLoss = "cosine") -> Any:
    """Mean ``1 - cos`` and/or MSE between matching rows of student and teacher embeddings."""
    import torch.nn.functional as F

    total = student.new_zeros(())
    if kind in ("cosine", "cosine+mse"):
        total = total + (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind in ("mse", "cosine+mse"):
        total = total + F.mse_loss(student, teacher)
    return total


def relation_loss(student: Any, teacher: Any, kind: RelationLoss = "kl",
                  temperature: float = RELATION_TEMPERATURE) -> Any:
    """How far the student's in-batch similarity structure is from the teacher's; 0 when they are the same.

    ``kl``: for each text, KL(teacher || student) between the softmax over its cosines to the other
    texts of the batch, at ``temperature``; ``mse``: the mean squared difference of the two
    off-diagonal cosine matrices. A batch of one has no relations: 0.
    """
    import torch
    import torch.nn.functional as F

    rows = student.shape[0]
    if rows < 2:
        return student.new_zeros(())
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    s_sim, t_sim = s @ s.T, t @ t.T
    off = ~torch.eye(rows, dtype=torch.bool, device=student.device)
    if kind == "mse":
        return ((s_sim - t_sim)[off] ** 2).mean()
    s_rows = (s_sim[off].view(rows, rows - 1)) / temperature
    t_rows = (t_sim[off].view(rows, rows - 1)) / temperature
    return F.kl_div(F.log_softmax(s_rows, -1), F.log_softmax(t_rows, -1), log_target=True,
                    reduction="batchmean")


def soft_label_loss(student_logits: Any, teacher_logits: Any, temperature: float, mask: Any = None) -> Any:
    """KL(teacher || student) on temperature-softened distributions, times ``T**2``.

    ``mask`` (``(batch, seq)``) selects the token positions that count, for token classifiers.
    """
    import torch.nn.functional as F

    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    per_position = F.kl_div(log_student, log_teacher, log_target=True, reduction="none").sum(-1)
    if mask is not None:
        weights = mask.to(per_position.dtype)
        per_position = (per_position * weights).sum() / weights.sum().clamp(min=1.0)
    else:
        per_position = per_position.mean()
    return per_position * temperature**2


def hard_label_loss(student_logits: Any, labels: Any) -> Any:
    """Cross-entropy on the labelled positions (``IGNORE_LABEL`` elsewhere)."""
    import torch.nn.functional as F

    return F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_LABEL)


def hidden_state_loss(student_states: tuple[Any, ...], teacher_states: tuple[Any, ...],
                      teacher_layers: tuple[int, ...], attention_mask: Any, projection: Any = None) -> Any:
    """Masked MSE between the embedding outputs and each student layer's output and its teacher layer's."""
    pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(teacher_layers)]
    mask = attention_mask.unsqueeze(-1).float()
    total = student_states[0].new_zeros((), dtype=mask.dtype)
    for s_index, t_index in pairs:
        student = student_states[s_index].float()
        if projection is not None:
            student = projection(student)
        diff = (student - teacher_states[t_index].float()) ** 2 * mask
        total = total + diff.sum() / (mask.sum() * student.shape[-1]).clamp(min=1.0)
    return total / len(pairs)


def attention_loss(student_attention: Any, teacher_attention: Any, attention_mask: Any) -> Any:
    """MiniLM's KL(teacher || student) between last-layer attention distributions, per query token.

    With different head counts the heads are averaged first, so any student can use it.
    """
    import torch

    student, teacher = student_attention.float(), teacher_attention.float()
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    eps = 1e-12
    kl = (torch.special.xlogy(teacher, teacher) - teacher * torch.log(student + eps)).sum(-1)  # (b, h, q)
    query_mask = attention_mask[:, None, :].float().expand_as(kl)
    return (kl * query_mask).sum() / query_mask.sum().clamp(min=1.0)


def distillation_loss(settings: LossSettings, student: TaskOutputs, teacher_final: Any,
                      teacher_internals: TaskOutputs | None, batch: dict[str, Any], teacher_layers: tuple[int, ...],
                      projection: Any = None) -> Any:
    """The total loss of one batch under ``settings``."""
    mask = batch["attention_mask"]
    labels = batch.get("labels")
    if settings.task == "feature-extraction":
        total = embedding_loss(student.final, teacher_final, settings.embedding_loss)
        if settings.relation_weight > 0:
            total = total + settings.relation_weight * relation_loss(student.final, teacher_final,
                                                                     settings.relation_loss)
    else:
        token_mask = mask if settings.task == "token-classification" else None
        total = soft_label_loss(student.final, teacher_final, settings.temperature, token_mask)
        if labels is not None and bool((labels != IGNORE_LABEL).any()):
            total = settings.alpha * total + (1.0 - settings.alpha) * hard_label_loss(student.final, labels)
    if teacher_internals is not None:
        if settings.hidden_weight > 0:
            assert student.hidden_states is not None and teacher_internals.hidden_states is not None
            total = total + settings.hidden_weight * hidden_state_loss(
                student.hidden_states, teacher_internals.hidden_states, teacher_layers, mask, projection)
        if settings.attention_weight > 0:
            assert student.attentions is not None and teacher_internals.attentions is not None
            total = total + settings.attention_weight * attention_loss(
                student.attentions[-1], teacher_internals.attentions[-1], mask)
    return total
