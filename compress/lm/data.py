"""Causal-LM training data: prompt/completion examples, their tokens, batches and the held-out split.

An :class:`LMExample` is a prompt and the completion that follows it. The prompt is either plain
text (``prompt``) or chat turns (``messages``), which are rendered with the tokenizer's chat
template so the student learns in the very format it will be prompted with. Only completion
tokens are trained and scored: ``completion_mask[t] == 1`` marks token ``t`` as one.

Data files (``--data``):

* ``.txt``: one text a line; each is a completion with an empty prompt (plain language modelling).
* ``.jsonl``: one object a line, either ``{"prompt", "completion"}``, or ``{"messages": [{"role",
  "content"}, ...]}`` (the last assistant turn is the completion, the turns before it the prompt),
  or ``{"text"}`` (like a ``.txt`` line).

Malformed rows are skipped and named in the description; a file with no usable row is an error.
Without a file the default corpus (:mod:`export.base.corpus`, English prose that installs
with Python) is used as plain text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.base.errors import CompressError

if TYPE_CHECKING:
    import torch

LM_DATA_FORMATS = (".txt", ".jsonl")
_BAD_ROWS_SHOWN = 5
# Instructions wrapped around default-corpus sentences to make chat prompts the teacher answers.
PROMPT_TEMPLATES = (
    "Explain in one or two sentences: {text}",
    "Rewrite this in simpler words: {text}",
    "What is the main point of this sentence? {text}",
    "Summarize briefly: {text}",
    "Give a short example that illustrates this: {text}",
)
_PROMPT_MAX_CHARS = 240


@dataclass(frozen=True)
class LMExample:
    """One prompt and its completion.

    ``messages`` holds the chat turns ``((role, content), ...)`` before the completion; when set it
    is rendered with the tokenizer's chat template (with the generation prompt) and ``prompt`` is
    only a readable summary (the last user turn). When ``messages`` is None ``prompt`` is the text.
    """

    prompt: str
    completion: str
    messages: tuple[tuple[str, str], ...] | None = None


@dataclass
class EncodedLM:
    """Token ids of one example and which of them are completion tokens (1) rather than prompt (0)."""

    input_ids: list[int]
    completion_mask: list[int]


# ---------------------------------------------------------------------------------------------
# Tokenization


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(example: LMExample, tokenizer: Any) -> str:
    """The prompt text exactly as the model sees it before the completion.

    Chat turns go through the tokenizer's chat template with the generation prompt, so the
    completion starts where the assistant's answer starts. A tokenizer without a template gets a
    plain ``role: content`` transcript ending in ``assistant:``.
    """
    if example.messages is None:
        return example.prompt
    turns = [{"role": role, "content": content} for role, content in example.messages]
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return "".join(f"{turn['role']}: {turn['content']}\n" for turn in turns) + "assistant:"


def prompt_ids(example: LMExample, tokenizer: Any) -> list[int]:
    """Token ids of the rendered prompt (what generation starts from).

    A chat template writes its own special tokens, so none are added to it; a plain prompt gets the
    tokenizer's usual ones (a BOS token for Llama-style tokenizers, nothing for GPT-2).
    """
    text = render_prompt(example, tokenizer)
    add_special = example.messages is None or not has_chat_template(tokenizer)
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def encode_examples(examples: Sequence[LMExample], tokenizer: Any, max_length: int) -> list[EncodedLM]:
    """Tokenize examples: prompt tokens (mask 0), then completion tokens and EOS (mask 1).

    Prompt and completion are tokenized separately so the boundary between them is exact (the
    usual way for prompt/completion training). Sequences longer than ``max_length`` are cut at the
    end, keeping the prompt's start; an example with no completion token left (an empty completion,
    or a prompt that fills ``max_length``) is dropped.
    """
    if max_length < 2:
        raise CompressError(f"max_length must be at least 2 tokens; got {max_length}")
    eos = getattr(tokenizer, "eos_token_id", None)
    encoded: list[EncodedLM] = []
    for example in examples:
        if not example.completion:
            continue
        head = prompt_ids(example, tokenizer)
        tail = list(tokenizer(example.completion, add_special_tokens=False)["input_ids"])
        if not tail:
            continue
        if eos is not None:
            tail.append(int(eos))  # the student must learn where an answer ends
        ids = (head + tail)[:max_length]
        mask = ([0] * len(head) + [1] * len(tail))[:max_length]
        if any(mask):
            encoded.append(EncodedLM([int(i) for i in ids], mask))
    return encoded


def collate_lm(encoded: Sequence[EncodedLM], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids``, ``attention_mask``, ``completion_mask``, all (batch, seq) int64."""
    import torch

    if not encoded:
        raise CompressError("cannot make a batch of no examples")
    width = max(len(item.input_ids) for item in encoded)
    ids = torch.full((len(encoded), width), int(pad_id), dtype=torch.int64)
    attention = torch.zeros((len(encoded), width), dtype=torch.int64)
    completion = torch.zeros((len(encoded), width), dtype=torch.int64)
    for row, item in enumerate(encoded):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids, dtype=torch.int64)
        attention[row, :n] = 1
        completion[row, :n] = torch.tensor(item.completion_mask, dtype=torch.int64)
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}


