"""Benchmark a causal LM's generation the way a target profile runs it.

``run_generation_bench`` opens the decoder (an ONNX export with its KV cache) with the profile's
providers and threads through :class:`export.runtime.generation.OnnxGenerator`, and generates greedily
from a prompt of the profile's ``workload.generation.prompt_length`` tokens, ``new_tokens`` new
tokens per run. ``compare_generation_bench`` does the same for two models in one process with
their runs interleaved (A, B, A, B, ...), so drift hits both alike.

What is measured, per timed run
- TTFT (time to first token): the prefill ``session.run`` over the whole prompt plus its argmax.
- TPOT (time per output token): the mean of that run's later decode steps (one token each).
  ``ttft_ms`` and ``tpot_ms`` are distributions over the runs (p50, p95, ...).
- ``tokens_per_s``: all new tokens over the summed wall time of whole generations (prefill
  included): the rate a user sees. ``decode_tokens_per_s`` counts decode steps only.
- End-of-sequence tokens are ignored so every run generates exactly ``new_tokens`` tokens: runs
  are comparable and the workload is the profile's.
Memory, host detection, session opening and progress display are export/bench.py's (same method:
``session_peak_mb`` is the RSS the session adds over the process's baseline, the kernel's
high-water mark included). The prompt is real text encoded with the ``tokenizer.json`` beside the
model when there is one, else token ids drawn with seed 0.

Torch-free: onnxruntime, numpy and tokenizers. This runs on the device.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from export.base.errors import CompressError
from export.base.files import sha256_file
from export.base.records import utc_now
from export.runtime.bench import (MIB, BudgetFigure, Comparison, MeasuredRelease, MemoryStats, ModelInfo, RemoteRun,
                                  SessionInfo)
from export.runtime.onnx_file import inspect_model_file
from export.runtime.session import GPU_PROVIDERS, bench_threads, release_freed_memory, rss_bytes
from export.runtime.timed_runs import RunMemory, interleaved_runs
from export.runtime.generation import GenerationOutput, OnnxGenerator, load_tokenizer
from export.runtime.host import HostInfo, detect_host
from export.runtime.limits import check_bench_counts
from export.runtime.profiles import Profile
from export.base.report_json import SCHEMA_VERSION, JsonReport

if TYPE_CHECKING:
    from export.runtime.quality_evidence import QualityEvidence

# Real English for the prompt, repeated to the prompt length: a tokenizer splits real text the way
# it splits users' prompts (random ids can hit odd special tokens).
PROMPT_TEXT = (
    "The library keeps a small cache of recently used objects, so that a program which asks for the same "
    "value twice does not pay for it twice. When the cache is full, the entry that was used least recently "
    "is dropped to make room for the new one. Explain in a few sentences why this policy works well for "
    "most programs, and describe one kind of workload where it does not. "
)


@dataclass
class TimingStats:
    """A distribution over the timed runs, in milliseconds."""

    runs: int
    mean: float
    std: float
    min: float
    p50: float
    p95: float
    max: float
    samples: list[float] = field(default_factory=list)  # per run, in run order

    @classmethod
    def from_seconds(cls, seconds: list[float]) -> TimingStats:
        if not seconds:
            raise ValueError("no timed runs")
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        p50, p95 = np.percentile(ms, [50, 95])
        return cls(runs=len(ms), mean=float(ms.mean()), std=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
                   min=float(ms.min()), p50=float(p50), p95=float(p95), max=float(ms.max()),
                   samples=[round(float(x), 6) for x in ms])


@dataclass
class GenerationBenchReport(JsonReport, MeasuredRelease):
    """One causal LM's generation measured on one machine with one profile's runtime settings."""

    profile: str
    model: ModelInfo
    session: SessionInfo
    prompt_length: int
    new_tokens: int  # generated per run (end-of-sequence ignored)
    prompt_source: str
    runs: int
    warmup: int
    ttft_ms: TimingStats  # time to first token, per run
    tpot_ms: TimingStats  # per run: the mean time of each token after the first
    tokens_per_s: float  # new tokens / wall time of whole generations (prefill included)
    decode_tokens_per_s: float  # decode steps only (tokens after the first / their time)
    memory: MemoryStats
    host: HostInfo
    created_at: str
    sample_tokens: list[int] = field(default_factory=list)  # the first timed run's new tokens
    notes: list[str] = field(default_factory=list)
    profile_source: str | None = None
    remote: RemoteRun | None = None  # set when measured on a board over SSH (compress bench --on)
    schema_version: int = SCHEMA_VERSION
    kind: str = "generation_bench"

    @property
    def providers_used(self) -> list[str]:
        return list(self.session.providers_used)

    def workload_mismatches(self, profile: Profile) -> list[str]:
        gen = profile.workload.generation_or_default
        reasons = []
        if self.prompt_length != gen.prompt_length:
            reasons.append(f"measured with a {self.prompt_length}-token prompt, the profile budgets {gen.prompt_length}")
        if self.new_tokens != gen.new_tokens:
            reasons.append(f"measured generating {self.new_tokens} tokens, the profile budgets {gen.new_tokens}")
        return reasons

    def speed_figures(self, profile: Profile) -> list[BudgetFigure]:
        gen = profile.budgets.generation
        return [BudgetFigure("generation.ttft_ms.p95", gen.ttft_ms, self.ttft_ms.p95, "ms", "<="),
                BudgetFigure("generation.tpot_ms.p95", gen.tpot_ms, self.tpot_ms.p95, "ms", "<="),
                BudgetFigure("generation.tokens_per_s", gen.tokens_per_s, self.tokens_per_s, "tokens/s", ">=")]

    def quality_figures(self, profile: Profile, quality: QualityEvidence | None) -> list[BudgetFigure]:
        budget = profile.budgets.quality
        return [BudgetFigure("quality.max_perplexity_ratio", budget.max_perplexity_ratio,
                             quality.perplexity_ratio if quality else None, "x the teacher's perplexity", "<="),
                BudgetFigure("quality.max_quantization_perplexity_ratio", budget.max_quantization_perplexity_ratio,
                             quality.quantization_perplexity_ratio if quality else None, "x fp32 perplexity", "<=")]

    def size_budget(self, profile: Profile) -> tuple[float | None, str]:
        return generation_size_budget(profile)

    def memory_budget(self, profile: Profile) -> tuple[float | None, str]:
        own = profile.budgets.generation.peak_memory_mb
        return (own, "budgets.generation's budget") if own is not None else (profile.budgets.peak_memory_mb, "")

    def workload_text(self) -> str:
        return f"prompt {self.prompt_length} tokens + {self.new_tokens} new tokens"

    def figures(self) -> dict[str, float]:
        return {"ttft_ms.p50": self.ttft_ms.p50, "ttft_ms.p95": self.ttft_ms.p95, "tpot_ms.p50": self.tpot_ms.p50,
                "tpot_ms.p95": self.tpot_ms.p95, "tokens_per_s": self.tokens_per_s,
                "model.size_mb": self.model.size_mb, "model.total_bytes": self.model.total_bytes,
                "memory.session_peak_mb": self.memory.session_peak_mb}


@dataclass
class GenerationComparison(Comparison, JsonReport):
    """Two causal LMs measured in one process with interleaved runs.

    Ratios are "how many times better ``model`` is": ``ttft_ratio = other.ttft.p50 / model.ttft.p50``,
    ``tpot_ratio`` likewise, ``tokens_per_s_ratio = model.tokens_per_s / other.tokens_per_s``.
    """

    model: GenerationBenchReport
    other: GenerationBenchReport
    ttft_ratio: float
    tpot_ratio: float
    tokens_per_s_ratio: float
    interleaved: bool = True
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION
    kind: str = "generation_comparison"

    headline: ClassVar[tuple[str, str]] = ("generates", "tokens/s")

    @property
    def ratio(self) -> float:
        return self.tokens_per_s_ratio


# ---------------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------------

def generation_size_budget(profile: Profile) -> tuple[float | None, str]:
    """A language model's size budget: ``budgets.generation``'s own, else the profile's, and a note on which."""
    own = profile.budgets.generation.model_size_mb
    return (own, "budgets.generation's budget") if own is not None else (profile.budgets.model_size_mb, "")


