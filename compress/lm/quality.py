"""How closely a causal-LM student follows its teacher on held-out text.

Three numbers, all on the completion tokens of the held-out examples (the tokens a model is asked
to produce, never the prompt):

* **perplexity** of teacher and student: ``exp`` of the mean next-token cross-entropy;
* **next-token agreement**: the share of completion positions where the student's most likely next
  token is the teacher's (teacher forcing: both see the same real prefix);
* **greedy agreement**: both continue the same prompts greedily; the share of the teacher's first
  ``greedy_tokens`` tokens (up to its end-of-sequence token) that the student produces at the same
  position. Unlike the two above, a student that goes off track is punished for every later token,
  which is what a user of the generated text sees.

Logits are reduced to per-position numbers (loss, argmax) batch by batch, so memory stays at one
batch of logits of one model, whatever the vocabulary size.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from compress.training.progress import Reporter
from compress.lm.data import EncodedLM, LMExample, collate_lm, encode_examples
from export.base.errors import CompressError
from export.base.report_json import JsonRecord

# Plain-text examples have no prompt: greedy continuation then starts from the text's first tokens.
PLAIN_TEXT_PROMPT_TOKENS = 8


@dataclass
class LMQuality(JsonRecord):
    """Teacher and student on the held-out split."""

    teacher_perplexity: float
    student_perplexity: float
    next_token_agreement: float  # share of completion positions with the same argmax
    greedy_agreement: float  # share of the teacher's greedy tokens the student matches position by position
    samples: int  # held-out examples scored
    greedy_prompts: int  # prompts continued greedily
    greedy_tokens: int  # teacher tokens compared, over all greedy prompts


@dataclass
class Predictions:
    """One model's teacher-forced predictions at the completion positions of some encoded examples."""

    argmax: list[Any]  # per example: int64 tensor (completion positions,), the most likely next token
    nll_sum: float  # summed cross-entropy of the real next tokens
    tokens: int  # completion positions scored

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.tokens) if self.tokens else math.nan


def pad_id_of(tokenizer: Any) -> int:
    """The id that pads batches: pad, else end-of-sequence, else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def _device_of(model: Any, fallback: str) -> Any:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return fallback


def _autocast(device: Any) -> Any:
    import torch

    if str(device).startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predictions(model: Any, encoded: Sequence[EncodedLM], *, pad_id: int, device: str = "cpu",
                batch_size: int = 8, advance: Callable[[int], None] | None = None) -> Predictions:
    """Teacher-forced argmax and summed cross-entropy at the completion positions, in ``encoded``'s order.

    Position ``t`` of the logits predicts token ``t + 1``; it is scored when token ``t + 1`` is a
    completion token. Batches are length-sorted so padding costs little.
    """
    import torch
    import torch.nn.functional as F

    if batch_size < 1:
        raise CompressError(f"batch size must be positive, got {batch_size}")
    target_device = _device_of(model, device)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    argmax: list[Any] = [None] * len(encoded)
    nll_sum, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = collate_lm([encoded[i] for i in rows], pad_id)
            if advance is not None:
                advance(len(rows))
            ids = batch["input_ids"].to(target_device)
            with torch.no_grad(), _autocast(target_device):
                logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(target_device)).logits
            logits = logits[:, :-1].float()
            targets = ids[:, 1:]
            keep = batch["completion_mask"][:, 1:].to(target_device) != 0
            # Only completion positions: prompt and padding can be most of a batch.
            nll_sum += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            tokens += int(keep.sum())
            top = logits.argmax(-1)
            for r, i in enumerate(rows):
                argmax[i] = top[r][keep[r]].cpu()
            del logits, top
    finally:
        model.train(was_training)
    return Predictions(argmax=argmax, nll_sum=nll_sum, tokens=tokens)


def agreement(a: Predictions, b: Predictions) -> float:
    """Share of scored positions where the two models' argmax is the same token."""
    same = sum(int((x == y).sum()) for x, y in zip(a.argmax, b.argmax))
    total = sum(len(x) for x in a.argmax)
    return same / total if total else math.nan


