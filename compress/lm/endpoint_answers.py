"""The endpoint teacher's answers to a list of prompts: asked concurrently, cached, resumable.

Every answer is one line of the :class:`~compress.lm.answer_cache.AnswerCache`, keyed by the
endpoint's model name, the :class:`~compress.lm.endpoint.AnswerSettings` and the prompt's chat
turns; the endpoint's URL is left out, so the same model served from another host reuses them.
A rerun, or a run resumed after a kill, asks only for the prompts whose answers are missing, and a
response that cannot be used is counted by reason and never cached.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.lm.answer_cache import AnswerCache, answer_key
from compress.lm.data import LMExample
from compress.lm.endpoint import AnswerSettings, BadAnswer, ChatEndpoint, EndpointAnswer


@dataclass
class AnsweredPrompt:
    """A prompt, the endpoint's answer as a training example, and the answer's cache row."""

    example: LMExample
    row: dict[str, Any]


@dataclass
class EndpointAnswers:
    """What asking the endpoint gave: the answers in the prompts' order and how they were obtained."""

    answered: list[AnsweredPrompt]
    asked: int  # requests answered in this run
    reused: int  # answers read from the cache
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> prompts
    retried: int = 0
    sha256: str = ""  # of the answer file

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return (f"{len(self.answered)} answers ({self.reused} cached, {self.asked} asked now"
                f"{f', {self.retried} retried' if self.retried else ''})"
                f"{f'; {skipped} skipped: {reasons}' if skipped else ''}")


def chat_turns(example: LMExample) -> list[dict[str, str]]:
    """The prompt as OpenAI chat messages."""
    turns = example.messages or (("user", example.prompt),)
    return [{"role": role, "content": content} for role, content in turns]


def endpoint_answer_key(model: str, settings: AnswerSettings, example: LMExample) -> str:
    """The cache key of one endpoint answer."""
    return answer_key("endpoint", model, dataclasses.asdict(settings), chat_turns(example))


def ask_endpoint(endpoint: ChatEndpoint, prompts: list[LMExample], settings: AnswerSettings, cache_file: Path, *,
                 concurrency: int = 4, progress: Callable[[int, int], None] | None = None) -> EndpointAnswers:
    """The endpoint's answers to ``prompts`` (cached in ``cache_file``), in the prompts' order.

    Up to ``concurrency`` requests are in flight at once; the cache is saved after every
    ``concurrency`` new answers and whenever the run stops, an EndpointError or Ctrl-C included.
    ``progress(done, total)`` follows the answers.
    """
    cache = AnswerCache(cache_file)
    keys = [endpoint_answer_key(endpoint.model, settings, example) for example in prompts]
    todo = {key: example for key, example in zip(keys, prompts) if key not in cache}
    reused = len(prompts) - sum(1 for key in keys if key in todo)
    skipped: Counter[str] = Counter()
    asked = unsaved = 0
    total = len(prompts)
    if progress is not None:
        progress(reused, total)

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="teacher-endpoint")
    pending: dict[Future[EndpointAnswer], str] = {}
    queue = list(todo.items())
    try:
        while queue or pending:
            while queue and len(pending) < max(1, concurrency):
                key, example = queue.pop(0)
                pending[pool.submit(endpoint.answer, chat_turns(example), settings)] = key
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                key = pending.pop(future)
                try:
                    answer = future.result()
                except BadAnswer as exc:
                    skipped[str(exc)] += 1
                    continue
                cache.add(_row(key, todo[key], answer))
                asked += 1
                unsaved += 1
            if unsaved >= max(1, concurrency):
                cache.save()
                unsaved = 0
            if progress is not None:
                progress(reused + asked + sum(skipped.values()), total)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if unsaved:
            cache.save()

    # Identical prompts share a key and an answer; each keeps its place in the list.
    answered = [AnsweredPrompt(LMExample(example.prompt, cache[key]["completion"], example.messages), cache[key])
                for key, example in zip(keys, prompts) if key in cache]
    return EndpointAnswers(answered=answered, asked=asked, reused=reused, skipped=dict(skipped),
                           retried=endpoint.retried, sha256=cache.sha256())


def _row(key: str, example: LMExample, answer: EndpointAnswer) -> dict[str, Any]:
    tokens = None
    if answer.tokens is not None:
        tokens = [[t.token, t.logprob, [[top, lp, list(raw) if raw is not None else None] for top, lp, raw in t.top],
                   list(t.raw) if t.raw is not None else None] for t in answer.tokens]
    return {"key": key, "prompt": example.prompt,
            "messages": [list(turn) for turn in example.messages] if example.messages else None,
            "completion": answer.text, "finish_reason": answer.finish_reason, "tokens": tokens}
