"""The endpoint's token log-probabilities as the student's top-k targets, when the tokenizers match.

An endpoint reports each answer token as a string with its log-probability and its top
alternatives. Those are a token-level teacher signal for the student only if the teacher's
tokens are the student's: this is checked, not assumed. For each answer, every token string
(answer tokens and alternatives) must name exactly one token of the student's vocabulary (as the
token decodes, or as the vocabulary spells it), and those tokens must decode to the answer the
endpoint sent. The student then trains on the teacher's own token sequence. When at least :data:`MIN_ALIGNED` of the answers
pass, their top-k feeds the k+1-bucket loss of :mod:`compress.lm.losses` (the answers that do not
pass train by cross-entropy only); otherwise the whole run is sequence-level, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compress.lm.data import EncodedLM, LMExample, prompt_ids

MIN_ALIGNED = 0.9  # share of answers that must align before the token-level signal is trusted


@dataclass
class AnswerTopK:
    """The teacher's top-k for one encoded example, at the positions that predict answer tokens."""

    values: np.ndarray  # (seq, k) float32 log-probabilities; zero where ``mask`` is 0
    indices: np.ndarray  # (seq, k) int64 student token ids
    mask: np.ndarray  # (seq,) 1 where position t's prediction of token t + 1 has a teacher distribution


@dataclass
class TokenMatch:
    """Whether the endpoint's tokens are the student's, and the targets when they are."""

    used: bool
    reason: str
    aligned: int
    checked: int
    targets: dict[tuple[int, ...], AnswerTopK] = field(default_factory=dict)  # by the example's input ids
    examples: dict[str, EncodedLM] = field(default_factory=dict)  # by answer key: the endpoint's own tokens

    def to_json(self) -> dict[str, Any]:
        return {"token_level": self.used, "reason": self.reason, "aligned_answers": self.aligned,
                "checked_answers": self.checked}


def piece_table(tokenizer: Any) -> dict[str, int]:
    """Token string -> id for every string that names one token only (decoded, or as the vocabulary spells it)."""
    size = len(tokenizer)
    decoded = tokenizer.batch_decode([[i] for i in range(size)], clean_up_tokenization_spaces=False)
    spelled = tokenizer.convert_ids_to_tokens(list(range(size)))
    owners: dict[str, set[int]] = {}
    for i, (text, raw) in enumerate(zip(decoded, spelled)):
        for piece in {text, raw}:
            if piece:
                owners.setdefault(piece, set()).add(i)
    return {piece: next(iter(ids)) for piece, ids in owners.items() if len(ids) == 1}


def align_answer(example: LMExample, row: dict[str, Any], tokenizer: Any, table: dict[str, int], k: int,
                 max_length: int) -> tuple[EncodedLM, AnswerTopK] | str:
    """The answer as the student's tokens with the teacher's top-k at each, or why the tokens do not align.

    The training sequence is the endpoint's own tokens (what the teacher generated, which need not
    be how the tokenizer would split the text again), checked to decode to the answer it sent.
    """
    ids: list[int] = []
    for token, _, _ in row["tokens"]:
        if token not in table:
            return f"endpoint token {token!r} is not one token of the student's vocabulary"
        ids.append(table[token])
    if tokenizer.decode(ids, clean_up_tokenization_spaces=False) != row["completion"]:
        return "the endpoint's tokens, read with the student's tokenizer, do not spell its answer"
    head = prompt_ids(example, tokenizer)
    # An answer the teacher ended gets the end-of-turn token; one cut at max_tokens does not end there.
    ended = row.get("finish_reason") == "stop" and tokenizer.eos_token_id is not None
    tail = ids + ([int(tokenizer.eos_token_id)] if ended else [])
    full = (head + tail)[:max_length]
    seq = len(full)
    values = np.zeros((seq, k), dtype=np.float32)
    indices = np.zeros((seq, k), dtype=np.int64)
    mask = np.zeros(seq, dtype=np.int8)
    for i, (_, _, top) in enumerate(row["tokens"]):
        position = len(head) - 1 + i  # position t predicts token t + 1
        if position >= seq - 1:
            break
        if len(top) < k:
            return f"the endpoint gave {len(top)} alternatives for a token, fewer than the {k} asked"
        picked = [table.get(str(alt)) for alt, _ in top[:k]]
        if any(p is None for p in picked):
            missing = next(alt for (alt, _), p in zip(top[:k], picked) if p is None)
            return f"endpoint alternative {missing!r} is not one token of the student's vocabulary"
        if len(set(picked)) != k:
            return "two endpoint alternatives name the same student token"
        if position >= 0:
            values[position] = [float(lp) for _, lp in top[:k]]
            indices[position] = picked
            mask[position] = 1
    encoded = EncodedLM(full, ([0] * len(head) + [1] * len(tail))[:max_length])
    return encoded, AnswerTopK(values, indices, mask)


def match_tokens(answers: Sequence[tuple[LMExample, dict[str, Any]]], tokenizer: Any, k: int,
                 max_length: int) -> TokenMatch:
    """Align every answer's endpoint tokens with the student's vocabulary (``answers``: example, cache row)."""
    with_tokens = [(example, row) for example, row in answers if row.get("tokens")]
    if k < 1:
        return TokenMatch(False, "no alternatives asked for (--topk 0): sequence-level only", 0, 0)
    if not with_tokens:
        return TokenMatch(False, "the endpoint sent no log-probabilities: sequence-level only", 0, 0)
    table = piece_table(tokenizer)
    match = TokenMatch(False, "", 0, len(with_tokens))
    reasons: dict[str, int] = {}
    for example, row in with_tokens:
        aligned = align_answer(example, row, tokenizer, table, k, max_length)
        if isinstance(aligned, str):
            reasons[aligned] = reasons.get(aligned, 0) + 1
            continue
        encoded, top = aligned
        if not any(encoded.completion_mask):
            match.checked -= 1  # the prompt fills --max-length: nothing to align or learn
            continue
        match.examples[row["key"]] = encoded
        match.targets[tuple(encoded.input_ids)] = top
    match.aligned = len(match.examples)
    if not match.checked:
        return TokenMatch(False, "no answer fits --max-length after its prompt", 0, 0)
    if match.aligned >= MIN_ALIGNED * match.checked:
        match.used = True
        match.reason = (f"the endpoint's tokens are the student's ({match.aligned} of {match.checked} answers "
                        f"align): token-level loss on its top-{k}")
        return match
    worst = max(reasons, key=reasons.__getitem__)
    return TokenMatch(False, f"tokenizers differ: {match.aligned} of {match.checked} answers align ({worst}): "
                             "sequence-level only", match.aligned, match.checked)
