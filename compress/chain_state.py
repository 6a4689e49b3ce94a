"""The state one chain run shares between its stages and its task family: options, context, result.

Kept apart from :mod:`compress.chain` so that the task families, which fill it, and the chain,
which drives them, both stand on it without importing each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.settings import DistillSettings
from export.base.errors import CompressError
from export.base.records import FileRef, StageRecord

if TYPE_CHECKING:
    from compress.training.progress import Reporter
    from export.runtime.profiles import Profile
    from export.runtime.release_choice import ReleaseChoice

# The stages `--stop-after` can name, in order, and every stage folder a run can hold, in the order made
# (the stages themselves: compress.stages).
STAGES = ("distill", "prune", "export", "quantize", "bench", "gate")
FOLDERS = ("distill", "prune", "export", "teacher", "quantize", "release", "bench", "gate")


@dataclass
class PruneOptions:
    """Structured pruning after distillation (fractions of heads and FFN neurons to remove)."""

    heads: float = 0.0
    ffn: float = 0.0
    recover_steps: int = 100

    @property
    def wanted(self) -> bool:
        return self.heads > 0 or self.ffn > 0


@dataclass
class ChainOptions:
    """How far the chain goes and how the release is made and measured (None: the family's default)."""

    stop_after: str = "gate"
    prune: PruneOptions | None = None  # None: the profile's distill.prune
    precision: str | None = None  # None: the family's choice for the profile
    opset: int | None = None
    block_size: int = 32  # int4 weight-only block size (language models)
    bench_runs: int | None = None
    bench_warmup: int | None = None
    quality_texts: int = 256
    on: str | None = None  # ssh://user@board (or a devices.yaml name): bench and gate measure there

    def check(self) -> None:
        if self.stop_after not in STAGES:
            raise CompressError(f"--stop-after {self.stop_after!r}: choose one of {', '.join(STAGES)}")
        if (self.bench_runs is not None and self.bench_runs < 1) or \
                (self.bench_warmup is not None and self.bench_warmup < 0) or self.quality_texts < 2:
            raise CompressError("bench runs must be at least 1, warm-up runs not negative, quality texts at least 2")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise CompressError("--block-size must be a power of two, at least 16")
        if self.prune is not None:
            for flag, value in (("--prune-heads", self.prune.heads), ("--prune-ffn", self.prune.ffn)):
                if not 0 <= value < 1:
                    raise CompressError(f"{flag} {value} must be a fraction in [0, 1)")
            if self.prune.recover_steps < 0:
                raise CompressError("--recover-steps must not be negative")


@dataclass
class ModelSide:
    """One column of the final table: the teacher or the released student."""

    path: Path
    parameters: int
    size_bytes: int


@dataclass
class TableRow:
    """One row of the teacher-vs-student table, already formatted by the family."""

    label: str
    teacher: str
    student: str
    ratio: str = ""


@dataclass
class ChainResult:
    """What ``run_chain`` did and found."""

    run_dir: Path
    family: str
    profile: str
    stages: dict[str, str]  # stage -> ran | skipped | not needed
    distill: StageRecord | None = None
    final_model: Path | None = None
    precision: str | None = None
    teacher: ModelSide | None = None
    student: ModelSide | None = None
    speed: dict[str, Any] | None = None  # the family's headline speed figures, release and teacher
    speedup: float | None = None  # teacher over release, measured interleaved on this host
    quality: dict[str, Any] | None = None  # the release's quality against the teacher on held-out text
    rows: list[TableRow] = field(default_factory=list)
    measured: str | None = None  # how and where the table's numbers were measured
    host: str | None = None
    verdict: str | None = None
    gate_exit_code: int = 0
    gate_reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    release: ReleaseChoice | None = None  # the candidates measured and the one released (families that have some)
    helper: bool = False  # a data-parallel rank other than 0: it trained, rank 0 wrote and reports

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ChainContext:
    """What every stage of one chain run shares: where, for which target, with which settings."""

    run_dir: Path
    config: DistillSettings
    profile: Profile
    options: ChainOptions
    reporter: Reporter
    result: ChainResult

    @property
    def distilled(self) -> StageRecord:
        assert self.result.distill is not None, "the distill stage runs first"
        return self.result.distill


def profile_input(profile: Profile) -> dict[str, FileRef]:
    """A profile read from a file is a stage input: its budgets live there, so editing it re-runs the stage."""
    return {"profile": FileRef.of(profile.source)} if profile.source is not None else {}


def bench_threads(profile: Profile, notes: list[str]) -> int | None:
    """The threads the chain's bench runs with: the runtime's one policy (the cap noted in ``notes``)."""
    from export.runtime.host import detect_host
    from export.runtime.session import bench_threads as policy

    threads, note = policy(None, profile, detect_host().usable_cores)
    if note:
        notes.append(note)
    return threads


def measure_against_teacher(ctx: ChainContext, model: Path, teacher: Path, runs: int, warmup: int) -> object:
    """The release against the teacher, runs interleaved: on this host, or on the board of ``--on``.

    Threads follow the runtime's one policy wherever it runs (``threads=None``).
    """
    from export.runtime.release_kind import kind_of_model, read_any_report

    if ctx.options.on is None:
        return kind_of_model(model).bench(model, ctx.profile, runs=runs, warmup=warmup, threads=None, other=teacher)
    import json

    from export.remote import parse_target, remote_bench

    target = parse_target(ctx.options.on)
    ctx.reporter.message(f"bench: on {target.label} over SSH")
    return read_any_report(json.dumps(remote_bench(target, model, Path(ctx.profile.source), other=teacher, runs=runs,
                                                   warmup=warmup)))
