"""What a task family supplies to the stages: everything that differs between model kinds.

The chain (:mod:`compress.chain`) owns the order of the stages, the time budget and ``run.json``;
each stage (:mod:`compress.stages`) owns its run. A family declares what differs: how to distill
its kind of teacher, export and quantize it, which candidates to measure, how to time it and what
quality evidence the gate judges. Gate, package and verify read what the stages wrote and never
ask which family it was.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from compress.chain_state import TableRow
from export.base.records import StageRecord

if TYPE_CHECKING:
    from compress.chain_state import ChainContext, ChainOptions, ChainResult
    from compress.settings import DistillSettings
    from compress.stages.outputs import Exported, Quantized
    from export.base.stages import StageOutput, StagePlan
    from export.run_summary import QualitySummary, StudentInfo
    from export.runtime.gate import QualityEvidence
    from export.runtime.release_choice import ReleaseCandidate


@dataclass(frozen=True)
class TeacherRequest:
    """The teacher a user named: a folder or registered name (None: the default teacher), or an endpoint."""

    teacher: str | None
    teacher_url: str | None = None


# `compress distill` options of a teacher you can only query (compress.lm.endpoint_family).
ENDPOINT_OPTIONS = ("teacher_url", "teacher_model", "student_from", "api_key_env", "concurrency", "rate_limit")


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

    # Families are asked whether they claim a teacher in descending order of this number.
    claim_priority: ClassVar[int] = 0

    @classmethod
    @abstractmethod
    def claims(cls, request: TeacherRequest) -> bool:
        """Whether this family compresses the teacher ``request`` names."""

    @abstractmethod
    def make_config(self, settings: dict[str, Any]) -> DistillSettings:
        """The family's distillation config from the settings a user gave (option names as keys)."""

    def check_options(self, options: ChainOptions) -> None:
        """Refuse chain options this family cannot honour (CompressError naming the option)."""

    # -- distill ---------------------------------------------------------------------------------
    @abstractmethod
    def distill_plan(self, ctx: ChainContext) -> StagePlan:
        """The distill stage (``RUN_DIR/distill``): what it reads and is set by, and its work, the
        family's trainer setup (:mod:`compress.stages.distill` runs it on every rank)."""

    # Runs of the bench stage (each a request, or a generation) and warm-up runs before them.
    bench_runs: ClassVar[int]
    bench_warmup: ClassVar[int]

    def student_dir(self, ctx: ChainContext) -> Path:
        return ctx.run_dir / "distill" / ctx.distilled.outputs["student"]

    # Whether the family prunes at all (its prune_plan is asked only then).
    prunes: ClassVar[bool] = False

    def prune_plan(self, ctx: ChainContext) -> StagePlan | None:
        """The prune stage (``RUN_DIR/prune``), or None when the options and the profile ask for no pruning."""
        return None

    # -- the artifact ----------------------------------------------------------------------------
    @abstractmethod
    def export(self, ctx: ChainContext, model_dir: Path, out: Path) -> Exported:
        """Export ``model_dir`` to ONNX in ``out`` (a stage) and check it against PyTorch."""

    @abstractmethod
    def release_precision(self, ctx: ChainContext) -> str:
        """The precision the quantize stage makes for the profile and options ("fp32": no quantize stage)."""

    @abstractmethod
    def quantize(self, ctx: ChainContext, fp32: Path, method: str) -> Quantized:
        """Make the release precision ``method`` from ``fp32`` (a stage) and say whether it ships."""

    def release_plan(self, ctx: ChainContext, student_fp32: Path, teacher: Path) -> StagePlan | None:
        """The release stage: every model that could ship measured beside the release; its ``work``
        writes ``candidates.json`` (:class:`~export.runtime.release_choice.ReleaseChoice`).

        None: the family has no other candidate, and the quantize stage's choice is the release.
        """
        return None

    # The release-candidate table's family-specific columns, and one candidate's cells in them.
    candidate_columns: ClassVar[tuple[str, ...]] = ()

    def candidate_cells(self, candidate: ReleaseCandidate) -> tuple[str, ...]:
        return ()

    @abstractmethod
    def measure(self, ctx: ChainContext, model: Path, teacher: Path, runs: int, warmup: int, tmp: Path) -> StageOutput:
        """The bench stage's work: time ``model`` against ``teacher``, runs interleaved, into ``tmp``
        (``bench.json``, the release alone, and ``compare.json``)."""

    @abstractmethod
    def speed(self, bench_dir: Path) -> tuple[dict[str, Any], float | None, str]:
        """From the bench stage's reports: the table's speed figures, the speed-up and the host."""

    @abstractmethod
    def gate_inputs(self, ctx: ChainContext, model: Path, teacher: Path) -> StageRecord:
        """What the gate stage reads and is set by (its fingerprint)."""

    @abstractmethod
    def quality_evidence(self, ctx: ChainContext, model: Path, teacher: Path,
                         tmp: Path) -> tuple[QualityEvidence, dict[str, str], dict[str, Any]]:
        """The quality the gate judges: the evidence, files written into ``tmp``, figures for the record."""

    @abstractmethod
    def gate_quality(self, ctx: ChainContext, gate_dir: Path) -> dict[str, Any] | None:
        """The release's quality figures for the table and run.json, once the gate has run."""

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