# ---------------------------------------------------------------------------------------------
# Reading data


def load_lm_examples(path: Path | None) -> tuple[list[LMExample], str]:
    """Examples from a ``.txt`` / ``.jsonl`` file, or the default corpus when ``path`` is None.

    Returns ``(examples, description)``; the description says where they came from, how many there
    are, and which rows were skipped.
    """
    if path is None:
        corpus = _default_corpus()
        # The cross-domain genre is never trained on, for language models as for encoders.
        return ([LMExample("", example.text) for example in corpus.examples if example.genre != corpus.cross_domain],
                f"{corpus.description} as plain text")
    path = Path(path)
    text = _read_text_file(path, "data")
    bad: list[tuple[int, str]] = []
    if path.suffix.lower() == ".txt":
        examples = [LMExample("", line.strip()) for line in text.splitlines() if line.strip()]
        kinds = "plain text lines"
    else:
        examples, bad, kinds = _read_jsonl(text)
    if not examples:
        reasons = "; ".join(f"line {n}: {why}" for n, why in bad[:_BAD_ROWS_SHOWN])
        raise CompressError(f"data file {path} has no usable example" + (f" ({reasons})" if reasons else ""))
    description = f"{path} ({len(examples)} examples: {kinds})"
    if bad:
        lines = ", ".join(str(n) for n, _ in bad[:_BAD_ROWS_SHOWN]) + (", ..." if len(bad) > _BAD_ROWS_SHOWN else "")
        description += f"; skipped {len(bad)} malformed row{'s' if len(bad) > 1 else ''} (line {lines}: {bad[0][1]})"
    return examples, description


def _read_text_file(path: Path, what: str) -> str:
    """The text of a ``.txt`` / ``.jsonl`` file, or a CompressError naming the ``what`` file and the problem."""
    if path.suffix.lower() not in LM_DATA_FORMATS:
        raise CompressError(f"{path}: unsupported {what} format {path.suffix or '(none)'!r}; "
                            f"use {' or '.join(LM_DATA_FORMATS)}")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CompressError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CompressError(f"cannot read {what} file {path}: {exc}") from None


def _read_jsonl(text: str) -> tuple[list[LMExample], list[tuple[int, str]], str]:
    examples: list[LMExample] = []
    bad: list[tuple[int, str]] = []
    kinds: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((number, f"not JSON ({exc.msg})"))
            continue
        example, kind = _row_example(row)
        if example is None:
            bad.append((number, kind))
            continue
        examples.append(example)
        kinds[kind] = kinds.get(kind, 0) + 1
    return examples, bad, ", ".join(f"{count} {kind}" for kind, count in kinds.items())


def _row_example(row: object) -> tuple[LMExample | None, str]:
    """(example, kind) of one JSONL row, or (None, why it is unusable)."""
    if not isinstance(row, dict):
        return None, "not a JSON object"
    if "messages" in row:
        return _chat_example(row["messages"])
    if "prompt" in row or "completion" in row:
        prompt, completion = row.get("prompt", ""), row.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            return None, '"prompt" and "completion" must both be strings'
        if not completion.strip():
            return None, 'empty "completion"'
        return LMExample(prompt, completion), "prompt/completion"
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            return None, '"text" must be a non-empty string'
        return LMExample("", row["text"].strip()), "text"
    return None, 'expected "prompt"/"completion", "messages" or "text"'


def _chat_example(messages: object) -> tuple[LMExample | None, str]:
    if not isinstance(messages, list) or not messages:
        return None, '"messages" must be a non-empty list'
    turns: list[tuple[str, str]] = []
    for message in messages:
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            return None, 'each message needs string "role" and "content"'
        turns.append((message["role"], message["content"]))
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=None)
    if last is None:
        return None, "no assistant turn to learn"
    if not turns[last][1].strip():
        return None, "empty assistant turn"
    before = tuple(turns[:last])
    users = [content for role, content in before if role == "user"]
    return LMExample(users[-1] if users else "", turns[last][1], before), "chat"


