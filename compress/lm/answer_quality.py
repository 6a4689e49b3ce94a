"""How well a model reproduces a teacher's answers to held-out prompts.

For a teacher known only by its answers, quality is measured against those answers:

* token agreement: the share of answer tokens the model predicts as its most likely next token,
  given the prompt and the answer so far (teacher forcing);
* exact match: the share of prompts whose greedy answer is the teacher's, word for word;
* perplexity of the teacher's answers under the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from compress.lm.data import EncodedLM
from compress.lm.quality import greedy_continuation, greedy_prompt_ids, pad_id_of, predictions
from export.base.errors import CompressError
from export.base.report_json import JsonRecord


@dataclass
class AnswerQuality(JsonRecord):
    """A model against the teacher's answers on held-out prompts."""

    token_agreement: float
    exact_match: float
    perplexity: float
    prompts: int  # held-out answers scored
    tokens: int  # answer tokens scored
    greedy_prompts: int  # prompts answered greedily for exact match


def answer_quality(model: Any, tokenizer: Any, encoded: Sequence[EncodedLM], *, device: str = "cpu",
                   greedy_prompts: int = 32, batch_size: int = 8,
                   advance: Callable[[int], None] | None = None) -> AnswerQuality:
    """``model`` against the teacher's answers to held-out prompts, ``encoded`` (answers as completions)."""
    if not encoded:
        raise CompressError("no held-out teacher answer has a token within --max-length to score")
    pad_id = pad_id_of(tokenizer)
    scored = predictions(model, encoded, pad_id=pad_id, device=device, batch_size=batch_size, advance=advance)
    matched = 0
    for example, argmax in zip(encoded, scored.argmax):
        targets = [t for t, m in zip(example.input_ids[1:], example.completion_mask[1:]) if m]
        matched += sum(1 for a, b in zip(argmax.tolist(), targets) if a == b)
    eos = tokenizer.eos_token_id
    exact = 0
    greedy = encoded[:max(0, greedy_prompts)]
    for example in greedy:
        if advance is not None:
            advance(1)
        reference = [t for t, m in zip(example.input_ids, example.completion_mask) if m]
        tokens = greedy_continuation(model, greedy_prompt_ids(example), len(reference), eos_id=eos, device=device)
        # Compared as text: two tokenizations of the same words are the same answer.
        said, expected = (" ".join(tokenizer.decode(ids, skip_special_tokens=True).split())
                          for ids in (tokens, reference))
        exact += int(said == expected)
    return AnswerQuality(
        token_agreement=round(matched / scored.tokens, 6) if scored.tokens else math.nan,
        exact_match=round(exact / len(greedy), 6) if greedy else math.nan,
        perplexity=round(scored.perplexity, 4),
        prompts=len(encoded),
        tokens=scored.tokens,
        greedy_prompts=len(greedy),
    )
