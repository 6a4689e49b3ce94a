"""How a released ONNX model is run and measured: one forward pass per request, or a generation loop.

The one place that turns a task name, a model file or a report into a kind; ``bench``, ``gate``,
``verify`` and ``package`` ask the kind instead of testing the task themselves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from export.base.errors import CompressError
from export.base.tasks import TEXT_GENERATION

if TYPE_CHECKING:
    from export.runtime.bench import Comparison, MeasuredRelease
    from export.runtime.example_check import ExampleCheck
    from export.runtime.manifest import BenchSummary, Manifest
    from export.runtime.profiles import Profile


class ReleaseKind(ABC):
    """What differs between kinds of released model, on the device and in the archive."""

    name: ClassVar[str]
    default_runs: ClassVar[tuple[int, int]]  # timed and warm-up runs of a bench
    example_program: ClassVar[str]  # example/ program an integrator runs
    workload_options: ClassVar[tuple[str, ...]]  # `compress bench` options that shape this kind's workload

    def check_workload_options(self, model: Path, given: list[str]) -> None:
        """Refuse `compress bench` workload options that belong to the other kind (``--name`` spellings)."""
        foreign = [name for name in given if name not in self.workload_options]
        if foreign:
            raise CompressError(f"{model.name} {self.refusal}: {', '.join(foreign)} does not apply "
                                f"(use {' and '.join(self.workload_options)})")

    refusal: ClassVar[str]

    @abstractmethod
    def bench(self, model: Path, profile: Profile, *, runs: int, warmup: int, threads: int | None = None,
              progress: bool = False, other: Path | None = None, **workload: object) -> object:
        """Measure ``model`` (against ``other`` in the same process, runs interleaved, when given)."""

    def print_report(self, report: object) -> None:
        """The report's human table on stdout."""
        from export.runtime.render import print_report

        print_report(report)  # type: ignore[arg-type]

    @abstractmethod
    def bench_archive(self, root: Path, manifest: Manifest, profile: Profile, *, runs: int, warmup: int,
                      progress: bool) -> MeasuredRelease:
        """Measure an extracted archive's model on this machine on real text (``verify --gate``)."""

    @abstractmethod
    def check_example(self, root: Path, manifest: Manifest) -> ExampleCheck:
        """Run the archive's example logic and compare it with the build host's reference answer."""

    @abstractmethod
    def bench_summary(self, bench: MeasuredRelease, host: dict[str, object]) -> BenchSummary:
        """The bench headline a manifest carries."""

    @abstractmethod
    def read_bench(self, path: Path) -> MeasuredRelease:
        """A bench report of this kind, read from ``path`` (CompressError for another kind)."""


class ForwardPass(ReleaseKind):
    """Encoders and classifiers: one forward pass per request, timed at a batch size and length."""

    name: ClassVar[str] = "forward"
    default_runs: ClassVar[tuple[int, int]] = (100, 10)
    example_program: ClassVar[str] = "run_model.py"
    workload_options: ClassVar[tuple[str, ...]] = ("--batch-size", "--sequence-length", "--inputs")
    refusal: ClassVar[str] = "is not a generation model (no past_key_values.* inputs)"

    def bench(self, model: Path, profile: Profile, *, runs: int, warmup: int, threads: int | None = None,
              progress: bool = False, other: Path | None = None, **workload: object) -> object:
        from export.runtime.bench import compare_bench, run_bench

        if other is not None:
            return compare_bench(model, other, profile, runs=runs, warmup=warmup, threads=threads, progress=progress,
                                 **workload)
        return run_bench(model, profile, runs=runs, warmup=warmup, threads=threads, progress=progress, **workload)

    def bench_archive(self, root: Path, manifest: Manifest, profile: Profile, *, runs: int, warmup: int,
                      progress: bool) -> MeasuredRelease:
        from export.runtime.bench import run_bench
        from export.runtime.example_check import real_text_inputs

        inputs, description = real_text_inputs(root, manifest, profile)
        bench = run_bench(root / manifest.model.path, profile, runs=runs, warmup=warmup, progress=progress,
                          inputs=inputs)
        bench.workload.inputs_source = description
        return bench

    def check_example(self, root: Path, manifest: Manifest) -> ExampleCheck:
        from export.runtime.example_check import check_forward_pass

        return check_forward_pass(root, manifest)

    def bench_summary(self, bench: MeasuredRelease, host: dict[str, object]) -> BenchSummary:
        from export.runtime.manifest import BenchSummary

        return BenchSummary(
            profile=bench.profile, host=host, providers=list(bench.session.providers_used),
            batch_size=bench.workload.batch_size, sequence_length=bench.workload.sequence_length,
            latency_ms={"p50": bench.latency.p50_ms, "p95": bench.latency.p95_ms, "p99": bench.latency.p99_ms,
                        "mean": bench.latency.mean_ms},
            model_size_mb=bench.model.size_mb, peak_memory_mb=bench.memory.session_peak_mb,
            throughput_per_s=bench.throughput.samples_per_s,
        )

    def read_bench(self, path: Path) -> MeasuredRelease:
        from export.runtime.bench import BenchReport

        return BenchReport.from_json(path)


