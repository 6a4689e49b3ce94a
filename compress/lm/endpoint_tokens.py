"""The endpoint's token log-probabilities as the student's top-k targets, when the tokenizers match.

An endpoint reports each answer token as a string with its log-probability and its top
alternatives. Those are a token-level teacher signal for the student only if the teacher's
tokens are the student's: this is checked, not assumed. For each answer, every token string
(answer tokens and alternatives) must name exactly one token of the student's vocabulary (by the
token's bytes when the endpoint sends them, as OpenAI's API and vLLM do; else by its text), and
those tokens must decode to the answer the
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


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """The UTF-8 bytes each token id stands for, whatever the tokenizer's spelling.

    Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) spells bytes as printable characters; SentencePiece
    spells a space as "▁" and raw bytes as "<0xE2>"; special tokens (an end of turn among the
    alternatives) are their text, as servers report them; anything else is its own text.
    """
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out: list[bytes | None] = []
    for i, raw in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if raw is None:
            out.append(None)
        elif i in special:
            out.append(raw.encode("utf-8"))
        elif len(raw) == 6 and raw.startswith("<0x") and raw.endswith(">"):
            out.append(bytes([int(raw[3:5], 16)]))
        elif all(char in byte_of for char in raw):
            out.append(bytes(byte_of[char] for char in raw))
        else:
            out.append(raw.replace("\u2581", " ").encode("utf-8"))
    return out


@dataclass
class PieceTable:
    """Endpoint token -> student token id, by the token's bytes when the endpoint sends them, else its text."""

    by_bytes: dict[bytes, int]
    by_text: dict[str, int]

    def lookup(self, text: str, raw: Sequence[int] | None) -> int | None:
        # Some servers send no bytes (or none for special tokens such as an end of turn): then the text.
        if raw:
            return self.by_bytes.get(bytes(raw))
        return self.by_text.get(text)


def piece_table(tokenizer: Any) -> PieceTable:
    """The student's tokens by their bytes and by their text; a key that names two tokens is left out."""
    size = len(tokenizer)
    decoded = tokenizer.batch_decode([[i] for i in range(size)], clean_up_tokenization_spaces=False)
    spelled = tokenizer.convert_ids_to_tokens(list(range(size)))
    texts: dict[str, set[int]] = {}
    for i, (text, raw) in enumerate(zip(decoded, spelled)):
        for piece in {text, raw}:
            if piece:
                texts.setdefault(piece, set()).add(i)
    raw_bytes: dict[bytes, set[int]] = {}
    for i, data in enumerate(token_bytes(tokenizer)):
        if data:
            raw_bytes.setdefault(data, set()).add(i)
    return PieceTable({b: next(iter(ids)) for b, ids in raw_bytes.items() if len(ids) == 1},
                      {t: next(iter(ids)) for t, ids in texts.items() if len(ids) == 1})


def align_answer(example: LMExample, row: dict[str, Any], tokenizer: Any, table: PieceTable, k: int,
                 max_length: int) -> tuple[EncodedLM, AnswerTopK] | str:
    """The answer as the student's tokens with the teacher's top-k at each, or why the tokens do not align.

    The training sequence is the endpoint's own tokens (what the teacher generated, which need not
    be how the tokenizer would split the text again), checked to decode to the answer it sent.
    """
    ids: list[int] = []
    for item in row["tokens"]:
        found = table.lookup(item[0], item[3] if len(item) > 3 else None)
        if found is None:
            return f"endpoint token {item[0]!r} is not one token of the student's vocabulary"
        ids.append(found)
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
    for i, item in enumerate(row["tokens"]):
        top = item[2][:k]
        position = len(head) - 1 + i  # position t predicts token t + 1
        if position >= seq - 1:
            break
        if len(top) < k:
            return f"the endpoint gave {len(top)} alternatives for a token, fewer than the {k} asked"
        picked = [table.lookup(alt[0], alt[2] if len(alt) > 2 else None) for alt in top]
        if any(p is None for p in picked):
            missing = next(alt[0] for alt, p in zip(top, picked) if p is None)
            return f"endpoint alternative {missing!r} is not one token of the student's vocabulary"
        if len(set(picked)) != k:
            return "two endpoint alternatives name the same student token"
        if position >= 0:
            values[position] = [float(alt[1]) for alt in top]
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
