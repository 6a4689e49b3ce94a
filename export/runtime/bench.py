"""Benchmark an ONNX model the way a target profile runs it.

``run_bench`` opens an ONNX Runtime session with the profile's execution providers and threads,
feeds it inputs built from the model's own signature (or real samples), and measures: session
load time, first-run latency, latency percentiles over timed runs, throughput, memory, and the
model's size on disk (external data files included). It records what really ran: the providers
the session *used* (a CUDA request on a machine without CUDA silently runs on the CPU), the host
CPU/GPU and the library versions. ``compare_bench`` measures two models in one process with their
runs interleaved, so that thermal or background drift hits both alike.

How the numbers are taken
- Timed region: only ``session.run`` between two ``time.perf_counter_ns`` calls. Memory sampling,
  progress-bar refreshes and bookkeeping happen between runs, outside it; the progress bar never
  refreshes from a background thread (that would compete with ORT's threads on a small CPU);
  Python's garbage collector is paused during the runs.
- Memory: resident set size (RSS) of this process, in MiB (2**20 bytes). ``baseline_rss_mb`` is
  taken after onnxruntime and numpy are imported and before the session is created;
  ``peak_rss_mb`` is the highest RSS seen from session creation to the last run: sampled after
  load, after each warm-up run and after the last timed run (never between timed runs: a /proc
  read there slows the next run), and the kernel's high-water mark ``VmHWM`` where Linux lets us
  reset it, which catches peaks inside any run. ``session_peak_mb = peak_rss_mb - baseline_rss_mb``: what
  loading and running this model adds to a process, the number ``peak_memory_mb`` budgets gate.
  GPU memory is not included.
- Sizes: ``*_mb`` fields are MiB; byte counts are kept beside them.

No torch, no transformers, not even onnx: this runs on the device with onnxruntime and numpy. The
few facts it needs from the file (external data files, opset, producer, embedding vocabulary)
come from a small reader of ONNX's protobuf wire format that skips the weights.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from export.base.errors import CompressError
from export.base.files import sha256_file
from export.runtime.host import detect_host
from export.runtime.onnx_file import GraphFacts, inspect_model_file
from export.runtime.session import GPU_PROVIDERS, bench_threads, open_session, release_freed_memory, rss_bytes
from export.runtime.timed_runs import RunMemory, interleaved_runs
from export.base.records import utc_now
from export.runtime.limits import check_bench_counts
from export.runtime.inputs import (
    InputSpec,
    check_npz_names_used,
    describe_npz_inputs,
    match_npz,
    read_npz,
    synthesize_inputs,
)
from export.runtime.profiles import Profile

# The reports live in their own module; they are named here too, where every reader has looked for them.
from export.runtime.bench_report import (MIB, BenchReport, BudgetFigure, Comparison, ComparisonReport, LatencyStats,
                                         MeasuredRelease, MemoryStats, ModelInfo, RemoteRun, SessionInfo, Throughput,
                                         Workload)

__all__ = ["BenchReport", "BudgetFigure", "Comparison", "ComparisonReport", "LatencyStats", "MeasuredRelease",
           "MemoryStats", "ModelInfo", "RemoteRun", "SessionInfo", "Throughput", "Workload", "bench_interleaved",
           "compare_bench", "run_bench"]
_log = logging.getLogger(__name__)


@dataclass
class _Opened:
    path: Path
    facts: GraphFacts
    session: Any
    info: SessionInfo
    feeds: dict[str, np.ndarray]
    specs: list[InputSpec]
    workload: Workload
    notes: list[str]
    rss_before: int
    rss_after_first_run: int


def _describe_feeds(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in feeds.items())


def _open(path: Path, profile: Profile, *, batch_size: int, sequence_length: int,
          npz: dict[str, np.ndarray] | None, npz_path: Path | None, threads: int | None,
          spinning: bool = True) -> _Opened:
    """Inspect the file, create the session (timed), build the feeds and do the first run (timed)."""
    if not path.exists():
        raise CompressError(f"model not found: {path}")
    if not path.is_file():
        raise CompressError(f"{path} is not a file (bench takes an .onnx file)")
    facts = inspect_model_file(path)
    release_freed_memory()
    rss_before = rss_bytes()
    usable_cores = detect_host().usable_cores
    intra, threads_note = bench_threads(threads, profile, usable_cores)
    inter = profile.runtime.inter_op_threads
    session, load_s, unavailable = open_session(path, list(profile.runtime.providers), intra, inter, spinning)
    signature = session.get_inputs()
    notes: list[str] = []
    if npz is not None:
        feeds = match_npz(npz, signature, npz_path)
        specs = describe_npz_inputs(feeds, signature)
        first = feeds[signature[0].name] if signature else None
        batch = int(first.shape[0]) if first is not None and first.ndim else 1
        ids = next((feeds[a.name] for a in signature if feeds[a.name].ndim >= 2 and feeds[a.name].dtype.kind in "iu"), None)
        workload = Workload(batch, int(ids.shape[1]) if ids is not None else None, f"npz: {npz_path}")
    else:
        feeds, specs, knobs = synthesize_inputs(signature, batch_size=batch_size, sequence_length=sequence_length,
                                                vocab_sizes=facts.vocab_sizes)
        workload = Workload(batch_size if knobs["batch"] else _leading_dim(feeds), sequence_length if knobs["sequence"] else None,
                            "synthetic (seed 0)")
        if not knobs["batch"] and batch_size != 1:
            notes.append(f"the model has a fixed batch dimension; --batch-size {batch_size} was not applied")
        if knobs["image"]:
            notes.append("dynamic height/width axes were set to 224")
    providers_used = list(session.get_providers())
    if unavailable:
        notes.append(f"not in this onnxruntime build: {', '.join(unavailable)}")
    fell_back = [p for p in profile.runtime.providers if p not in unavailable and p not in providers_used]
    if fell_back:
        notes.append(f"requested but not running (fell back): {', '.join(fell_back)}")
    if any(p in GPU_PROVIDERS for p in providers_used):
        notes.append("a GPU provider ran: latency includes host<->device copies of inputs and outputs; "
                     "memory is host RSS only (GPU memory is not measured)")
    if threads_note:
        notes.append(threads_note)
    if intra is not None and intra > usable_cores:
        notes.append(f"{intra} intra-op threads on {usable_cores} usable cores: oversubscribed, latency is pessimistic")
    start = time.perf_counter()
    try:
        session.run(None, feeds)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompressError(f"onnxruntime failed to run {path} on {_describe_feeds(feeds)}: {first}; "
                            "pass real samples with --inputs FILE.npz") from None
    first_run_ms = (time.perf_counter() - start) * 1000.0
    level = session.get_session_options().graph_optimization_level
    info = SessionInfo(
        providers_requested=list(profile.runtime.providers), providers_unavailable=unavailable,
        providers_used=providers_used, intra_op_threads=intra, inter_op_threads=inter,
        graph_optimization=getattr(level, "name", str(level)), load_s=load_s, first_run_ms=first_run_ms,
    )
    return _Opened(path, facts, session, info, feeds, specs, workload, notes, rss_before, rss_bytes())


def _leading_dim(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


# ---------------------------------------------------------------------------------------------
# Timed runs
# ---------------------------------------------------------------------------------------------

@dataclass
class _Timings:
    samples: list[list[float]]  # per model, seconds
    memory: RunMemory


def _time_runs(opened: list[_Opened], runs: int, warmup: int, progress: bool, label: str) -> _Timings:
    """Warm-up then timed runs, interleaved across models (A, B, A, B, ...); only ``session.run`` is timed."""
    samples: list[list[float]] = [[] for _ in opened]
    clock = time.perf_counter_ns

    def timed(index: int, model: _Opened) -> None:
        run, feeds = model.session.run, model.feeds
        start = clock()
        run(None, feeds)
        elapsed = clock() - start
        samples[index].append(elapsed / 1e9)

    try:
        memory = interleaved_runs(opened, warmup=warmup, runs=runs, warm=lambda m: m.session.run(None, m.feeds),
                                  timed=timed, progress=progress, label=label)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompressError(f"onnxruntime failed during the timed runs: {first}") from None
    return _Timings(samples, memory)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def _model_info(opened: _Opened) -> ModelInfo:
    total = sum(f.bytes for f in opened.facts.files)
    return ModelInfo(
        path=str(opened.path), sha256=sha256_file(opened.path), file_bytes=opened.facts.files[0].bytes,
        total_bytes=total, size_mb=total / MIB, files=opened.facts.files,
        opset=opened.facts.opset,
        producer=opened.facts.producer, inputs=opened.specs,
        outputs=[o.name for o in opened.session.get_outputs()],
    )


def _report(opened: _Opened, profile: Profile, latency_s: list[float], memory: MemoryStats, warmup: int) -> BenchReport:
    latency = LatencyStats.from_samples(latency_s)
    per_s = len(latency_s) / sum(latency_s)
    return BenchReport(
        profile=profile.name, profile_source=str(profile.source) if profile.source else None,
        model=_model_info(opened), session=opened.info, workload=opened.workload, latency=latency,
        throughput=Throughput(inferences_per_s=per_s, samples_per_s=per_s * opened.workload.batch_size),
        memory=memory, host=detect_host(), warmup=warmup, created_at=utc_now(), notes=opened.notes,
    )


def _validate_counts(runs: int, warmup: int, batch_size: int | None, sequence_length: int | None,
                     threads: int | None, inputs: Path | None) -> None:
    check_bench_counts(runs=runs, warmup=warmup, threads=threads, batch_size=batch_size,
                       sequence_length=sequence_length)
    if inputs is not None and (batch_size is not None or sequence_length is not None):
        raise CompressError("--inputs fixes the input shapes; drop --batch-size/--sequence-length")


def run_bench(model: str | os.PathLike[str], profile: Profile, *, batch_size: int | None = None,
              sequence_length: int | None = None, runs: int = 100, warmup: int = 10,
              inputs: str | os.PathLike[str] | None = None, threads: int | None = None,
              progress: bool = True) -> BenchReport:
    """Benchmark one ONNX model with ``profile``'s providers, threads and workload.

    ``batch_size``/``sequence_length`` default to the profile's workload; ``inputs`` is an .npz of
    real samples (one array per model input) that replaces the synthetic feeds; ``threads``
    overrides the profile's intra-op thread count. Raises CompressError for bad input (missing
    file, not ONNX, a model onnxruntime refuses, a bad npz).
    """
    path = Path(model)
    _validate_counts(runs, warmup, batch_size, sequence_length, threads, Path(inputs) if inputs else None)
    npz = read_npz(Path(inputs)) if inputs is not None else None
    opened = _open(path, profile, batch_size=batch_size or profile.workload.batch_size,
                   sequence_length=sequence_length or profile.workload.sequence_length, npz=npz,
                   npz_path=Path(inputs) if inputs else None, threads=threads)
    if npz is not None:
        check_npz_names_used(npz, [opened.session.get_inputs()], Path(inputs))
    after_load = opened.rss_after_first_run
    timings = _time_runs([opened], runs, warmup, progress, f"bench {path.name}")
    peak = max(timings.memory.peak_rss, after_load)
    memory = MemoryStats(
        baseline_rss_mb=opened.rss_before / MIB, after_load_rss_mb=after_load / MIB, peak_rss_mb=peak / MIB,
        session_peak_mb=(peak - opened.rss_before) / MIB,
        method=timings.memory.method,
    )
    return _report(opened, profile, timings.samples[0], memory, warmup)


def bench_interleaved(models: Sequence[str | os.PathLike[str]], profile: Profile, *, batch_size: int | None = None,
                      sequence_length: int | None = None, runs: int = 100, warmup: int = 10,
                      inputs: str | os.PathLike[str] | None = None, threads: int | None = None,
                      progress: bool = True) -> list[BenchReport]:
    """Benchmark several ONNX models in one process, runs interleaved (A, B, C, A, B, C, ...).

    All see the same workload, seed and settings. Memory per model is what its session creation
    and first run added to the process (``shared_process=True``); the joint peak is in the note.
    """
    paths = [Path(model) for model in models]
    _validate_counts(runs, warmup, batch_size, sequence_length, threads, Path(inputs) if inputs else None)
    npz = read_npz(Path(inputs)) if inputs is not None else None
    opened = [
        _open(p, profile, batch_size=batch_size or profile.workload.batch_size,
              sequence_length=sequence_length or profile.workload.sequence_length, npz=npz,
              npz_path=Path(inputs) if inputs else None, threads=threads, spinning=False)
        for p in paths
    ]
    if npz is not None:
        check_npz_names_used(npz, [o.session.get_inputs() for o in opened], Path(inputs))
    baseline = opened[0].rss_before
    timings = _time_runs(opened, runs, warmup, progress, "compare " + " vs ".join(p.name for p in paths))
    method = timings.memory.method
    reports = []
    for item, samples in zip(opened, timings.samples):
        own = item.rss_after_first_run - item.rss_before
        memory = MemoryStats(
            baseline_rss_mb=item.rss_before / MIB, after_load_rss_mb=item.rss_after_first_run / MIB,
            peak_rss_mb=timings.memory.peak_rss / MIB, session_peak_mb=own / MIB, method=method, shared_process=True,
            note=(f"{len(paths)} sessions in one process: session_peak_mb is this model's load + first run; "
                  f"all together peaked {(timings.memory.peak_rss - baseline) / MIB:.1f} MiB above the baseline"),
        )
        report = _report(item, profile, samples, memory, warmup)
        report.notes.append("measured interleaved with other models, intra-op threads stopped between runs so "
                            "that one session's idle threads do not steal the other's cores")
        reports.append(report)
    return reports


def compare_bench(model: str | os.PathLike[str], other: str | os.PathLike[str], profile: Profile, *,
                  batch_size: int | None = None, sequence_length: int | None = None, runs: int = 100,
                  warmup: int = 10, inputs: str | os.PathLike[str] | None = None, threads: int | None = None,
                  progress: bool = True) -> ComparisonReport:
    """Benchmark ``model`` against ``other`` in one process, runs interleaved (A, B, A, B, ...).

    Both see the same workload, seed and settings. ``p50_ratio = other.p50 / model.p50``.
    Memory per model is what its session creation and first run added to the process
    (``shared_process=True``); the joint peak of both sessions is in the note.
    """
    reports = bench_interleaved([model, other], profile, batch_size=batch_size, sequence_length=sequence_length,
                                runs=runs, warmup=warmup, inputs=inputs, threads=threads, progress=progress)
    a, b = reports
    return ComparisonReport(
        model=a, other=b, p50_ratio=b.latency.p50_ms / a.latency.p50_ms,
        mean_ratio=b.latency.mean_ms / a.latency.mean_ms, created_at=utc_now(),
    )