class Generation(ReleaseKind):
    """Causal language models with a KV cache: greedy generation, timed per token."""

    name: ClassVar[str] = "generation"
    default_runs: ClassVar[tuple[int, int]] = (10, 2)  # one run is a whole generation (a prompt and 64 tokens)
    example_program: ClassVar[str] = "generate.py"
    workload_options: ClassVar[tuple[str, ...]] = ("--prompt-length", "--new-tokens")
    refusal: ClassVar[str] = "is a generation model"

    def bench(self, model: Path, profile: Profile, *, runs: int, warmup: int, threads: int | None = None,
              progress: bool = False, other: Path | None = None, **workload: object) -> object:
        from export.runtime.generation_bench import compare_generation_bench, run_generation_bench

        if other is not None:
            if kind_of_model(other) is not self:
                raise CompressError(f"--compare {other} is not a generation model (no past_key_values.* inputs), "
                                    f"{model.name} is")
            return compare_generation_bench(model, other, profile, runs=runs, warmup=warmup, threads=threads,
                                            progress=progress, **workload)
        return run_generation_bench(model, profile, runs=runs, warmup=warmup, threads=threads, progress=progress,
                                    **workload)

    def bench_archive(self, root: Path, manifest: Manifest, profile: Profile, *, runs: int, warmup: int,
                      progress: bool) -> MeasuredRelease:
        from export.runtime.generation_bench import run_generation_bench

        # The prompt is real text through the archive's tokenizer (model/tokenizer.json beside the model).
        return run_generation_bench(root / manifest.model.path, profile, runs=runs, warmup=warmup, progress=progress)

    def check_example(self, root: Path, manifest: Manifest) -> ExampleCheck:
        from export.runtime.example_check import check_generation

        return check_generation(root, manifest)

    def bench_summary(self, bench: MeasuredRelease, host: dict[str, object]) -> BenchSummary:
        from export.runtime.manifest import BenchSummary

        def stats(timing: object) -> dict[str, float]:
            return {"p50": timing.p50, "p95": timing.p95, "mean": timing.mean}

        return BenchSummary(
            profile=bench.profile, host=host, providers=list(bench.session.providers_used), batch_size=1,
            sequence_length=None, latency_ms={}, model_size_mb=bench.model.size_mb,
            peak_memory_mb=bench.memory.session_peak_mb, ttft_ms=stats(bench.ttft_ms), tpot_ms=stats(bench.tpot_ms),
            tokens_per_s=bench.tokens_per_s, prompt_length=bench.prompt_length, new_tokens=bench.new_tokens,
        )

    def read_bench(self, path: Path) -> MeasuredRelease:
        from export.base.files import read_json_dict
        from export.runtime.generation_bench import GenerationBenchReport

        kind = read_json_dict(path).get("kind")
        if kind != "generation_bench":
            raise CompressError(f"{path}: a text-generation run needs a generation bench report, found kind {kind!r}")
        return GenerationBenchReport.from_json(path)


FORWARD_PASS = ForwardPass()
GENERATION = Generation()


def kind_of_task(task: str) -> ReleaseKind:
    """The kind of a release of ``task`` (a manifest's or a run's task name)."""
    return GENERATION if task == TEXT_GENERATION else FORWARD_PASS


def kind_of_model(path: Path) -> ReleaseKind:
    """The kind of an ONNX file on disk: a graph that takes ``past_key_values.*`` generates."""
    from export.runtime.generation import is_generation_model

    return GENERATION if is_generation_model(path) else FORWARD_PASS


def read_any_report(path_or_text: str | Path) -> MeasuredRelease | Comparison:
    """Any bench report (an encoder's or a generation bench, alone or a comparison), by its ``kind``."""
    from export.base.report_json import read_json_object
    from export.runtime.bench import BenchReport, ComparisonReport
    from export.runtime.generation_bench import GenerationBenchReport, GenerationComparison

    data = read_json_object(path_or_text, "bench report")
    classes = {cls.kind: cls for cls in (BenchReport, ComparisonReport, GenerationBenchReport, GenerationComparison)}
    # An unknown kind is refused by BenchReport's own schema check, with the kind it found.
    return classes.get(str(data.get("kind")), BenchReport).from_dict(data)