def greedy_prompt_ids(example: EncodedLM) -> list[int]:
    """The tokens a greedy continuation starts from: the prompt, or a plain text's first few tokens."""
    first_completion = next((t for t, m in enumerate(example.completion_mask) if m), len(example.input_ids))
    if first_completion > 0:
        return list(example.input_ids[:first_completion])
    n = max(1, min(PLAIN_TEXT_PROMPT_TOKENS, len(example.input_ids) // 2))
    return list(example.input_ids[:n])


def greedy_continuation(model: Any, prompt: list[int], n: int, *, eos_id: int | None = None,
                        device: str = "cpu") -> list[int]:
    """The first ``n`` greedy tokens after ``prompt`` (stopping after ``eos_id`` when given), with the KV cache."""
    import torch

    target_device = _device_of(model, device)
    was_training = model.training
    model.eval()
    out_tokens: list[int] = []
    try:
        with torch.no_grad(), _autocast(target_device):
            out = model(input_ids=torch.tensor([prompt], device=target_device), use_cache=True)
            for _ in range(n):
                token = int(out.logits[0, -1].argmax())
                out_tokens.append(token)
                if (eos_id is not None and token == eos_id) or len(out_tokens) == n:
                    break
                out = model(input_ids=torch.tensor([[token]], device=target_device),
                            past_key_values=out.past_key_values, use_cache=True)
    finally:
        model.train(was_training)
    return out_tokens


def lm_quality(teacher: Any, student: Any, tokenizer: Any, held_out: list[LMExample], *, device: str = "cpu",
               max_length: int = 256, batch_size: int = 8, greedy_prompts: int = 16,
               greedy_tokens: int = 16, reporter: Reporter | None = None) -> LMQuality:
    """Perplexity of both, next-token agreement and greedy agreement of ``student`` with ``teacher``.

    ``reporter`` shows the scoring's progress (texts scored by each model, then greedy prompts).
    """
    if not held_out:
        raise CompressError("no held-out examples to measure quality on")
    encoded = encode_examples(held_out, tokenizer, max_length)
    if not encoded:
        raise CompressError(f"none of the {len(held_out)} held-out examples has a completion token "
                            f"within {max_length} tokens")
    pad_id = pad_id_of(tokenizer)
    greedy = encoded[:max(0, greedy_prompts)]
    with (reporter or Reporter(show_progress=False)).counting(
            f"quality: {len(encoded)} held-out texts through teacher and student", 2 * len(encoded) + len(greedy)
    ) as advance:
        teacher_pred = predictions(teacher, encoded, pad_id=pad_id, device=device, batch_size=batch_size,
                                   advance=advance)
        student_pred = predictions(student, encoded, pad_id=pad_id, device=device, batch_size=batch_size,
                                   advance=advance)
        matched, compared, prompts = _greedy_agreement(teacher, student, greedy, tokenizer.eos_token_id,
                                                       greedy_tokens, device, advance)
    return LMQuality(
        teacher_perplexity=round(teacher_pred.perplexity, 4),
        student_perplexity=round(student_pred.perplexity, 4),
        next_token_agreement=round(agreement(student_pred, teacher_pred), 6),
        greedy_agreement=round(matched / compared, 6) if compared else math.nan,
        samples=len(encoded),
        greedy_prompts=prompts,
        greedy_tokens=compared,
    )


def _greedy_agreement(teacher: Any, student: Any, examples: Sequence[EncodedLM], eos_id: int | None, tokens: int,
                      device: str, advance: Callable[[int], None]) -> tuple[int, int, int]:
    """(matching tokens, compared tokens, prompts) of greedy continuations, student against teacher."""
    matched = compared = prompts = 0
    for example in examples:
        advance(1)
        prompt = greedy_prompt_ids(example)
        reference = greedy_continuation(teacher, prompt, tokens, eos_id=eos_id, device=device)
        if not reference:
            continue
        # The student continues for as many tokens as the teacher produced, eos or not.
        candidate = greedy_continuation(student, prompt, len(reference), device=device)
        matched += sum(1 for x, y in zip(reference, candidate) if x == y)
        compared += len(reference)
        prompts += 1
    return matched, compared, prompts
