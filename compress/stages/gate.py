"""The gate stage: the release's bench report and quality evidence against the profile's budgets.

Writes ``gate.json`` and ``junit.xml`` (and what the family's evidence adds, ``quality.json`` for
encoders). The verdict is pass, fail, or unverified when the bench ran on other hardware than the
profile's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.stages.outputs import Gated
from export.base.stages import StageOutput, run_stage

if TYPE_CHECKING:
    from compress.chain_state import ChainContext
    from compress.stages.family import TaskFamily


def run_gate(ctx: ChainContext, family: TaskFamily, model: Path, teacher: Path) -> Gated:
    """Judge ``model`` into ``RUN_DIR/gate`` (bench must have run)."""
    from export.runtime.gate import GateReport, gate, write_junit
    from export.runtime.release_kind import read_any_report

    bench_json = ctx.run_dir / "bench" / "bench.json"

    def work(tmp: Path) -> StageOutput:
        evidence, files, figures = family.quality_evidence(ctx, model, teacher, tmp)
        report = gate(read_any_report(bench_json), ctx.profile, evidence)
        report.to_json(tmp / "gate.json")
        write_junit(report, tmp / "junit.xml")
        return StageOutput({**files, "gate": "gate.json", "junit": "junit.xml"},
                           {"verdict": report.verdict, **figures})

    run = run_stage(ctx.run_dir / "gate", family.gate_inputs(ctx, model, teacher), work)
    if run.status == "skipped":
        ctx.reporter.message(f"gate: up to date in {run.folder}; skipped")
    return Gated(run.status, GateReport.from_json(run.path("gate")), family.gate_quality(ctx, run.folder))
