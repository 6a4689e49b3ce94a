"""Token-level distillation losses for causal language models.

All functions take ALIGNED tensors: position ``t`` of ``student_logits`` predicts the token that the
teacher targets at position ``t`` describe, and ``mask[b, t] == 1`` marks a completion position whose
prediction is trained. A caller holding logits for ``input_ids`` passes ``student_logits[:, :-1]``,
the teacher's logits (or top-k) for the same positions, and ``completion_mask[:, 1:]``.

Losses (on temperature-softened distributions, averaged over masked positions, times ``T**2`` so
gradient sizes stay comparable as ``T`` changes):

* ``forward_kl``: KL(teacher || student), mean-seeking: the student covers every teacher mode.
* ``reverse_kl``: KL(student || teacher), mode-seeking: the student puts its mass where the teacher is
  confident (MiniLLM); often better for small students generating free text.
* ``jsd``: the generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024) with mixture
  ``M = beta * teacher + (1 - beta) * student``:
  ``beta * KL(teacher || M) + (1 - beta) * KL(student || M)``. As in TRL's implementation,
  ``beta = 0`` means forward KL and ``beta = 1`` reverse KL (the mixture formula degenerates to 0 there).

Top-k teacher targets (``TopK``) save memory and let the teacher's outputs be cached on disk. They
hold the teacher's full-vocabulary log-probabilities at its k most likely tokens, so the mass of
everything else is known too: ``1 - sum(exp(values))``. At temperature 1 every loss is computed
exactly over k + 1 buckets, the teacher's k tokens and "any other token", for teacher and student
alike (the student's log-probabilities come from its full softmax). Mass the student puts outside
the teacher's top-k lands in its "other" bucket and is compared with the teacher's, so it is
neither free nor forbidden. With k = vocabulary size the result equals the full-vocabulary loss.
At other temperatures the teacher's softened tail is unknown; there both sides are renormalised
over the k tokens, an approximation under which the student's mass outside them is not seen.
Quality is always measured on full logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from export.base.errors import CompressError

LossKind = Literal["forward_kl", "reverse_kl", "jsd"]
LOSS_KINDS: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd")
# Probability floor of the "any other token" bucket: with k = vocabulary the rest is zero, and a
# floor this small changes no loss measurably while keeping its logarithm finite.
_MIN_REST = 1e-12


@dataclass
class TopK:
    """The teacher's k largest logits at each position and their token ids."""

    values: torch.Tensor  # (batch, seq, k) teacher log-probabilities (full-vocabulary log-softmax, T = 1)
    indices: torch.Tensor  # (batch, seq, k) token ids (int64 for gather)

    def __post_init__(self) -> None:
        if self.values.shape != self.indices.shape or self.values.dim() != 3:
            raise CompressError(f"top-k values {tuple(self.values.shape)} and indices {tuple(self.indices.shape)} "
                                "must both be (batch, seq, k)")

    @property
    def k(self) -> int:
        return int(self.values.shape[-1])

    def to(self, device: torch.device | str) -> TopK:
        """The same top-k on ``device``."""
        return TopK(self.values.to(device), self.indices.to(device))