def _max_positions(model_dir: Path) -> int | None:
    """The model's position limit from config.json beside it, when there is one."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def build_prompt(model_path: Path, length: int, vocab_size: int | None) -> tuple[np.ndarray, str]:
    """``(1, length)`` prompt ids and how they were made (real text when a tokenizer is beside the model)."""
    tokenizer = load_tokenizer(model_path.parent)
    if tokenizer is not None:
        ids = tokenizer.encode(PROMPT_TEXT, add_special_tokens=False).ids
        if ids:
            repeated = (ids * (length // len(ids) + 1))[:length]
            return np.asarray([repeated], dtype=np.int64), "English text via tokenizer.json"
    if not vocab_size:
        raise CompressError(f"{model_path}: no tokenizer.json beside it and no static vocabulary size in the "
                            "logits output; cannot build a prompt")
    rng = np.random.default_rng(0)
    return rng.integers(0, vocab_size, size=(1, length), dtype=np.int64), f"token ids in [0, {vocab_size}) (seed 0)"


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------

@dataclass
class _Opened:
    path: Path
    generator: OnnxGenerator
    model: ModelInfo
    info: SessionInfo
    prompt: np.ndarray
    prompt_source: str
    notes: list[str]
    rss_before: int
    rss_after_first_run: int


def _open(path: Path, profile: Profile, *, prompt_length: int, new_tokens: int, threads: int | None,
          spinning: bool) -> _Opened:
    if not path.exists():
        raise CompressError(f"model not found: {path}")
    if not path.is_file():
        raise CompressError(f"{path} is not a file (bench takes an .onnx file)")
    facts = inspect_model_file(path)
    limit = _max_positions(path.parent)
    if limit is not None and prompt_length + new_tokens > limit:
        raise CompressError(f"prompt {prompt_length} + {new_tokens} new tokens exceeds {path.name}'s {limit} positions; "
                            "lower --prompt-length or --new-tokens")
    release_freed_memory()
    rss_before = rss_bytes()
    usable_cores = detect_host().usable_cores
    intra, threads_note = bench_threads(threads, profile, usable_cores)
    inter = profile.runtime.inter_op_threads
    generator = OnnxGenerator(path, providers=list(profile.runtime.providers), intra_op_threads=intra,
                              inter_op_threads=inter, spinning=spinning)
    logits = next(o for o in generator.session.get_outputs() if o.name == "logits")
    vocab = logits.shape[-1] if isinstance(logits.shape[-1], int) else max(facts.vocab_sizes.values(), default=None)
    prompt, source = build_prompt(path, prompt_length, vocab)
    first = generator.generate(prompt, new_tokens)  # lazy initialisation; not timed into the stats
    notes: list[str] = []
    used = generator.providers_used
    unavailable = generator.providers_unavailable
    if unavailable:
        notes.append(f"not in this onnxruntime build: {', '.join(unavailable)}")
    fell_back = [p for p in profile.runtime.providers if p not in unavailable and p not in used]
    if fell_back:
        notes.append(f"requested but not running (fell back): {', '.join(fell_back)}")
    if any(p in GPU_PROVIDERS for p in used):
        notes.append("a GPU provider ran: times include the KV cache's host<->device copies each step; "
                     "memory is host RSS only (GPU memory is not measured)")
    if threads_note:
        notes.append(threads_note)
    if intra is not None and intra > usable_cores:
        notes.append(f"{intra} intra-op threads on {usable_cores} usable cores: oversubscribed, times are pessimistic")
    notes.append(f"end-of-sequence ignored: every run generates {new_tokens} tokens greedily after a "
                 f"{prompt_length}-token prompt")
    level = generator.session.get_session_options().graph_optimization_level
    info = SessionInfo(
        providers_requested=list(profile.runtime.providers), providers_unavailable=unavailable, providers_used=used,
        intra_op_threads=intra, inter_op_threads=inter, graph_optimization=getattr(level, "name", str(level)),
        load_s=generator.load_s, first_run_ms=first.ttft_s * 1000.0,
    )
    total = sum(f.bytes for f in facts.files)
    model = ModelInfo(path=str(path), sha256=sha256_file(path), file_bytes=facts.files[0].bytes, total_bytes=total,
                      size_mb=total / MIB, files=facts.files, opset=facts.opset, producer=facts.producer,
                      outputs=[o.name for o in generator.session.get_outputs()])
    return _Opened(path, generator, model, info, prompt, source, notes, rss_before, rss_bytes())


@dataclass
class _Timings:
    outputs: list[list[GenerationOutput]]  # per model, the timed runs
    memory: RunMemory


def _time_runs(opened: list[_Opened], new_tokens: int, runs: int, warmup: int, progress: bool,
               label: str) -> _Timings:
    """Warm-up then timed generations, interleaved across models (export.runtime.timed_runs)."""
    outputs: list[list[GenerationOutput]] = [[] for _ in opened]

    def timed(index: int, model: _Opened) -> None:
        outputs[index].append(model.generator.generate(model.prompt, new_tokens))

    memory = interleaved_runs(opened, warmup=warmup, runs=runs,
                              warm=lambda m: m.generator.generate(m.prompt, new_tokens), timed=timed,
                              progress=progress, label=label)
    return _Timings(outputs, memory)


def _report(opened: _Opened, profile: Profile, outputs: list[GenerationOutput], memory: MemoryStats,
            prompt_length: int, new_tokens: int, warmup: int) -> GenerationBenchReport:
    # A one-token generation has no decode step: its TPOT is 0 and its decode rate undefined (0).
    tpot = [sum(o.step_s) / len(o.step_s) if o.step_s else 0.0 for o in outputs]
    steps = sum(len(o.step_s) for o in outputs)
    step_time = sum(sum(o.step_s) for o in outputs)
    return GenerationBenchReport(
        profile=profile.name, profile_source=str(profile.source) if profile.source else None, model=opened.model,
        session=opened.info, prompt_length=prompt_length, new_tokens=new_tokens, prompt_source=opened.prompt_source,
        runs=len(outputs), warmup=warmup, ttft_ms=TimingStats.from_seconds([o.ttft_s for o in outputs]),
        tpot_ms=TimingStats.from_seconds(tpot),
        tokens_per_s=sum(len(o.tokens) for o in outputs) / sum(o.total_s for o in outputs),
        decode_tokens_per_s=steps / step_time if step_time > 0 else 0.0,
        memory=memory, host=detect_host(), created_at=utc_now(), sample_tokens=list(outputs[0].tokens),
        notes=list(opened.notes),
    )


def _settings(profile: Profile, prompt_length: int | None, new_tokens: int | None, runs: int, warmup: int,
              threads: int | None) -> tuple[int, int]:
    check_bench_counts(runs=runs, warmup=warmup, threads=threads, prompt_length=prompt_length, new_tokens=new_tokens)
    default = profile.workload.generation_or_default
    return prompt_length or default.prompt_length, new_tokens or default.new_tokens


def run_generation_bench(model: str | os.PathLike[str], profile: Profile, *, prompt_length: int | None = None,
                         new_tokens: int | None = None, runs: int = 10, warmup: int = 2, threads: int | None = None,
                         progress: bool = False) -> GenerationBenchReport:
    """Benchmark greedy generation with ``model`` (an ONNX decoder with KV cache) under ``profile``.

    ``prompt_length`` / ``new_tokens`` default to the profile's ``workload.generation`` (128 / 64);
    ``threads`` overrides the profile's intra-op threads. Bad input raises CompressError.
    """
    path = Path(model)
    prompt_length, new_tokens = _settings(profile, prompt_length, new_tokens, runs, warmup, threads)
    opened = _open(path, profile, prompt_length=prompt_length, new_tokens=new_tokens, threads=threads, spinning=True)
    timings = _time_runs([opened], new_tokens, runs, warmup, progress, f"generate {path.name}")
    after_load = opened.rss_after_first_run
    peak = max(timings.memory.peak_rss, after_load)
    memory = MemoryStats(baseline_rss_mb=opened.rss_before / MIB, after_load_rss_mb=after_load / MIB,
                         peak_rss_mb=peak / MIB, session_peak_mb=(peak - opened.rss_before) / MIB,
                         method=timings.memory.method)
    return _report(opened, profile, timings.outputs[0], memory, prompt_length, new_tokens, warmup)


def compare_generation_bench(model: str | os.PathLike[str], other: str | os.PathLike[str], profile: Profile, *,
                             prompt_length: int | None = None, new_tokens: int | None = None, runs: int = 10,
                             warmup: int = 2, threads: int | None = None,
                             progress: bool = False) -> GenerationComparison:
    """Benchmark ``model`` against ``other`` in one process, generations interleaved (A, B, A, B, ...).

    See :func:`bench_side_by_side`, which this is for two models.
    """
    a, b = bench_side_by_side([model, other], profile, prompt_length=prompt_length, new_tokens=new_tokens, runs=runs,
                              warmup=warmup, threads=threads, progress=progress)
    return GenerationComparison(
        model=a, other=b, ttft_ratio=b.ttft_ms.p50 / a.ttft_ms.p50 if a.ttft_ms.p50 else 0.0,
        tpot_ratio=b.tpot_ms.p50 / a.tpot_ms.p50 if a.tpot_ms.p50 else 0.0,
        tokens_per_s_ratio=a.tokens_per_s / b.tokens_per_s, created_at=utc_now(),
    )


def bench_side_by_side(models: list[str | os.PathLike[str]], profile: Profile, *, prompt_length: int | None = None,
                       new_tokens: int | None = None, runs: int = 10, warmup: int = 2, threads: int | None = None,
                       progress: bool = False) -> list[GenerationBenchReport]:
    """Benchmark several models in one process, generations interleaved (A, B, C, A, B, C, ...).

    All get the same prompt length, new tokens and settings (each its own tokenizer's prompt);
    intra-op threads stop spinning when a run returns so one session's idle threads do not steal another's cores. Memory
    per model is its session creation and first generation (``shared_process=True``).
    """
    paths = [Path(m) for m in models]
    prompt_length, new_tokens = _settings(profile, prompt_length, new_tokens, runs, warmup, threads)
    opened = [_open(p, profile, prompt_length=prompt_length, new_tokens=new_tokens, threads=threads, spinning=False)
              for p in paths]
    baseline = opened[0].rss_before
    label = " vs ".join(p.name if p.name != "model.onnx" else f"{p.parent.name}/{p.name}" for p in paths)
    timings = _time_runs(opened, new_tokens, runs, warmup, progress, f"compare {label}")
    reports = []
    for item, outputs in zip(opened, timings.outputs):
        own = item.rss_after_first_run - item.rss_before
        memory = MemoryStats(
            baseline_rss_mb=item.rss_before / MIB, after_load_rss_mb=item.rss_after_first_run / MIB,
            peak_rss_mb=timings.memory.peak_rss / MIB, session_peak_mb=own / MIB, method=timings.memory.method,
            shared_process=True,
            note=(f"{len(paths)} sessions in one process: session_peak_mb is this model's load + first generation; "
                  f"all together peaked {(timings.memory.peak_rss - baseline) / MIB:.1f} MiB above the baseline"),
        )
        report = _report(item, profile, outputs, memory, prompt_length, new_tokens, warmup)
        report.notes.append("measured interleaved with other models, intra-op threads stopped between runs")
        reports.append(report)
    return reports
