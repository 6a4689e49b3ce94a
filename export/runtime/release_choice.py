"""Which model to release: the fastest candidate that meets every budget, or none.

A chain run ends with several models that could ship: the distilled student in each precision,
the teacher itself quantized. Each is measured the same way (quality on the held-out split against
the fp32 teacher, speed interleaved with the teacher on one host) and checked against the
profile's budgets that hold on any host (quality, size); :func:`choose_release` takes the fastest
that passes them all. When none does, nothing is chosen, and the choice names the candidate that
came closest and, for each budget, the best any candidate reached.

Torch-free: it reads and writes JSON (``RUN_DIR/release/candidates.json``) and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from export.base.errors import CompressError
from export.base.report_json import read_json_object
from export.runtime.bench import BudgetFigure

CANDIDATES_FILE = "candidates.json"


def figure_passes(figure: BudgetFigure) -> bool:
    """A budget with no limit passes; one with a limit and no measurement does not."""
    if figure.budget is None:
        return True
    if figure.measured is None:
        return False
    return figure.measured <= figure.budget if figure.comparison == "<=" else figure.measured >= figure.budget


@dataclass
class ReleaseCandidate:
    """One model that could be released, as measured beside the others.

    ``speedup`` is the candidate's headline speed over the fp32 teacher's, measured interleaved in
    one process (tokens/s for language models); ``speed`` and ``quality`` hold the figures the
    table shows; ``checks`` are the profile's budgets (quality, size) with the measured values.
    """

    name: str  # e.g. "teacher int4 (block 32, LM head int8)"
    model: str  # the .onnx file, relative to the run directory
    source: str  # "student" or "teacher": what was compressed
    precision: str
    parameters: int
    size_mb: float
    speedup: float
    speed: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    checks: list[BudgetFigure] = field(default_factory=list)

    @property
    def passes(self) -> bool:
        return all(figure_passes(c) for c in self.checks)

    def misses(self) -> list[str]:
        """The budgets this candidate misses, one phrase each."""
        return [f"{c.name.split('.')[-1]} {_fmt(c.measured)} (budget {c.comparison} {_fmt(c.budget)})"
                for c in self.checks if not figure_passes(c)]


@dataclass
class ReleaseChoice:
    """Every candidate measured, the one released (None: no candidate met every budget) and why."""

    candidates: list[ReleaseCandidate]
    released: str | None
    why: str
    measured_on: str = ""  # the host, and how speed and quality were measured

    @property
    def chosen(self) -> ReleaseCandidate | None:
        return next((c for c in self.candidates if c.name == self.released), None)

    def to_json(self, path: str | os.PathLike[str]) -> None:
        from export.base.files import atomic_write_json

        atomic_write_json(Path(path), dataclasses.asdict(self))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> ReleaseChoice:
        data = read_json_object(Path(path), "release candidates")
        try:
            candidates = [ReleaseCandidate(**{**c, "checks": [BudgetFigure(**f) for f in c["checks"]]})
                          for c in data["candidates"]]
            return cls(candidates=candidates, released=data["released"], why=data["why"],
                       measured_on=data.get("measured_on", ""))
        except (KeyError, TypeError) as exc:
            raise CompressError(f"{path}: not a release-candidates file ({exc})") from None


def choose_release(candidates: list[ReleaseCandidate]) -> ReleaseChoice:
    """The fastest candidate that passes every one of its checks; none when no candidate does.

    Ties in speed go to the smaller file. The reason names a faster candidate that fell short, or,
    when nothing passed, the candidate that misses the fewest budgets and, for each budget some
    candidate misses, the best value any candidate reached and who reached it.
    """
    if not candidates:
        raise CompressError("no release candidates to choose from")
    passing = sorted((c for c in candidates if c.passes), key=lambda c: (-c.speedup, c.size_mb))
    if passing:
        best = passing[0]
        others = len(passing) - 1
        why = (f"the fastest of the {len(passing)} candidates that meet every budget "
               f"({best.speedup:.2f}x the teacher)" if others else
               f"the only candidate that meets every budget ({best.speedup:.2f}x the teacher)")
        faster = [c for c in candidates if c.speedup > best.speedup and not c.passes]
        if faster:
            quickest = max(faster, key=lambda c: c.speedup)
            why += f"; faster but over a budget: {quickest.name} ({'; '.join(quickest.misses())})"
        return ReleaseChoice(candidates=candidates, released=best.name, why=why)
    closest = min(candidates, key=lambda c: (len(c.misses()), -c.speedup))
    return ReleaseChoice(candidates=candidates, released=None, why=(
        f"no candidate meets every budget; closest: {closest.name}, which misses {'; '.join(closest.misses())}; "
        "best per budget: " + "; ".join(_best_per_budget(candidates))))


def _best_per_budget(candidates: list[ReleaseCandidate]) -> list[str]:
    """For each budget some candidate misses: the best value reached, and by which candidate."""
    lines: list[str] = []
    names = dict.fromkeys(f.name for c in candidates for f in c.checks)
    for name in names:
        measured = [(c, f) for c in candidates for f in c.checks if f.name == name and f.measured is not None]
        if not measured or all(figure_passes(f) for _, f in measured):
            continue
        sign = 1 if measured[0][1].comparison == ">=" else -1
        candidate, figure = max(measured, key=lambda cf: sign * (cf[1].measured or 0.0))
        met = "met" if figure_passes(figure) else "missed"
        lines.append(f"{name} {figure.comparison} {_fmt(figure.budget)}: best {_fmt(figure.measured)} "
                     f"({candidate.name}, {met})")
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