def _check_mask(student_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if student_logits.dim() != 3:
        raise CompressError(f"student logits must be (batch, seq, vocab), got {tuple(student_logits.shape)}")
    if tuple(mask.shape) != tuple(student_logits.shape[:2]):
        raise CompressError(f"mask {tuple(mask.shape)} does not match student logits {tuple(student_logits.shape)}; "
                            "pass student_logits[:, :-1] with completion_mask[:, 1:]")
    return mask.to(device=student_logits.device) != 0


def _empty_loss(student_logits: torch.Tensor) -> torch.Tensor:
    # No completion position in the batch: a zero that still belongs to the graph, so backward() works.
    return student_logits.sum() * 0.0


def _divergence(log_student: torch.Tensor, log_teacher: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Per-position divergence between two log-distributions over the last axis."""
    if kind == "jsd":
        if beta <= 0.0:
            kind = "forward_kl"
        elif beta >= 1.0:
            kind = "reverse_kl"
    if kind == "forward_kl":
        return F.kl_div(log_student, log_teacher, log_target=True, reduction="none").sum(-1)
    if kind == "reverse_kl":
        return F.kl_div(log_teacher, log_student, log_target=True, reduction="none").sum(-1)
    # log M computed in log space for stability: logsumexp(log b + log p_t, log (1 - b) + log p_s).
    log_mixture = torch.logsumexp(torch.stack([log_teacher + math.log(beta), log_student + math.log(1.0 - beta)]),
                                  dim=0)
    kl_teacher = F.kl_div(log_mixture, log_teacher, log_target=True, reduction="none").sum(-1)
    kl_student = F.kl_div(log_mixture, log_student, log_target=True, reduction="none").sum(-1)
    return beta * kl_teacher + (1.0 - beta) * kl_student


def lm_distillation_loss(student_logits: torch.Tensor, teacher: torch.Tensor | TopK, mask: torch.Tensor, *,
                         kind: LossKind = "forward_kl", temperature: float = 1.0,
                         beta: float = 0.5) -> torch.Tensor:
    """Distillation loss between aligned student logits and teacher logits (full or top-k).

    ``student_logits``: (batch, seq, vocab); ``teacher``: (batch, seq, vocab) logits or a ``TopK``
    for the same positions; ``mask``: (batch, seq), 1 where the position counts. Returns a scalar:
    the mean per-position divergence over masked positions, times ``temperature ** 2``.
    """
    if kind not in LOSS_KINDS:
        raise CompressError(f"unknown loss {kind!r}; use one of {', '.join(LOSS_KINDS)}")
    if not temperature > 0:
        raise CompressError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= beta <= 1.0:
        raise CompressError(f"beta must be between 0 and 1, got {beta}")
    keep = _check_mask(student_logits, mask)
    if isinstance(teacher, TopK):
        if tuple(teacher.values.shape[:2]) != tuple(student_logits.shape[:2]):
            raise CompressError(f"teacher top-k {tuple(teacher.values.shape)} does not cover the same positions "
                                f"as student logits {tuple(student_logits.shape)}")
        if teacher.k > student_logits.shape[-1]:
            raise CompressError(f"top-k of {teacher.k} is larger than the student's vocabulary "
                                f"({student_logits.shape[-1]})")
    elif tuple(teacher.shape) != tuple(student_logits.shape):
        raise CompressError(f"teacher logits {tuple(teacher.shape)} and student logits "
                            f"{tuple(student_logits.shape)} differ in shape (same tokenizer and positions needed)")
    if not bool(keep.any()):
        return _empty_loss(student_logits)

    # Only the masked positions are computed at all (prompt and padding positions can be most of a
    # batch), and in float32 so bf16 autocast logits do not lose the small probabilities.
    student = student_logits[keep]  # (n, vocab)
    if isinstance(teacher, TopK):
        log_student, log_teacher = _topk_buckets(student, teacher, keep, temperature)
    else:
        log_student = F.log_softmax(student.float() / temperature, dim=-1)
        log_teacher = F.log_softmax(teacher.to(student_logits.device)[keep].float().detach() / temperature, dim=-1)
    per_position = _divergence(log_student, log_teacher, kind, beta)
    return per_position.mean() * temperature**2


def _topk_buckets(student: torch.Tensor, teacher: TopK, keep: torch.Tensor,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-distributions over the teacher's k tokens (+ "any other" at T = 1)."""
    indices = teacher.indices.to(student.device)[keep].long()  # (n, k)
    teacher_log = teacher.values.to(student.device)[keep].float().detach()
    if temperature != 1.0:
        # Gathered before the float32 copy: (n, k) instead of (n, vocab) floats, then renormalised.
        log_student = F.log_softmax(student.gather(-1, indices).float() / temperature, dim=-1)
        return log_student, F.log_softmax(teacher_log / temperature, dim=-1)
    log_student = F.log_softmax(student.float(), dim=-1).gather(-1, indices)
    return _with_rest(log_student), _with_rest(teacher_log)


def _with_rest(log_probs: torch.Tensor) -> torch.Tensor:
    """Append the log of the mass left outside the k tokens (kept above zero for the logarithm)."""
    rest = (1.0 - log_probs.exp().sum(-1, keepdim=True)).clamp(min=_MIN_REST)
    return torch.cat([log_probs, rest.log()], dim=-1)


def next_token_loss(student_logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``target_ids`` under aligned ``student_logits``, averaged over masked positions.

    Aligned like the distillation loss: pass ``logits[:, :-1]``, ``input_ids[:, 1:]`` and
    ``completion_mask[:, 1:]``.
    """
    keep = _check_mask(student_logits, mask)
    if tuple(target_ids.shape) != tuple(mask.shape):
        raise CompressError(f"target ids {tuple(target_ids.shape)} do not match the mask {tuple(mask.shape)}")
    if not bool(keep.any()):
        return _empty_loss(student_logits)
    logits = student_logits[keep].float()
    targets = target_ids.to(student_logits.device)[keep].long()
    return F.cross_entropy(logits, targets)
