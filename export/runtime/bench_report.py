"""What a bench run reports: latency, throughput, memory, the model, the session, the host, the workload.

``BenchReport`` is one model measured alone; ``ComparisonReport`` two measured in one process with
their runs interleaved. Both round-trip through JSON (``to_json`` / ``from_json``); how the numbers
are taken is :mod:`export.runtime.bench`'s.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from export.base.errors import CompressError
from export.base.report_json import SCHEMA_VERSION, JsonReport
from export.runtime.host import HostInfo
from export.runtime.inputs import InputSpec
from export.runtime.onnx_file import DataFile
from export.runtime.session import GPU_PROVIDERS

if TYPE_CHECKING:
    from export.runtime.profiles import Profile
    from export.runtime.quality_evidence import QualityEvidence

MIB = 2**20


# ---------------------------------------------------------------------------------------------
# Report dataclasses (JSON round-trip: ``to_json`` / ``from_json``)
# ---------------------------------------------------------------------------------------------

@dataclass
class LatencyStats:
    """Latency over the timed runs, in milliseconds."""

    runs: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    samples_ms: list[float] = field(default_factory=list)  # every timed run, in run order (for plots)

    @classmethod
    def from_samples(cls, seconds: list[float]) -> LatencyStats:
        """Stats from per-run durations in seconds (linear-interpolated percentiles)."""
        if not seconds:
            raise ValueError("no timed runs")
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        return cls(
            runs=len(ms), mean_ms=float(ms.mean()), std_ms=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
            min_ms=float(ms.min()), p50_ms=float(p50), p90_ms=float(p90), p95_ms=float(p95), p99_ms=float(p99),
            max_ms=float(ms.max()), samples_ms=[round(float(x), 6) for x in ms],
        )


@dataclass
class Throughput:
    """Sequential throughput over the timed runs (one inference at a time, as the latency runs)."""

    inferences_per_s: float
    samples_per_s: float  # batch_size * inferences_per_s


@dataclass
class MemoryStats:
    """Host memory (RSS, MiB) around this model's session; see the module docstring."""

    baseline_rss_mb: float
    after_load_rss_mb: float
    peak_rss_mb: float
    session_peak_mb: float  # peak_rss_mb - baseline_rss_mb: what the model adds to a process
    method: str  # how the peak was found (RSS samples, plus the kernel high-water mark on Linux)
    shared_process: bool = False  # True in a comparison: two sessions lived in one process
    note: str = ""


@dataclass
class ModelInfo:
    """The model file(s) measured."""

    path: str
    sha256: str  # of the .onnx file
    file_bytes: int  # the .onnx file alone
    total_bytes: int  # .onnx plus every external data file it references
    size_mb: float  # total_bytes in MiB: what model_size_mb budgets gate
    files: list[DataFile] = field(default_factory=list)
    opset: int | None = None
    producer: str | None = None
    inputs: list[InputSpec] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class SessionInfo:
    """How the ONNX Runtime session was set up, and what it really ran on."""

    providers_requested: list[str]  # the profile's list, in order
    providers_unavailable: list[str]  # requested but not in this onnxruntime build
    providers_used: list[str]  # session.get_providers(): what actually ran
    intra_op_threads: int | None  # None: onnxruntime's default (one per physical core)
    inter_op_threads: int | None
    graph_optimization: str
    load_s: float  # InferenceSession(...) wall time
    first_run_ms: float  # the first session.run, before warm-up (lazy initialisation included)

    @property
    def gpu_used(self) -> bool:
        return any(p in GPU_PROVIDERS for p in self.providers_used)


@dataclass
class Workload:
    """The input shape that was measured."""

    batch_size: int
    sequence_length: int | None  # None when no input has a sequence axis (or it was fixed by the model)
    inputs_source: str  # "synthetic (seed 0)" or "npz: PATH"


@dataclass(frozen=True)
class RemoteRun:
    """A measurement made on a board over SSH: which board, through which runtime (zipapp sha256)."""

    target: str
    runtime_sha256: str
    files_checked: int  # files whose sha256 was checked on arrival (the runtime included)


