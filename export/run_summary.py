"""``run.json``: the one file that says what a run directory holds and where.

The chain writes it at the end of a run; ``compress package`` reads it (and nothing else about
the run's layout) to find the final model and its reports. Paths inside are relative to the
run directory, so a run directory can be moved or copied. Standard library only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from export.base.errors import CompressError

SCHEMA_VERSION = 1
RUN_SUMMARY_FILE = "run.json"

Verdict = Literal["pass", "fail", "unverified"]
VERDICTS: tuple[str, ...] = ("pass", "fail", "unverified")


@dataclass(frozen=True)
class TeacherInfo:
    """The model the student was distilled from."""

    name: str  # e.g. "sentence-transformers/all-MiniLM-L6-v2"
    path: str  # where it was read on the build host (informational; never needed to run the student)
    weights_sha256: str  # sha256 of its weights file(s), export.base.files.sha256_tree of the weights
    params: int
    # A teacher known only by its answers: the endpoint that gave them and their sha256; then
    # path, weights_sha256 and params describe the local model the student started from.
    answers_from: str | None = None
    answers_sha256: str | None = None


@dataclass(frozen=True)
class StudentInfo:
    """Size of the released model: the distilled student, or the teacher when it was released."""

    params: int
    layers: int
    hidden: int
    # "teacher": no distilled student met the profile's quality budgets and the teacher itself,
    # quantized, is the release (RUN_DIR/release/candidates.json says why).
    released_from: str = "student"


@dataclass(frozen=True)
class QualitySummary:
    """The student's (final, quantized) agreement with the teacher on held-out text.

    ``metric`` names what ``teacher_agreement`` is: ``mean_cosine`` for embeddings,
    ``argmax_agreement`` for classifiers (see export.runtime.agreement).
    """

    teacher_agreement: float | None
    metric: str
    neighbour_agreement: float | None = None  # embeddings: top-10 neighbour overlap with the teacher
    similarity_spearman: float | None = None  # embeddings: rank correlation of pairwise cosines with the teacher's
    quantization_drop: float | None = None  # agreement lost by quantization vs the fp32 ONNX model
    heldout_samples: int | None = None  # how many held-out texts the numbers were measured on
    # The same on a genre never trained on (the default corpus's quotations): generalisation, not budgeted.
    cross_domain_genre: str | None = None
    cross_domain_agreement: float | None = None
    cross_domain_neighbour_agreement: float | None = None
    cross_domain_similarity_spearman: float | None = None
    # What more training time would buy against the profile's floor (one line; compress.encoder.projection).
    more_time: str | None = None


@dataclass(frozen=True)
class ReportPaths:
    """Reports of the run, relative to the run directory; any may be absent."""

    bench: str | None = None
    gate: str | None = None
    junit: str | None = None
    loss_history: str | None = None


@dataclass(frozen=True)
class RunSummary:
    """The contents of ``RUN_DIR/run.json``."""

    run_id: str
    created_at: str  # ISO 8601 with a timezone, e.g. "2025-01-31T12:00:00+00:00"
    profile: str  # profile name (not alias)
    task: str  # export.base.tasks.Task
    precision: str  # fp32 | fp16 | int8-dynamic | int8-static | int8-weight (LMs) | int4-weight
    teacher: TeacherInfo
    student: StudentInfo
    final_model: str  # relative path of the .onnx file; tokenizer and config files lie beside it
    quality: QualitySummary
    tool_version: str
    stages: dict[str, str] = field(default_factory=dict)  # stage name -> relative path of its stage.json
    # The profile's YAML file, relative to RUN_DIR, when it is not a shipped profile (the chain
    # copies a user's profile file into the run directory); None: load ``profile`` by name.
    profile_file: str | None = None
    reports: ReportPaths = ReportPaths()
    verdict: Verdict | None = None  # the gate's verdict; None when no gate ran
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the exact shape of ``run.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any], *, source: str = RUN_SUMMARY_FILE) -> RunSummary:
        """Parse and validate ``run.json``; a bad or missing key is a CompressError naming it."""
        if not isinstance(payload, dict):
            raise CompressError(f"{source}: expected a JSON object")
        version = payload.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CompressError(f"{source}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
        try:
            data = _known(cls, payload, source)
            data["teacher"] = TeacherInfo(**_known(TeacherInfo, payload["teacher"], f"{source}: teacher"))
            data["student"] = StudentInfo(**_known(StudentInfo, payload["student"], f"{source}: student"))
            data["quality"] = QualitySummary(**_known(QualitySummary, payload["quality"], f"{source}: quality"))
            data["reports"] = ReportPaths(**_known(ReportPaths, payload.get("reports") or {}, f"{source}: reports"))
            summary = cls(**data)
        except KeyError as exc:
            raise CompressError(f"{source}: missing key {exc.args[0]!r}") from None
        except TypeError as exc:
            raise CompressError(f"{source}: {exc}") from None
        summary.validate(source)
        return summary

    def validate(self, source: str = RUN_SUMMARY_FILE) -> None:
        """Check values the package step relies on (types, verdict, relative paths, timestamp)."""
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise CompressError(f"{source}: verdict {self.verdict!r} is not one of {', '.join(VERDICTS)} or null")
        if not isinstance(self.stages, dict):
            raise CompressError(f"{source}: stages must be an object of name -> path")
        for key in ("run_id", "profile", "task", "precision", "final_model", "tool_version"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise CompressError(f"{source}: {key} must be a non-empty string")
        paths = {"final_model": self.final_model, **{f"stages.{k}": v for k, v in self.stages.items()}}
        paths.update({f"reports.{k}": v for k, v in dataclasses.asdict(self.reports).items() if v is not None})
        if self.profile_file is not None:
            paths["profile_file"] = self.profile_file
        for key, value in paths.items():
            if not isinstance(value, str) or Path(value).is_absolute() or ".." in Path(value).parts:
                raise CompressError(f"{source}: {key} must be a path relative to the run directory, got {value!r}")
        self.created_timestamp(source)

    def created_timestamp(self, source: str = RUN_SUMMARY_FILE) -> int:
        """``created_at`` as whole Unix seconds (used as the archive's fixed mtime)."""
        try:
            moment = datetime.fromisoformat(self.created_at)
        except (TypeError, ValueError):
            raise CompressError(f"{source}: created_at {self.created_at!r} is not an ISO 8601 timestamp") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return max(0, int(moment.timestamp()))


def read_run_summary(run_dir: str | Path) -> RunSummary:
    """Read ``RUN_DIR/run.json``; a missing or malformed file is a CompressError."""
    path = Path(run_dir) / RUN_SUMMARY_FILE
    if not Path(run_dir).is_dir():
        raise CompressError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise CompressError(f"{path}: not found (is {run_dir} a finished run directory?)")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CompressError(f"{path}: not valid JSON ({exc})") from None
    return RunSummary.from_json(payload, source=str(path))


def write_run_summary(run_dir: str | Path, summary: RunSummary) -> Path:
    """Validate and write ``RUN_DIR/run.json`` atomically."""
    from export.base.files import atomic_write_json

    summary.validate()
    return atomic_write_json(Path(run_dir) / RUN_SUMMARY_FILE, summary.to_json())


def _known(cls: type, payload: Any, source: str) -> dict[str, Any]:
    """The keys of ``payload`` that are fields of ``cls``; unknown keys are an error (likely a typo)."""
    if not isinstance(payload, dict):
        raise CompressError(f"{source}: expected a JSON object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(payload) - names)
    if unknown:
        raise CompressError(f"{source}: unknown key {unknown[0]!r}")
    return dict(payload)
