"""What a causal-LM distillation run is asked to do: one dataclass, validated, fingerprinted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compress.settings import DistillSettings

DEFAULT_LM_TEACHER = "smollm2"
LOSSES = ("forward_kl", "reverse_kl", "jsd")
EMBEDDINGS = ("auto", "frozen", "trained")
# On a CPU one step of a 50M-parameter student over a 49k vocabulary is already seconds; on a GPU
# a bigger batch is nearly free.
DEFAULT_LM_BATCH_SIZE = {"cuda": 32, "cpu": 8}


@dataclass
class LMDistillConfig(DistillSettings):
    """A causal LM's distillation: the shared settings, the token-level loss and the teacher's answers."""

    teacher: str = DEFAULT_LM_TEACHER
    # student: "layers=N", "layers=0,5,10", "keep=N", or auto: keep=N for four fifths of the teacher's blocks
    loss: str = "forward_kl"
    beta: float = 0.5  # generalized JSD's mixing weight
    topk: int = 64  # teacher logits kept per position (0: the full vocabulary, no cache)
    teacher_answers: int = 0  # prompts the teacher answers for sequence-level distillation
    answer_tokens: int = 64
    sample: bool = False
    top_p: float = 1.0
    answer_temperature: float = 1.0
    ce_weight: float = 0.5  # weight of next-token cross-entropy on the teacher's answers, when there are any
    embeddings: str = "auto"  # auto | frozen | trained: the token embedding and LM head during distillation

    min_max_length: ClassVar[int] = 16

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (self.loss in LOSSES, f"--lm-loss must be one of {', '.join(LOSSES)}"),
            (0 < self.beta < 1, "--jsd-beta must be between 0 and 1"),
            (self.topk >= 0, "--topk must not be negative"),
            (self.teacher_answers >= 0, "--teacher-answers must not be negative"),
            (self.answer_tokens > 0, "--answer-tokens must be positive"),
            (0 < self.top_p <= 1, "--top-p must be in (0, 1]"),
            (self.embeddings in EMBEDDINGS, f"--embeddings must be one of {', '.join(EMBEDDINGS)}"),
        ]

    def embeddings_frozen(self, device: str) -> bool:
        """Whether the token embedding and LM head stay as the teacher left them: ``auto`` freezes them
        on a CPU, where a ten-minute budget buys tens to hundreds of steps; on a GPU they train."""
        return self.embeddings == "frozen" or (self.embeddings == "auto" and not device.startswith("cuda"))


# What ``--student auto`` keeps of a language model's blocks. Ten CPU minutes cannot teach six of
# SmolLM2's 30 blocks back to the teacher (perplexity 2.72x after 234 steps), while dropping the six
# that change their input least and healing 55 steps leaves 1.13x (benchmarks/lm_default_job.py,
# its results file now and as of commit b8988e7).
AUTO_KEEP_FRACTION = 0.8


def resolve_lm_student(spec: str, teacher_layers: int) -> str:
    """The student spec to build: ``auto`` keeps the four fifths of the teacher's blocks that change their
    input most on the training text (``keep=N``; at least 2, and one fewer than the teacher)."""
    if spec == "auto":
        return f"keep={min(max(2, round(teacher_layers * AUTO_KEEP_FRACTION)), max(teacher_layers - 1, 2))}"
    return spec


# OpenAI's API returns at most 20 alternatives per token (vLLM's default limit is the same).
MAX_ENDPOINT_TOPK = 20
DEFAULT_ENDPOINT_PROMPTS = 512
DEFAULT_STUDENT_FROM = "smollm2"


@dataclass
class EndpointDistillConfig(LMDistillConfig):
    """A causal LM that learns from a teacher it can only query over the OpenAI chat/completions protocol.

    The student starts from a local model (``student_from``, all its layers unless ``student``
    keeps fewer); the teacher is ``teacher_model`` at ``teacher_url``. ``teacher_answers`` is the
    number of prompts asked (0: every prompt of ``data``, or 512 built-in prompts).
    """

    teacher: str | None = None  # unused: the teacher is the endpoint
    teacher_url: str = ""
    teacher_model: str = ""
    student_from: str = DEFAULT_STUDENT_FROM
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = 4
    rate_limit: float = 0.0  # requests per second; 0: as fast as the concurrency allows

    # Where the answers come from and how fast they are fetched do not change them.
    run_only_fields: ClassVar[frozenset[str]] = LMDistillConfig.run_only_fields | {
        "teacher_url", "api_key_env", "concurrency", "rate_limit"}

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (bool(self.teacher_url), "--teacher-url is required for a teacher you can only query"),
            (bool(self.teacher_model), "--teacher-model is required with --teacher-url (the name the server serves)"),
            (1 <= self.concurrency <= 64, "--concurrency must be in 1..64"),
            (self.rate_limit >= 0, "--rate-limit must not be negative"),
            (self.teacher_quant is None, "--teacher-quant: the endpoint's teacher is not loaded here"),
        ]

    def validate(self) -> None:
        super().validate()
        from compress.lm.endpoint import ChatEndpoint

        ChatEndpoint(self.teacher_url, self.teacher_model, api_key_env=self.api_key_env)  # URL and key, no request

    @property
    def endpoint_topk(self) -> int:
        """Alternatives asked per answer token."""
        return min(self.topk, MAX_ENDPOINT_TOPK)

    @property
    def prompt_count(self) -> int | None:
        """Prompts to ask: as given, else all of ``data`` (None), else the built-in default."""
        if self.teacher_answers:
            return self.teacher_answers
        return None if self.data is not None else DEFAULT_ENDPOINT_PROMPTS