@dataclass(frozen=True)
class BudgetFigure:
    """One measured figure a profile may budget: what the gate compares, and how."""

    name: str  # the budget's key in the profile, e.g. latency_ms.p95
    budget: float | None
    measured: float | None
    unit: str
    comparison: str  # "<=" for a ceiling, ">=" for a floor


class MeasuredRelease:
    """What the gate asks of any bench report, whatever kind of model it measured."""

    def workload_mismatches(self, profile: Profile) -> list[str]:
        """Why this measurement is not at the profile's workload (empty when it is)."""
        raise NotImplementedError

    def speed_figures(self, profile: Profile) -> list[BudgetFigure]:
        """The hardware-dependent speed figures against the profile's budgets for this kind of model."""
        raise NotImplementedError

    def quality_figures(self, profile: Profile, quality: QualityEvidence | None) -> list[BudgetFigure]:
        """The quality budgets beside teacher agreement for this kind of model: what quantization cost."""
        budgets = profile.budgets.quality
        return [BudgetFigure("quality.max_quantization_drop", budgets.max_quantization_drop,
                             quality.quantization_drop if quality else None, "agreement", "<="),
                BudgetFigure("quality.min_neighbour_agreement", budgets.min_neighbour_agreement,
                             quality.neighbour_agreement if quality else None, "top-10 neighbours kept", ">="),
                BudgetFigure("quality.min_similarity_spearman", budgets.min_similarity_spearman,
                             quality.similarity_spearman if quality else None, "Spearman of pairwise cosines", ">=")]

    def size_budget(self, profile: Profile) -> tuple[float | None, str]:
        """The model-size budget that applies, and a note naming where it came from ("" for the default)."""
        return profile.budgets.model_size_mb, ""

    def memory_budget(self, profile: Profile) -> tuple[float | None, str]:
        """The peak-memory budget that applies, and a note naming where it came from ("" for the default)."""
        return profile.budgets.peak_memory_mb, ""

    def workload_text(self) -> str:
        raise NotImplementedError

    @property
    def measured(self) -> MeasuredRelease:
        """The report the gate judges: this one (a comparison's is its first model's)."""
        return self

    def figures(self) -> dict[str, float]:
        """Every measured number the gate may read, by name: none may be negative or non-finite."""
        raise NotImplementedError

    def check_figures(self) -> None:
        """CompressError naming the first number no measurement can produce (NaN, infinite, negative)."""
        for name, value in self.figures().items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise CompressError(f"bench report: {name} is {value!r}; a measurement is a finite, non-negative "
                                    "number (was the report edited?)")

    def check_model(self, model: Path) -> None:
        """CompressError unless ``model`` is the file this report measured (sha256 and size)."""
        from export.base.files import sha256_file
        from export.runtime.onnx_file import onnx_size_bytes

        if not model.is_file():
            raise CompressError(f"model not found: {model}")
        if sha256_file(model) != self.model.sha256:
            raise CompressError(f"{model} is not the model this report measured (sha256 differs): the report is "
                                "about another file, or was edited")
        if onnx_size_bytes(model) != self.model.total_bytes:
            raise CompressError(f"{model} with its external data is {onnx_size_bytes(model):,} bytes; the report "
                                f"says {self.model.total_bytes:,}")


