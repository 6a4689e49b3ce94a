"""Sequence-level distillation data: the teacher's own answers to prompts, cached on disk.

Token-level distillation matches the teacher's next-token distribution on given text; training on
text the teacher itself wrote (Kim & Rush, 2016) additionally teaches the student the teacher's
style and where its answers end. Generation is the slow part (tens of tokens per prompt, one
forward pass each), so every answer is cached as one JSONL line keyed by a fingerprint of
(teacher weights, generation settings, the exact prompt text): a re-run, or a run resumed after
Ctrl-C, reuses every answer already written and generates only the missing ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from export.base.errors import CompressError
from compress.lm.answer_cache import AnswerCache, answer_key
from compress.lm.data import LMExample, prompt_ids, render_prompt
from compress.lm.topk_cache import model_fingerprint


@dataclass
class GenerationSettings:
    """How the teacher writes its answers (greedy by default: reproducible and usually best for distillation)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8

    def check(self) -> None:
        """Raise CompressError on settings generation cannot use."""
        if self.max_new_tokens < 1:
            raise CompressError(f"answers need at least 1 new token; got max_new_tokens={self.max_new_tokens}")
        if self.batch_size < 1:
            raise CompressError(f"generation batch size must be at least 1; got {self.batch_size}")
        if self.do_sample and not self.temperature > 0:
            raise CompressError(f"sampling temperature must be positive; got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise CompressError(f"top_p must be in (0, 1]; got {self.top_p}")

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that change an answer. The batch size is left out so a cache survives changing it
        (left padding can move greedy logits by rounding noise only); temperature and top_p count only
        when sampling."""
        fields = dataclasses.asdict(self)
        del fields["batch_size"]
        if not self.do_sample:
            for name in ("temperature", "top_p", "seed"):
                del fields[name]
        return fields


def local_answer_key(teacher_fingerprint: str, settings: GenerationSettings, prompt_text: str) -> str:
    """The cache key of one answer: sha256 of (teacher, settings, rendered prompt)."""
    return answer_key(teacher_fingerprint, settings.fingerprint_fields(), prompt_text)


def _eos_ids(teacher: Any, tokenizer: Any) -> list[int]:
    # Chat models end answers with their turn-end token, which may be the tokenizer's EOS while the
    # generation config names another (or none); stop on any of them.
    ids: list[int] = []
    configured = getattr(getattr(teacher, "generation_config", None), "eos_token_id", None)
    for value in (configured if isinstance(configured, list) else [configured]) + [tokenizer.eos_token_id]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


def _generate(teacher: Any, tokenizer: Any, batch: list[list[int]], settings: GenerationSettings,
              device: torch.device, seed: int) -> list[str]:
    """Decoded answers to a batch of prompts (token ids), generated with left padding."""
    from transformers import GenerationConfig

    eos = _eos_ids(teacher, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    width = max(len(ids) for ids in batch)
    # Left padding: every prompt ends at the same column, so new tokens are appended in step.
    input_ids = torch.full((len(batch), width), int(pad), dtype=torch.int64)
    attention = torch.zeros((len(batch), width), dtype=torch.int64)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.int64)
        attention[row, width - len(ids):] = 1
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                              pad_token_id=int(pad), eos_token_id=eos or None)
    if settings.do_sample:
        # top_k=0: plain temperature / nucleus sampling, not transformers' default top-50 cut.
        config.temperature, config.top_p, config.top_k = settings.temperature, settings.top_p, 0
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)  # sampled answers depend on the prompts in the batch, not on global state
        output = teacher.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                  generation_config=config)
    new_tokens = output[:, width:].cpu()
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


def teacher_answers(teacher: Any, tokenizer: Any, prompts: list[LMExample], settings: GenerationSettings,
                    cache_file: Path, *, device: str = "cpu",
                    progress: Callable[[int, int], None] | None = None) -> list[LMExample]:
    """The prompts with the teacher's answers as completions, in the prompts' order.

    Prompts are rendered exactly as training will tokenize them (chat template with the generation
    prompt for ``messages``), answered in batches of ``settings.batch_size`` (greedy unless
    ``do_sample``), and every new answer is added to ``cache_file`` (JSONL) after its batch.
    ``progress(done, total)`` is called after the cache is read and after each batch. Identical
    prompts are answered once. An answer may be empty (the teacher ended its turn at once).
    """
    settings.check()
    cache_file = Path(cache_file)
    target = torch.device(device)
    current = next(teacher.parameters()).device
    if current.type != target.type or (target.index is not None and current.index != target.index):
        teacher.to(target)  # "cuda" and "cuda:0" are the same place: no move (quantized models cannot move)
    teacher.eval()
    fingerprint = model_fingerprint(teacher)
    cache = AnswerCache(cache_file)

    keys: list[str] = []
    todo: dict[str, tuple[LMExample, list[int]]] = {}
    for example in prompts:
        text = render_prompt(example, tokenizer)
        key = local_answer_key(fingerprint, settings, text)
        keys.append(key)
        if key not in cache and key not in todo:
            ids = prompt_ids(example, tokenizer)
            if not ids:
                raise CompressError(f"prompt {example.prompt[:60]!r} has no tokens to answer")
            todo[key] = (example, ids)

    total = len(prompts)
    done = total - sum(1 for key in keys if key in todo)
    if progress is not None:
        progress(done, total)
    pending = list(todo.items())
    # Similar lengths in a batch waste less compute on padding; the order does not change any answer.
    pending.sort(key=lambda item: len(item[1][1]))
    for start in range(0, len(pending), settings.batch_size):
        chunk = pending[start:start + settings.batch_size]
        seed_text = f"{settings.seed}\0" + "\0".join(key for key, _ in chunk)
        seed = int(hashlib.sha256(seed_text.encode()).hexdigest()[:8], 16)
        answers = _generate(teacher, tokenizer, [ids for _, (_, ids) in chunk], settings, target, seed)
        for (key, (example, _)), answer in zip(chunk, answers):
            cache.add({"key": key, "prompt": example.prompt,
                       "messages": [list(turn) for turn in example.messages] if example.messages else None,
                       "completion": answer})
        cache.save()
        done += sum(1 for key in keys if key in {k for k, _ in chunk})
        if progress is not None:
            progress(done, total)

    return [LMExample(example.prompt, cache[key]["completion"], example.messages)
            for example, key in zip(prompts, keys)]
