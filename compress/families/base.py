"""What a task family supplies to the one chain: everything that differs between model kinds.

The chain (:mod:`compress.chain`) owns the order of the stages, the time budget and ``run.json``;
a family knows how to distill its kind of teacher, export it, quantize it, benchmark it and judge
its quality. Gate, package and verify read what the family wrote and never ask which family it was.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from compress.chain_state import TableRow
from export.base.corpus import DEFAULT_CORPUS_NAME, default_corpus
from export.base.records import FileRef, StageRecord

if TYPE_CHECKING:
    from compress.chain_state import ChainContext, ChainOptions, ChainResult
    from compress.settings import DistillSettings
    from export.base.stages import StageRun
    from export.run_summary import QualitySummary, StudentInfo
    from export.runtime.gate import GateReport
    from export.runtime.release_choice import ReleaseCandidate


# `compress distill` options of a teacher you can only query (compress.families.endpoint_lm).
ENDPOINT_OPTIONS = ("teacher_url", "teacher_model", "student_from", "api_key_env", "concurrency", "rate_limit")


@dataclass
class Exported:
    """An ONNX export the chain can use: where it is, how close it follows PyTorch, ran or skipped."""

    model: Path
    parity: str  # one line, e.g. "mean_cosine 1.000000 to PyTorch"
    status: str


class TaskFamily(ABC):
    """A kind of model the chain can compress (sentence encoders and classifiers, causal LMs)."""

    name: ClassVar[str]
    teacher_words: ClassVar[str]  # what kind of teacher this family distils, for messages
    baseline_label: ClassVar[str] = "teacher"  # the model every ratio of the final table is against
    # Seconds the stages after distillation take for this family's default job on a 2-core CPU,
    # and the least share of the chain's budget distillation keeps whatever they take.
    later_stages_reserve_s: ClassVar[float]
    min_distill_share: ClassVar[float]
    # Whether run.json is dated by the gate's verdict (else by the distillation's end).
    dated_by_gate: ClassVar[bool] = False
    # `compress distill` options that mean nothing to this family: naming one is an error.
    foreign_options: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def make_config(self, settings: dict[str, Any]) -> DistillSettings:
        """The family's distillation config from the settings a user gave (option names as keys)."""

    def check_options(self, options: ChainOptions) -> None:
        """Refuse chain options this family cannot honour (CompressError naming the option)."""

    # -- distill ---------------------------------------------------------------------------------
    @abstractmethod
    def distill(self, ctx: ChainContext) -> StageRun:
        """Run (or skip) the distill stage into ``ctx.run_dir/distill``."""

    def prune(self, ctx: ChainContext) -> Path:
        """The model folder to export: the distilled student, or a pruned copy (``ctx.result.stages['prune']``).

        A family that never prunes has no prune stage at all.
        """
        return self.student_dir(ctx)

    def student_dir(self, ctx: ChainContext) -> Path:
        return ctx.run_dir / "distill" / ctx.distilled.outputs["student"]

    # -- the artifact ----------------------------------------------------------------------------
    @abstractmethod
    def export(self, ctx: ChainContext, model_dir: Path, out: Path) -> Exported:
        """Export ``model_dir`` to ONNX in ``out`` (a stage) and check it against PyTorch."""

    @abstractmethod
    def quantize(self, ctx: ChainContext, fp32: Path) -> None:
        """Make the release precision from ``fp32``; set ``ctx.result``'s stage, final model and precision."""

    def choose_release(self, ctx: ChainContext, student_fp32: Path, teacher: Path) -> None:
        """Measure every model that could ship beside the release and keep the best (a stage).

        A family that has other candidates (the teacher quantized, the student in another
        precision) sets ``ctx.result.release`` and, when one wins, ``final_model`` and ``precision``.
        By default the release is the quantized student, alone.
        """

    # The release-candidate table's family-specific columns, and one candidate's cells in them.
    candidate_columns: ClassVar[tuple[str, ...]] = ()

    def candidate_cells(self, candidate: ReleaseCandidate) -> tuple[str, ...]:
        return ()

    @abstractmethod
    def bench(self, ctx: ChainContext, model: Path, teacher: Path, threads: int | None) -> None:
        """Benchmark the release against the teacher (a stage); fill ``ctx.result``'s speed.

        ``threads`` is what the runtime's thread policy gives on this host (a stage parameter).
        """

    @abstractmethod
    def gate(self, ctx: ChainContext, model: Path, teacher: Path) -> GateReport:
        """Judge the release against the profile's budgets (a stage); fill ``ctx.result.quality``."""

    @staticmethod
    def size_bytes(model: Path) -> int:
        from export.runtime.onnx_file import onnx_size_bytes

        return onnx_size_bytes(model)

    # -- reports ---------------------------------------------------------------------------------
    @abstractmethod
    def distill_summary(self, metrics: dict[str, Any], run_dir: Path) -> tuple[str, list[TableRow], list[str]]:
        """What the distill stage found, for the terminal: a table title, its rows, and lines below it."""

    @abstractmethod
    def table(self, result: ChainResult) -> tuple[list[TableRow], str | None]:
        """The teacher-vs-student rows and one line on how they were measured."""

    @staticmethod
    def size_rows(result: ChainResult) -> list[TableRow]:
        """Parameters and file size, teacher against release (none before the export)."""
        teacher, student = result.teacher, result.student
        if teacher is None or student is None:
            return []
        return [TableRow("parameters", f"{teacher.parameters / 1e6:.1f}M", f"{student.parameters / 1e6:.1f}M",
                         f"{teacher.parameters / student.parameters:.1f}x fewer"),
                TableRow("file size", f"{teacher.size_bytes / 2**20:.1f} MiB", f"{student.size_bytes / 2**20:.1f} MiB",
                         f"{teacher.size_bytes / student.size_bytes:.1f}x smaller")]

    def distill_quality(self, record: StageRecord) -> dict[str, Any] | None:
        """Quality measured by the distill stage itself, when the chain stops before the gate."""
        return None

    @abstractmethod
    def teacher_dir(self, record: StageRecord) -> Path: ...

    @abstractmethod
    def teacher_name(self, record: StageRecord) -> str: ...

    def teacher_parameters(self, record: StageRecord) -> int:
        return int(record.metrics["teacher_parameters"])

    def answers_provenance(self, record: StageRecord) -> dict[str, str]:
        """For a teacher known only by its answers: ``answers_from`` and ``answers_sha256`` for run.json."""
        return {}

    @abstractmethod
    def student_size(self, ctx: ChainContext) -> StudentInfo: ...

    @abstractmethod
    def task_of(self, ctx: ChainContext) -> str: ...

    @abstractmethod
    def quality_summary(self, result: ChainResult) -> QualitySummary: ...


def bench_record(ctx: ChainContext, model: Path, teacher: Path, runs: int, warmup: int,
                 threads: int | None) -> StageRecord:
    """The bench stage's plan, the same for every family: both models, the profile, where and how it runs."""
    from compress.chain_state import profile_input

    return StageRecord(stage="bench", inputs={"model": FileRef.of(model), "teacher": FileRef.of(teacher),
                                              **profile_input(ctx.profile)},
                       params={"profile": ctx.profile.name, "runs": runs, "warmup": warmup, "threads": threads,
                               "on": ctx.options.on})


def data_input(data: Path | None, inputs: dict[str, FileRef], params: dict[str, Any]) -> None:
    """Pin the training data in a distill stage's plan: the user's file by sha256, or the default corpus's.

    Both families call this, so a changed default corpus re-runs distillation for either.
    """
    if data is not None:
        inputs["data"] = FileRef.of(Path(data))
    else:
        params["data"] = DEFAULT_CORPUS_NAME
        params["default_corpus_sha256"] = default_corpus().sha256