@dataclass
class BenchReport(JsonReport, MeasuredRelease):
    """One model measured on one machine with one profile's runtime settings."""

    profile: str
    model: ModelInfo
    session: SessionInfo
    workload: Workload
    latency: LatencyStats
    throughput: Throughput
    memory: MemoryStats
    host: HostInfo
    warmup: int
    created_at: str
    notes: list[str] = field(default_factory=list)
    profile_source: str | None = None
    remote: RemoteRun | None = None  # set when measured on a board over SSH (compress bench --on)
    schema_version: int = SCHEMA_VERSION
    kind: str = "bench"

    def workload_mismatches(self, profile: Profile) -> list[str]:
        want, got = profile.workload, self.workload
        reasons = []
        if got.batch_size != want.batch_size:
            reasons.append(f"measured at batch {got.batch_size}, the profile budgets batch {want.batch_size}")
        if got.sequence_length is not None and got.sequence_length != want.sequence_length:
            reasons.append(f"measured at sequence length {got.sequence_length}, the profile budgets "
                           f"{want.sequence_length}")
        return reasons

    def speed_figures(self, profile: Profile) -> list[BudgetFigure]:
        return [BudgetFigure(f"latency_ms.{p}", getattr(profile.budgets.latency_ms, p),
                             getattr(self.latency, f"{p}_ms"), "ms", "<=") for p in ("p50", "p95", "p99")]

    def workload_text(self) -> str:
        seq = f" × seq {self.workload.sequence_length}" if self.workload.sequence_length else ""
        return f"batch {self.workload.batch_size}{seq}"

    def figures(self) -> dict[str, float]:
        latency, memory = self.latency, self.memory
        return {"latency.p50_ms": latency.p50_ms, "latency.p90_ms": latency.p90_ms, "latency.p95_ms": latency.p95_ms,
                "latency.p99_ms": latency.p99_ms, "latency.mean_ms": latency.mean_ms, "model.size_mb": self.model.size_mb,
                "model.total_bytes": self.model.total_bytes, "memory.session_peak_mb": memory.session_peak_mb,
                "throughput.samples_per_s": self.throughput.samples_per_s}


class Comparison:
    """Two models measured in one process with runs interleaved: which is faster, by how much."""

    model: Any
    other: Any
    headline: ClassVar[tuple[str, str]]  # (verb, measure): "model.onnx is 3.10x faster than ... (p50)"

    @property
    def ratio(self) -> float:
        """How many times faster ``model`` is than ``other`` on the headline measure."""
        raise NotImplementedError

    @property
    def labels(self) -> tuple[str, str]:
        """The two models' names: file names, or parent folder and file name where the file names collide."""
        a, b = Path(self.model.model.path), Path(self.other.model.path)
        if a.name != b.name:
            return a.name, b.name
        return f"{a.parent.name}/{a.name}", f"{b.parent.name}/{b.name}"

    @property
    def summary(self) -> str:
        """``"quantize/model.onnx is 3.10x faster than teacher/model.onnx (p50)"``."""
        (a, b), (verb, measure) = self.labels, self.headline
        if self.ratio >= 1:
            return f"{a} {verb} {self.ratio:.2f}x faster than {b} ({measure})"
        return f"{a} {verb} {1 / self.ratio:.2f}x slower than {b} ({measure})"

    @property
    def measured(self) -> Any:
        """The report the gate judges: the first model's."""
        return self.model

    def render(self, title: str, rows: list[tuple[str, float, float, str]], detail: str) -> Any:
        """A rich table: the two models side by side, one row a measure, with the ratio."""
        from rich.table import Table

        a, b = self.model, self.other
        table = Table(title=f"{title} · profile {a.profile} · interleaved runs", title_justify="left")
        table.add_column("")
        for label in self.labels:
            table.add_column(label, justify="right")
        table.add_column("ratio (other / model)", justify="right")
        for name, x, y, spec in rows:
            table.add_row(name, format(x, spec), format(y, spec), f"{y / x:.2f}x" if x else "-")
        table.add_row("providers used", ", ".join(a.session.providers_used), ", ".join(b.session.providers_used), "")
        table.caption = f"{self.summary} · {detail}"
        return table

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary}


@dataclass
class ComparisonReport(Comparison, JsonReport):
    """Two models measured in one process with interleaved runs.

    ``p50_ratio = other.p50 / model.p50``: 3.1 means ``model`` is 3.1x faster than ``other``.
    """

    model: BenchReport
    other: BenchReport
    p50_ratio: float
    mean_ratio: float
    interleaved: bool = True
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION
    kind: str = "comparison"

    headline: ClassVar[tuple[str, str]] = ("is", "p50")

    @property
    def ratio(self) -> float:
        return self.p50_ratio