@functools.lru_cache(maxsize=1)
def _default_corpus() -> Any:
    # Parsing Python's documentation takes a moment; prompts and data both draw on it.
    from export.base.corpus import default_corpus

    return default_corpus()


def default_prompts(n: int, seed: int = 0) -> list[LMExample]:
    """``n`` chat prompts (one user turn, empty completion) made from default-corpus sentences.

    Each wraps a short sentence in one of :data:`PROMPT_TEMPLATES`. The choice of sentences and
    templates is a seeded permutation, so the same ``(n, seed)`` gives the same prompts.
    Used for sequence-level distillation: the teacher writes the completions.
    """
    import numpy as np

    if n < 0:
        raise CompressError(f"the number of prompts must be 0 or more; got {n}")
    sentences = [e.text for e in _default_corpus().examples if len(e.text) <= _PROMPT_MAX_CHARS]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))
    prompts: list[LMExample] = []
    for i in range(n):
        # Beyond the number of sentences, the same sentences come back with other instructions.
        sentence = sentences[int(order[i % len(sentences)])]
        template = PROMPT_TEMPLATES[(int(order[i % len(sentences)]) + i // len(sentences)) % len(PROMPT_TEMPLATES)]
        text = template.format(text=sentence)
        prompts.append(LMExample(text, "", (("user", text),)))
    return prompts


def split_lm_examples(examples: Sequence[LMExample], held_out_fraction: float = 0.05,
                      seed: int = 0, max_held_out: int | None = None) -> tuple[list[LMExample], list[LMExample]]:
    """A seeded ``(train, held_out)`` split; exact duplicates are dropped first.

    Dropping duplicates before splitting guarantees no held-out example is trained on. At least one
    example is held out (at most ``max_held_out``) and at least one is kept for training; both keep the
    input order.
    """
    import numpy as np

    if not 0.0 < held_out_fraction < 1.0:
        raise CompressError(f"held-out fraction must be between 0 and 1; got {held_out_fraction}")
    unique = list(dict.fromkeys(examples))
    if len(unique) < 2:
        raise CompressError(f"need at least 2 distinct examples to train and hold one out; got {len(unique)}")
    n_held = min(len(unique) - 1, max(1, round(held_out_fraction * len(unique))))
    if max_held_out is not None:
        n_held = min(n_held, max_held_out)
    order = np.random.default_rng(seed).permutation(len(unique))
    held = set(order[:n_held].tolist())
    train = [e for i, e in enumerate(unique) if i not in held]
    held_out = [e for i, e in enumerate(unique) if i in held]
    return train, held_out


def load_prompts(path: Path) -> tuple[list[LMExample], str]:
    """Prompts for a teacher to answer, from ``path``: ``.txt`` (a prompt a line) or ``.jsonl``.

    JSONL rows are ``{"prompt"}``, ``{"messages"}`` (a trailing assistant turn, if any, is dropped:
    the teacher writes its own) or ``{"text"}``; any completion a row carries is ignored. Returns
    ``(prompts, description)``; malformed rows are skipped and named, a file with none is an error.
    """
    path = Path(path)
    text = _read_text_file(path, "prompt")
    prompts: list[LMExample] = []
    bad: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        prompt = _prompt_of(line) if path.suffix.lower() == ".jsonl" else LMExample(line.strip(), "",
                                                                                    (("user", line.strip()),))
        if prompt is None:
            bad.append(number)
        else:
            prompts.append(prompt)
    if not prompts:
        raise CompressError(f"prompt file {path} has no usable prompt (expected \"prompt\", \"messages\" or \"text\")")
    description = f"{path} ({len(prompts)} prompts)"
    if bad:
        description += f"; skipped {len(bad)} malformed row{'s' if len(bad) > 1 else ''} (line " + \
            ", ".join(map(str, bad[:_BAD_ROWS_SHOWN])) + (", ..." if len(bad) > _BAD_ROWS_SHOWN else "") + ")"
    return prompts, description


def _prompt_of(line: str) -> LMExample | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(row, dict):
        return None
    messages = row.get("messages")
    if isinstance(messages, list) and messages:
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                   for m in messages):
            return None
        turns = tuple((m["role"], m["content"]) for m in messages)
        while turns and turns[-1][0] == "assistant":
            turns = turns[:-1]
        users = [content for role, content in turns if role == "user"]
        return LMExample(users[-1], "", turns) if users and users[-1].strip() else None
    for name in ("prompt", "text"):
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return LMExample(value.strip(), "", (("user", value.strip()),))
    return None
