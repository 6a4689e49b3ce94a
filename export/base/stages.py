"""The one stage runner: plan, fingerprint, skip, run in an atomic folder, write ``stage.json`` last.

A stage is a planned :class:`~export.base.records.StageRecord` (its inputs by sha256 and its
parameters) and a function that does the work into a folder and returns a :class:`StageOutput`.
No stage writes its own record: :func:`run_stage` skips the work when the folder already holds a
record with the same fingerprint and all its outputs, and otherwise runs it and writes the record
last, so a stage killed halfway has none and runs again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from export.base.files import atomic_directory, make_folder
from export.base.records import StageRecord, StageTimer, is_up_to_date, write_record

StageStatus = Literal["ran", "skipped"]


@dataclass
class StageOutput:
    """What a stage's work produced: files (names relative to the stage folder) and metrics."""

    outputs: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageRun:
    """A stage's record and whether this call ran it or found it up to date."""

    record: StageRecord
    status: StageStatus
    folder: Path

    @property
    def result(self) -> dict[str, Any]:
        """The ``result`` the stage recorded in its metrics (the stage's own report, as JSON)."""
        return self.record.metrics["result"]

    def path(self, output: str) -> Path:
        """Where one of the stage's outputs lies."""
        return self.folder / self.record.outputs[output]


@dataclass
class StagePlan:
    """A stage ready to run: what it reads and is set by (its fingerprint), and how it is done."""

    record: StageRecord
    work: Callable[[Path], StageOutput]


def run_stage(stage_dir: str | Path, planned: StageRecord, work: Callable[[Path], StageOutput], *,
              atomic: bool = True, resume: bool = True) -> StageRun:
    """Run ``work`` for ``planned`` into ``stage_dir`` unless an identical run already finished there.

    ``atomic``: the work writes into a temporary sibling folder that replaces ``stage_dir`` only
    once the record is written (a failed or interrupted stage leaves the old folder as it was).
    ``atomic=False`` is for stages that keep resumable state (checkpoints) in their folder across
    an interruption: they write in place and the record, written last, marks them complete.
    ``resume=False`` runs the work even when the folder is up to date.
    """
    stage_dir = Path(stage_dir)
    if resume and (previous := is_up_to_date(stage_dir, planned)) is not None:
        return StageRun(previous, "skipped", stage_dir)
    with StageTimer(planned) as record:
        if atomic:
            with atomic_directory(stage_dir) as tmp:
                _finish(record, work(tmp), tmp)
        else:
            make_folder(stage_dir)
            _finish(record, work(stage_dir), stage_dir)
    return StageRun(record, "ran", stage_dir)


def _finish(record: StageRecord, produced: StageOutput, folder: Path) -> None:
    record.outputs = dict(produced.outputs)
    record.metrics = dict(produced.metrics)
    write_record(folder, record)
